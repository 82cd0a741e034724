"""Bad input and faults on the command line of both entry scripts, on tiny random backbones: every error ends as one
line naming the cause (exit code 2 for bad input, 1 for failures at run time) with the traceback in the run
folder's error.log, and no run is lost or silently replaced.

Set BAD_INPUT_TABLE=<file> to write the table "probe | exit code | message" of every probe run.
"""
import json
import logging
import math
import os
import pickle
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from arxiv_lm import experiment as run_arxiv
from babilong import experiment as run_babilong
from conftest import ONE_LAYER_BERT, ONE_LAYER_GPT2, write_config
from lm_experiments_tools.checkpoint import BEST_CHECKPOINT_NAME, save_checkpoint

REPO_ROOT = Path(__file__).resolve().parent.parent
SUBPROCESS_TIMEOUT = 240
WORDS = "the river stone cloud light north alpha beta gamma delta goes to a and of".split()
TMP_PATH_PATTERN = re.compile(r"/tmp/pytest-of-[^/]+/pytest-\d+/[^/ ']+")
PROBES = []  # (probe, exit code, last stderr line)

# flag: values refused (zero, negative, nan, inf, wrong type; the in-range ones of these are left out)
BABILONG_NUMERIC_FLAGS = {
    "--lr": ["0", "-0.001", "nan", "inf", "abc"],
    "--weight_decay": ["-0.001", "nan", "inf", "abc"],
    "--num_warmup_steps": ["-1", "nan", "inf", "abc"],
    "--clip_grad_value": ["0", "-5", "nan", "inf", "abc"],
    "--clip_grad_norm": ["0", "-1", "nan", "inf"],
    "--batch_size": ["0", "-2", "nan", "inf", "abc", "1.5"],
    "--gradient_accumulation_steps": ["0", "-1", "nan", "inf"],
    "--iters": ["-1", "nan", "inf", "abc"],
    "--valid_interval": ["0", "-1", "nan", "inf"],
    "--log_interval": ["0", "-1", "nan"],
    "--save_interval": ["0", "-1", "inf"],
    "--early_stopping_patience": ["0", "-1", "nan"],
    "--early_stopping_target": ["nan", "inf", "abc"],
    "--max_nonfinite_steps": ["0", "-1", "inf"],
    "--seed": ["-1", "nan", "abc"],
    "--input_size": ["0", "-1", "nan", "inf", "abc"],
    "--num_mem_tokens": ["-1", "nan", "abc"],
    "--max_n_segments": ["0", "-1", "nan", "inf"],
    "--input_seq_len": ["0", "-1", "nan"],
    "--num_valid_samples": ["0", "-1", "inf"],
    "--num_train_samples": ["0", "-1", "nan"],
    "--bptt_depth": ["-2", "nan", "abc"],
    "--show_valid_examples": ["-1", "nan"],
    "--data_n_workers": ["-1", "inf"],
}
ARXIV_NUMERIC_FLAGS = {
    "--lr": ["0", "-1", "nan", "inf"],
    "--weight_decay": ["-1", "nan", "inf"],
    "--input_size": ["0", "-1", "nan"],
    "--num_mem_tokens": ["-1", "abc"],
    "--max_n_segments": ["0", "-1", "inf"],
    "--k2": ["0", "-2", "nan"],
    "--num_valid_samples": ["0", "-1"],
}


# ---- helpers --------------------------------------------------------------------------------------------------

def _record(probe: str, code, lines: list) -> None:
    message = lines[-1] if lines and (code != 0 or lines[-1].startswith("error")) else "(finished)"
    PROBES.append((probe, code, message))


def _note(outcome: str) -> None:
    """Replace the message of the last probe (one that finished) by what it did."""
    probe, code, _ = PROBES[-1]
    PROBES[-1] = (probe, code, outcome)


