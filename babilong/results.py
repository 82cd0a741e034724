"""Results files of BABILong evaluations: one JSON object a line, one line appended per evaluation.

See docs/design.md, "Training, checkpoints and resume".

Every evaluation of a checkpoint at one input length appends a record to `<run folder>/results.jsonl`. A record
holds at least RESULT_FIELDS:
- task: the task name ('memorize', 'qa1', ...);
- n_segments: segments the evaluated samples fill;
- input_seq_len: task tokens per sample (without special tokens, as the paper counts them);
- accuracy: exact match in percent;
- n_samples: number of samples evaluated;
- checkpoint: the checkpoint file evaluated;
and may add more (trained_n_segments, n_labels, model, seconds, ...). `python -m babilong.plot` reads them.
"""
import json
import os
from pathlib import Path

RESULTS_FILE = "results.jsonl"
RESULT_FIELDS = ("task", "n_segments", "input_seq_len", "accuracy", "n_samples", "checkpoint")


def append_result(run_dir, record: dict) -> Path:
    """Append `record` as one line to `run_dir/results.jsonl` (created with its folder if needed).

    Args:
        run_dir: the run folder.
        record: a JSON-serialisable dict with at least RESULT_FIELDS.

    Returns:
        The results file.
    """
    missing = [name for name in RESULT_FIELDS if name not in record]
    if missing:
        raise ValueError(f"result record lacks {missing}: expected the fields {list(RESULT_FIELDS)}")
    path = Path(run_dir) / RESULTS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    # one write of one line: concurrent appenders never interleave inside a record
    with open(path, "a", encoding="utf-8") as file:
        file.write(json.dumps(record, ensure_ascii=False) + "\n")
        file.flush()
        os.fsync(file.fileno())
    return path


def read_results(path) -> list:
    """Records of one results file, in the order they were appended.

    Raises:
        ValueError: a line is not a JSON object with RESULT_FIELDS (names the file and line).
    """
    records = []
    with open(path, encoding="utf-8") as file:
        for line_no, line in enumerate(file, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{line_no}: not JSON ({error.msg}); expected one result object a line") \
                    from error
            if not isinstance(record, dict) or any(name not in record for name in RESULT_FIELDS):
                raise ValueError(f"{path}:{line_no}: expected a JSON object with the fields {list(RESULT_FIELDS)}")
            records.append(record)
    return records


def collect_results(runs_dir) -> list:
    """All records of all results files under `runs_dir` (searched recursively), files in sorted path order.

    Each record gets `results_file`, the file it came from.
    """
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise ValueError(f"runs folder {str(runs_dir)!r} does not exist: expected a folder holding run folders")
    records = []
    for path in sorted(runs_dir.rglob(RESULTS_FILE)):
        records += [{**record, "results_file": str(path)} for record in read_results(path)]
    return records
