"""Long BABILong inputs on tiny random backbones: batched evaluation against batch 1, the long-evaluation
benchmark, the memory-trace diagnostic, the reasoning split by fact geometry, the accuracy split by how far back
the answer's fact lies and the linear probe of the memory."""
import collections
import json
import math
import re
import runpy
import sys
from pathlib import Path

import pytest
import torch

from babilong import experiment as run_babilong
from babilong import checkpoint_eval, generate_babi, memory_trace
from babilong.analysis import fact_position, memory_probe, reasoning_by_axis
from babilong.tasks import OPPOSITE_DIRECTION
from conftest import LARGE_INIT_BERT
from lm_experiments_tools.checkpoint import BEST_CHECKPOINT_NAME

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
import babilong_long_eval  # noqa: E402  (a script folder, not a package)

INPUT_SIZE, NUM_MEM_TOKENS = 32, 2
LONG_N_SEGMENTS = 40  # many segments: differences between batch sizes would add up over the recurrence
QA1_N_SEGMENTS = 3


@pytest.fixture(scope="module")
def tiny_run(large_init_bert, tmp_path_factory) -> Path:
    """A run folder with model_best.pth and config.json after a few steps on 1 segment."""
    run_dir = tmp_path_factory.mktemp("runs") / "seg1"
    run_babilong.main(["--model_cfg", large_init_bert, "--input_size", str(INPUT_SIZE), "--num_mem_tokens",
                       str(NUM_MEM_TOKENS), "--num_valid_samples", "4", "--batch_size", "4", "--iters", "2",
                       "--lr", "1e-3", "--valid_interval", "2", "--save_best", "--model_path", str(run_dir)])
    assert (run_dir / BEST_CHECKPOINT_NAME).is_file()
    return run_dir


@pytest.fixture(scope="module")
def tiny_qa1_run(large_init_bert, tmp_path_factory) -> Path:
    """A run folder after a few steps on generated qa1 stories of at most 4 facts, at QA1_N_SEGMENTS segments."""
    root = tmp_path_factory.mktemp("qa1")
    generate_babi.main(["--out", str(root / "babi"), "--tasks", "qa1", "--n_train", "40", "--n_test", "100"])
    run_babilong.main(["--task", "qa1", "--babi_path", str(root / "babi"), "--max_n_facts", "4", "--model_cfg",
                       large_init_bert, "--input_size", str(INPUT_SIZE), "--num_mem_tokens", str(NUM_MEM_TOKENS),
                       "--max_n_segments", str(QA1_N_SEGMENTS), "--num_valid_samples", "4", "--batch_size", "4",
                       "--iters", "2", "--valid_interval", "2", "--save_best", "--model_path", str(root / "run")])
    return root / "run"


def fact_start(experiment, built, index: int) -> int:
    """Token position of fact `index` in a built sample, found by searching its ids (checked against the record)."""
    fact_ids = experiment.tokenizer.encode(built.task_sample.facts[index], add_special_tokens=False)
    ids = built.input_ids.tolist()
    starts = [i for i in range(len(ids)) if ids[i:i + len(fact_ids)] == fact_ids]
    assert built.fact_positions[index] in starts
    return built.fact_positions[index]


def predictions(large_init_bert: str, batch_size: int, n_samples: int) -> tuple:
    """(logits, labels) of the validation samples at LONG_N_SEGMENTS segments, evaluated batch_size at a time."""
    experiment, stages, _ = run_babilong.setup([
        "--model_cfg", large_init_bert, "--input_size", str(INPUT_SIZE), "--num_mem_tokens", str(NUM_MEM_TOKENS),
        "--max_n_segments", str(LONG_N_SEGMENTS), "--batch_size", str(batch_size),
        "--num_valid_samples", str(n_samples)])
    model = experiment.model.eval()
    loader = experiment.valid_batches(stages[0])
    logits, labels = [], []
    with torch.no_grad():
        for batch in loader:
            logits.append(model(batch["input_ids"], attention_mask=batch["attention_mask"]).logits)
            labels.append(batch["labels"])
    return torch.cat(logits), torch.cat(labels)