@pytest.fixture(scope="module", autouse=True)
def probe_table():
    yield
    path = os.environ.get("BAD_INPUT_TABLE")
    if path:
        rows = [f"| {probe} | {code} | {TMP_PATH_PATTERN.sub('<tmp>', message).replace('|', '/')} |"
                for probe, code, message in PROBES]
        Path(path).write_text("| probe | exit code | message |\n|---|---|---|\n" + "\n".join(rows) + "\n")


@pytest.fixture(autouse=True)
def temporary_logs(tmp_path, monkeypatch):
    """Error logs of runs without a run folder go to the temporary folder: this test's."""
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))


def run_cli(main, argv, capsys, probe: str) -> tuple:
    """(exit code, non-empty stderr lines) of main(argv) in this process; progress bars may precede the error."""
    try:
        main(argv)
        code = 0
    except SystemExit as exit_info:
        code = exit_info.code if isinstance(exit_info.code, int) else 0 if exit_info.code is None else 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    _record(probe, code, lines)
    return code, lines


def assert_one_line(code: int, lines: list, expected_code: int, *fragments: str) -> str:
    """The run ended with exit code `expected_code`, its last stderr line is the error naming `fragments`, and no
    traceback reached the terminal. Returns the line."""
    assert code == expected_code, lines[-5:]
    assert lines and lines[-1].startswith("error: "), lines[-5:]
    assert not any("Traceback" in line for line in lines), lines
    for fragment in fragments:
        assert fragment in lines[-1], (fragment, lines[-1])
    return lines[-1]


@pytest.fixture(scope="module")
def configs(tmp_path_factory):
    """Tiny backbone configs, and a few short text documents for the ArXiv script."""
    folder = tmp_path_factory.mktemp("configs")
    generator = random.Random(0)
    documents = []
    for i in range(6):
        documents.append(folder / f"doc_{i}.txt")
        documents[-1].write_text(" ".join(generator.choice(WORDS) for _ in range(120)))
    return {"bert": write_config(folder, ONE_LAYER_BERT), "gpt2": write_config(folder, ONE_LAYER_GPT2),
            "train_texts": [str(path) for path in documents[:4]], "valid_texts": [str(path) for path in documents[4:]]}


def babilong_argv(configs, model_path, *extra, iters=2) -> list:
    return ["--model_cfg", configs["bert"], "--input_size", "32", "--num_mem_tokens", "2", "--num_valid_samples", "4",
            "--batch_size", "2", "--iters", str(iters), "--lr", "1e-3", "--valid_interval", "2", "--log_interval",
            "2", "--save_interval", "1", "--save_best", "--optimize_metric", "exact_match", "--optimize_mode", "max",
            "--model_path", str(model_path), *extra]


def arxiv_argv(configs, model_path, *extra) -> list:
    return ["--model_cfg", configs["gpt2"], "--input_size", "16", "--num_mem_tokens", "2", "--max_n_segments", "2",
            "--num_valid_samples", "4", "--batch_size", "2", "--iters", "2", "--lr", "1e-3", "--valid_interval", "2",
            "--log_interval", "2", "--save_best", "--optimize_metric", "last_block_loss", "--model_path",
            str(model_path), "--text_files", *configs["train_texts"], "--valid_text_files", *configs["valid_texts"],
            *extra]


def records(folder: Path) -> list:
    path = Path(folder) / "results.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


@pytest.fixture(scope="module")
def finished_run(configs, tmp_path_factory):
    """A finished two-step BABILong run: model_1.pth, model_2.pth, model_best.pth, results.jsonl."""
    folder = tmp_path_factory.mktemp("finished") / "run"
    assert run_babilong.main(babilong_argv(configs, folder)) is None
    assert (folder / BEST_CHECKPOINT_NAME).is_file() and len(records(folder)) == 1
    return folder


# ---- flags ----------------------------------------------------------------------------------------------------

FLAG_CASES = [("babilong", flag, value) for flag, values in BABILONG_NUMERIC_FLAGS.items() for value in values] + [
    ("arxiv", flag, value) for flag, values in ARXIV_NUMERIC_FLAGS.items() for value in values]


