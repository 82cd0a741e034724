"""The offline main job's recipe: which checkpoint each stage keeps, and the launcher's stages and evaluations
(scripts/babilong/offline_main_job.sh run end to end on a tiny random backbone)."""
import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

from babilong.results import RESULTS_FILE, read_results
from conftest import TINY_BERT
from lm_experiments_tools import TrainerArgs
from lm_experiments_tools.checkpoint import BEST_CHECKPOINT_NAME
from lm_experiments_tools.run_config import CONFIG_FILE
from trainer_scripts.tiny_task import build_trainer

REPO_ROOT = Path(__file__).resolve().parent.parent

MAIN_JOB = REPO_ROOT / "scripts" / "babilong" / "offline_main_job.sh"
# validations of a stage that reaches 100% early while its loss keeps falling (as the main job's stages do)
VALIDATIONS = {2: (87.5, 0.9), 4: (100.0, 0.62), 6: (100.0, 0.35), 8: (98.4, 0.33), 10: (100.0, 0.21)}
# (optimize_metric, optimize_mode) of the curriculum stages and of the long stage, as the launcher passes them
CURRICULUM_RULE, LONG_STAGE_RULE = ("exact_match", "max"), ("loss", "min")


def kept_step(tmp_path: Path, rule: tuple, target: float | None = None) -> tuple[int, int]:
    """The step whose checkpoint a stage keeps as model_best.pth when validation gives VALIDATIONS, and the step
    the stage ends at."""
    holder = {}

    def batch_metrics_fn(batch, output):
        exact_match, loss = VALIDATIONS.get(holder["trainer"].n_iter, (0.0, 9.0))
        return {"exact_match": exact_match, "loss": loss}

    metric, mode = rule
    args = TrainerArgs(model_path=str(tmp_path), iters=10, valid_interval=2, save_best=True,
                       optimize_metric=metric, optimize_mode=mode, early_stopping_target=target)
    holder["trainer"] = build_trainer(args, batch_metrics_fn=batch_metrics_fn)
    holder["trainer"].train()
    return torch.load(tmp_path / BEST_CHECKPOINT_NAME, weights_only=True)["iteration"], holder["trainer"].n_iter


@pytest.mark.parametrize("rule, target, expected_kept, expected_end", [
    (CURRICULUM_RULE, None, 4, 10),  # the first checkpoint at 100%: later ones with a lower loss do not replace it
    (CURRICULUM_RULE, 100.0, 4, 4),  # the main job's curriculum: that checkpoint, and the stage ends there
    (LONG_STAGE_RULE, None, 10, 10),  # the lowest loss, even after a validation below 100%
])
def test_each_stage_keeps_the_checkpoint_its_rule_selects(tmp_path, rule, target, expected_kept, expected_end):
    assert kept_step(tmp_path, rule, target) == (expected_kept, expected_end)


def stage_config(runs: Path, n_segments: int) -> dict:
    (folder,) = runs.glob(f"memorize/*/*_seg{n_segments}_*/run_1")
    return json.loads((folder / CONFIG_FILE).read_text())["args"]


