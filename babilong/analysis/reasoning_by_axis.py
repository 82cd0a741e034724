"""Accuracy of a reasoning checkpoint split by how its two facts lie around the anchor place.

    python -m babilong.analysis.reasoning_by_axis RUN_DIR [--n_segments 1] [--n_samples 512]

The reasoning task (babilong.tasks.reasoning_sample) names two neighbours of an anchor in two different directions.
When the directions are perpendicular (north and east), the question's direction word or its opposite appears in
the answer's fact only, so matching the axis is enough. When they are opposite (east and west), both facts use
the same two words, and only the parity of the two phrasings (of fact and of question) tells them apart. A model
that matches axes and guesses on one-axis samples scores 2/3 + 1/3 * 1/2 = 83%; this script shows whether that is
what a checkpoint learned. The validation samples are those of training's validation (same seed).
"""
import re
import sys
from pathlib import Path

from babilong.checkpoint_eval import run_folder_main, validation_hits
from babilong.tasks import OPPOSITE_DIRECTION

RELATION = re.compile(r"^The \w+ is (\w+) of the \w+\.$")


def one_axis(facts) -> bool:
    """True when the two relation facts use the same axis (east/west or north/south)."""
    first, second = (RELATION.match(fact).group(1) for fact in facts)
    return second in (first, OPPOSITE_DIRECTION[first])


def evaluate(run_dir: Path, n_segments: int, n_samples: int, batch_size: int = 64) -> dict:
    _, hits = validation_hits(run_dir, n_segments, n_samples, batch_size)
    correct = {True: [], False: []}
    for built, hit in hits:
        correct[one_axis(built.task_sample.facts)].append(hit)
    summary = {"run_dir": str(run_dir), "n_segments": n_segments, "n_samples": len(hits),
               "accuracy": 100 * sum(hit for _, hit in hits) / len(hits)}
    for axis, name in ((True, "one_axis"), (False, "perpendicular")):
        summary[f"{name}_samples"] = len(correct[axis])
        summary[f"{name}_accuracy"] = 100 * sum(correct[axis]) / max(len(correct[axis]), 1)
    return summary


if __name__ == "__main__":
    sys.exit(run_folder_main(__doc__.splitlines()[0], evaluate, default_n_segments=1, default_n_samples=512))
