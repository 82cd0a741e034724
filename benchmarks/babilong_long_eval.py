"""Evaluate a BABILong checkpoint on 1,000,000-token samples: wall time and peak memory on this machine.

    python benchmarks/babilong_long_eval.py [--model_cpt RUN_DIR] [--lengths 100000,1000000] [--n_samples 3]

By default RUN_DIR is the last stage of the offline main job (scripts/babilong/offline_main_job.sh) under
runs/offline_main_job. The checkpoint's own config.json gives the task, backbone and memory settings; each length
is evaluated with batch size 1 by a `run_finetuning_babilong_rmt.py --validate_only` process of its own (segments
are streamed through the memory wrapper under no_grad, a progress bar per sample), which appends its record to
RUN_DIR/results.jsonl. The peak resident memory of each process is read from the kernel (wait4): if it stays flat
from the shorter length to the 1M-token one, evaluation memory does not grow with the input.
Prints one JSON line per length: tokens, segments, accuracy, seconds per sample, tokens per second, peak RSS.
"""
import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from babilong.results import RESULTS_FILE, read_results
from lm_experiments_tools.checkpoint import BEST_CHECKPOINT_NAME
from lm_experiments_tools.utils import CONFIG_FILE

REPO_ROOT = Path(__file__).resolve().parent.parent
MAIN_JOB_RUNS = REPO_ROOT / "runs" / "offline_main_job"
# what the checkpoint was trained with and evaluation must repeat
ARCHITECTURE_ARGS = ("task", "noise_dataset", "model_type", "from_pretrained", "model_cfg", "tokenizer", "input_size",
                     "num_mem_tokens", "segment_alignment", "placement", "babi_path", "max_n_facts")


def most_trained_run(runs_dir: Path) -> Path:
    """The run folder under runs_dir with a best checkpoint trained on the most segments."""
    runs = [path.parent for path in runs_dir.rglob(BEST_CHECKPOINT_NAME) if (path.parent / CONFIG_FILE).is_file()]
    if not runs:
        raise ValueError(f"no run folder with {BEST_CHECKPOINT_NAME} and {CONFIG_FILE} under {runs_dir}: expected "
                         "the output of scripts/babilong/offline_main_job.sh, or pass --model_cpt")
    return max(runs, key=lambda run: json.loads((run / CONFIG_FILE).read_text())["args"]["max_n_segments"])


def evaluation_argv(run_dir: Path, input_seq_len: int, n_samples: int) -> list:
    """Arguments of a validate_only run of the checkpoint at input_seq_len tokens, batch size 1."""
    trained = json.loads((run_dir / CONFIG_FILE).read_text())["args"]
    argv = ["--validate_only", "--model_cpt", str(run_dir), "--input_seq_len", str(input_seq_len),
            # a segment holds at least one token, so this many segments always hold the sample
            "--max_n_segments", str(input_seq_len), "--batch_size", "1", "--num_valid_samples", str(n_samples),
            "--seed", str(trained.get("seed", 42))]
    for name in ARCHITECTURE_ARGS:
        if trained.get(name) is not None:
            argv += [f"--{name}", str(trained[name])]
    return argv


def run_evaluation(argv: list) -> float:
    """Run the evaluation in a child process; returns its peak resident memory in MiB."""
    child = subprocess.Popen([sys.executable, str(REPO_ROOT / "run_finetuning_babilong_rmt.py"), *argv])
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise RuntimeError(f"evaluation exited with code {child.returncode}: {' '.join(argv)}")
    return usage.ru_maxrss / 1024  # Linux reports KiB


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_cpt", type=Path, default=None,
                        help=f"run folder with {BEST_CHECKPOINT_NAME} (default: the most-trained run under "
                             f"{MAIN_JOB_RUNS})")
    parser.add_argument("--lengths", default="100000,1000000",
                        help="comma-separated task tokens per sample, evaluated in order (default: 100000,1000000)")
    parser.add_argument("--n_samples", type=int, default=3, help="samples per length (default: 3)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        run_dir = args.model_cpt or most_trained_run(MAIN_JOB_RUNS)
        lengths = [int(length) for length in args.lengths.split(",")]
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps({"model_cpt": str(run_dir)}))
    for length in lengths:
        peak_rss = run_evaluation(evaluation_argv(run_dir, length, args.n_samples))
        record = read_results(run_dir / RESULTS_FILE)[-1]
        print(json.dumps({"input_seq_len": record["input_seq_len"], "n_segments": record["n_segments"],
                          "n_samples": record["n_samples"], "accuracy": record["accuracy"],
                          "seconds_per_sample": round(record["seconds"] / record["n_samples"], 1),
                          "tokens_per_second": round(record["input_seq_len"] * record["n_samples"] / record["seconds"]),
                          "peak_rss_mib": round(peak_rss)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
