"""The memories side by side: accuracy by task and input length for each memory type, from the results records under
a comparison folder (scripts/babilong/offline_memory_compare.sh), beside the published figures.

    python -m babilong.compare RUNS_DIR [--json cells.json]

Every cell is one record of a results.jsonl file (the model trained on the most segments of its task and memory,
as the plot draws it); `--json` writes each cell with the file it came from. A `fact_split.json` found in a run
folder (babilong.analysis.fact_position) adds the accuracy on the questions whose answer lies in an earlier
segment than the question, i.e. passes through memory.
"""
import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

from .plot import select_lines, tokens_label
from .results import RESULTS_FILE, collect_results

MEMORY_NAMES = {"tokens": "memory tokens (RMT)", "associative": "associative (ARMT)"}
FACT_SPLIT_FILE = "fact_split.json"
# published exact match (%), for the same tasks: (where, {task: figure})
ANCHORS = {
    "ARMT, BABILong Table 4 (GPT-2 137M, 1M tokens)": {"qa1": 99, "qa2": 99, "qa3": 72, "qa4": 100, "qa5": 93},
    "RMT, BABILong Table 4 (GPT-2 137M, 1M tokens)": {"qa1": 84, "qa2": 22, "qa3": 22, "qa4": 24, "qa5": 63},
    "RMT, AAAI-24 (BERT-base, 2M tokens)": {"memorize": 90, "detect_memorize": 96, "reasoning": 82},
}


def comparison_cells(runs_dir) -> list:
    """One cell per (task, memory type, length): the record of the most trained model, with its results file."""
    records = collect_results(runs_dir)
    cells = []
    for (task, _, _), line in select_lines(records).items():
        for record in line:
            cells.append({"task": task, "memory_type": record.get("memory_type", "tokens"),
                          "input_seq_len": record["input_seq_len"], "n_segments": record["n_segments"],
                          "trained_n_segments": record.get("trained_n_segments"), "accuracy": record["accuracy"],
                          "n_samples": record["n_samples"], "results_file": record["results_file"]})
    return cells


def through_memory(runs_dir) -> dict:
    """{(task, memory type): (accuracy %, questions)} on the questions answered through memory, from fact splits."""
    found = {}
    for path in sorted(Path(runs_dir).rglob(FACT_SPLIT_FILE)):
        split = json.loads(path.read_text())
        config = json.loads((path.parent / "config.json").read_text())["args"]
        groups = [group for back, group in split["by_segments_back"].items() if int(back) > 0]
        n = sum(group["samples"] for group in groups)
        if n:
            right = sum(group["accuracy"] * group["samples"] / 100 for group in groups)
            found[config["task"], config.get("memory_type", "tokens")] = (100 * right / n, n)
    return found


def format_table(cells: list, memory_splits: dict) -> str:
    """Markdown: a row per task and length, a column per memory type, then the anchors of the task."""
    memories = [m for m in MEMORY_NAMES if any(c["memory_type"] == m for c in cells)]
    table = defaultdict(dict)
    for cell in cells:
        table[cell["task"], cell["input_seq_len"], cell["n_segments"]][cell["memory_type"]] = cell
    header = ["task", "tokens (segments)", *(MEMORY_NAMES[m] for m in memories), "published"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (task, length, n_segments), row in sorted(table.items()):
        values = [f"{row[m]['accuracy']:.1f} ({row[m]['n_samples']})" if m in row else "-" for m in memories]
        published = "; ".join(f"{name}: {figures[task]}" for name, figures in ANCHORS.items() if task in figures)
        lines.append(f"| {task} | {tokens_label(length)} ({n_segments}) | " + " | ".join(values) + f" | {published} |")
    tasks = sorted({task for task, _ in memory_splits})
    for task in tasks:
        values = [f"{memory_splits[task, m][0]:.1f} ({memory_splits[task, m][1]})" if (task, m) in memory_splits
                  else "-" for m in memories]
        lines.append(f"| {task} | through memory | " + " | ".join(values) + " | |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs_dir", type=Path, help="folder searched for results files (every memory's runs)")
    parser.add_argument("--json", type=Path, default=None, help="also write every cell with its source here")
    args = parser.parse_args(argv)
    try:
        cells = comparison_cells(args.runs_dir)
    except ValueError as error:  # no such folder, or a results line that does not read
        print(f"error: {error}", file=sys.stderr)
        return 2
    if not cells:
        print(f"error: no {RESULTS_FILE} records under {args.runs_dir}: expected a comparison folder",
              file=sys.stderr)
        return 2
    print(format_table(cells, through_memory(args.runs_dir)))
    if args.json is not None:
        args.json.write_text(json.dumps(cells, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