@pytest.fixture(scope="module")
def main_job(tmp_path_factory):
    """The main job on a tiny backbone: curriculum 1, 2, then a long stage on 3 segments."""
    runs = tmp_path_factory.mktemp("runs")
    config = tmp_path_factory.mktemp("configs") / "bert.json"
    config.write_text(json.dumps(TINY_BERT))
    env = {**os.environ, "RUNS_DIR": str(runs), "SEGMENTS": "1 2", "ITERS": "2", "VALID_INTERVAL": "1",
           "NUM_VALID_SAMPLES": "4", "LONG_SEGMENTS": "3", "LONG_ITERS": "2", "LONG_VALID_INTERVAL": "1",
           "LONG_LR": "3e-4", "LONG_NUM_VALID_SAMPLES": "5", "EVAL_NUM_VALID_SAMPLES": "3", "EVAL_BS": "3",
           "TBS": "2", "BS": "2", "INPUT_SIZE": "32", "MEMORY_SIZE": "2", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(["bash", str(MAIN_JOB), "--model_cfg", str(config)], env=env, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return runs


@pytest.mark.slow
def test_long_stage_continues_the_curriculum_with_loss_selection(main_job):
    first, second, long = (stage_config(main_job, n) for n in (1, 2, 3))
    assert first["optimize_metric"] == second["optimize_metric"] == "exact_match"
    assert first["early_stopping_target"] == second["early_stopping_target"] == 100
    assert long["early_stopping_target"] is None
    assert long["optimize_metric"] == "loss" and long["optimize_mode"] == "min"
    assert long["lr"] == 3e-4 and long["iters"] == 2 and long["num_valid_samples"] == 5
    (second_dir,) = main_job.glob("memorize/*/*_seg2_*/run_1")
    assert Path(long["model_cpt"]) == second_dir


@pytest.mark.slow
def test_long_stage_is_evaluated_at_every_trained_length_and_16x(main_job):
    (long_dir,) = main_job.glob("memorize/*/*_seg3_*/run_1")
    records = read_results(long_dir / RESULTS_FILE)
    evaluated = {record["n_segments"]: record for record in records if record["n_samples"] == 3}
    assert sorted(evaluated) == [1, 2, 3, 48]
    assert all(record["trained_n_segments"] == 3 for record in evaluated.values())
    assert (main_job / "accuracy_vs_length.png").stat().st_size > 0


@pytest.mark.slow
def test_the_long_stage_is_exported_as_a_model_folder(main_job):
    (long_dir,) = main_job.glob("memorize/*/*_seg3_*/run_1")
    model_dir = main_job / "model"
    config = json.loads((model_dir / CONFIG_FILE).read_text())
    assert config["model_type"] == "rmt_encoder" and config["memory_config"]["max_n_segments"] == 3
    assert (model_dir / "model.safetensors").is_file() and (model_dir / "tokenizer_config.json").is_file()
    from safetensors.torch import load_file
    saved = load_file(model_dir / "model.safetensors")
    best = torch.load(long_dir / BEST_CHECKPOINT_NAME, weights_only=True)["model_state_dict"]
    assert saved.keys() == {f"rmt.{name}" for name in best}
    assert all(torch.equal(saved[f"rmt.{name}"], tensor) for name, tensor in best.items())
    assert (model_dir / "README.md").read_text().startswith("---\nlibrary_name: transformers")
    assert (model_dir / "accuracy_vs_length.png").stat().st_size > 0


PAPER_FIGURE = REPO_ROOT / "scripts" / "babilong" / "offline_paper_figure.sh"


def run_paper_figure(env_overrides: dict, args=()) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(PAPER_FIGURE), *args], env={**os.environ, **env_overrides},
                          capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_paper_figure_warms_reasoning_up_from_memorize(tmp_path):
    config = tmp_path / "bert.json"
    config.write_text(json.dumps(TINY_BERT))
    runs = tmp_path / "runs"
    env = {"RUNS_DIR": str(runs), "TASKS": "memorize reasoning", "SEGMENTS": "1", "ITERS": "2", "VALID_INTERVAL": "1",
           "NUM_VALID_SAMPLES": "4", "LONG_SEGMENTS": "2", "LONG_ITERS": "1", "LONG_VALID_INTERVAL": "1",
           "LONG_NUM_VALID_SAMPLES": "3", "EVAL_NUM_VALID_SAMPLES": "3", "EVAL_BS": "3", "WARMUP_ITERS": "2",
           "REASONING_RECIPE": "ITERS=2 VALID_INTERVAL=1", "LONG_EVAL_SEGMENTS": "5", "LONG_EVAL_SAMPLES": "2",
           "TBS": "2", "BS": "2", "INPUT_SIZE": "32", "MEMORY_SIZE": "2", "OMP_NUM_THREADS": "1"}
    result = run_paper_figure(env, ["--model_cfg", str(config)])
    assert result.returncode == 0, result.stderr[-3000:]

    def run_folder(pattern):
        (folder,) = runs.glob(pattern)
        return folder, json.loads((folder / CONFIG_FILE).read_text())["args"]

    memorize_long, _ = run_folder("memorize/*/*_seg2_*_lr5e-5/run_1")
    warmup, warmup_args = run_folder("warmup/reasoning_plain/*/*_seg1_*/run_1")
    assert warmup_args["task"] == "reasoning_plain" and Path(warmup_args["model_cpt"]) == memorize_long
    _, reasoning_first = run_folder("reasoning/*/*_seg1_*/run_1")
    assert Path(reasoning_first["model_cpt"]) == warmup and reasoning_first["iters"] == 2
    reasoning_long, _ = run_folder("reasoning/*/*_seg2_*_lr5e-5/run_1")
    long_eval = [r for r in read_results(reasoning_long / RESULTS_FILE) if r["n_segments"] == 5]
    assert [r["n_samples"] for r in long_eval] == [2]
    final_table = result.stdout[result.stdout.rindex("| task |"):].splitlines()[2:]  # the figure's, printed last
    assert {line.split("|")[1].strip() for line in final_table if line.startswith("| ")} == {"memorize", "reasoning"}
    assert (runs / "accuracy_vs_length.png").stat().st_size > 0


def test_paper_figure_refuses_an_unknown_task(tmp_path):
    result = run_paper_figure({"RUNS_DIR": str(tmp_path), "TASKS": "memorise"})
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        "error: TASKS has memorise: expected memorize, detect_memorize and/or reasoning"]
    assert not any(tmp_path.iterdir())