@pytest.mark.parametrize("script, flag, value", FLAG_CASES, ids=[f"{s}{f}={v}" for s, f, v in FLAG_CASES])
def test_numeric_flags_out_of_range_exit_2_with_one_line(configs, tmp_path, capsys, script, flag, value):
    main, argv = ((run_babilong.main, babilong_argv(configs, tmp_path / "run")) if script == "babilong" else
                  (run_arxiv.main, arxiv_argv(configs, tmp_path / "run")))
    code, lines = run_cli(main, [*argv, f"{flag}={value}"], capsys, f"{script} {flag}={value}")
    assert_one_line(code, lines, 2, flag.lstrip("-"), value)
    assert len(lines) == 1 and not (tmp_path / "run" / "config.json").exists()


BAD_OPTION_CASES = [
    ("unknown task", ["--task", "qa99"], "qa99"),
    ("unknown flag", ["--no_such_flag", "1"], "--no_such_flag"),
    ("flag without value", ["--iters"], "--iters"),
    ("curriculum with an empty entry", ["--curriculum", "1,,2"], "1,,2"),
    ("curriculum not numbers", ["--curriculum", "a,b"], "a,b"),
    ("curriculum zero", ["--curriculum", "0,1"], "0,1"),
    ("curriculum duplicate entries", ["--curriculum", "1,1"], "1,1"),
    ("eval_n_segments malformed", ["--eval_n_segments", "2;4"], "2;4"),
    ("resume and overwrite", ["--resume", "--overwrite"], "overwrite"),
]


@pytest.mark.parametrize("probe, extra, fragment", BAD_OPTION_CASES, ids=[case[0] for case in BAD_OPTION_CASES])
def test_bad_options_exit_2_with_one_line(configs, tmp_path, capsys, probe, extra, fragment):
    model_path = tmp_path / ("seg{n_segments}" if "curriculum" in probe else "run")
    code, lines = run_cli(run_babilong.main, babilong_argv(configs, model_path, *extra), capsys, probe)
    assert_one_line(code, lines, 2, fragment)


# ---- files ----------------------------------------------------------------------------------------------------

def _path_cases(tmp: Path) -> dict:
    (tmp / "empty.json").write_text("")
    (tmp / "empty_dir").mkdir()
    (tmp / "a_file").write_text("x")
    return {
        "missing --model_cfg": (["--model_cfg", str(tmp / "nowhere.json")], "nowhere.json"),
        "empty --model_cfg file": (["--model_cfg", str(tmp / "empty.json")], "empty.json"),
        "--model_cfg folder without config": (["--model_cfg", str(tmp / "empty_dir")], "empty_dir"),
        "missing --babi_path": (["--task", "qa1", "--babi_path", str(tmp / "no_babi")], "no_babi"),
        "empty --babi_path": (["--task", "qa1", "--babi_path", str(tmp / "empty_dir")], "empty_dir"),
        "missing --tokenizer": (["--tokenizer", str(tmp / "no_tokenizer")], "no_tokenizer"),
        "missing --model_cpt": (["--model_cpt", str(tmp / "no_run")], "no_run"),
        "missing --init_checkpoint": (["--init_checkpoint", str(tmp / "none.pth")], "none.pth"),
        "--init_checkpoint is a folder": (["--init_checkpoint", str(tmp / "empty_dir")], "empty_dir"),
        "unwritable --model_path (under a file)": (["--model_path", str(tmp / "a_file" / "run")], "a_file"),
    }


PATH_PROBES = [
    "missing --model_cfg", "empty --model_cfg file", "--model_cfg folder without config", "missing --babi_path",
    "empty --babi_path", "missing --tokenizer", "missing --model_cpt", "missing --init_checkpoint",
    "--init_checkpoint is a folder", "unwritable --model_path (under a file)"]


@pytest.mark.parametrize("probe", PATH_PROBES)
def test_missing_empty_and_unusable_paths_exit_2_with_one_line(configs, tmp_path, capsys, probe):
    extra, fragment = _path_cases(tmp_path)[probe]
    code, lines = run_cli(run_babilong.main, babilong_argv(configs, tmp_path / "run", *extra), capsys, probe)
    assert_one_line(code, lines, 2, fragment)


