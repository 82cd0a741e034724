"""The official-format BABILong evaluation (babilong.evaluate_official): scoring, datasets, CSVs, summary, CLI."""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from babilong import evaluate_official as official
from babilong import experiment as babilong_experiment
from babilong import generate_babi
from conftest import TINY_BERT, TINY_GPT2, run_in_process
from lm_experiments_tools.errors import BadInputError

REPO_ROOT = Path(__file__).resolve().parent.parent

# (task, question, target, output, correct by the official rule)
CASES = [
    ("qa1", "Where is Mary?", "kitchen", "kitchen", True),
    ("qa1", "Where is John?", "garden", "The Garden. Not the kitchen.", True),  # first sentence only
    ("qa1", "Where is Daniel?", "office", "office or bedroom", False),  # two labels named
    ("qa1", "Where is Sandra?", "hallway", "hallway <example> kitchen", True),  # cut at <example>
    ("qa1", "Where is Bill?", "hallway", "", False),
    ("qa5", "Who gave the apple to Fred?", "Jeff", "Fred", False),  # a label only in the question is ignored
    ("qa5", "Who gave the apple to Fred?", "Jeff", "Jeff gave it to Fred", True),
    ("qa5", "What did Bill give to Mary?", "milk", "the apple", False),
    ("qa8", "What is Mary carrying?", "apple,milk", "apple, milk", True),  # qa8: the set
    ("qa8", "What is Mary carrying?", "apple,milk", "apple", False),
]


@pytest.mark.parametrize("task, question, target, output, correct", CASES)
def test_official_rule(task, question, target, output, correct):
    assert official.is_correct(target, output, question, official.TASK_LABELS[task]) is correct


def make_dataset(folder: Path, lengths=("0k", "4k"), drop_field=None) -> str:
    """A local copy in the official layout: one save_to_disk DatasetDict per length, one split per task."""
    from datasets import Dataset, DatasetDict
    for n, length in enumerate(lengths):
        splits = {}
        for task in ("qa1", "qa5", "qa8"):
            rows = [c for c in CASES if c[0] == task]
            columns = {"input": [f"Background {n}. Some facts {i}." for i in range(len(rows))],
                       "question": [c[1] for c in rows], "target": [c[2] for c in rows]}
            columns.pop(drop_field, None)
            splits[task] = Dataset.from_dict(columns)
        DatasetDict(splits).save_to_disk(str(folder / length))
    return str(folder)


def canned_predictor(outputs_at: dict, labels=None) -> official.Predictor:
    """Answers from the CASES table, looked up by (question, input) so that repeated questions differ."""
    def answer(inputs, questions):
        return [outputs_at[q, i] for i, q in zip(inputs, questions)]
    return official.Predictor(answer, labels, batch_size=3)


def case_outputs(lengths=("0k", "4k")) -> dict:
    outputs = {}
    for n, _ in enumerate(lengths):
        for task in ("qa1", "qa5", "qa8"):
            rows = [c for c in CASES if c[0] == task]
            outputs.update({(c[1], f"Background {n}. Some facts {i}."): c[3] for i, c in enumerate(rows)})
    return outputs


def test_csvs_and_summary_score_the_known_outputs(tmp_path):
    dataset = make_dataset(tmp_path / "babilong")
    splits = official.load_splits(dataset, ["0k", "4k"], ["qa1", "qa5", "qa8"])
    summary = official.evaluate(dataset, splits, canned_predictor(case_outputs()), tmp_path / "out")
    for task in ("qa1", "qa5", "qa8"):
        rows = [c for c in CASES if c[0] == task]
        expected = 100 * sum(c[4] for c in rows) / len(rows)
        for length in ("0k", "4k"):
            assert summary["accuracy"][task][length] == pytest.approx(expected, abs=0.01)
            with open(tmp_path / "out" / f"{task}_{length}.csv", newline="") as f:
                table = list(csv.reader(f))
            assert table[0] == ["target", "output", "question"]
            assert table[1:] == [[c[2], c[3], c[1]] for c in rows]
    assert summary["accuracy"]["qa1"]["0k"] == 60.0 and summary["accuracy"]["qa5"]["4k"] == pytest.approx(33.33)
    assert "mean_qa1_qa5" not in summary  # qa2..qa4 were not run
    assert json.loads((tmp_path / "out" / "summary.json").read_text()) == json.loads(json.dumps(summary))
    markdown = (tmp_path / "out" / "summary.md").read_text()
    assert "| qa1 | 60.0 | 60.0 |" in markdown and "| qa8 | 50.0 | 50.0 |" in markdown


