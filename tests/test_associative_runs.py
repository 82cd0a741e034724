"""The associative memory through the entry points, launchers and run-folder commands, on tiny random backbones:
training, records, --validate_only, --model_cpt, --resume, the memory trace, bad input."""
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from arxiv_lm import experiment as run_arxiv
from babilong import experiment as run_babilong
from babilong import memory_trace
from babilong.results import RESULTS_FILE, read_results
from conftest import TINY_BERT, TINY_GPT2, write_config
from lm_experiments_tools.checkpoint import BEST_CHECKPOINT_NAME, load_checkpoint
from lm_experiments_tools.run_config import CONFIG_FILE
from test_arxiv_run import tiny_run_inputs
from test_launchers import SCRIPTS, option_values, run_launcher, stubs  # noqa: F401 (stubs is a fixture)
from test_run_babilong import run_main
from test_trainer_distributed import launcher_env

INPUT_SIZE, NUM_MEM_TOKENS, D_MEM = 32, 2, 4
ASSOCIATIVE = ["--memory_type", "associative", "--d_mem", str(D_MEM)]


def babilong_args(model_cfg, *extra, iters=4):
    return ["--model_cfg", model_cfg, "--input_size", str(INPUT_SIZE), "--num_mem_tokens", str(NUM_MEM_TOKENS),
            "--num_valid_samples", "6", "--batch_size", "2", "--iters", str(iters), "--lr", "1e-3",
            "--valid_interval", "2",
            "--log_interval", "2", "--save_best", "--optimize_metric", "exact_match", "--optimize_mode", "max",
            *extra]


@pytest.fixture(scope="module")
def configs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("configs")
    return {"encoder": write_config(folder, TINY_BERT), "decoder": write_config(folder, TINY_GPT2)}