class _RunsShell:
    def __reduce__(self):
        return os.system, ("touch /tmp/i11_bad_input_pwned",)


def _damaged_checkpoints(folder: Path, good: Path) -> dict:
    """name: file, for each kind of unusable checkpoint."""
    folder.mkdir(exist_ok=True)
    content = good.read_bytes()
    files = {"truncated": content[: len(content) // 2], "empty": b"", "random": os.urandom(2048)}
    paths = {}
    for name, data in files.items():
        paths[name] = folder / f"{name}.pth"
        paths[name].write_bytes(data)
    paths["foreign"] = save_checkpoint(folder / "foreign.pth",
                                       {"model_state_dict": torch.nn.Linear(3, 2).state_dict()})
    paths["malicious"] = folder / "malicious.pth"
    paths["malicious"].write_bytes(pickle.dumps({"model_state_dict": _RunsShell()}, protocol=2))
    return paths


CHECKPOINT_KINDS = {"truncated": "cannot load checkpoint", "empty": "cannot load checkpoint",
                    "random": "cannot load checkpoint", "foreign": "holds weights of another model",
                    "malicious": "refused to unpickle"}


@pytest.mark.parametrize("kind", list(CHECKPOINT_KINDS))
@pytest.mark.parametrize("flag", ["--init_checkpoint", "--model_cpt"])
def test_unusable_checkpoint_files_exit_2_with_one_line(configs, finished_run, tmp_path, capsys, kind, flag):
    path = _damaged_checkpoints(tmp_path / "files", finished_run / "model_2.pth")[kind]
    if flag == "--model_cpt":  # a run folder whose model_best.pth is the damaged file
        (tmp_path / "cpt").mkdir()
        path = Path(path).replace(tmp_path / "cpt" / BEST_CHECKPOINT_NAME).parent
    Path("/tmp/i11_bad_input_pwned").unlink(missing_ok=True)
    code, lines = run_cli(run_babilong.main, babilong_argv(configs, tmp_path / "run", flag, str(path)), capsys,
                          f"{kind} checkpoint as {flag}")
    assert_one_line(code, lines, 2, CHECKPOINT_KINDS[kind], str(path))
    assert not Path("/tmp/i11_bad_input_pwned").exists()


# ---- run folders ----------------------------------------------------------------------------------------------

def test_rerun_into_a_finished_folder_is_refused(configs, finished_run, capsys):
    before = {p.name: p.stat().st_mtime_ns for p in finished_run.iterdir()}
    code, lines = run_cli(run_babilong.main, babilong_argv(configs, finished_run), capsys,
                          "rerun into a finished run folder")
    assert_one_line(code, lines, 2, f"model_path {finished_run} already holds a run", "--resume", "--overwrite")
    assert {p.name: p.stat().st_mtime_ns for p in finished_run.iterdir() if p.name != "error.log"} == before


def test_validate_only_appends_to_a_finished_run(configs, finished_run, tmp_path, capsys):
    folder = tmp_path / "copy"
    folder.mkdir()
    for path in finished_run.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    argv = ["--model_cfg", configs["bert"], "--input_size", "32", "--num_mem_tokens", "2", "--num_valid_samples",
            "4", "--batch_size", "2", "--validate_only", "--model_cpt", str(folder)]
    code, lines = run_cli(run_babilong.main, argv, capsys, "--validate_only into a finished run")
    assert code == 0 and len(records(folder)) == 2
    _note("finished: a second record appended to results.jsonl")


def test_overwrite_starts_over(configs, finished_run, tmp_path, capsys):
    folder = tmp_path / "run"
    folder.mkdir()
    for path in finished_run.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "model_7.pth").write_bytes((folder / "model_2.pth").read_bytes())  # an older, longer run's checkpoint
    code, lines = run_cli(run_babilong.main, babilong_argv(configs, folder, "--overwrite", iters=1), capsys,
                          "--overwrite into a finished run folder")
    assert code == 0
    assert sorted(p.name for p in folder.glob("*.pth")) == ["model_1.pth", BEST_CHECKPOINT_NAME]
    assert len(records(folder)) == 1 and len(list(folder.glob("events.out.tfevents.*"))) == 1
    _note("finished: old checkpoints, events and results deleted, one new run")


def test_resume_skips_a_damaged_newest_checkpoint(configs, finished_run, tmp_path, capsys, caplog):
    folder = tmp_path / "run"
    folder.mkdir()
    for name in ("model_1.pth", "config.json"):
        (folder / name).write_bytes((finished_run / name).read_bytes())
    (folder / "model_2.pth").write_bytes(b"\x00" * 64)
    caplog.set_level(logging.INFO)
    code, lines = run_cli(run_babilong.main, babilong_argv(configs, folder, "--resume", iters=3), capsys,
                          "--resume with a damaged newest checkpoint")
    assert code == 0
    assert any(f"skipping damaged checkpoint {folder / 'model_2.pth'}" in r.getMessage() for r in caplog.records)
    assert any(f"resuming from {folder / 'model_1.pth'}" in r.getMessage() for r in caplog.records)
    assert torch.load(folder / "model_3.pth", weights_only=True)["iteration"] == 3
    _note("finished: warning 'skipping damaged checkpoint .../model_2.pth', resumed from model_1.pth")


# ---- failures at run time -------------------------------------------------------------------------------------

def test_full_disk_exits_1_naming_the_path_and_the_last_good_checkpoint(configs, tmp_path, capsys, monkeypatch):
    real_save, saved = torch.save, []

    def save_until_full(state, file):
        if saved:
            file.write(b"x" * 100)
            raise OSError(28, "No space left on device")
        saved.append(True)
        real_save(state, file)

    monkeypatch.setattr("lm_experiments_tools.checkpoint.torch.save", save_until_full)
    folder = tmp_path / "run"
    code, lines = run_cli(run_babilong.main, babilong_argv(configs, folder, "--iters", "3"), capsys, "full disk")
    line = assert_one_line(code, lines, 1, "the disk is full (No space left on device)",
                           f"last good checkpoint is {folder}/model_1.pth")
    assert line.startswith(f"error: cannot write checkpoint {folder}/model_")
    assert line.endswith(f"(traceback: {folder}/error.log)")
    assert "Traceback" in (folder / "error.log").read_text() and not list(folder.glob(".*.tmp"))


@pytest.mark.parametrize("script", ["babilong", "arxiv"])
def test_diverged_weights_exit_1_and_record_nothing(configs, tmp_path, capsys, script):
    folder = tmp_path / "run"
    main, argv = ((run_babilong.main, babilong_argv(configs, folder)) if script == "babilong" else
                  (run_arxiv.main, arxiv_argv(configs, folder)))
    code, lines = run_cli(main, [*argv, "--lr", "1e30", "--clip_grad_value", "1e30"], capsys,
                          f"{script}: weights diverge (--lr 1e30), fewer steps than max_nonfinite_steps")
    assert_one_line(code, lines, 1, "non-finite")
    assert not records(folder) and not (folder / "results.json").exists()
    assert not (folder / BEST_CHECKPOINT_NAME).exists()


def test_arxiv_results_hold_no_nan(configs, tmp_path, capsys):
    code, lines = run_cli(run_arxiv.main, arxiv_argv(configs, tmp_path / "run"), capsys, "arxiv: a normal run")
    assert code == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    values = [v for split in results.values() if isinstance(split, dict) for v in split.values()]
    assert values and all(math.isfinite(v) for v in values if isinstance(v, float))
    _note("finished: results.json holds only finite numbers")


# ---- kills and curriculum resume (subprocesses) ---------------------------------------------------------------

def _start(argv: list, tmp_path: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(REPO_ROOT / "run_finetuning_babilong_rmt.py"), *argv], env=env,
                            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "stderr.txt", "w"))


