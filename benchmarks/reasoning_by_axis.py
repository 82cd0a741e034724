"""Accuracy of a reasoning checkpoint split by how its two facts lie around the anchor place.

    python benchmarks/reasoning_by_axis.py RUN_DIR [--n_segments 1] [--n_samples 512]

The reasoning task (babilong.tasks.reasoning_sample) names two neighbours of an anchor in two different directions.
When the directions are perpendicular (north and east), the question's direction word or its opposite appears in
the answer's fact only, so matching the axis is enough. When they are opposite (east and west), both facts use
the same two words, and only the parity of the two phrasings (of fact and of question) tells them apart. A model
that matches axes and guesses on one-axis samples scores 2/3 + 1/3 * 1/2 = 83%; this script shows whether that is
what a checkpoint learned. The validation samples are those of training's validation (same seed).
"""
import argparse
import json
import re
import sys
from pathlib import Path

import torch

from babilong.memory_trace import checkpoint_experiment
from babilong.tasks import OPPOSITE_DIRECTION
from lm_experiments_tools.utils import CONFIG_FILE

RELATION = re.compile(r"^The \w+ is (\w+) of the \w+\.$")


def one_axis(facts) -> bool:
    """True when the two relation facts use the same axis (east/west or north/south)."""
    first, second = (RELATION.match(fact).group(1) for fact in facts)
    return second in (first, OPPOSITE_DIRECTION[first])


def evaluate(run_dir: Path, n_segments: int, n_samples: int, batch_size: int = 64) -> dict:
    experiment, stages = checkpoint_experiment(run_dir, n_segments, n_samples, batch_size)
    dataset = experiment.dataset(stages[0], "valid", n_samples)
    model = experiment.model.eval()
    correct = {True: [], False: []}
    index = 0
    with torch.no_grad():
        for batch in experiment.valid_batches(stages[0]):
            predicted = model(batch["input_ids"], attention_mask=batch["attention_mask"]).logits.argmax(-1)
            for hit in (predicted == batch["labels"]).tolist():
                correct[one_axis(dataset.build(index).task_sample.facts)].append(hit)
                index += 1
    summary = {"run_dir": str(run_dir), "n_segments": n_segments, "n_samples": index,
               "accuracy": 100 * sum(correct[True] + correct[False]) / index}
    for axis, name in ((True, "one_axis"), (False, "perpendicular")):
        summary[f"{name}_samples"] = len(correct[axis])
        summary[f"{name}_accuracy"] = 100 * sum(correct[axis]) / max(len(correct[axis]), 1)
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="run folder of a reasoning (or reasoning_plain) checkpoint")
    parser.add_argument("--n_segments", type=int, default=1, help="segments per sample (default: 1)")
    parser.add_argument("--n_samples", type=int, default=512, help="validation samples (default: 512)")
    args = parser.parse_args(argv)
    if not (args.run_dir / CONFIG_FILE).is_file():
        print(f"error: {args.run_dir} has no {CONFIG_FILE}: expected a run folder", file=sys.stderr)
        return 2
    print(json.dumps(evaluate(args.run_dir, args.n_segments, args.n_samples)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