def test_targets_outside_an_encoder_vocabulary_count_wrong_and_are_reported(tmp_path):
    dataset = make_dataset(tmp_path / "babilong", lengths=("0k",))
    splits = official.load_splits(dataset, ["0k"], ["qa5"])
    # a classifier trained on the places only: it can never say 'Jeff' or 'milk'
    places = official.TASK_LABELS["qa1"]
    predictor = official.Predictor(lambda inputs, questions: ["kitchen"] * len(inputs), places, batch_size=2)
    summary = official.evaluate(dataset, splits, predictor, tmp_path / "out")
    assert summary["accuracy"]["qa5"]["0k"] == 0.0
    assert summary["targets_outside_labels"]["qa5"]["0k"] == 3
    assert "qa5 0k': 3" in (tmp_path / "out" / "summary.md").read_text()


def test_leaderboard_mean_over_qa1_to_qa5():
    results = [official.TaskResult(f"qa{k}", "0k", 10, k, 0) for k in range(1, 6)]
    summary = official.summarise(results, ["0k"], [f"qa{k}" for k in range(1, 6)])
    assert summary["mean_qa1_qa5"] == {"0k": 30.0}


@pytest.mark.parametrize("make, message", [
    (lambda d: official.load_split(d, "3k", "qa1"), "length '3k': "),
    (lambda d: official.load_split(d, "0k", "qa2"), "task 'qa2': "),
    (lambda d: official.parse_list("--tasks", "qa1,qa11", tuple(official.TASK_LABELS)), "unknown ['qa11']"),
])
def test_bad_input_names_the_value_and_what_is_expected(tmp_path, make, message):
    dataset = make_dataset(tmp_path / "babilong", lengths=("0k", "4k"))
    with pytest.raises(BadInputError, match="expected") as error:
        make(dataset)
    assert message in str(error.value)
    if "3k" in message:
        assert "['0k', '4k']" in str(error.value)


def test_a_dataset_missing_a_field_is_refused(tmp_path):
    dataset = make_dataset(tmp_path / "babilong", lengths=("0k",), drop_field="question")
    with pytest.raises(BadInputError, match=r"missing field\(s\) \['question'\]; expected fields input, question"):
        official.load_split(dataset, "0k", "qa1")


# ---- end to end on real (tiny, random) checkpoints -------------------------------------------------------------

def train_tiny_run(tmp_path: Path, model_type: str, memory_type: str = "tokens") -> Path:
    babi = tmp_path / "babi"
    generate_babi.generate(str(babi), ["qa1"], 20, 10, seed=0)
    config = tmp_path / f"{model_type}.json"
    config.write_text(json.dumps(TINY_BERT if model_type == "encoder" else TINY_GPT2))
    run_dir = tmp_path / "run"
    babilong_experiment.main(["--task", "qa1", "--babi_path", str(babi), "--model_type", model_type,
                              "--model_cfg", str(config), "--input_size", "32", "--num_mem_tokens", "2",
                              "--max_n_segments", "4", "--num_valid_samples", "4", "--batch_size", "2", "--iters", "2",
                              "--lr", "1e-3", "--valid_interval", "2", "--save_best", "--optimize_metric",
                              "exact_match", "--optimize_mode", "max", "--memory_type", memory_type, "--d_mem", "4",
                              "--model_path", str(run_dir)])
    return run_dir


@pytest.mark.parametrize("memory_type", ["tokens", "associative"])
@pytest.mark.parametrize("model_type", ["encoder", "decoder"])
def test_cli_evaluates_a_run_folder(tmp_path, model_type, memory_type, capsys):
    run_dir = train_tiny_run(tmp_path, model_type, memory_type)
    dataset = make_dataset(tmp_path / "babilong", lengths=("0k", "4k"))
    out = tmp_path / "out"
    result = run_in_process(official.main, ["--model_cpt", run_dir, "--dataset", dataset, "--lengths", "0k,4k",
                                            "--tasks", "qa1,qa5", "--out", out], capsys)
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())
    for task in ("qa1", "qa5"):
        for length in ("0k", "4k"):
            with open(out / f"{task}_{length}.csv", newline="") as f:
                rows = list(csv.DictReader(f))
            assert len(rows) == summary["n_samples"][task][length] == len([c for c in CASES if c[0] == task])
            right = sum(official.is_correct(r["target"], r["output"], r["question"], official.TASK_LABELS[task])
                        for r in rows)
            assert summary["accuracy"][task][length] == pytest.approx(100 * right / len(rows), abs=0.01)
            if model_type == "encoder":  # a qa1 classifier answers with places only
                assert all(r["output"] in official.TASK_LABELS["qa1"] for r in rows)
    outside = summary["targets_outside_labels"]["qa5"]["0k"]
    assert outside == (3 if model_type == "encoder" else 0)