def _wait_for(path: Path, process: subprocess.Popen, stderr_file: Path) -> None:
    deadline = time.monotonic() + SUBPROCESS_TIMEOUT
    while not path.exists():
        assert process.poll() is None, stderr_file.read_text()[-2000:]
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


# exit codes: killed by the signal; a scheduler's stop (0, requeued); Ctrl-C (130, as the shell reports it)
STOP_EXIT_CODES = {signal.SIGKILL: -signal.SIGKILL, signal.SIGTERM: 0, signal.SIGINT: 130}


@pytest.mark.slow
@pytest.mark.parametrize("kill", list(STOP_EXIT_CODES), ids=["kill -9", "SIGTERM", "Ctrl-C"])
def test_killed_curriculum_resumes_without_redoing_finished_stages(configs, tmp_path, capsys, kill):
    model_path = tmp_path / "seg{n_segments}"
    argv = babilong_argv(configs, model_path, "--curriculum", "1,2", "--valid_interval", "15", iters=30)
    process = _start(argv, tmp_path)
    _wait_for(tmp_path / "seg2" / "model_1.pth", process, tmp_path / "stderr.txt")
    process.send_signal(kill)
    code = process.wait(timeout=SUBPROCESS_TIMEOUT)
    assert code == STOP_EXIT_CODES[kill]
    _record(f"curriculum 1,2 killed in stage 2 ({kill.name})", code, [f"(exit {code})"])
    stage_1 = records(tmp_path / "seg1")
    assert len(stage_1) == 1 and not records(tmp_path / "seg2")

    code, lines = run_cli(run_babilong.main, [*argv, "--resume"], capsys, f"--resume after {kill.name} in stage 2")
    assert code == 0
    assert records(tmp_path / "seg1") == stage_1  # stage 1: neither retrained nor re-validated
    assert len(records(tmp_path / "seg2")) == 1
    _note("finished: stage 1 skipped (its one record kept), stage 2 resumed and recorded once")
    code, lines = run_cli(run_babilong.main, [*argv, "--resume"], capsys, "--resume of a finished curriculum")
    assert code == 0 and records(tmp_path / "seg1") == stage_1 and len(records(tmp_path / "seg2")) == 1
    _note("finished: nothing retrained, no record added")


