"""Evaluate an RMT checkpoint on the official BABILong benchmark and score it as the official evaluation does.

The official sets (`RMT-team/babilong`: 100 samples per task, `RMT-team/babilong-1k-samples`: 1,000) have one
configuration per length (0k, 1k, 2k, 4k, ..., 128k, ...) and one split per task (qa1..qa10); each sample has the
fields `input` (background with the facts inside), `question` and `target`.

    python -m babilong.evaluate_official --model_cpt RUN_DIR --dataset RMT-team/babilong \
        --lengths 0k,4k --tasks qa1,qa2 --out DIR

`--model_cpt` is a run folder or a model folder written by `python -m babilong.export` (babilong.model_folder).

`--dataset` is a hub name or a local folder holding one `save_to_disk` DatasetDict per length
(`DIR/0k`, `DIR/4k`, ...; e.g. `load_dataset("RMT-team/babilong", "4k").save_to_disk("data/babilong/4k")`).
An encoder checkpoint (the AAAI-24 paper's classifier) answers with the label of its highest logit over the
answer vocabulary it was trained with; an official target outside that vocabulary cannot be answered and counts
as wrong (the summary reports how many). A decoder checkpoint generates the answer after `GEN`, as in training.

Scoring follows the official `compare_answers`: the output is lowercased and cut to its first sentence (up to
the first '.') and before any '<context>' or '<example>'; the task's labels found in it are collected, leaving
out labels that also occur in the question (those are never the answer); the answer is right iff the target is
the only label found (qa8, whose targets may be comma-separated lists: iff the labels found are exactly those).
Labels are matched as substrings, as there. (The official code also cuts at 'Question', but after lowercasing,
so that cut never applies; it does not apply here either.)

Written to `--out`: `{task}_{length}.csv` (columns target, output, question) for each task and length, and
`summary.md` / `summary.json` (accuracy in % per task and length, and the mean over qa1..qa5 that the leaderboard
reports). Bad input (unknown task or length, a dataset without a field, a run folder without a checkpoint) stops
with one line and exit code 2.
"""
import argparse
import csv
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from lm_experiments_tools.checkpoint import BEST_CHECKPOINT_NAME
from lm_experiments_tools.errors import BadInputError
from lm_experiments_tools.run_config import CONFIG_FILE
from lm_experiments_tools.runs import LOG_FORMAT, exit_on_bad_input
from rmt_experiments.checkpoints import load_run_weights, registered_class
from rmt_experiments.offline_model import eos_token_id, load_tokenizer

from .dataset import GEN_TEXT, pad_sequences
from .experiment import build_model
from .model_folder import is_model_folder, load_model_folder
from .run_args import BabilongArgs
from .tasks import get_task

logger = logging.getLogger(__name__)

# The official answer labels of each task (booydar/babilong, babilong/metrics.py).
TASK_LABELS = {
    "qa1": ("bathroom", "bedroom", "garden", "hallway", "kitchen", "office"),
    "qa2": ("bathroom", "bedroom", "garden", "hallway", "kitchen", "office"),
    "qa3": ("bathroom", "bedroom", "garden", "hallway", "kitchen", "office"),
    "qa4": ("bathroom", "bedroom", "garden", "hallway", "kitchen", "office"),
    "qa5": ("Bill", "Fred", "Jeff", "Mary", "apple", "football", "milk"),
    "qa6": ("no", "yes"),
    "qa7": ("none", "one", "three", "two"),
    "qa8": ("apple", "football", "milk", "nothing"),
    "qa9": ("no", "yes"),
    "qa10": ("maybe", "no", "yes"),
}
LEADERBOARD_TASKS = ("qa1", "qa2", "qa3", "qa4", "qa5")
# what a run folder's config.json may give the model builder: the architecture and the task's answer labels. Nothing
# else is read from it, and its class names must be registered (rmt_experiments.checkpoints.registered_class).
ARCHITECTURE_ARGS = ("task", "babi_path", "max_n_facts", "model_type", "from_pretrained", "model_cfg", "tokenizer",
                     "model_cls", "backbone_cls", "memory_cell_cls", "input_size", "num_mem_tokens", "max_n_segments",
                     "bptt_depth", "sum_loss", "segment_alignment", "memory_type", "d_mem")
CLASS_ARGS = ("model_cls", "backbone_cls", "memory_cell_cls")
FIELDS = ("input", "question", "target")
OUTPUT_CUTS = ("<context>", "<example>")
CSV_COLUMNS = ("target", "output", "question")


# ---- scoring --------------------------------------------------------------------------------------------------

def normalise_output(output: str) -> str:
    """Lowercase, keep the first sentence, drop anything from '<context>' or '<example>' on."""
    text = output.lower().split(".")[0]
    for marker in OUTPUT_CUTS:
        text = text.split(marker)[0]
    return text


