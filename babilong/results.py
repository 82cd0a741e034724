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

A crash in the middle of an append can leave a torn last line (a record cut short). Appends never glue onto one
(a record starts on a new line), and every reader goes through `read_results`, which skips torn lines with a warning.
"""
import json
import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)

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
    data = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
    with open(path, "a+b", buffering=0) as file:
        if file.seek(0, os.SEEK_END) > 0:
            file.seek(-1, os.SEEK_END)
            if file.read(1) != b"\n":  # a torn last record: start on a new line rather than glue onto it
                data = b"\n" + data
        # one write of whole lines: concurrent appenders never interleave inside a record
        written = file.write(data)
        while written < len(data):  # a short write (a signal) continues where it stopped
            written += file.write(data[written:])
        os.fsync(file.fileno())
    return path


def read_results(path) -> list:
    """Records of one results file, in the order they were appended; torn lines (a record cut short by a crash:
    it begins like one but is not whole JSON) are skipped with a warning naming the file and line.

    Raises:
        ValueError: a line is not a JSON object with RESULT_FIELDS (names the file and line).
    """
    records = []
    with open(path, encoding="utf-8", errors="replace") as file:
        for line_no, line in enumerate(file, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                if line.lstrip().startswith("{"):
                    logger.warning(f"{path}:{line_no}: skipping a torn record (cut short by a crash while it was "
                                   f"written: {error.msg})")
                    continue
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
