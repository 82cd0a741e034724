"""An ArXiv language-modelling experiment: documents cut into blocks, a decoder in a recurrent memory wrapper,
training, and the best checkpoint evaluated on validation and test into results.json (docs/design.md).

`main` is what `run_finetuning_arxiv_rmt.py` runs.
"""
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch.utils.data import Subset
from transformers import set_seed

from lm_experiments_tools import Trainer, TrainerArgs
from lm_experiments_tools.checkpoint import BEST_CHECKPOINT_NAME
from lm_experiments_tools.class_names import get_cls_by_name
from lm_experiments_tools.errors import BadInputError, RunFailure
from lm_experiments_tools.run_folder import (check_resumed_settings, delete_previous_run, holding_run_folders,
                                             prepare_evaluation_folder, prepare_run_folder)
from lm_experiments_tools.runs import (build_backbone, eval_batches, exit_on_bad_input, exit_on_failure, load_config,
                                       make_trainer, run_values, start_run, train_batches, write_run_config)
from rmt_experiments import text_sources
from rmt_experiments.checkpoints import load_run_weights
from rmt_experiments.memory_options import build_wrapper, memory_config, prepare_segment_checkpointing
from rmt_experiments.offline_model import load_tokenizer, small_gpt2_config
from rmt_experiments.run_args import RESUME_MAY_CHANGE, build_optimizer, parse_args

from .data import SegmentCollator, SegmentDataset, tokenize_splits
from .metrics import block_nll, segment_metrics
from .run_args import ArxivArgs

logger = logging.getLogger(__name__)

RESULTS_FILE = "results.json"


@dataclass
class ArxivRun:
    """A run ready to train: its options, the Trainer and the evaluation batches of each split."""

    trainer_args: TrainerArgs
    args: ArxivArgs
    context: object
    trainer: Trainer
    eval_loaders: dict


def build_model(args: ArxivArgs, tokenizer):
    """The backbone in a memory cell in a recurrent wrapper, initialised from model_cpt when given."""
    source = ({"pretrained": args.from_pretrained} if args.from_pretrained else
              {"config": load_config(args.model_cfg) if args.model_cfg else small_gpt2_config(tokenizer)})
    backbone = build_backbone(args.backbone_cls, tokenizer, input_size=args.input_size, **source)
    memory = memory_config(args, "decoder")
    prepare_segment_checkpointing(memory)
    cell = build_wrapper(get_cls_by_name(args.memory_cell_cls), backbone, memory_config=memory)
    model = build_wrapper(get_cls_by_name(args.model_cls), cell, memory_config=memory)
    if args.model_cpt:
        load_run_weights(model, args.model_cpt)
    logger.info(f"model: {type(backbone).__name__} ({sum(p.numel() for p in model.parameters()):,} parameters with "
                f"memory), segment size {args.segment_size}, {args.num_mem_tokens} memory tokens ({args.memory_type}), "
                f"up to {args.max_n_segments} segments")
    return model


def load_text(args: ArxivArgs):
    """The text splits the options name, the standard library docstrings when they name none."""
    if args.text_files or args.valid_text_files:
        splits = text_sources.text_files_by_split({"train": args.text_files, "validation": args.valid_text_files,
                                                   "test": args.test_text_files})
    elif args.dataset_path:
        splits = text_sources.saved_dataset_splits(args.dataset_path, args.text_column, what="dataset_path")
    elif args.dataset_name:
        name = f"{args.dataset_name}:{args.dataset_config}" if args.dataset_config else args.dataset_name
        splits = text_sources.hub_splits(name, args.text_column)
    else:
        logger.info("no text source given: using the Python standard library docstrings (offline default)")
        splits = text_sources.load_splits("default")
    return text_sources.as_dataset_dict(splits)


def _evenly_spaced(dataset, n_samples):
    if n_samples is None or n_samples >= len(dataset):
        return dataset
    return Subset(dataset, np.linspace(0, len(dataset) - 1, n_samples).round().astype(int).tolist())


