"""Train the tiny regression task of tiny_task.py from the command line.

The Trainer tests run this in subprocesses: under torchrun or accelerate (DDP, one or two machines), killed or
interrupted between and during checkpoints, and failing on one process. Every TrainerArgs flag is accepted, plus
the script's own below.
"""
import atexit
import json
import logging
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from transformers import HfArgumentParser

from ddp_then_exit import gloo_thread_count
from lm_experiments_tools import TrainerArgs
from lm_experiments_tools.distributed import init_distributed
from tiny_task import build_trainer, dataset_metrics, flat_parameters, keep_errors

logger = logging.getLogger(__name__)


@dataclass
class ScriptArgs:
    dropout: float = field(default=0.1, metadata={"help": "Dropout of the MLP"})
    step_sleep: float = field(default=0.0, metadata={"help": "Seconds to wait per batch, to be interrupted"})
    shuffle: bool = field(default=True, metadata={"help": "Shuffle the training data"})
    params_out: str | None = field(default=None, metadata={"help": "Save the final flat parameters here"})
    results_out: str | None = field(
        default=None, metadata={"help": "Each rank writes what train() returned to results_out.rank{N}.json"})
    exit_report: str | None = field(
        default=None, metadata={"help": "At exit, after the library's exit handlers, each rank writes to "
                                        "exit_report.rank{N}.json whether a process group is still set up and how "
                                        "many gloo threads are left"})
    fail_at_batch: int = field(
        default=0, metadata={"help": "The last rank raises on the n-th batch it prepares, training or validation (>0). "
                                     "The other ranks then ignore SIGTERM outside training: torchrun sends it when "
                                     "the last rank fails, and it would end them before they end the way a "
                                     "failure ends them"})


def report_at_exit(path_prefix: str) -> None:
    """Registered before init_distributed, so that it runs after the exit handlers registered there."""
    rank = int(os.environ.get("RANK", "0"))
    atexit.register(lambda: Path(f"{path_prefix}.rank{rank}.json").write_text(
        json.dumps({"process_group_left": dist.is_initialized(), "gloo_threads_left": gloo_thread_count()})))


def make_batch_transform(script_args: ScriptArgs, context):
    """Slow each batch down, or fail on the last rank at fail_at_batch; None when neither is asked for."""
    fail_here = script_args.fail_at_batch > 0 and context.rank == context.world_size - 1
    if not script_args.step_sleep and not fail_here:
        return None
    batches_seen = 0

    def transform(batch):
        nonlocal batches_seen
        batches_seen += 1
        if fail_here and batches_seen == script_args.fail_at_batch:
            raise RuntimeError(f"failing on purpose on batch {batches_seen} of rank {context.rank}")
        time.sleep(script_args.step_sleep)
        return batch

    return transform


def main():
    trainer_args, script_args = HfArgumentParser((TrainerArgs, ScriptArgs)).parse_args_into_dataclasses()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if script_args.exit_report:
        report_at_exit(script_args.exit_report)
    context = init_distributed()
    if script_args.fail_at_batch > 0:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the Trainer's own handling applies while it trains
    trainer = build_trainer(trainer_args, dropout=script_args.dropout, shuffle=script_args.shuffle,
                            batch_transform_fn=make_batch_transform(script_args, context),
                            keep_for_metrics_fn=keep_errors, metrics_fn=dataset_metrics)
    results = trainer.train()
    if script_args.results_out:
        Path(f"{script_args.results_out}.rank{context.rank}.json").write_text(json.dumps(results))
    if context.is_main and script_args.params_out:
        torch.save(flat_parameters(trainer.model), script_args.params_out)
        logger.info(f"final parameters saved to {script_args.params_out}")


if __name__ == "__main__":
    main()