@pytest.mark.slow
def test_torchrun_child_error_is_its_last_line_and_the_exit_code_is_not_zero(configs, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=1",
               str(REPO_ROOT / "run_finetuning_babilong_rmt.py"),
               *babilong_argv(configs, tmp_path / "run", "--init_checkpoint", str(tmp_path / "none.pth"))]
    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT)
    child_lines = [line for line in finished.stderr.splitlines() if "error: init_checkpoint=" in line]
    _record("torchrun, missing --init_checkpoint", finished.returncode, child_lines)
    assert finished.returncode != 0 and len(child_lines) == 1
    before, after = finished.stderr.split(child_lines[0] + "\n", 1)
    assert "Traceback" not in before and "run_finetuning_babilong_rmt.py FAILED" in after
    assert after == "" or after.startswith("Traceback") or after.startswith("E")  # torchrun's own report follows


@pytest.mark.parametrize("launcher", ["babilong/finetune_babilong_rmt.sh", "arxiv/finetune_arxiv_rmt.sh"])
@pytest.mark.parametrize("variable, value", [("ITERS", "abc"), ("BS", "x"), ("WARMUP", "1.5"), ("RESUME", "yes")])
def test_launcher_variables_that_are_not_integers(tmp_path, launcher, variable, value):
    env = {**os.environ, variable: value, "RUNS_DIR": str(tmp_path)}
    finished = subprocess.run(["bash", str(REPO_ROOT / "scripts" / launcher)], env=env, capture_output=True,
                              text=True, timeout=30)
    lines = finished.stderr.splitlines()
    _record(f"launcher {launcher.split('/')[1]} {variable}={value}", finished.returncode, lines)
    assert finished.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"error: {variable}={value}: ")
