"""Bad input and faults at the library level: numeric options refused up front, unsafe and damaged checkpoints,
a full disk while saving, non-finite weights at the end of a run, run folders that already hold a run, and the
launchers' integer variables and RESUME/OVERWRITE switches."""
import errno
import logging
import os
import pickle
import subprocess
from pathlib import Path

import pytest
import torch
from transformers import HfArgumentParser

from conftest import stub_the_launchers_python
from lm_experiments_tools import NonFiniteWeightsError, TrainerArgs
from lm_experiments_tools.checkpoint import (BEST_CHECKPOINT_NAME, CheckpointError, CheckpointWriteError,
                                             find_latest_checkpoint, load_checkpoint, save_checkpoint)
from lm_experiments_tools.errors import BadInputError, RunFailure
from lm_experiments_tools.run_folder import (RUN_LOCK_NAME, CommandLineError, RunFolderError, describe_failure,
                                             delete_previous_run, exit_with_one_line, prepare_run_folder,
                                             raise_on_parse_errors, run_files)
from trainer_scripts.tiny_task import build_trainer, flat_parameters

REPO_ROOT = Path(__file__).resolve().parent.parent
LAUNCHERS = [REPO_ROOT / "scripts/babilong/finetune_babilong_rmt.sh", REPO_ROOT / "scripts/arxiv/finetune_arxiv_rmt.sh"]
NAN, INF = float("nan"), float("inf")
MOUNTED_DISK_SIZE = "1m"  # room for a few checkpoints of the tiny task

# (option, values refused, values accepted)
NUMERIC_OPTIONS = [
    ("lr", [0, -1e-3, NAN, INF, -INF, "1e-3"], [1e-5, 3]),
    ("batch_size", [0, -1, 2.0, NAN, INF, "8", True], [1]),
    ("gradient_accumulation_steps", [0, -2, NAN, INF], [1, 4]),
    ("iters", [-1, 1.5, NAN, INF, "abc"], [0, 10]),
    ("log_interval", [0, -1, NAN, INF], [1]),
    ("valid_interval", [0, -5, NAN, INF], [None, 1]),
    ("save_interval", [0, -5, NAN, INF], [None, 1]),
    ("early_stopping_patience", [0, -1, NAN, INF], [None, 1]),
    ("early_stopping_target", [NAN, INF, -INF, "1"], [None, 1.0, -3, 0]),
    ("num_warmup_steps", [-1, NAN, INF, 0.5], [0, 10]),
    ("num_training_steps", [0, -1, NAN, INF], [None, 1]),
    ("clip_grad_norm", [0, -1.0, NAN, INF, "1"], [None, 1.0]),
    ("clip_grad_value", [0, -5.0, NAN, INF], [None, 5.0]),
    ("lr_drop_factor", [0, 1, 1.5, -0.1, NAN, INF], [0.1]),
    ("lr_drop_patience", [-1, NAN], [0, 3]),
    ("lr_drop_cooldown", [-1, INF], [0]),
    ("lr_drop_threshold", [-1e-4, NAN, INF], [0, 1e-4]),
    ("lr_drop_min_lr", [-1.0, NAN, INF], [0.0]),
    ("lr_drop_eps", [-1.0, NAN, INF], [1e-8]),
    ("seed", [-1, 2**32, 1.5, NAN], [0, 42]),
    ("max_nonfinite_steps", [0, -1, INF], [1]),
]
REFUSED = [(name, value) for name, bad, _ in NUMERIC_OPTIONS for value in bad]
ACCEPTED = [(name, value) for name, _, good in NUMERIC_OPTIONS for value in good]


def _with_lr(name: str, value) -> dict:
    """lr_scheduler needs lr; give every case a valid lr unless lr itself is probed."""
    return {name: value} if name == "lr" else {name: value, "lr": 0.01}


@pytest.mark.parametrize("name, value", REFUSED, ids=[f"{n}={v!r}" for n, v in REFUSED])
def test_numeric_options_are_refused_up_front_in_one_line(name, value):
    with pytest.raises(BadInputError) as error:
        TrainerArgs(**_with_lr(name, value))
    message = str(error.value)
    assert message.startswith(f"{name}={value!r} is invalid: expected ") and "\n" not in message


