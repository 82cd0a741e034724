"""Plot BABILong results as the paper's figure: accuracy vs input size in tokens, one line per task.

    python -m babilong.plot RUNS_DIR -o accuracy.png [--by_stage] [--tasks memorize,reasoning]

Reads every `results.jsonl` under RUNS_DIR (see babilong.results). By default a task's line shows the model
trained on the most segments (the end of its curriculum) evaluated at every length; `--by_stage` draws one line
per training length instead (the paper's generalisation figure); `--tasks` keeps the named tasks only (e.g. not
a warm-up stage's). When one point was evaluated more than once the
record appended last wins. The points drawn are also printed as a markdown table. Bad input exits with code 2
and a one-line message.
"""
import argparse
import sys
from collections import defaultdict
from pathlib import Path

from .results import collect_results

DEFAULT_OUTPUT_NAME = "accuracy_vs_length.png"


def _line_key(record: dict, by_stage: bool) -> tuple:
    stage = record.get("trained_n_segments") if by_stage else None
    model = record.get("model", "")
    if record.get("memory_type", "tokens") != "tokens":  # older records, written before memory types, have none
        model = f"{model}, {record['memory_type']} memory".lstrip(", ")
    return record["task"], model, stage


def select_lines(records: list, by_stage: bool = False) -> dict:
    """Group records into plot lines.

    Args:
        records: result records (babilong.results), in the order they were appended.
        by_stage: one line per (task, model, training length) instead of one per (task, model).

    Returns:
        {(task, model, trained_n_segments or None): [record, ...] sorted by input_seq_len}, one record per length.
    """
    if not by_stage:  # keep the end of each curriculum: the records of the model trained on the most segments
        most_trained = defaultdict(lambda: -1)
        for record in records:
            key = _line_key(record, False)
            most_trained[key] = max(most_trained[key], record.get("trained_n_segments") or 0)
        records = [r for r in records if (r.get("trained_n_segments") or 0) == most_trained[_line_key(r, False)]]
    lines = defaultdict(dict)
    for record in records:
        lines[_line_key(record, by_stage)][record["input_seq_len"]] = record  # the last appended wins
    return {key: [points[length] for length in sorted(points)] for key, points in sorted(lines.items(), key=str)}


def _label(key: tuple, n_models: int) -> str:
    task, model, stage = key
    label = f"{task} ({model})" if n_models > 1 and model else task
    return label if stage is None else f"{label}, trained on {stage} segments"


def tokens_label(n_tokens: int) -> str:
    """Axis label of a length: 684, 2.7K, 1M."""
    for scale, suffix in ((1_000_000, "M"), (1_000, "K")):
        if n_tokens >= scale:
            return f"{n_tokens / scale:.3g}{suffix}"
    return str(n_tokens)


def format_table(lines: dict) -> str:
    """The plotted points as a markdown table."""
    rows = ["| task | model | trained on (segments) | segments | tokens | accuracy, % | samples |",
            "|---|---|---|---|---|---|---|"]
    for (task, model, _), records in lines.items():
        for r in records:
            rows.append(f"| {task} | {model} | {r.get('trained_n_segments', '')} | {r['n_segments']} | "
                        f"{r['input_seq_len']:,} | {r['accuracy']:.1f} | {r['n_samples']} |")
    return "\n".join(rows)


def spaced_out(lengths: list, min_ratio: float = 1.8) -> list:
    """The lengths with those too close to the previous labelled one (on the log axis) blanked, so labels do not
    overlap: 57, 114, 171, 342 -> 57, 114, '', 342."""
    labelled, last = [], None
    for n in lengths:
        keep = last is None or n >= min_ratio * last
        labelled.append(n if keep else "")
        last = n if keep else last
    return labelled


def plot_lines(lines: dict, output, title: str = "") -> Path:
    """Draw accuracy (%) against input size (tokens, log scale) and save a PNG.

    Returns:
        The file written.
    """
    import matplotlib  # imported here: only plotting needs it
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    n_models = len({model for _, model, _ in lines})
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for key, records in lines.items():
        axes.plot([r["input_seq_len"] for r in records], [r["accuracy"] for r in records], marker="o",
                  label=_label(key, n_models))
    chance = {100.0 / r["n_labels"] for records in lines.values() for r in records if r.get("n_labels")}
    if len(chance) == 1:
        axes.axhline(chance.pop(), color="grey", linestyle=":", label="chance")
    axes.set_xscale("log")
    lengths = sorted({r["input_seq_len"] for records in lines.values() for r in records})
    axes.set_xticks(lengths, [tokens_label(n) if n else "" for n in spaced_out(lengths)])
    axes.minorticks_off()
    axes.set_ylim(0, 105)
    axes.set_xlabel("input size, tokens")
    axes.set_ylabel("accuracy, %")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend()
    return save_figure(figure, output)


def save_figure(figure, output) -> Path:
    """Write a matplotlib figure as a PNG (creating its folder) and close it; returns the file."""
    from matplotlib import pyplot as plt
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=120, bbox_inches="tight")
    plt.close(figure)
    return output


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs_dir", help="folder searched recursively for results.jsonl files")
    parser.add_argument("-o", "--output", default=None,
                        help=f"PNG to write (default: RUNS_DIR/{DEFAULT_OUTPUT_NAME})")
    parser.add_argument("--by_stage", action="store_true",
                        help="one line per training length instead of one per task (default: off)")
    parser.add_argument("--title", default="RMT on BABILong", help="figure title (default: RMT on BABILong)")
    parser.add_argument("--tasks", default=None,
                        help="comma-separated tasks to draw, e.g. memorize,reasoning (default: every task found)")
    return parser.parse_args(argv)


def keep_tasks(records: list, tasks: str | None) -> list:
    """The records of the comma-separated `tasks` (all records for None); ValueError names a task with none."""
    if tasks is None:
        return records
    wanted = [task.strip() for task in tasks.split(",") if task.strip()]
    found = sorted({record["task"] for record in records})
    missing = [task for task in wanted if task not in found]
    if not wanted or missing:
        raise ValueError(f"--tasks {tasks!r}: no results of {missing or 'any task'}; expected tasks among {found}")
    return [record for record in records if record["task"] in wanted]


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        records = collect_results(args.runs_dir)
        if not records:
            raise ValueError(f"no results.jsonl with records under {args.runs_dir!r}: expected run folders that "
                             "were evaluated by run_finetuning_babilong_rmt.py")
        lines = select_lines(keep_tasks(records, args.tasks), args.by_stage)
        output = plot_lines(lines, args.output or Path(args.runs_dir) / DEFAULT_OUTPUT_NAME, args.title)
    except (ValueError, OSError) as error:
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    print(format_table(lines))
    print(f"plot written to {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
