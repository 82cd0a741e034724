"""One writer per run folder (lm_experiments_tools.run_folder.lock_run_folder), with real processes: a second live
run is refused naming the holder, a killed holder blocks no one, and the entry script refuses before writing."""
import json
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


def test_a_second_process_is_refused_naming_the_holder(holder):
    folder, process = holder
    result = subprocess.run(python(TRY, folder), capture_output=True, text=True, cwd=REPO_ROOT)
    assert result.returncode == 1 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"in use by another run (pid {process.pid} on " in lines[0]


def test_a_killed_holder_does_not_block(holder):
    folder, process = holder
    process.send_signal(signal.SIGKILL)
    process.wait()
    result = subprocess.run(python(TRY, folder), capture_output=True, text=True, cwd=REPO_ROOT)
    assert result.returncode == 0 and result.stdout.strip() == "locked", result.stderr


@pytest.mark.parametrize("flags", [[], ["--resume"]])
def test_the_entry_script_refuses_a_folder_in_use_before_writing(holder, tmp_path, flags):
    folder, process = holder
    config = tmp_path / "bert.json"
    config.write_text(json.dumps(TINY_BERT))
    result = subprocess.run([sys.executable, "run_finetuning_babilong_rmt.py", "--model_cfg", str(config),
                             "--input_size", "32", "--num_mem_tokens", "2", "--num_valid_samples", "2",
                             "--batch_size", "2", "--iters", "2", "--model_path", str(folder), *flags],
                            capture_output=True, text=True, cwd=REPO_ROOT)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and f"in use by another run (pid {process.pid} on " in lines[-1], result.stderr
    assert lines[-1].startswith("error: ")
    assert sorted(path.name for path in folder.iterdir()) == [".run.lock"]