def labels_found(output: str, question: str, labels) -> set:
    """The (lowercased) labels named in the normalised output, less those that also occur in the question."""
    text, question = normalise_output(output), question.lower()
    lowered = {label.lower() for label in labels}
    return {label for label in lowered if label in text} - {label for label in lowered if label in question}


def is_correct(target: str, output: str, question: str, labels) -> bool:
    """The official rule: the target is the only label found (a comma-separated target: exactly its labels)."""
    found, target = labels_found(output, question, labels), target.lower()
    if "," in target and len(target) > 3:  # qa8 lists such as 'apple,milk'
        return found == set(target.split(","))
    return found == {target}


# ---- the official dataset -------------------------------------------------------------------------------------

def parse_list(flag: str, value: str, known=None) -> list:
    items = [item.strip() for item in value.split(",") if item.strip()]
    unknown = [item for item in items if known is not None and item not in known]
    if not items or unknown:
        expected = f"a comma-separated subset of {','.join(known)}" if known else "a comma-separated list"
        raise BadInputError(f"{flag} {value!r}: unknown {unknown}; expected {expected}")
    return items


def _local_configs(folder: Path) -> list:
    return sorted(p.name for p in folder.iterdir() if (p / "dataset_dict.json").is_file())


def load_split(dataset: str, length: str, task: str):
    """The `task` split of configuration `length` of a hub dataset or a local folder of save_to_disk sets, checked
    to have rows of text (`check_rows`)."""
    import datasets  # imported here: only this path needs it
    folder = Path(dataset)
    if folder.is_dir():
        split = _load_local_split(folder, dataset, length, task)
    else:
        try:
            splits = datasets.load_dataset(dataset, length)
        except (ValueError, FileNotFoundError) as error:
            raise BadInputError(f"--dataset {dataset!r} length {length!r}: cannot load it ({error}); expected a hub "
                                "dataset with that configuration or a local folder") from error
        if task not in splits:
            raise BadInputError(f"task {task!r}: {dataset} {length} has no such split; expected one of "
                                f"{list(splits)}")
        split = splits[task]
    missing = [name for name in FIELDS if name not in split.column_names]
    if missing:
        raise BadInputError(f"{dataset} {length} {task}: missing field(s) {missing}; expected fields "
                            f"{', '.join(FIELDS)}, got {split.column_names}")
    check_rows(split, f"{dataset} {length} {task}")
    return split


def _load_local_split(folder: Path, dataset: str, length: str, task: str):
    """One split of the save_to_disk DatasetDict folder/length, read alone: a split saved without rows has no data
    file, which datasets.load_from_disk fails on with an IndexError."""
    import datasets
    config = folder / length
    if not (config / "dataset_dict.json").is_file():
        raise BadInputError(f"length {length!r}: {dataset} has no save_to_disk DatasetDict {length}/; expected "
                            f"one of {_local_configs(folder)}")
    names = json.loads((config / "dataset_dict.json").read_text()).get("splits", [])
    if task not in names:
        raise BadInputError(f"task {task!r}: {dataset} {length} has no such split; expected one of {names}")
    state = json.loads((config / task / "state.json").read_text())
    if not state.get("_data_files"):
        raise BadInputError(f"{dataset} {length} {task}: the split has no rows: expected at least one sample")
    return datasets.load_from_disk(str(config / task))


def check_rows(split, name: str) -> None:
    """Refuse a split without rows, or with a row whose input, question or target is not text (None), naming the
    first such row; the check reads the Arrow columns' null masks, not the texts.

    Args:
        split: a datasets.Dataset with the FIELDS.
        name: the dataset, length and split, as errors name them.
    """
    import pyarrow.compute as pc  # a datasets dependency, needed only here
    if len(split) == 0:
        raise BadInputError(f"{name}: the split has no rows: expected at least one sample")
    for field in FIELDS:
        column = split.data.column(field)
        if column.null_count:
            row = pc.index(pc.is_null(column), True).as_py()
            raise BadInputError(f"{name} row {row}: {field} is None: expected text in every row's "
                                f"{', '.join(FIELDS)}")
        if not str(column.type).endswith("string"):
            raise BadInputError(f"{name}: field {field} holds {column.type}: expected text")


# ---- evaluation -----------------------------------------------------------------------------------------------

@dataclass
class TaskResult:
    task: str
    length: str
    n_samples: int
    n_correct: int
    n_outside_labels: int  # targets the model cannot produce (encoder: not among its classes)

    @property
    def accuracy(self) -> float:
        return 100 * self.n_correct / self.n_samples


@dataclass
class Predictor:
    """What answers: `answer(inputs, questions) -> outputs`, in batches, and the answers it can give (None: any)."""

    answer: Callable
    labels: tuple | None = None
    batch_size: int = 8


