"""Checkpoints and crash safety: atomic writes, exact resume (in process, after SIGKILL, after SIGTERM), safe
loading of corrupted and foreign files, init_checkpoint reset flags, and the non-finite loss guard."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lm_experiments_tools import NonFiniteLossError, TrainerArgs
from lm_experiments_tools.checkpoint import (BEST_CHECKPOINT_NAME, CheckpointError, find_latest_checkpoint,
                                             load_checkpoint, save_checkpoint)
from trainer_scripts.tiny_task import TinyRegressor, build_trainer, flat_parameters

SCRIPTS = Path(__file__).parent / "trainer_scripts"
REQUIRED_CHECKPOINT_KEYS = {"model_state_dict", "optimizer_state_dict", "lr_scheduler_state_dict", "iteration",
                            "epoch", "metrics", "scaler_state_dict", "rng_states", "data_position",
                            "best_metric_value", "validations_without_improvement"}
SUBPROCESS_TIMEOUT = 120


def run_args(model_path, **overrides) -> TrainerArgs:
    """A run with shuffled data, dropout, validation, a linear schedule over 20 steps and momentum."""
    values = dict(model_path=str(model_path), iters=20, batch_size=4, lr=0.05, lr_scheduler="linear",
                  num_warmup_steps=3, num_training_steps=20, valid_interval=5, save_interval=5, save_best=True,
                  log_interval=5, seed=3)
    return TrainerArgs(**{**values, **overrides})


def uninterrupted_parameters(model_path) -> torch.Tensor:
    trainer = build_trainer(run_args(model_path), dropout=0.1)
    trainer.train()
    return flat_parameters(trainer.model)


@pytest.mark.parametrize("continue_with", ["resume", "init_checkpoint_skip_used_data"])
def test_resume_equals_uninterrupted_run(tmp_path, continue_with):
    reference = uninterrupted_parameters(tmp_path / "reference")
    first = build_trainer(run_args(tmp_path / "run", iters=10), dropout=0.1)
    first.train()
    checkpoint = torch.load(tmp_path / "run" / "model_10.pth", weights_only=True)
    assert REQUIRED_CHECKPOINT_KEYS <= set(checkpoint) and checkpoint["iteration"] == 10
    if continue_with == "resume":
        args = run_args(tmp_path / "run", resume=True)
    else:
        args = run_args(tmp_path / "next", init_checkpoint=str(tmp_path / "run" / "model_10.pth"), skip_used_data=True)
    # a fresh model, optimizer and data loader, as in a new process; 64 samples / 4 = 16 batches per epoch
    resumed = build_trainer(args, model_seed=99, dropout=0.1)
    assert resumed.n_iter == 10
    resumed.train()
    assert resumed.n_iter == 20
    assert torch.equal(flat_parameters(resumed.model), reference)


def test_resume_without_checkpoint_starts_a_new_run(tmp_path):
    trainer = build_trainer(run_args(tmp_path, resume=True, iters=2))
    assert trainer.n_iter == 0
    trainer.train()
    assert trainer.n_iter == 2


def test_init_checkpoint_reset_flags(tmp_path):
    build_trainer(run_args(tmp_path / "first", iters=10, lr=0.2, lr_scheduler=None)).train()
    path = str(tmp_path / "first" / "model_10.pth")
    kept = build_trainer(run_args(tmp_path / "kept", init_checkpoint=path, lr=0.01, lr_scheduler=None))
    assert kept.n_iter == 10 and kept.optimizer.state and kept.optimizer.param_groups[0]["lr"] == 0.2
    reset = build_trainer(run_args(tmp_path / "reset", init_checkpoint=path, lr=0.01, lr_scheduler=None,
                                   reset_iteration=True, reset_optimizer=True, reset_lr=True))
    assert reset.n_iter == 0 and not reset.optimizer.state and reset.optimizer.param_groups[0]["lr"] == 0.01
    assert torch.equal(flat_parameters(reset.model), flat_parameters(kept.model))


def test_corrupted_and_foreign_checkpoints_give_clear_errors(tmp_path):
    good = save_checkpoint(tmp_path / "good.pth", {"model_state_dict": TinyRegressor().state_dict()})
    cases = {
        "random.pth": (os.urandom(4096), "cannot load checkpoint"),
        "truncated.pth": (good.read_bytes()[: good.stat().st_size // 2], "cannot load checkpoint"),
        "empty.pth": (b"", "cannot load checkpoint"),
    }
    for name, (content, message) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(CheckpointError, match=f"{message} .*{name}.*expected a checkpoint dict"):
            load_checkpoint(tmp_path / name)
    torch.save([1, 2, 3], tmp_path / "list.pth")
    torch.save({"state_dict": {}}, tmp_path / "other_dict.pth")
    torch.save({"model_state_dict": {}, "callback": TinyRegressor}, tmp_path / "pickled_class.pth")
    for name, message in [("list.pth", "holds a list"), ("other_dict.pth", r"lacks \['model_state_dict'\]"),
                          ("pickled_class.pth", "cannot load checkpoint"), ("missing.pth", "does not exist")]:
        with pytest.raises(CheckpointError, match=f"{message}.*expected a checkpoint dict") as error:
            load_checkpoint(tmp_path / name)
        assert str(tmp_path / name) in str(error.value)

    foreign = torch.nn.Sequential(torch.nn.Linear(3, 5))
    foreign_path = save_checkpoint(tmp_path / "foreign.pth", {"model_state_dict": foreign.state_dict()})
    trainer = build_trainer(TrainerArgs(iters=1))
    with pytest.raises(CheckpointError, match="foreign.pth holds weights of another model than TinyRegressor "
                                              r"\(missing: net.0.bias"):
        trainer.load(foreign_path)
    with pytest.raises(ValueError, match="init_checkpoint='nowhere.pth' does not exist"):
        build_trainer(TrainerArgs(init_checkpoint="nowhere.pth"))


def test_latest_checkpoint_is_the_most_advanced(tmp_path):
    for iteration in (5, 10, 15):
        save_checkpoint(tmp_path / f"model_{iteration}.pth", {"model_state_dict": {}, "iteration": iteration})
    save_checkpoint(tmp_path / BEST_CHECKPOINT_NAME, {"model_state_dict": {}, "iteration": 10})
    (tmp_path / ".model_20.pth.abc.tmp").write_bytes(b"partial")
    assert find_latest_checkpoint(tmp_path) == tmp_path / "model_15.pth"
    save_checkpoint(tmp_path / BEST_CHECKPOINT_NAME, {"model_state_dict": {}, "iteration": 17})
    assert find_latest_checkpoint(tmp_path) == tmp_path / BEST_CHECKPOINT_NAME


class NaNInjector(TinyRegressor):
    """Returns a NaN loss on the forward calls listed in `nan_calls` (0-based)."""

    def __init__(self, nan_calls):
        super().__init__()
        self.nan_calls, self.calls = set(nan_calls), 0

    def forward(self, features, targets=None):
        output = super().forward(features, targets)
        if self.training:
            if self.calls in self.nan_calls:
                output["loss"] = output["loss"] * float("nan")
            self.calls += 1
        return output


def test_nonfinite_steps_are_skipped():
    trainer = build_trainer(TrainerArgs(iters=6, max_nonfinite_steps=3), model=NaNInjector({2, 3}),
                            with_validation=False)
    snapshots = []
    original_step = trainer._train_step
    trainer._train_step = lambda *args: (original_step(*args), snapshots.append(flat_parameters(trainer.model)))[0]
    trainer.train()
    assert trainer.n_iter == 6
    changes = [not torch.equal(after, before) for before, after in zip(snapshots, snapshots[1:])]
    assert changes == [True, False, False, True, True]  # steps 3 and 4 (calls 2, 3) left the model as it was
    assert trainer.nonfinite_streak == 0


def test_a_run_of_nonfinite_steps_stops_keeping_the_last_checkpoint(tmp_path):
    args = TrainerArgs(model_path=str(tmp_path), iters=20, save_interval=2, max_nonfinite_steps=3)
    trainer = build_trainer(args, model=NaNInjector(range(5, 100)), with_validation=False)
    with pytest.raises(NonFiniteLossError, match="3 consecutive steps up to step 8"):
        trainer.train()
    # steps 6 and 7 were skipped, so model_6.pth still holds the step-5 weights; nothing is saved at step 8
    saved = sorted(p.name for p in tmp_path.glob("model_*.pth"))
    assert saved == ["model_2.pth", "model_4.pth", "model_6.pth"]
    for name in saved:
        assert torch.isfinite(flat_parameters(load_checkpoint_model(tmp_path / name))).all()


def load_checkpoint_model(path) -> torch.nn.Module:
    model = TinyRegressor()
    model.load_state_dict(load_checkpoint(path)["model_state_dict"])
    return model


def start_training(model_path, *flags) -> subprocess.Popen:
    command = [sys.executable, str(SCRIPTS / "train_tiny.py"), "--model_path", str(model_path), "--iters", "20",
               "--batch_size", "4", "--lr", "0.05", "--lr_scheduler", "linear", "--num_warmup_steps", "3",
               "--num_training_steps", "20", "--valid_interval", "5", "--save_interval", "5", "--save_best",
               "--log_interval", "5", "--seed", "3", *flags]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for_file(path: Path, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + SUBPROCESS_TIMEOUT
    while not path.exists():
        assert process.poll() is None, f"training ended before writing {path}:\n{process.stdout.read()}"
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.01)


def resume_to_the_end(model_path, params_out) -> torch.Tensor:
    process = start_training(model_path, "--resume", "--params_out", str(params_out))
    output, _ = process.communicate(timeout=SUBPROCESS_TIMEOUT)
    assert process.returncode == 0, output
    return torch.load(params_out, weights_only=True)


@pytest.mark.slow
def test_sigkill_between_checkpoints_then_resume_equals_uninterrupted(tmp_path):
    reference = uninterrupted_parameters(tmp_path / "reference")
    run = tmp_path / "run"
    process = start_training(run, "--step_sleep", "0.05")
    wait_for_file(run / "model_10.pth", process)
    process.kill()
    process.wait(timeout=SUBPROCESS_TIMEOUT)
    assert process.returncode == -signal.SIGKILL and not (run / "model_20.pth").exists()
    assert torch.equal(resume_to_the_end(run, tmp_path / "params.pt"), reference)


@pytest.mark.slow
def test_sigterm_saves_a_resumable_checkpoint_and_exits_cleanly(tmp_path):
    reference = uninterrupted_parameters(tmp_path / "reference")
    run = tmp_path / "run"
    process = start_training(run, "--step_sleep", "0.05")
    wait_for_file(run / "model_5.pth", process)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=SUBPROCESS_TIMEOUT)
    assert process.returncode == 0, output
    assert "SIGTERM received: stopped after step" in output
    saved = find_latest_checkpoint(run)
    assert 5 < load_checkpoint(saved)["iteration"] < 20, output
    assert torch.equal(resume_to_the_end(run, tmp_path / "params.pt"), reference)


@pytest.mark.slow
def test_kill_while_writing_leaves_the_previous_checkpoint(tmp_path):
    path = tmp_path / "model_best.pth"
    process = subprocess.Popen([sys.executable, str(SCRIPTS / "write_checkpoints_slowly.py"), str(path)],
                               stdout=subprocess.PIPE, text=True)
    lines = iter(process.stdout.readline, "")
    assert next(lines).strip() == "saved version 1"
    assert next(lines).startswith("wrote")  # the second write is under way
    process.kill()
    process.wait(timeout=SUBPROCESS_TIMEOUT)
    assert load_checkpoint(path)["iteration"] == 1
    partial = [p for p in tmp_path.iterdir() if p != path]
    assert len(partial) == 1  # the interrupted temporary file, truncated and never renamed
    with pytest.raises(CheckpointError):
        load_checkpoint(partial[0])
    assert find_latest_checkpoint(tmp_path) == path