@pytest.mark.parametrize("name, value", ACCEPTED, ids=[f"{n}={v!r}" for n, v in ACCEPTED])
def test_numeric_options_in_range_are_accepted(name, value):
    assert getattr(TrainerArgs(**_with_lr(name, value)), name) == value


# ---- checkpoint files ------------------------------------------------------------------------------------------

class _RunsShell:
    """Unpickling this calls os.system: what a malicious checkpoint does."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("writer", ["torch.save", "pickle protocol 2", "pickle protocol 4"])
def test_malicious_checkpoint_is_refused_by_name_and_never_runs(tmp_path, writer):
    sentinel = tmp_path / "pwned"
    payload = {"model_state_dict": {}, "hook": _RunsShell(f"touch {sentinel}")}
    path = tmp_path / "evil.pth"
    if writer == "torch.save":
        torch.save(payload, path)
        expected = r"refused to unpickle (posix|nt)\.system: weights_only=True loads only tensors"
    elif writer == "pickle protocol 2":
        path.write_bytes(pickle.dumps(payload, protocol=2))
        expected = r"refused to unpickle (posix|nt)\.system"
    else:  # the weights-only unpickler stops at protocol 4's first framing instruction
        path.write_bytes(pickle.dumps(payload, protocol=4))
        expected = r"not a torch.save file of tensors and plain values: weights_only=True refused pickle instruction"
    with pytest.raises(CheckpointError, match=expected) as error:
        load_checkpoint(path)
    assert "not written by torch.save" not in str(error.value) and str(path) in str(error.value)
    assert not sentinel.exists()


def _short_run_args(model_path, **overrides) -> TrainerArgs:
    values = dict(model_path=str(model_path), iters=10, batch_size=4, lr=0.05, save_interval=5, log_interval=5,
                  seed=3)
    return TrainerArgs(**{**values, **overrides})


@pytest.mark.parametrize("damage", [b"", b"\x00" * 100, "truncated"])
def test_resume_falls_back_to_the_newest_loadable_checkpoint(tmp_path, caplog, damage):
    reference = build_trainer(_short_run_args(tmp_path / "reference"), dropout=0.1, with_validation=False)
    reference.train()
    run = tmp_path / "run"
    build_trainer(_short_run_args(run), dropout=0.1, with_validation=False).train()
    newest = run / "model_10.pth"
    newest.write_bytes(newest.read_bytes()[:1000] if damage == "truncated" else damage)
    with caplog.at_level(logging.WARNING, logger="lm_experiments_tools.checkpoint"):
        resumed = build_trainer(_short_run_args(run, resume=True), model_seed=99, dropout=0.1,
                                with_validation=False)
    assert resumed.n_iter == 5
    assert any(f"skipping damaged checkpoint {newest}" in record.getMessage() for record in caplog.records)
    resumed.train()
    assert torch.equal(flat_parameters(resumed.model), flat_parameters(reference.model))


def test_resume_refuses_a_folder_whose_checkpoints_are_all_damaged(tmp_path):
    for name in ("model_5.pth", "model_10.pth"):
        (tmp_path / name).write_bytes(os.urandom(256))
    with pytest.raises(CheckpointError, match=f"none of the checkpoints in {tmp_path} loads"):
        build_trainer(_short_run_args(tmp_path, resume=True), with_validation=False)


def _fill_the_disk_after(monkeypatch, n_bytes: int) -> None:
    """torch.save inside save_checkpoint writes n_bytes, then fails as a full disk does."""
    def save_until_full(state, file):
        file.write(b"x" * n_bytes)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("lm_experiments_tools.checkpoint.torch.save", save_until_full)


def test_full_disk_names_the_path_and_the_last_good_checkpoint(tmp_path, monkeypatch):
    good = save_checkpoint(tmp_path / "model_5.pth", {"model_state_dict": {"w": torch.ones(3)}, "iteration": 5})
    good_bytes = good.read_bytes()
    _fill_the_disk_after(monkeypatch, 4096)
    with pytest.raises(CheckpointWriteError) as error:
        save_checkpoint(tmp_path / "model_10.pth", {"model_state_dict": {}, "iteration": 10})
    assert isinstance(error.value, RunFailure)
    assert str(error.value) == (f"cannot write checkpoint {tmp_path / 'model_10.pth'}: the disk is full (No space "
                                f"left on device); "
                                f"the last good checkpoint is {good}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model_5.pth"] and good.read_bytes() == good_bytes
    with pytest.raises(CheckpointWriteError,
                       match=r"model_5.pth: the disk is full \(No space left on device\); the last good"):
        save_checkpoint(good, {"model_state_dict": {}})  # overwriting in place keeps the old file too
    assert good.read_bytes() == good_bytes


@pytest.fixture
def small_disk(tmp_path):
    """A real file system of MOUNTED_DISK_SIZE (a tmpfs mounted at tmp_path/disk); skipped where mount is not
    allowed (not root, no CAP_SYS_ADMIN, no tmpfs)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={MOUNTED_DISK_SIZE}", "tmpfs", str(disk)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    yield disk
    subprocess.run(["umount", str(disk)], check=True)