def build_batches(args: ArxivArgs, trainer_args: TrainerArgs, *, tokenized, tokenizer, context) -> tuple:
    """(training batches, {split: evaluation batches} for validation and, when present, test)."""
    datasets = {name: SegmentDataset.from_tokenized(split, args.segment_size, args.max_n_segments)
                for name, split in tokenized.items()}
    empty = [name for name in ("train", "validation") if len(datasets[name]) == 0]
    if empty:
        raise BadInputError(f"split(s) {empty} have no document of at least segment_size={args.segment_size} "
                            "tokens: expected longer documents or a smaller input_size")
    collate = SegmentCollator(tokenizer.pad_token_id, args.segment_size, args.max_n_segments)
    train_collate = SegmentCollator(tokenizer.pad_token_id, args.segment_size, args.max_n_segments,
                                    vary_n_segments=args.vary_n_segments, seed=trainer_args.seed)
    train = train_batches(datasets["train"], trainer_args, context=context, collate_fn=train_collate,
                          num_workers=args.data_n_workers)
    evaluation = {name: _evenly_spaced(datasets[name], args.num_valid_samples)
                  for name in ("validation", "test") if name in datasets}
    logger.info(f"samples: train {len(datasets['train'])}, "
                + ", ".join(f"{name} {len(dataset)}" for name, dataset in evaluation.items()))
    return train, {name: eval_batches(dataset, trainer_args, context=context, collate_fn=collate,
                                      num_workers=args.data_n_workers)
                   for name, dataset in evaluation.items()}


def setup(argv=None) -> ArxivRun:
    """Everything before training: options, data, model and Trainer."""
    trainer_args, args = parse_args(ArxivArgs, argv)
    context = start_run(trainer_args)
    if not args.validate_only:  # the run folder's refusals and lock, before any time is spent
        prepare_run_folder(trainer_args.model_path, resume=trainer_args.resume, overwrite=trainer_args.overwrite,
                           is_main=context.is_main)
        if trainer_args.resume:
            check_resumed_settings(trainer_args.model_path, run_values(trainer_args, args), RESUME_MAY_CHANGE)
    elif trainer_args.model_path is not None:  # the evaluated run itself or a new folder, never another run
        prepare_evaluation_folder(trainer_args.model_path, args.model_cpt, is_main=context.is_main)
    tokenizer = load_tokenizer(args.tokenizer or args.from_pretrained)
    tokenized = tokenize_splits(load_text(args), tokenizer, num_proc=args.data_n_workers or None)
    train, eval_loaders = build_batches(args, trainer_args, tokenized=tokenized, tokenizer=tokenizer, context=context)
    set_seed(trainer_args.seed)  # the same initial weights for runs that differ only in memory or input size
    model = build_model(args, tokenizer)
    if trainer_args.overwrite and not args.validate_only and context.is_main:  # every input checked: it may go
        delete_previous_run(trainer_args.model_path)
    evaluates_in_place = args.validate_only and trainer_args.model_path is not None and (
        Path(trainer_args.model_path).resolve() == Path(args.model_cpt).resolve())
    if not evaluates_in_place:  # the evaluated run keeps the config.json it was trained with
        write_run_config(trainer_args, args)

    def keep_for_metrics(batch, output):
        return block_nll(output["logits"], batch["input_ids"], batch["attention_mask"], args.segment_size,
                         args.max_n_segments)

    trainer = make_trainer(trainer_args, model=model, optimizer=build_optimizer(args, trainer_args, model),
                           train=train, valid=eval_loaders["validation"], keep_for_metrics_fn=keep_for_metrics,
                           metrics_fn=segment_metrics)
    return ArxivRun(trainer_args, args, context, trainer, eval_loaders)


def evaluate(run: ArxivRun, load_best: bool) -> dict:
    """Validation and test metrics of the best checkpoint (of the weights in hand when there is none).

    Returns:
        dict with the checkpoint evaluated and the metrics of each split; also written to results.json.
    """
    model_path = run.trainer_args.model_path
    best = Path(model_path or "") / BEST_CHECKPOINT_NAME
    checkpoint = None
    if load_best and model_path and best.is_file():
        run.trainer.load(best, reset_optimizer=True)
        checkpoint = str(best)
    results = {"checkpoint": checkpoint}
    for name, loader in run.eval_loaders.items():
        # validation of the best weights is already in tensorboard from training; test is new there
        results[name] = run.trainer.validate(loader, split=name, write_tb=name == "test")
        nonfinite = {metric: value for metric, value in results[name].items() if not math.isfinite(value)}
        if nonfinite:
            raise RunFailure(f"{name} metrics {nonfinite} of {checkpoint or 'the final weights'} are not finite: "
                             f"not written to {RESULTS_FILE}")
    if run.context.is_main and model_path:
        (Path(model_path) / RESULTS_FILE).write_text(json.dumps(results, indent=2))
        logger.info(f"results written to {Path(model_path) / RESULTS_FILE}")
    return results


def main(argv=None) -> dict:
    """Train (unless --validate_only) and evaluate; every error ends with one line on stderr, exit code 2 for bad
    input and 1 for failures at run time.

    Returns:
        the results written to results.json.
    """
    with holding_run_folders():  # the run folder's one-writer lock, from setup to the end
        with exit_on_bad_input():
            run = setup(argv)
        with exit_on_failure(run.trainer_args.model_path):
            if not run.args.validate_only:
                run.trainer.train()
            return evaluate(run, load_best=not run.args.validate_only)