def test_batched_evaluation_matches_batch_1_over_many_segments(large_init_bert):
    single_logits, single_labels = predictions(large_init_bert, batch_size=1, n_samples=6)
    batched_logits, batched_labels = predictions(large_init_bert, batch_size=4, n_samples=6)  # a full and a partial batch
    assert single_logits.shape == (6, 6)
    assert torch.equal(single_labels, batched_labels)
    torch.testing.assert_close(batched_logits, single_logits, atol=1e-5, rtol=0)
    assert torch.equal(batched_logits.argmax(-1), single_logits.argmax(-1))
    assert single_logits.std(0).min() > 0.1  # the samples do differ: equal predictions are not trivially equal


@pytest.mark.slow
def test_long_eval_benchmark_reports_each_batch_size(tiny_run, tmp_path, capsys):
    own_results = (tiny_run / "results.jsonl").read_text()
    code = babilong_long_eval.main(["--model_cpt", str(tiny_run), "--lengths", str(12 * (INPUT_SIZE - 5)),
                                    "--batch_sizes", "1,3", "--n_samples", "3", "--results_dir", str(tmp_path)])
    assert code == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")][1:]
    assert [row["batch_size"] for row in rows] == [1, 3]
    assert all(row["n_segments"] == 12 and row["n_samples"] == 3 and row["tokens_per_second"] > 0 for row in rows)
    assert rows[0]["accuracy"] == rows[1]["accuracy"]  # the same samples and predictions at both batch sizes
    assert (tiny_run / "results.jsonl").read_text() == own_results  # the run's own results (and plot) stay as they were
    assert len((tmp_path / "results.jsonl").read_text().splitlines()) == 2


@pytest.mark.parametrize("extra", [["--batch_sizes", "0"], ["--batch_sizes", "1,2", "--n_samples", "1,2,3"]])
def test_long_eval_benchmark_bad_input_exits_2(tiny_run, extra, capsys):
    assert babilong_long_eval.main(["--model_cpt", str(tiny_run), *extra]) == 2
    assert "error:" in capsys.readouterr().err


def test_step_change_and_answer_separation_by_hand():
    previous = torch.tensor([[[3.0, 4.0]], [[1.0, 0.0]]])  # (B=2, m=1, H=2)
    current = torch.tensor([[[3.0, 4.0]], [[0.0, 2.0]]])
    assert memory_trace.step_change(previous, current) == pytest.approx((0 + math.sqrt(5) / 2) / 2)
    memory = torch.tensor([[[0.0, 0.0]], [[1.0, 0.0]], [[10.0, 0.0]], [[12.0, 0.0]]])
    labels = torch.tensor([0, 0, 1, 1])
    # same-answer pairs: 1 and 2 apart; different-answer pairs: 10, 12, 9, 11 apart
    assert memory_trace.answer_separation(memory, labels) == pytest.approx(10.5 / 1.5)
    assert math.isnan(memory_trace.answer_separation(memory, torch.tensor([0, 1, 2, 3])))


def test_memory_trace_runs_on_a_tiny_model(tiny_run, tmp_path):
    output, curves = tmp_path / "trace.png", tmp_path / "trace.json"
    assert memory_trace.main([str(tiny_run), "--n_segments", "30", "--n_samples", "6", "-o", str(output),
                              "--json", str(curves)]) == 0
    (trace,) = json.loads(curves.read_text())
    assert output.stat().st_size > 0
    assert len(trace["step_change"]) == len(trace["answer_separation"]) == 30
    assert math.isnan(trace["step_change"][0]) and all(value > 0 for value in trace["step_change"][1:])
    assert trace["n_samples"] == 6 and 0 <= trace["accuracy"] <= 100
    redrawn = tmp_path / "redrawn.png"
    assert memory_trace.main([str(curves), "-o", str(redrawn)]) == 0 and redrawn.stat().st_size > 0


def test_memory_trace_bad_input_exits_2(tmp_path, capsys):
    assert memory_trace.main([str(tmp_path), "--n_segments", "10"]) == 2
    assert "no config.json" in capsys.readouterr().err


def neighbour_directions(facts) -> list:
    """Direction of each fact's neighbour as seen from the anchor (the place both facts name)."""
    relations = [re.match(r"^The (\w+) is (\w+) of the (\w+)\.$", fact).groups() for fact in facts]
    (anchor,) = {relations[0][0], relations[0][2]} & {relations[1][0], relations[1][2]}
    return [d if y == anchor else OPPOSITE_DIRECTION[d] for _, d, y in relations]


