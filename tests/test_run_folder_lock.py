"""One writer per run folder (lm_experiments_tools.run_folder.lock_run_folder), with real processes: a second live
run is refused naming the holder, a killed holder blocks no one, and the entry script refuses before writing, in
one process or under torchrun."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import TINY_BERT

REPO_ROOT = Path(__file__).resolve().parent.parent
# lock the folder argv[1], say so by creating argv[2], then hold the lock until killed
HOLD = ("import pathlib, sys, time\n"
        "from lm_experiments_tools.run_folder import lock_run_folder\n"
        "lock_run_folder(sys.argv[1])\n"
        "pathlib.Path(sys.argv[2]).touch()\n"
        "time.sleep(120)\n")
TRY = ("import sys\n"
       "from lm_experiments_tools.run_folder import lock_run_folder, RunFolderLockedError\n"
       "try:\n"
       "    lock_run_folder(sys.argv[1])\n"
       "except RunFolderLockedError as error:\n"
       "    sys.exit(f'error: {error}')\n"
       "print('locked')\n")
READY_TIMEOUT_S = 60
TORCHRUN_TIMEOUT_S = 240
TORCHRUN_LOG_LINE = re.compile(r"^[IWE]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ torch/distributed/")  # torchrun's own log


def python(code: str, *args) -> list:
    return [sys.executable, "-c", code, *map(str, args)]


@pytest.fixture
def holder(tmp_path):
    """A live process holding the lock of tmp_path/run; killed (SIGKILL) at the end if still alive."""
    folder, ready = tmp_path / "run", tmp_path / "ready"
    process = subprocess.Popen(python(HOLD, folder, ready), cwd=REPO_ROOT)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not ready.exists():
        assert process.poll() is None, "the holder ended before taking the lock"
        assert time.monotonic() < deadline, "the holder did not take the lock in time"
        time.sleep(0.05)
    yield folder, process
    process.kill()
    process.wait()


@pytest.mark.slow
def test_a_second_process_is_refused_naming_the_holder(holder):
    folder, process = holder
    result = subprocess.run(python(TRY, folder), capture_output=True, text=True, cwd=REPO_ROOT)
    assert result.returncode == 1 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"in use by another run (pid {process.pid} on " in lines[0]


@pytest.mark.slow
def test_a_killed_holder_does_not_block(holder):
    folder, process = holder
    process.send_signal(signal.SIGKILL)
    process.wait()
    result = subprocess.run(python(TRY, folder), capture_output=True, text=True, cwd=REPO_ROOT)
    assert result.returncode == 0 and result.stdout.strip() == "locked", result.stderr


def entry_script_args(tmp_path, folder) -> list:
    """A tiny BABILong training run into `folder`."""
    config = tmp_path / "bert.json"
    config.write_text(json.dumps(TINY_BERT))
    return ["run_finetuning_babilong_rmt.py", "--model_cfg", str(config), "--input_size", "32", "--num_mem_tokens",
            "2", "--num_valid_samples", "2", "--batch_size", "2", "--iters", "2", "--model_path", str(folder)]


def folder_contents(folder: Path) -> dict:
    return {path.name: path.read_bytes() for path in folder.iterdir()}


@pytest.mark.slow
@pytest.mark.parametrize("flags", [[], ["--resume"]])
def test_the_entry_script_refuses_a_folder_in_use_before_writing(holder, tmp_path, flags):
    folder, process = holder
    result = subprocess.run([sys.executable, *entry_script_args(tmp_path, folder), *flags],
                            capture_output=True, text=True, cwd=REPO_ROOT)
    lines = result.stderr.splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr  # refused before anything is loaded or logged
    assert lines[0].startswith("error: ") and f"in use by another run (pid {process.pid} on " in lines[0]
    assert sorted(path.name for path in folder.iterdir()) == [".run.lock"]


@pytest.mark.slow
def test_under_torchrun_every_process_stops_and_the_run_says_so_in_one_line(holder, tmp_path):
    folder, process = holder
    before = folder_contents(folder)
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    result = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", *entry_script_args(tmp_path, folder)],
                            capture_output=True, text=True, cwd=REPO_ROOT, timeout=TORCHRUN_TIMEOUT_S,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    lines = result.stderr.splitlines()
    # the processes' own output: the main process's refusal alone; then torchrun's report of their exit codes
    assert result.stdout == "" and len(lines) > 1 and TORCHRUN_LOG_LINE.match(lines[1]), result.stderr
    assert f"error: model_path {folder} is in use by another run (pid {process.pid} on " in lines[0], lines[0]
    assert [line for line in lines if "error:" in line] == lines[:1], result.stderr
    assert set(re.findall(r"exitcode\s*:\s*(-?\d+)", result.stderr)) == {"2"}, result.stderr  # both: bad input
    assert result.returncode == 1  # torchrun's own code for any failed process
    assert folder_contents(folder) == before  # no error log of any process in the folder the other run holds
