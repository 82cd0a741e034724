"""Accuracy of a BABILong checkpoint split by how many segments before the question the answer's fact lies.

    python benchmarks/accuracy_by_fact_segment.py RUN_DIR [--n_segments 2] [--n_samples 512]

A fact in the question's own segment can be read directly; a fact k segments earlier reaches the answer only through
k memory updates. When a checkpoint answers the first kind and misses the second, its memory is what fails, not
its reading of the task. The answer's fact is the last of the question's supporting facts (for qa1, the latest move
of the person asked about). The validation samples are those of training's validation (same seed).
"""
import argparse
import collections
import json
import sys
from pathlib import Path

import torch

from babilong.memory_trace import checkpoint_experiment
from lm_experiments_tools.utils import CONFIG_FILE


def segments_back(built, segment_size: int, n_segments: int) -> int:
    """Segments between the answer's fact and the question's (last) segment; samples fill their segments exactly."""
    if not built.task_sample.supporting:
        raise ValueError(f"a sample of question {built.task_sample.question!r} names no supporting fact: expected a "
                         "task whose samples name them (qa tasks, memorize, reasoning)")
    return n_segments - 1 - built.fact_positions[built.task_sample.supporting[-1]] // segment_size


def evaluate(run_dir: Path, n_segments: int, n_samples: int, batch_size: int = 64) -> dict:
    experiment, stages = checkpoint_experiment(run_dir, n_segments, n_samples, batch_size)
    dataset = experiment.dataset(stages[0], "valid", n_samples)
    model = experiment.model.eval()
    hits_by_distance = collections.defaultdict(list)
    index = 0
    with torch.no_grad():
        for batch in experiment.valid_batches(stages[0]):
            predicted = model(batch["input_ids"], attention_mask=batch["attention_mask"]).logits.argmax(-1)
            for hit in (predicted == batch["labels"]).tolist():
                distance = segments_back(dataset.build(index), experiment.segment_size, stages[0].n_segments)
                hits_by_distance[distance].append(hit)
                index += 1
    return {"run_dir": str(run_dir), "n_segments": stages[0].n_segments, "n_samples": index,
            "accuracy": 100 * sum(sum(hits) for hits in hits_by_distance.values()) / index,
            "by_segments_back": {str(distance): {"samples": len(hits), "accuracy": 100 * sum(hits) / len(hits)}
                                 for distance, hits in sorted(hits_by_distance.items())}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="run folder of an encoder checkpoint of run_finetuning_babilong_rmt")
    parser.add_argument("--n_segments", type=int, default=2, help="segments per sample (default: 2)")
    parser.add_argument("--n_samples", type=int, default=512, help="validation samples (default: 512)")
    args = parser.parse_args(argv)
    if not (args.run_dir / CONFIG_FILE).is_file():
        print(f"error: {args.run_dir} has no {CONFIG_FILE}: expected a run folder", file=sys.stderr)
        return 2
    for name in ("n_segments", "n_samples"):
        if getattr(args, name) < 1:
            print(f"error: --{name} {getattr(args, name)}: expected a positive integer", file=sys.stderr)
            return 2
    print(json.dumps(evaluate(args.run_dir, args.n_segments, args.n_samples)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