@pytest.fixture(scope="module")
def associative_curriculum(configs, tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    run_babilong.main(babilong_args(configs["encoder"], *ASSOCIATIVE, "--curriculum", "1,2", "--eval_n_segments", "4",
                                    "--model_path", str(runs / "seg{n_segments}")))
    return runs


def test_a_curriculum_trains_and_records_the_associative_memory(associative_curriculum):
    folder = associative_curriculum / "seg2"
    assert json.loads((folder / CONFIG_FILE).read_text())["args"]["memory_type"] == "associative"
    weights = load_checkpoint(folder / BEST_CHECKPOINT_NAME)["model_state_dict"]
    assert weights["associative.layers.1.query.weight"].shape == (D_MEM, TINY_BERT["hidden_size"])
    records = read_results(folder / RESULTS_FILE)
    assert [(r["n_segments"], r["memory_type"]) for r in records] == [(2, "associative"), (4, "associative")]
    # the second stage started from the first one's associative weights and trained them further
    first = load_checkpoint(associative_curriculum / "seg1" / BEST_CHECKPOINT_NAME)["model_state_dict"]
    assert not torch.equal(first["associative.layers.0.value.weight"], weights["associative.layers.0.value.weight"])


def test_validate_only_rebuilds_the_associative_memory(associative_curriculum, configs):
    folder = associative_curriculum / "seg2"
    before = read_results(folder / RESULTS_FILE)
    run_babilong.main(babilong_args(configs["encoder"], *ASSOCIATIVE, "--validate_only", "--model_cpt", str(folder),
                                    "--max_n_segments", "2", "--model_path", str(folder)))
    after = read_results(folder / RESULTS_FILE)
    assert len(after) == len(before) + 1 and after[-1]["accuracy"] == before[0]["accuracy"]


def test_model_cpt_of_another_memory_type_is_refused(associative_curriculum, configs, tmp_path, capsys):
    code, err = run_main(babilong_args(configs["encoder"], "--model_cpt", str(associative_curriculum / "seg1"),
                                       "--model_path", str(tmp_path / "run")), capsys)
    assert code == 2 and len(err) == 1 and "memory_type='associative'" in err[0] and "memory_type='tokens'" in err[0]
    assert not (tmp_path / "run").exists()


def test_memory_trace_follows_the_associative_memory(associative_curriculum, tmp_path):
    curves = tmp_path / "trace.json"
    assert memory_trace.main([str(associative_curriculum / "seg2"), "--n_segments", "6", "--n_samples", "4",
                              "-o", str(tmp_path / "trace.png"), "--json", str(curves)]) == 0
    (trace,) = json.loads(curves.read_text())
    assert trace["memory_type"] == "associative" and len(trace["step_change"]) == 6
    # A starts at 0 and every segment adds to it: each step changes it by a finite, positive amount
    assert math.isnan(trace["step_change"][0]) and all(0 < value < math.inf for value in trace["step_change"][1:])


def test_resume_of_a_killed_associative_run_equals_the_run_uninterrupted(configs, tmp_path):
    options = [*ASSOCIATIVE, "--max_n_segments", "2", "--save_interval", "2", "--model_path", str(tmp_path / "run")]
    run_babilong.main(babilong_args(configs["encoder"], *options))
    uninterrupted = load_checkpoint(tmp_path / "run" / "model_4.pth")["model_state_dict"]
    # what a run killed at step 3 leaves: the step-2 checkpoint, no later one, no evaluation record
    for name in ("model_4.pth", RESULTS_FILE):
        (tmp_path / "run" / name).unlink()
    run_babilong.main(babilong_args(configs["encoder"], *options, "--resume"))
    resumed = load_checkpoint(tmp_path / "run" / "model_4.pth")["model_state_dict"]
    assert any(name.startswith("associative.") for name in resumed)
    for name, value in uninterrupted.items():
        assert torch.equal(resumed[name], value), name


@pytest.mark.slow
@pytest.mark.parametrize("model_type, n_segments", [("encoder", 1), ("decoder", 2)])
def test_two_processes_train_the_associative_memory(configs, tmp_path, model_type, n_segments):
    """Under DDP the scripts look for unused parameters (one segment: the writes get no gradient), and DDP then
    rebuilds the wrapper's output, per-segment entries included."""
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    script = Path(__file__).resolve().parent.parent / "run_finetuning_babilong_rmt.py"
    folder = tmp_path / "run"
    command = [torchrun, "--standalone", "--nproc_per_node", "2", str(script),
               *babilong_args(configs[model_type], "--model_type", model_type, *ASSOCIATIVE, "--max_n_segments",
                              str(n_segments), "--model_path", str(folder), iters=2)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300, env=launcher_env())
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    (record,) = read_results(folder / RESULTS_FILE)
    assert record["memory_type"] == "associative" and record["n_segments"] == n_segments


def test_a_decoder_run_trains_with_write_only_memory_positions(configs, tmp_path):
    folder = tmp_path / "run"
    run_babilong.main(babilong_args(configs["decoder"], "--model_type", "decoder", *ASSOCIATIVE,
                                    "--max_n_segments", "2", "--model_path", str(folder)))
    (record,) = read_results(folder / RESULTS_FILE)
    assert record["memory_type"] == "associative" and record["segment_size"] == INPUT_SIZE - NUM_MEM_TOKENS


def test_an_arxiv_run_trains_the_associative_memory(tmp_path):
    results = run_arxiv.main([*tiny_run_inputs(tmp_path), *ASSOCIATIVE, "--iters", "2", "--lr", "3e-3",
                              "--valid_interval", "2", "--save_best", "--model_path", str(tmp_path / "run")])
    assert math.isfinite(results["validation"]["last_block_loss"])
    weights = load_checkpoint(tmp_path / "run" / BEST_CHECKPOINT_NAME)["model_state_dict"]
    assert "memory_cell.associative.layers.0.beta.bias" in weights


def test_memory_lr_scale_trains_the_associative_memory_at_its_own_lr(configs, tmp_path):
    folder = tmp_path / "run"
    run_babilong.main(babilong_args(configs["encoder"], *ASSOCIATIVE, "--memory_lr_scale", "10", "--curriculum", "2",
                                    "--iters", "1", "--model_path", str(folder)))
    checkpoint = load_checkpoint(folder / BEST_CHECKPOINT_NAME)
    groups = checkpoint["optimizer_state_dict"]["param_groups"]
    assert [g.get("lr_scale", 1.0) for g in groups] == [1.0, 10.0]
    assert [g["lr"] for g in groups] == pytest.approx([1e-3, 1e-2])
    # after one AdamW step from zero, W_V moved by the memory's lr (Adam's first step is lr * sign(grad))
    value = checkpoint["model_state_dict"]["associative.layers.0.value.weight"]
    assert value.abs().max().item() == pytest.approx(1e-2, rel=1e-3)


@pytest.mark.parametrize("extra, message", [
    (["--memory_type", "assoc"], "memory_type='assoc'; expected one of tokens, associative"),
    (["--memory_type", "associative", "--memory_lr_scale", "0"], "--memory_lr_scale 0.0: expected a finite number > 0"),
    (["--memory_lr_scale", "10"], "--memory_lr_scale 10.0 with --memory_type tokens: expected --memory_type associative"),
    (["--memory_type", "associative", "--d_mem", "0"], "d_mem=0; expected an integer >= 1"),
    (["--memory_type", "associative", "--num_mem_tokens", "0"], "num_mem_tokens=0: expected at least one"),
])
def test_bad_memory_options_exit_2_before_anything_is_written(extra, message, configs, tmp_path, capsys):
    code, err = run_main(babilong_args(configs["encoder"], *extra, "--model_path", str(tmp_path / "run")), capsys)
    assert code == 2 and len(err) == 1 and message in err[0]
    assert not (tmp_path / "run").exists()


def test_a_backbone_the_associative_memory_cannot_take_exits_2_naming_it(tmp_path, capsys):
    """ALBERT shares one block between its layers: there is no list of num_hidden_layers blocks to hook."""
    albert = write_config(tmp_path, {"model_type": "albert", "hidden_size": 32, "num_hidden_layers": 2,
                                     "num_attention_heads": 2, "intermediate_size": 64, "embedding_size": 16,
                                     "vocab_size": TINY_BERT["vocab_size"], "max_position_embeddings": 64})
    code, err = run_main(babilong_args(albert, *ASSOCIATIVE, "--model_path", str(tmp_path / "run")), capsys)
    assert code == 2 and len(err) == 1, err
    assert "backbone AlbertForSequenceClassification cannot take an associative memory" in err[0]
    assert "traceback" not in err[0] and not (tmp_path / "run").exists()


@pytest.mark.parametrize("launcher", ["babilong/finetune_babilong_rmt.sh", "arxiv/finetune_arxiv_rmt.sh"])
def test_launchers_pass_the_memory_type(launcher, stubs, tmp_path):  # noqa: F811
    finished, calls = run_launcher(SCRIPTS / launcher, stubs, {"MEMORY_TYPE": "associative", "D_MEM": "16"}, tmp_path)
    assert finished.returncode == 0, finished.stderr
    options = option_values(calls[-1])
    assert options["--memory_type"] == "associative" and options["--d_mem"] == "16"
    assert options["--memory_lr_scale"] == "1" and "associative16_" in options["--model_path"]
    finished, calls = run_launcher(SCRIPTS / launcher, stubs, {"MEMORY_TYPE": "associative", "MEMORY_LR_SCALE": "10"},
                                   tmp_path)
    options = option_values(calls[-1])
    assert options["--memory_lr_scale"] == "10" and "associative64x10_" in options["--model_path"]
    finished, calls = run_launcher(SCRIPTS / launcher, stubs, {}, tmp_path)
    assert "--memory_type" not in option_values(calls[-1])  # the paper's memory tokens by default