@pytest.fixture(scope="module")
def tiny_reasoning_run(large_init_bert, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("runs") / "reasoning"
    run_babilong.main(["--task", "reasoning", "--model_cfg", large_init_bert, "--input_size", str(INPUT_SIZE),
                       "--num_mem_tokens", str(NUM_MEM_TOKENS), "--num_valid_samples", "4", "--batch_size", "4",
                       "--iters", "2", "--valid_interval", "2", "--save_best", "--model_path", str(run_dir)])
    return run_dir


def test_reasoning_by_axis_splits_by_where_the_neighbours_lie(tiny_reasoning_run):
    run_dir = tiny_reasoning_run
    summary = reasoning_by_axis.evaluate(run_dir, n_segments=2, n_samples=30, batch_size=8)
    experiment, stages = checkpoint_eval.checkpoint_experiment(run_dir, 2, 30, batch_size=8)
    dataset = experiment.dataset(stages[0], "valid", 30)
    directions = [neighbour_directions(dataset.build(i).task_sample.facts) for i in range(30)]
    n_one_axis = sum(first == OPPOSITE_DIRECTION[second] for first, second in directions)
    assert summary["n_samples"] == 30 and 0 < n_one_axis < 30
    assert (summary["one_axis_samples"], summary["perpendicular_samples"]) == (n_one_axis, 30 - n_one_axis)
    hits = summary["one_axis_accuracy"] * n_one_axis + summary["perpendicular_accuracy"] * (30 - n_one_axis)
    assert hits / 30 == pytest.approx(summary["accuracy"])


def test_fact_position_splits_by_where_the_answer_lies(tiny_qa1_run):
    run_dir, n_segments, n_samples = tiny_qa1_run, QA1_N_SEGMENTS, 40
    summary = fact_position.evaluate(run_dir, n_segments=n_segments, n_samples=n_samples, batch_size=8)
    experiment, stages = checkpoint_eval.checkpoint_experiment(run_dir, n_segments, n_samples, batch_size=8)
    dataset = experiment.dataset(stages[0], "valid", n_samples)
    assert len(dataset) == n_samples  # the short questions of 100 are enough
    segment_size = INPUT_SIZE - NUM_MEM_TOKENS - 3  # [CLS] memory [SEP] tokens [SEP]
    expected, expected_after = collections.Counter(), collections.Counter()
    for index in range(n_samples):
        built = dataset.build(index)
        answer_fact = built.task_sample.supporting[-1]
        segment = fact_start(experiment, built, answer_fact) // segment_size
        expected[str(n_segments - 1 - segment)] += 1
        if segment < n_segments - 1:
            later = [i for i in range(answer_fact + 1, len(built.task_sample.facts))
                     if fact_start(experiment, built, i) // segment_size == segment]
            expected_after[str(min(len(later), 3))] += 1
    groups = summary["by_segments_back"]
    assert len(groups) > 1 and {name: group["samples"] for name, group in groups.items()} == expected
    hits = sum(group["accuracy"] * group["samples"] / 100 for group in groups.values())
    assert summary["n_samples"] == n_samples and hits / n_samples * 100 == pytest.approx(summary["accuracy"])
    after = summary["through_memory_by_facts_after"]
    assert len(expected_after) > 1 and {name: group["samples"] for name, group in after.items()} == expected_after
    memory_hits = sum(group["accuracy"] * group["samples"] / 100 for name, group in groups.items() if name != "0")
    assert sum(group["accuracy"] * group["samples"] / 100 for group in after.values()) == pytest.approx(memory_hits)


def test_memory_probe_reads_the_memory_each_segment_wrote(tiny_qa1_run):
    experiment, stages = checkpoint_eval.checkpoint_experiment(tiny_qa1_run, QA1_N_SEGMENTS, 6, batch_size=6)
    dataset = experiment.dataset(stages[0], "valid", 6)
    states = memory_probe.memory_states(experiment, dataset, batch_size=4)  # two batches
    assert states.shape == (6, QA1_N_SEGMENTS - 1, NUM_MEM_TOKENS * LARGE_INIT_BERT["hidden_size"])
    batch = experiment.collate()([dataset[i] for i in range(6)])
    with torch.no_grad():  # the wrapper's own record of each segment's last hidden layer
        output = experiment.model(batch["input_ids"], attention_mask=batch["attention_mask"],
                                  output_hidden_states=True)
    for t in range(QA1_N_SEGMENTS - 1):
        expected = output[f"hidden_states_{t}"][-1][:, 1:1 + NUM_MEM_TOKENS].flatten(1)
        torch.testing.assert_close(states[:, t], expected)
    assert not torch.allclose(states[:, 0], states[:, 1])


def test_memory_probe_targets_are_the_places_of_the_moves_before_each_segment_end(tiny_qa1_run):
    n_samples, segment_size = 30, INPUT_SIZE - NUM_MEM_TOKENS - 3
    summary = memory_probe.evaluate(tiny_qa1_run, QA1_N_SEGMENTS, n_samples, n_train=40)
    experiment, stages = checkpoint_eval.checkpoint_experiment(tiny_qa1_run, QA1_N_SEGMENTS, n_samples, batch_size=8)
    dataset = experiment.dataset(stages[0], "valid", n_samples)
    moved = {str(t + 1): collections.Counter() for t in range(QA1_N_SEGMENTS - 1)}
    for index in range(n_samples):
        built = dataset.build(index)
        for t in range(QA1_N_SEGMENTS - 1):
            facts = built.task_sample.facts
            people = {re.match(r"\w+", facts[i]).group() for i in range(len(facts))
                      if fact_start(experiment, built, i) < (t + 1) * segment_size}
            moved[str(t + 1)].update(people)
    assert summary["n_test"] == n_samples and set(summary["after_segment"]) == set(moved)
    for segment, scores in summary["after_segment"].items():
        n_test = {person: score["n_test"] for person, score in scores.items()}
        assert n_test and n_test.items() <= moved[segment].items()
        for score in scores.values():
            assert 0 <= score["accuracy"] <= 100 and 0 <= score["majority"] <= 100


def test_memory_probe_refuses_one_segment_and_facts_other_than_moves(tiny_qa1_run, tiny_reasoning_run, capsys):
    evaluate = memory_probe.evaluate
    assert checkpoint_eval.run_folder_main("d", evaluate, 2, 8, [str(tiny_qa1_run), "--n_segments", "1"]) == 2
    assert capsys.readouterr().err.strip() == ("error: --n_segments 1: expected at least 2 (memory is written before "
                                               "the last)")
    assert checkpoint_eval.run_folder_main("d", evaluate, 2, 8, [str(tiny_reasoning_run)]) == 2
    assert re.fullmatch(r"error: fact 'The \w+ is \w+ of the \w+\.' is not a move \(`X went to the P\.`\): "
                        r"expected a checkpoint of a task whose facts are moves \(qa1, memorize\)",
                        capsys.readouterr().err.strip())


def test_diagnostics_refuse_a_folder_without_a_run_and_a_bad_count(tiny_run, tmp_path, capsys):
    evaluate = fact_position.evaluate
    assert checkpoint_eval.run_folder_main("d", evaluate, 2, 8, [str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path} has no config.json: expected a run folder"
    assert checkpoint_eval.run_folder_main("d", evaluate, 2, 8, [str(tiny_run), "--n_samples", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: --n_samples 0: expected a positive integer"


@pytest.mark.parametrize("module, n_segments, n_samples", [("babilong.analysis.fact_position", 2, 512),
                                                           ("babilong.analysis.memory_probe", 2, 400),
                                                           ("babilong.analysis.reasoning_by_axis", 1, 512)])
def test_analyses_run_as_package_commands(module, n_segments, n_samples, tmp_path, monkeypatch, capsys):
    monkeypatch.delitem(sys.modules, module, raising=False)  # run as `python -m`, not over the imported module
    monkeypatch.setattr(sys, "argv", [module, "--help"])
    with pytest.raises(SystemExit) as exit_help:
        runpy.run_module(module, run_name="__main__")
    assert exit_help.value.code == 0
    usage = " ".join(capsys.readouterr().out.split())
    assert f"segments per sample (default: {n_segments})" in usage and f"(default: {n_samples})" in usage
    monkeypatch.setattr(sys, "argv", [module, str(tmp_path)])
    with pytest.raises(SystemExit) as exit_bad:
        runpy.run_module(module, run_name="__main__")
    assert exit_bad.value.code == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path} has no config.json: expected a run folder"