def evaluate_split(samples, task: str, length: str, predictor: Predictor, out_dir: Path,
                   max_samples: int | None = None) -> TaskResult:
    """Answer every sample, write out_dir/{task}_{length}.csv and return the counts."""
    n = len(samples) if max_samples is None else min(max_samples, len(samples))
    rows, n_correct, n_outside = [], 0, 0
    for start in range(0, n, predictor.batch_size):
        batch = samples[start:min(start + predictor.batch_size, n)]
        outputs = predictor.answer(batch["input"], batch["question"])
        for target, output, question in zip(batch["target"], outputs, batch["question"]):
            rows.append((target, output, question))
            n_correct += is_correct(target, output, question, TASK_LABELS[task])
            n_outside += predictor.labels is not None and target not in predictor.labels
    path = out_dir / f"{task}_{length}.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        writer.writerows(rows)
    result = TaskResult(task, length, n, n_correct, n_outside)
    logger.info(f"{task} {length}: {result.accuracy:.1f}% of {n} ({n_outside} targets outside the model's labels); "
                f"{path}")
    return result


def summarise(results: list, lengths: list, tasks: list) -> dict:
    """Accuracy per task and length, the qa1..qa5 mean per length (when all five were run), and the counts."""
    by_key = {(r.task, r.length): r for r in results}
    summary = {"accuracy": {t: {n: round(by_key[t, n].accuracy, 2) for n in lengths} for t in tasks},
               "n_samples": {t: {n: by_key[t, n].n_samples for n in lengths} for t in tasks},
               "targets_outside_labels": {t: {n: by_key[t, n].n_outside_labels for n in lengths} for t in tasks}}
    if all(t in tasks for t in LEADERBOARD_TASKS):
        summary["mean_qa1_qa5"] = {n: round(sum(by_key[t, n].accuracy for t in LEADERBOARD_TASKS) / 5, 2)
                                   for n in lengths}
    return summary


def summary_markdown(summary: dict, lengths: list) -> str:
    lines = ["| task | " + " | ".join(lengths) + " |", "|---" * (len(lengths) + 1) + "|"]
    for task, row in summary["accuracy"].items():
        lines.append(f"| {task} | " + " | ".join(f"{row[n]:.1f}" for n in lengths) + " |")
    if "mean_qa1_qa5" in summary:
        lines.append("| mean qa1-qa5 | " + " | ".join(f"{summary['mean_qa1_qa5'][n]:.1f}" for n in lengths) + " |")
    outside = {f"{t} {n}": c for t, row in summary["targets_outside_labels"].items() for n, c in row.items() if c}
    note = (f"\nTargets outside the model's answer labels (counted wrong): {outside}\n" if outside else "")
    return "Accuracy (%), official BABILong scoring\n\n" + "\n".join(lines) + "\n" + note


def load_splits(dataset: str, lengths: list, tasks: list) -> dict:
    """{(task, length): split} of every task and length, so that bad input shows before any model work."""
    return {(t, n): load_split(dataset, n, t) for n in lengths for t in tasks}


def evaluate(dataset: str, splits: dict, predictor: Predictor, out_dir, max_samples: int | None = None) -> dict:
    """Evaluate every (task, length) of `splits`; write the CSVs and summary.{md,json} into out_dir.

    Returns:
        The summary (see summarise), with the dataset name.
    """
    tasks = list(dict.fromkeys(t for t, _ in splits))
    lengths = list(dict.fromkeys(n for _, n in splits))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = [evaluate_split(splits[t, n], t, n, predictor, out_dir, max_samples) for n in lengths for t in tasks]
    summary = {"dataset": dataset, **summarise(results, lengths, tasks)}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    (out_dir / "summary.md").write_text(summary_markdown(summary, lengths))
    return summary


# ---- the model of a run folder --------------------------------------------------------------------------------

def load_run(run_dir: str):
    """(run arguments, tokenizer, model with model_best.pth loaded, answer labels) of a BABILong run folder.

    The model is built as the entry script builds it, from the architecture arguments (ARCHITECTURE_ARGS) saved in
    the run's config.json; the classes it names must be registered, so that a downloaded folder cannot run code.
    """
    config_file = Path(run_dir) / CONFIG_FILE
    if not config_file.is_file() or not (Path(run_dir) / BEST_CHECKPOINT_NAME).is_file():
        raise BadInputError(f"--model_cpt {run_dir!r}: expected a run folder with {CONFIG_FILE} and "
                            f"{BEST_CHECKPOINT_NAME} (written by run_finetuning_babilong_rmt.py --save_best)")
    saved = json.loads(config_file.read_text()).get("args", {})
    args = BabilongArgs(**{name: saved[name] for name in ARCHITECTURE_ARGS if name in saved})
    for name in CLASS_ARGS:
        if getattr(args, name) is not None:
            registered_class(getattr(args, name), f"{config_file} {name}")
    tokenizer = load_tokenizer(args.tokenizer or args.from_pretrained)  # as the entry script loads it
    labels = get_task(args.task, args.babi_path, args.max_n_facts).labels
    model = build_model(args, tokenizer, len(labels))
    load_run_weights(model, run_dir)
    return args, tokenizer, model.eval(), labels