def _fill(disk: Path) -> None:
    """Write a file until the disk is full."""
    with open(disk / "filler", "wb", buffering=0) as file:
        try:
            while True:
                file.write(b"\0" * 4096)
        except OSError as error:
            assert error.errno == errno.ENOSPC


def test_a_really_full_disk_is_named_as_such_with_the_last_good_checkpoint(small_disk):
    trainer = build_trainer(_short_run_args(small_disk, log_interval=100), with_validation=False)  # no events
    good = trainer.save(small_disk)  # step 0
    _fill(small_disk)
    with pytest.raises(CheckpointWriteError) as error:
        trainer.train()
    assert str(error.value).startswith(f"cannot write checkpoint {small_disk}/model_5.pth: the disk is full (No space "
                                       f"left on device); the last good checkpoint is {good}")
    assert "unexpected pos" not in describe_failure(error.value, small_disk)
    assert sorted(p.name for p in small_disk.glob("*.pth")) == ["model_0.pth"] and not list(small_disk.glob(".*.tmp"))


def test_full_disk_during_training_stops_the_run_keeping_its_checkpoints(tmp_path, monkeypatch):
    trainer = build_trainer(_short_run_args(tmp_path), with_validation=False)
    trainer.save(tmp_path)  # step 0
    _fill_the_disk_after(monkeypatch, 100)
    with pytest.raises(CheckpointWriteError, match=f"model_5.pth: .*the last good checkpoint is {tmp_path}/model_0"):
        trainer.train()
    assert [p.name for p in tmp_path.glob("*.pth")] == ["model_0.pth"] and not list(tmp_path.glob(".*.tmp"))
    assert load_checkpoint(tmp_path / "model_0.pth")["iteration"] == 0


# ---- non-finite weights --------------------------------------------------------------------------------------

@pytest.mark.parametrize("with_validation", [True, False])
def test_diverged_weights_fail_the_run_instead_of_recording_metrics(tmp_path, with_validation):
    """An infinite lr: the first update makes the weights non-finite, later steps are skipped as non-finite, and
    the run ends before max_nonfinite_steps. Nothing may be validated, saved as best, or saved at all."""
    args = TrainerArgs(model_path=str(tmp_path), iters=3, batch_size=4, save_interval=10, save_best=True,
                       valid_interval=10, max_nonfinite_steps=10)
    trainer = build_trainer(args, with_validation=with_validation)
    for group in trainer.optimizer.param_groups:
        group["lr"] = INF  # TrainerArgs refuses lr=inf; an optimizer built with it is still possible
    with pytest.raises(NonFiniteWeightsError, match=r"non-finite weights at step 3 .*\(first: net\.0\.weight\): "
                                                    r"training diverged \(lr inf\)"):
        trainer.train()
    assert trainer.best_metrics is None and not list(tmp_path.glob("*.pth"))


def test_finite_weights_pass_the_check(tmp_path):
    trainer = build_trainer(TrainerArgs(model_path=str(tmp_path), iters=3, batch_size=4, save_interval=3,
                                        save_best=True, valid_interval=3, lr=0.01))
    metrics = trainer.train()
    assert torch.isfinite(torch.tensor(metrics["loss"])) and (tmp_path / BEST_CHECKPOINT_NAME).is_file()
    assert find_latest_checkpoint(tmp_path, loadable=True) == tmp_path / "model_3.pth"