@pytest.mark.parametrize("argv, message", [
    (["--tasks", "qa1,qa42"], "--tasks 'qa1,qa42': unknown ['qa42']"),
    (["--lengths", "0k,5k"], "length '5k': "),
    (["--model_cpt", "/no/such/run"], "/no/such/run"),
])
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, argv, message, capsys):
    dataset = make_dataset(tmp_path / "babilong", lengths=("0k",))
    base = {"--model_cpt": str(tmp_path), "--dataset": dataset, "--lengths": "0k", "--tasks": "qa1",
            "--out": str(tmp_path / "out")}
    base.update(dict(zip(argv[::2], argv[1::2])))
    result = run_in_process(official.main, [x for pair in base.items() for x in pair], capsys)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]


# ---- a run folder never chooses code ---------------------------------------------------------------------------

def fake_run_folder(folder: Path, **saved) -> Path:
    """A run folder whose config.json holds `saved` args; its model_best.pth is never reached by these tests."""
    folder.mkdir()
    config = {"task": "memorize", "model_type": "encoder", "input_size": 32, "num_mem_tokens": 2}
    (folder / "config.json").write_text(json.dumps({"args": {**config, **saved}}))
    (folder / "model_best.pth").write_bytes(b"")
    return folder


@pytest.mark.parametrize("name", ["model_cls", "backbone_cls", "memory_cell_cls"])
def test_a_run_folder_cannot_choose_a_class_to_import(tmp_path, monkeypatch, name):
    calls = []
    probe = type(sys)("untrusted_probe")
    probe.run = lambda *args, **kwargs: calls.append(args)
    monkeypatch.setitem(sys.modules, "untrusted_probe", probe)
    run_dir = fake_run_folder(tmp_path / "run", **{name: "untrusted_probe:run"})
    with pytest.raises(BadInputError, match=rf"config.json {name} 'untrusted_probe:run' is not a registered class"):
        official.load_run(str(run_dir))
    assert calls == []


def test_a_run_folder_gives_only_architecture_arguments(tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr(official, "build_model", lambda args, *rest: seen.update(vars(args)) or 1 / 0)
    run_dir = fake_run_folder(tmp_path / "run", optimizer="untrusted_probe:run", noise_dataset="/etc")
    with pytest.raises(ZeroDivisionError):
        official.load_run(str(run_dir))
    assert seen["optimizer"] == "AdamW" and seen["noise_dataset"] == "default" and seen["input_size"] == 32


@pytest.mark.slow
def test_cli_refuses_os_system_in_a_run_folder(tmp_path):
    dataset = make_dataset(tmp_path / "babilong", lengths=("0k",))
    run_dir = fake_run_folder(tmp_path / "run", backbone_cls="os:system")
    result = subprocess.run([sys.executable, "-m", "babilong.evaluate_official", "--model_cpt", str(run_dir),
                             "--dataset", dataset, "--tasks", "qa1", "--out", str(tmp_path / "out")],
                            capture_output=True, text=True, cwd=REPO_ROOT)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "'os:system' is not a registered class" in lines[0]


@pytest.mark.slow
def test_a_run_folder_shipping_its_own_module_cannot_run_it(tmp_path):
    """The probe of issue 27: a downloaded folder `evilrun` with payload.py and model_cls "evilrun.payload:X",
    evaluated from its parent folder, where `python -m` puts the working folder first on sys.path."""
    marker = tmp_path / "payload_ran"
    run_dir = fake_run_folder(tmp_path / "evilrun", model_cls="evilrun.payload:X")
    (run_dir / "payload.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\nX = object\n")
    dataset = make_dataset(tmp_path / "babilong", lengths=("0k",))
    result = subprocess.run([sys.executable, "-m", "babilong.evaluate_official", "--model_cpt", "evilrun",
                             "--dataset", dataset, "--tasks", "qa1", "--out", str(tmp_path / "out")],
                            capture_output=True, text=True, cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert "model_cls 'evilrun.payload:X' is not a registered class" in lines[0]
    assert not marker.exists()


# ---- rows the evaluation cannot read ---------------------------------------------------------------------------

def official_layout(folder: Path, columns: dict) -> str:
    """A local dataset in the official layout whose 0k qa1 split has `columns`."""
    from datasets import Dataset, DatasetDict
    DatasetDict({"qa1": Dataset.from_dict(columns)}).save_to_disk(str(folder / "0k"))
    return str(folder)


@pytest.mark.parametrize("columns, message", [
    ({"input": [], "question": [], "target": []}, "0k qa1: the split has no rows: expected at least one sample"),
    ({"input": ["Facts.", None], "question": ["Where is Mary?"] * 2, "target": ["kitchen"] * 2},
     "0k qa1 row 1: input is None: expected text"),
])
def test_a_split_without_rows_or_with_a_none_input_is_one_line_and_exit_2(tmp_path, columns, message, capsys):
    dataset = official_layout(tmp_path / "babilong", columns)
    result = run_in_process(official.main, ["--model_cpt", tmp_path, "--dataset", dataset, "--tasks", "qa1",
                                            "--out", tmp_path / "out"], capsys)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and f"error: {dataset} {message}" in lines[0], result.stderr
