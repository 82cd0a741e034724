"""Accuracy of a BABILong checkpoint split by how many segments before the question the answer's fact lies.

    python -m babilong.analysis.fact_position RUN_DIR [--n_segments 2] [--n_samples 512]

A fact in the question's own segment can be read directly; a fact k segments earlier reaches the answer only through
k memory updates. When a checkpoint answers the first kind and misses the second, its memory is what fails, not
its reading of the task. The answer's fact is the last of the question's supporting facts (for qa1, the latest move
of the person asked about). The validation samples are those of training's validation (same seed).

The questions answered through memory are split again by how many facts follow the answer's fact in its own
segment (0, 1, 2, 3 or more): a memory that keeps each person's latest place scores alike on all, a memory that
keeps the latest facts whoever they are about falls with the count.
"""
import collections
import sys
from pathlib import Path

from babilong.checkpoint_eval import run_folder_main, validation_hits

MANY_FACTS_AFTER = 3  # facts after the answer's in its segment: 0, 1, 2, 3 or more


def segments_back(built, segment_size: int, n_segments: int) -> int:
    """Segments between the answer's fact and the question's (last) segment; samples fill their segments exactly."""
    if not built.task_sample.supporting:
        raise ValueError(f"a sample of question {built.task_sample.question!r} names no supporting fact: expected a "
                         "task whose samples name them (qa tasks, memorize, reasoning)")
    return n_segments - 1 - built.fact_positions[built.task_sample.supporting[-1]] // segment_size


def facts_after_in_segment(built, segment_size: int) -> int:
    """Facts after the answer's fact that start in the same segment (capped at MANY_FACTS_AFTER)."""
    answer_fact = built.task_sample.supporting[-1]
    segment = built.fact_positions[answer_fact] // segment_size
    later = sum(position // segment_size == segment for position in built.fact_positions[answer_fact + 1:])
    return min(later, MANY_FACTS_AFTER)


def groups(hits: dict) -> dict:
    return {str(key): {"samples": len(group), "accuracy": 100 * sum(group) / len(group)}
            for key, group in sorted(hits.items())}


def evaluate(run_dir: Path, n_segments: int, n_samples: int, batch_size: int = 64) -> dict:
    experiment, hits = validation_hits(run_dir, n_segments, n_samples, batch_size)
    by_distance, by_facts_after = collections.defaultdict(list), collections.defaultdict(list)
    for built, hit in hits:
        distance = segments_back(built, experiment.segment_size, n_segments)
        by_distance[distance].append(hit)
        if distance > 0:
            by_facts_after[facts_after_in_segment(built, experiment.segment_size)].append(hit)
    return {"run_dir": str(run_dir), "n_segments": n_segments, "n_samples": len(hits),
            "accuracy": 100 * sum(hit for _, hit in hits) / len(hits),
            "by_segments_back": groups(by_distance), "through_memory_by_facts_after": groups(by_facts_after)}


if __name__ == "__main__":
    sys.exit(run_folder_main(__doc__.splitlines()[0], evaluate, default_n_segments=2, default_n_samples=512))