# ---- run folders ----------------------------------------------------------------------------------------------

def _finished_run(folder: Path) -> Path:
    build_trainer(TrainerArgs(model_path=str(folder), iters=4, batch_size=4, save_interval=2, save_best=True,
                              valid_interval=2, lr=0.01)).train()
    (folder / "config.json").write_text("{}")
    (folder / "results.jsonl").write_text('{"accuracy": 50.0}\n')
    (folder / "notes.txt").write_text("mine")  # not a run file: never deleted
    return folder


def test_a_folder_holding_a_run_is_refused_without_resume_or_overwrite(tmp_path):
    folder = _finished_run(tmp_path / "run")
    before = run_files(folder)
    assert {"model_2.pth", "model_4.pth", BEST_CHECKPOINT_NAME, "config.json", "results.jsonl"} <= {
        p.name for p in before}
    with pytest.raises(RunFolderError, match=f"model_path {folder} already holds a run .*expected --resume to "
                                             f"continue it, --overwrite to start over"):
        prepare_run_folder(folder, resume=False, overwrite=False)
    with pytest.raises(RunFolderError, match="--resume and --overwrite are both given"):
        prepare_run_folder(folder, resume=True, overwrite=True)
    prepare_run_folder(folder, resume=True, overwrite=False)
    prepare_run_folder(folder, resume=False, overwrite=True)  # deletes nothing: the inputs are not checked yet
    assert run_files(folder) == before


def test_overwrite_deletes_only_the_previous_runs_files(tmp_path):
    folder = _finished_run(tmp_path / "run")
    prepare_run_folder(folder, resume=False, overwrite=True)
    delete_previous_run(folder)
    assert sorted(p.name for p in folder.iterdir()) == [RUN_LOCK_NAME, "notes.txt"]  # the lock names no run
    trainer = build_trainer(TrainerArgs(model_path=str(folder), iters=1, batch_size=4, resume=True, lr=0.01))
    assert trainer.n_iter == 0  # nothing of the old run is left to resume from


@pytest.mark.parametrize("make", ["missing", "empty", "unrelated files"])
def test_a_folder_without_a_run_is_fine(tmp_path, make):
    folder = tmp_path / "run"
    if make != "missing":
        folder.mkdir()
    if make == "unrelated files":
        (folder / "README").write_text("x")
    prepare_run_folder(folder, resume=False, overwrite=False)
    prepare_run_folder(None, resume=False, overwrite=False)


# ---- one line per failure -------------------------------------------------------------------------------------

def _disk_full() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/runs/x/results.jsonl")


@pytest.mark.parametrize("error, bad_input, code, line", [
    (BadInputError("--task 'qa99': expected one of ..."), (BadInputError,), 2, "--task 'qa99': expected one of ..."),
    (RunFailure("non-finite weights\n at step 3"), (BadInputError,), 1, "non-finite weights at step 3"),
    (FileNotFoundError(errno.ENOENT, "No such file or directory", "x.txt"), (ValueError, OSError), 2,
     "[Errno 2] No such file or directory: 'x.txt'"),
    (_disk_full(), (BadInputError,), 1, "[Errno 28] No space left on device: '/runs/x/results.jsonl'; the last good "
                                        "checkpoint is {folder}/model_5.pth"),
    (ZeroDivisionError("division by zero"), (BadInputError,), 1, "ZeroDivisionError: division by zero"),
], ids=["bad input", "run failure", "setup OSError", "disk full", "bug"])
def test_every_failure_ends_as_one_line_with_the_traceback_in_the_run_folder(tmp_path, capsys, error, bad_input,
                                                                            code, line):
    save_checkpoint(tmp_path / "model_5.pth", {"model_state_dict": {}, "iteration": 5})
    with pytest.raises(SystemExit) as exit_info:
        with exit_with_one_line(lambda: str(tmp_path), bad_input=bad_input):
            raise error
    assert exit_info.value.code == code
    stderr = capsys.readouterr().err
    assert stderr == f"error: {line.format(folder=tmp_path)} (traceback: {tmp_path / 'error.log'})\n"
    log = (tmp_path / "error.log").read_text()
    assert "Traceback (most recent call last)" in log and type(error).__name__ in log


