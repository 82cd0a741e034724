"""Evaluate a BABILong checkpoint on very long samples: accuracy, tokens per second and peak memory per batch size.

    python benchmarks/babilong_long_eval.py [--model_cpt RUN_DIR] [--lengths 100000] [--batch_sizes 1,16] \
        [--n_samples 2,16] [--results_dir DIR]

By default RUN_DIR is the most-trained run of the offline main job (scripts/babilong/offline_main_job.sh) under
runs/offline_main_job. The checkpoint's own config.json gives the task, backbone and memory settings. Each (length,
batch size) is evaluated by a `run_finetuning_babilong_rmt.py --validate_only` process of its own: the samples of a
batch go through the segments together (one backbone call per segment for the whole batch) under no_grad, with
the memory state as the only thing carried from one segment to the next. The peak resident memory of each process
is read from the kernel (wait4): if it stays flat from a shorter length to a longer one, evaluation memory does not
grow with the input. The records go to results.jsonl in --results_dir (default: a temporary folder, so the
benchmark does not add points to the run's own plot).
Prints one JSON line per (length, batch size), then a markdown table with the batch sizes side by side.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from babilong.checkpoint_eval import trained_argv
from babilong.results import RESULTS_FILE, read_results
from lm_experiments_tools.checkpoint import BEST_CHECKPOINT_NAME
from lm_experiments_tools.flags import parse_positive_ints
from lm_experiments_tools.run_config import CONFIG_FILE

REPO_ROOT = Path(__file__).resolve().parent.parent
MAIN_JOB_RUNS = REPO_ROOT / "runs" / "offline_main_job"


def most_trained_run(runs_dir: Path) -> Path:
    """The run folder under runs_dir with a best checkpoint trained on the most segments."""
    runs = [path.parent for path in runs_dir.rglob(BEST_CHECKPOINT_NAME) if (path.parent / CONFIG_FILE).is_file()]
    if not runs:
        raise ValueError(f"no run folder with {BEST_CHECKPOINT_NAME} and {CONFIG_FILE} under {runs_dir}: expected "
                         "the output of scripts/babilong/offline_main_job.sh, or pass --model_cpt")
    return max(runs, key=lambda run: json.loads((run / CONFIG_FILE).read_text())["args"]["max_n_segments"])


def evaluation_argv(run_dir: Path, input_seq_len: int, n_samples: int, batch_size: int, results_dir: Path) -> list:
    """Arguments of a validate_only run of the checkpoint at input_seq_len tokens."""
    return ["--validate_only", "--model_cpt", str(run_dir), "--model_path", str(results_dir),
            "--input_seq_len", str(input_seq_len),
            # a segment holds at least one token, so this many segments always hold the sample
            "--max_n_segments", str(input_seq_len), "--batch_size", str(batch_size),
            "--num_valid_samples", str(n_samples), *trained_argv(run_dir)]


def run_evaluation(argv: list) -> float:
    """Run the evaluation in a child process; returns its peak resident memory in MiB."""
    child = subprocess.Popen([sys.executable, str(REPO_ROOT / "run_finetuning_babilong_rmt.py"), *argv])
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise RuntimeError(f"evaluation exited with code {child.returncode}: {' '.join(argv)}")
    return usage.ru_maxrss / 1024  # Linux reports KiB


def measure(run_dir: Path, length: int, batch_size: int, n_samples: int, results_dir: Path) -> dict:
    """Evaluate one (length, batch size) and summarise its record."""
    peak_rss = run_evaluation(evaluation_argv(run_dir, length, n_samples, batch_size, results_dir))
    record = read_results(results_dir / RESULTS_FILE)[-1]
    return {"input_seq_len": record["input_seq_len"], "n_segments": record["n_segments"], "batch_size": batch_size,
            "n_samples": record["n_samples"], "accuracy": record["accuracy"], "seconds": record["seconds"],
            "seconds_per_sample": round(record["seconds"] / record["n_samples"], 1),
            "tokens_per_second": round(record["input_seq_len"] * record["n_samples"] / record["seconds"]),
            "peak_rss_mib": round(peak_rss)}


def format_table(rows: list) -> str:
    """The measurements as a markdown table, with each length's speed-up over its first batch size."""
    lines = ["| tokens | segments | batch size | samples | accuracy, % | seconds | tokens/s | speed-up | peak RSS, MiB |",
             "|---|---|---|---|---|---|---|---|---|"]
    first_speed = {}
    for row in rows:
        base = first_speed.setdefault(row["input_seq_len"], row["tokens_per_second"])
        lines.append(f"| {row['input_seq_len']:,} | {row['n_segments']:,} | {row['batch_size']} | {row['n_samples']} "
                     f"| {row['accuracy']:.1f} | {row['seconds']} | {row['tokens_per_second']:,} | "
                     f"{row['tokens_per_second'] / base:.2f}x | {row['peak_rss_mib']} |")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_cpt", type=Path, default=None,
                        help=f"run folder with {BEST_CHECKPOINT_NAME} (default: the most-trained run under "
                             f"{MAIN_JOB_RUNS})")
    parser.add_argument("--lengths", default="100000",
                        help="comma-separated task tokens per sample, evaluated in order (default: 100000)")
    parser.add_argument("--batch_sizes", default="1,16",
                        help="comma-separated batch sizes, each evaluated at every length (default: 1,16)")
    parser.add_argument("--n_samples", default="2,16",
                        help="samples per length, one number for all batch sizes or one per batch size "
                             "(default: 2,16)")
    parser.add_argument("--results_dir", type=Path, default=None,
                        help="folder for the results.jsonl records (default: a temporary folder)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        run_dir = args.model_cpt or most_trained_run(MAIN_JOB_RUNS)
        lengths = parse_positive_ints(args.lengths, "lengths")
        batch_sizes = parse_positive_ints(args.batch_sizes, "batch_sizes")
        n_samples = parse_positive_ints(args.n_samples, "n_samples")
        if len(n_samples) not in (1, len(batch_sizes)):
            raise ValueError(f"--n_samples {args.n_samples!r}: expected one number or one per batch size "
                             f"({len(batch_sizes)})")
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    n_samples = n_samples * len(batch_sizes) if len(n_samples) == 1 else n_samples
    print(json.dumps({"model_cpt": str(run_dir)}))
    rows = []
    with tempfile.TemporaryDirectory(prefix="babilong_long_eval_") as scratch:
        results_dir = args.results_dir or Path(scratch)
        for length in lengths:
            for batch_size, samples in zip(batch_sizes, n_samples):
                rows.append(measure(run_dir, length, batch_size, samples, results_dir))
                print(json.dumps(rows[-1]), flush=True)
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
