"""Evaluate a trained run folder again: its checkpoint on validation samples built with the options it was trained
with, at any number of segments, sample by sample.

The analyses in `babilong.analysis` and `babilong.memory_trace` start here, so that what they measure is the model as
trained (task, background, placement, architecture, seed), changed only in the length asked for.
"""
import argparse
import json
import sys
from pathlib import Path

import torch

from lm_experiments_tools.run_config import CONFIG_FILE

from .experiment import setup

# what a checkpoint was trained with and an evaluation must repeat
TRAINED_ARGS = ("task", "noise_dataset", "model_type", "from_pretrained", "model_cfg", "tokenizer", "input_size",
                "num_mem_tokens", "memory_type", "d_mem", "segment_alignment", "placement", "babi_path",
                "max_n_facts", "seed")


def trained_argv(run_dir: Path) -> list:
    """Command-line arguments of run_finetuning_babilong_rmt.py that repeat TRAINED_ARGS of the run folder."""
    trained = json.loads((run_dir / CONFIG_FILE).read_text())["args"]
    return [item for name in TRAINED_ARGS if trained.get(name) is not None
            for item in (f"--{name}", str(trained[name]))]


def checkpoint_experiment(run_dir: Path, n_segments: int, n_samples: int, batch_size: int) -> tuple:
    """(experiment, stages) of `babilong.experiment` evaluating a run folder's encoder checkpoint on n_samples
    validation samples of n_segments segments, with the task, data and architecture it was trained with."""
    argv = ["--validate_only", "--model_cpt", str(run_dir), "--max_n_segments", str(n_segments),
            "--batch_size", str(batch_size), "--num_valid_samples", str(n_samples), *trained_argv(run_dir)]
    experiment, stages, _ = setup(argv)  # model and data built as in training
    if experiment.args.model_type != "encoder":
        raise ValueError(f"{run_dir}: model_type {experiment.args.model_type!r}: expected an encoder checkpoint")
    return experiment, stages


def validation_hits(run_dir: Path, n_segments: int, n_samples: int, batch_size: int = 64) -> tuple:
    """(experiment, [(built sample, answered right)]) of an encoder checkpoint on its validation samples."""
    experiment, stages = checkpoint_experiment(run_dir, n_segments, n_samples, batch_size)
    dataset = experiment.dataset(stages[0], "valid", n_samples)
    model = experiment.model.eval()
    hits = []
    with torch.no_grad():
        for batch in experiment.valid_batches(stages[0]):
            predicted = model(batch["input_ids"], attention_mask=batch["attention_mask"]).logits.argmax(-1)
            hits += (predicted == batch["labels"]).tolist()
    return experiment, [(dataset.build(index), hit) for index, hit in enumerate(hits)]


def run_folder_main(description: str, evaluate, default_n_segments: int, default_n_samples: int, argv=None) -> int:
    """Command line of a diagnostic `evaluate(run_dir, n_segments, n_samples) -> dict`: prints its JSON; bad
    input is a one-line error with exit code 2."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("run_dir", type=Path, help="run folder of an encoder checkpoint of run_finetuning_babilong_rmt")
    parser.add_argument("--n_segments", type=int, default=default_n_segments,
                        help=f"segments per sample (default: {default_n_segments})")
    parser.add_argument("--n_samples", type=int, default=default_n_samples,
                        help=f"validation samples (default: {default_n_samples})")
    args = parser.parse_args(argv)
    if not (args.run_dir / CONFIG_FILE).is_file():
        print(f"error: {args.run_dir} has no {CONFIG_FILE}: expected a run folder", file=sys.stderr)
        return 2
    for name in ("n_segments", "n_samples"):
        if getattr(args, name) < 1:
            print(f"error: --{name} {getattr(args, name)}: expected a positive integer", file=sys.stderr)
            return 2
    try:
        summary = evaluate(args.run_dir, args.n_segments, args.n_samples)
    except ValueError as error:
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0
