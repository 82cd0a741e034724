"""scripts/babilong/offline_memory_compare.sh end to end on a tiny random backbone (both memories, qa1, two trained
lengths and a longer one), and the table of `python -m babilong.compare` against the records it reads."""
import json
import os
import subprocess
from pathlib import Path

import pytest

from babilong import compare
from babilong.results import read_results
from conftest import TINY_BERT

REPO_ROOT = Path(__file__).resolve().parent.parent
COMPARE = REPO_ROOT / "scripts" / "babilong" / "offline_memory_compare.sh"
TINY_JOB = {"N_TRAIN": "40", "N_TEST": "20", "SHORT_MAX_N_FACTS": "", "SEGMENTS": "1 2", "ITERS": "2",
            "VALID_INTERVAL": "1", "NUM_VALID_SAMPLES": "4", "EVAL_NUM_VALID_SAMPLES": "4", "LONG_SEGMENTS": "4",
            "LONG_VALID_SAMPLES": "4", "FACT_SPLIT_SAMPLES": "6", "INPUT_SIZE": "64", "MEMORY_SIZE": "2", "TBS": "2",
            "BS": "2", "D_MEM": "4", "BF16": "0", "OMP_NUM_THREADS": "1"}


def run_compare(runs: Path, config: Path, **variables):
    env = {**os.environ, "RUNS_DIR": str(runs), **TINY_JOB, **variables}
    return subprocess.run(["bash", str(COMPARE), "--model_cfg", str(config), "--max_n_facts", "4"], env=env,
                          capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def comparison(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    config = tmp_path_factory.mktemp("configs") / "bert.json"
    config.write_text(json.dumps(TINY_BERT))
    finished = run_compare(runs, config)
    assert finished.returncode == 0, finished.stderr[-3000:]
    return runs, finished.stdout


@pytest.mark.slow
def test_every_cell_of_the_table_is_a_record(comparison):
    runs, stdout = comparison
    cells = json.loads((runs / "comparison.json").read_text())
    assert {(c["memory_type"], c["n_segments"]) for c in cells} == {
        (memory, n) for memory in ("tokens", "associative") for n in (1, 2, 4)}
    for cell in cells:
        assert Path(cell["results_file"]).is_relative_to(runs / cell["memory_type"])
        records = [r for r in read_results(cell["results_file"]) if r["n_segments"] == cell["n_segments"]]
        assert records and (records[-1]["accuracy"], records[-1]["n_samples"]) == (cell["accuracy"],
                                                                                   cell["n_samples"])
        assert records[-1]["memory_type"] == cell["memory_type"] and cell["trained_n_segments"] == 2
    table = (runs / "comparison.md").read_text()
    assert stdout.strip().endswith(table.strip())  # what the command printed last
    for cell in cells:
        assert f"{cell['accuracy']:.1f} ({cell['n_samples']})" in table
    assert "ARMT, BABILong Table 4 (GPT-2 137M, 1M tokens): 99" in table


@pytest.mark.slow
def test_both_memories_are_split_by_fact_position_and_drawn_on_one_plot(comparison):
    runs, _ = comparison
    splits = sorted(runs.rglob(compare.FACT_SPLIT_FILE))
    assert [split.relative_to(runs).parts[0] for split in splits] == ["associative", "tokens"]
    for split in splits:
        assert json.loads(split.read_text())["n_samples"] == 6
    assert set(compare.through_memory(runs)) <= {("qa1", "tokens"), ("qa1", "associative")}
    assert (runs / "qa1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("variables, message", [
    ({"TASKS": "qa1 qa9"}, "TASKS has 'qa9'"),
    ({"MEMORY_TYPES": "tokens assoc"}, "MEMORY_TYPES has 'assoc'"),
    ({"FACT_SPLIT_SAMPLES": "0"}, "FACT_SPLIT_SAMPLES=0"),
])
def test_a_mistyped_task_or_memory_exits_2_before_anything_trains(variables, message, tmp_path):
    finished = run_compare(tmp_path / "runs", tmp_path / "none.json", **variables)
    err = finished.stderr.strip().splitlines()
    assert finished.returncode == 2 and len(err) == 1 and message in err[0]
    assert not (tmp_path / "runs").exists()


def test_compare_refuses_a_folder_without_records(tmp_path, capsys):
    assert compare.main([str(tmp_path)]) == 2
    assert "no results.jsonl records" in capsys.readouterr().err