def test_failure_without_a_run_folder_logs_to_a_temporary_file(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "temporary"))
    (tmp_path / "temporary").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        with exit_with_one_line(str(tmp_path / "not_created"), bad_input=(ValueError, OSError)):
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", "text.txt")
    assert exit_info.value.code == 2
    line = capsys.readouterr().err
    log = Path(line.split("(traceback: ")[1].rstrip(")\n"))
    assert line.startswith("error: [Errno 2] No such file or directory: 'text.txt' (traceback: ")
    assert log.parent == tmp_path / "temporary" and "FileNotFoundError" in log.read_text()
    assert not (tmp_path / "not_created").exists()


def test_a_refused_option_before_the_run_folder_exists_is_just_its_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        with exit_with_one_line(str(tmp_path / "not_created")):
            raise BadInputError("--k2 0: expected\n an integer >= 1")
    assert exit_info.value.code == 2 and capsys.readouterr().err == "error: --k2 0: expected an integer >= 1\n"
    assert not (tmp_path / "not_created").exists()


def test_clean_exits_pass_through(tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        with exit_with_one_line(str(tmp_path)):
            raise SystemExit(0)
    assert exit_info.value.code == 0 and not (tmp_path / "error.log").exists()


@pytest.mark.parametrize("argv, message", [
    (["--lr", "abc"], "argument --lr: invalid float value: 'abc'"),
    (["--iters", "1.5"], "argument --iters: invalid int value: '1.5'"),
    (["--batch_size"], "argument --batch_size/--batch-size: expected one argument"),
    (["--lr_scheduler", "linear", "--lr"], "argument --lr: expected one argument"),
])
def test_flags_argparse_cannot_parse_raise_one_line(argv, message):
    parser = raise_on_parse_errors(HfArgumentParser(TrainerArgs))
    with pytest.raises(CommandLineError) as error:
        parser.parse_args_into_dataclasses(args=argv)
    assert str(error.value) == f"{message}: see --help for the flags and their types"


# ---- launchers ------------------------------------------------------------------------------------------------

def _run_launcher(launcher: Path, tmp_path: Path, **variables) -> subprocess.CompletedProcess:
    """The launcher with a stand-in torchrun that prints the arguments it gets, one per line."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "torchrun"
    fake.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@"\n')
    fake.chmod(0o755)
    stub_the_launchers_python(bin_dir)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "RUNS_DIR": str(tmp_path / "runs"), **variables}
    return subprocess.run(["bash", str(launcher)], env=env, capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("launcher", LAUNCHERS, ids=lambda path: path.stem)
@pytest.mark.parametrize("variable, value, expected", [
    ("ITERS", "abc", "expected a positive integer"), ("ITERS", "0", "expected a positive integer"),
    ("NP", "two", "expected a positive integer"), ("BS", "-4", "expected a positive integer"),
    ("TBS", "1e3", "expected a positive integer"), ("VALID_INTERVAL", "ten", "expected an integer"),
    ("WARMUP", "1.5", "expected an integer"), ("SEED", "x", "expected an integer"),
    ("PATIENCE", "", None), ("RESUME", "yes", "expected 0 or 1"), ("OVERWRITE", "2", "expected 0 or 1"),
])
def test_launcher_variables_that_are_not_integers_stop_with_one_line(tmp_path, launcher, variable, value, expected):
    result = _run_launcher(launcher, tmp_path, **{variable: value})
    if expected is None:  # empty means "the default"
        assert result.returncode == 0, result.stderr
        return
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == f"error: {variable}={value}: {expected}\n"


@pytest.mark.parametrize("launcher", LAUNCHERS, ids=lambda path: path.stem)
def test_launcher_resume_and_overwrite_switches(tmp_path, launcher):
    def flags(**variables):
        result = _run_launcher(launcher, tmp_path, **variables)
        assert result.returncode == 0, result.stderr
        return [line for line in result.stdout.splitlines() if line in ("--resume", "--overwrite", "--extra")]

    assert flags() == []
    assert flags(RESUME="1") == ["--resume"]
    assert flags(OVERWRITE="1") == ["--overwrite"]
    assert flags(RESUME="0", OVERWRITE="0") == []
