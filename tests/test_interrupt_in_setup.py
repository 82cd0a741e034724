"""Ctrl-C before training starts, with real processes: the BABILong entry script, run directly and through
scripts/launch.sh under torchrun, ends with one line saying that nothing was saved and exit code 130.

The run is held in its setup deterministically by the bAbI training file: a named pipe, which the run opens and
reads like any file while the test holds it open for writing and writes nothing. SIGINT is sent once every process
of the run has it open."""
import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from babilong import generate_babi
from conftest import TINY_BERT, default_sigint

REPO_ROOT = Path(__file__).resolve().parent.parent
ENTRY_SCRIPT = "run_finetuning_babilong_rmt.py"
INTERRUPTED = "interrupted before training started: nothing saved"
TIMEOUT_S = 240


def babi_with_a_pipe(folder: Path) -> Path:
    """A bAbI folder whose qa1 training file is a named pipe (returned)."""
    generate_babi.generate(str(folder), ["qa1"], 20, 10, seed=0)
    train = Path(generate_babi.task_file(str(folder), "qa1", "train"))
    train.unlink()
    os.mkfifo(train)
    return train


def run_args(tmp_path) -> list:
    """A tiny qa1 training run (its bAbI training file a named pipe) into tmp_path/run."""
    config = tmp_path / "bert.json"
    config.write_text(json.dumps(TINY_BERT))
    return ["--task", "qa1", "--babi_path", str(tmp_path / "babi"), "--model_cfg", str(config), "--input_size", "32",
            "--num_mem_tokens", "2", "--max_n_segments", "4", "--num_valid_samples", "2", "--batch_size", "2",
            "--iters", "2", "--model_path", str(tmp_path / "run")]


def open_pipe_for_writing(pipe: Path, process: subprocess.Popen) -> int:
    """The pipe's write end, once the run has opened it to read (a writer cannot open it before a reader)."""
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        try:
            return os.open(pipe, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as error:
            if error.errno != errno.ENXIO:
                raise
        assert process.poll() is None, f"the run ended before reading its bAbI files:\n{process.communicate()}"
        assert time.monotonic() < deadline, "the run did not open its bAbI training file"
        time.sleep(0.05)


def holds_open(pid: int, pipe: Path) -> bool:
    try:
        return any(os.readlink(f"/proc/{pid}/fd/{fd}") == str(pipe) for fd in os.listdir(f"/proc/{pid}/fd"))
    except FileNotFoundError:  # the process ended, or closed that descriptor while it was listed
        return False


def wait_until_reading(pipe: Path, process: subprocess.Popen, n_processes: int) -> None:
    """Until `n_processes` processes of the entry script under `process` (itself included) read the pipe."""
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        candidates = [process.pid] + [child.pid for child in psutil.Process(process.pid).children(recursive=True)]
        if sum(holds_open(pid, pipe) for pid in candidates) == n_processes:
            return
        assert process.poll() is None, f"the run ended in its setup:\n{process.communicate()}"
        assert time.monotonic() < deadline, f"{n_processes} processes did not open the bAbI training file"
        time.sleep(0.05)


def interrupt_in_setup(command: list, pipe: Path, n_processes: int, signal_target) -> tuple:
    """(exit code, output lines) of `command` sent SIGINT by `signal_target(process)` while it reads `pipe`."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"  # the venv's torchrun first
    process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "PATH": path, "OMP_NUM_THREADS": "1"}, preexec_fn=default_sigint,
                               start_new_session=True)  # its own terminal group: Ctrl-C signals that group
    writer = open_pipe_for_writing(pipe, process)
    try:
        wait_until_reading(pipe, process, n_processes)
        signal_target(process)
        output, _ = process.communicate(timeout=TIMEOUT_S)
    finally:
        os.close(writer)
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return process.returncode, output.splitlines()


@pytest.mark.slow
def test_ctrl_c_in_setup_of_a_direct_run_exits_130_with_one_line(tmp_path):
    pipe = babi_with_a_pipe(tmp_path / "babi")
    code, lines = interrupt_in_setup([sys.executable, ENTRY_SCRIPT, *run_args(tmp_path)], pipe, 1,
                                     lambda process: process.send_signal(signal.SIGINT))
    assert code == 130 and lines == [INTERRUPTED], lines
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_ctrl_c_in_setup_through_the_launcher_exits_130_with_one_line(tmp_path):
    pipe = babi_with_a_pipe(tmp_path / "babi")
    launcher = ["bash", "-c", f'NP=2; source scripts/launch.sh; launch {ENTRY_SCRIPT} "$@"', "launch",
                *run_args(tmp_path)]
    # what the terminal does on Ctrl-C: SIGINT to the launcher's group (torchrun runs in a group of its own)
    code, lines = interrupt_in_setup(launcher, pipe, 2, lambda process: os.killpg(process.pid, signal.SIGINT))
    assert code == 130 and lines == [INTERRUPTED], lines  # the launcher claims no checkpoint
    assert not (tmp_path / "run").exists()
