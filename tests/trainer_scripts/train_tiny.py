"""Train the tiny regression task of tiny_task.py from the command line.

The Trainer tests run this in subprocesses: under torchrun (DDP), and killed or interrupted between and during
checkpoints. Every TrainerArgs flag is accepted, plus the script's own below.
"""
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import HfArgumentParser

from lm_experiments_tools import TrainerArgs
from lm_experiments_tools.utils import init_distributed
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


def main():
    trainer_args, script_args = HfArgumentParser((TrainerArgs, ScriptArgs)).parse_args_into_dataclasses()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    context = init_distributed()

    def slow_down(batch):
        time.sleep(script_args.step_sleep)
        return batch

    trainer = build_trainer(trainer_args, dropout=script_args.dropout, shuffle=script_args.shuffle,
                            batch_transform_fn=slow_down if script_args.step_sleep else None,
                            keep_for_metrics_fn=keep_errors, metrics_fn=dataset_metrics)
    results = trainer.train()
    if script_args.results_out:
        Path(f"{script_args.results_out}.rank{context.rank}.json").write_text(json.dumps(results))
    if context.is_main and script_args.params_out:
        torch.save(flat_parameters(trainer.model), script_args.params_out)
        logger.info(f"final parameters saved to {script_args.params_out}")


if __name__ == "__main__":
    main()