def prompt_ids(tokenizer, *pieces: str) -> torch.Tensor:
    """The pieces tokenized one by one and joined, as training samples are built (babilong.dataset)."""
    return torch.tensor([i for piece in pieces for i in tokenizer.encode(piece, add_special_tokens=False)])


def encoder_answer(model, tokenizer, labels) -> Callable:
    """Answers of a classifier: the label of the highest logit for input + question."""
    def answer(inputs, questions):
        ids = [prompt_ids(tokenizer, text, question) for text, question in zip(inputs, questions)]
        model.max_n_segments = max(1, max(math.ceil(len(i) / model.segment_size) for i in ids))
        input_ids = pad_sequences(ids, tokenizer.pad_token_id)
        mask = pad_sequences([torch.ones(len(i), dtype=torch.long) for i in ids], 0)
        with torch.no_grad():
            logits = model(input_ids=input_ids, attention_mask=mask)["logits"]  # (B, C)
        return [labels[i] for i in logits.argmax(dim=-1).tolist()]
    return answer


def decoder_answer(model, tokenizer, max_new_tokens: int) -> Callable:
    """Answers of a decoder: greedy generation after input + question + GEN, decoded."""
    eos_id = eos_token_id(tokenizer)

    def answer(inputs, questions):
        ids = [prompt_ids(tokenizer, text, question, GEN_TEXT) for text, question in zip(inputs, questions)]
        model.max_n_segments = max(1, max(math.ceil(len(i) / model.segment_size) for i in ids))
        input_ids = pad_sequences(ids, tokenizer.pad_token_id, "left")
        mask = pad_sequences([torch.ones(len(i), dtype=torch.long) for i in ids], 0, "left")
        with torch.no_grad():
            generated = model.generate(input_ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                       eos_token_id=eos_id, pad_token_id=tokenizer.pad_token_id, do_sample=False)
        return [text.strip() for text in tokenizer.batch_decode(generated, skip_special_tokens=True)]
    return answer


def run_predictor(run_dir: str, batch_size: int) -> Predictor:
    if is_model_folder(run_dir):  # a model folder of babilong.export, loaded with from_pretrained
        model_type, tokenizer, model, labels = load_model_folder(run_dir)
    else:
        args, tokenizer, model, labels = load_run(run_dir)
        model_type = args.model_type
    if model_type == "encoder":
        return Predictor(encoder_answer(model, tokenizer, labels), tuple(labels), batch_size)
    max_new_tokens = max(len(tokenizer.encode(label, add_special_tokens=False)) for label in labels) + 1
    return Predictor(decoder_answer(model, tokenizer, max_new_tokens), None, batch_size)


# ---- command line ---------------------------------------------------------------------------------------------

def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_cpt", required=True,
                        help="Run folder with config.json and model_best.pth, or a model folder of babilong.export")
    parser.add_argument("--dataset", default="RMT-team/babilong",
                        help="Hub name (RMT-team/babilong, RMT-team/babilong-1k-samples) or a local folder of "
                             "save_to_disk sets, one per length")
    parser.add_argument("--lengths", default="0k", help="Comma-separated length configurations, e.g. 0k,4k,16k")
    parser.add_argument("--tasks", default=",".join(LEADERBOARD_TASKS), help="Comma-separated tasks among qa1..qa10")
    parser.add_argument("--out", required=True, help="Folder for the CSVs and summary.md / summary.json")
    parser.add_argument("--batch_size", type=int, default=8, help="Samples per forward pass")
    parser.add_argument("--max_samples", type=int, default=None, help="Evaluate only the first N of each split")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    with exit_on_bad_input():  # BadInputError and the run folder's own checks: one line, exit code 2
        tasks = parse_list("--tasks", args.tasks, tuple(TASK_LABELS))
        lengths = parse_list("--lengths", args.lengths)
        for name in ("batch_size", "max_samples"):
            if getattr(args, name) is not None and getattr(args, name) < 1:
                raise BadInputError(f"--{name} {getattr(args, name)}: expected a positive integer")
        splits = load_splits(args.dataset, lengths, tasks)
        predictor = run_predictor(args.model_cpt, args.batch_size)
        summary = evaluate(args.dataset, splits, predictor, args.out, args.max_samples)  # an unwritable --out too
    print(summary_markdown(summary, lengths))


if __name__ == "__main__":
    main()
