"""lm_experiments_tools.launcher: a failed multi-process run ends as its processes' one line and exit code, not as
one line per process followed by torchrun's own report; real torchrun, real worker processes."""
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from lm_experiments_tools.launcher import describe_unreported, summarize

REPO_ROOT = Path(__file__).resolve().parent.parent
TORCHRUN_LOG_LINE = re.compile(r"^[IWE]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ torch/distributed/")
TIMEOUT_S = 180
# A worker that reports a failure the way the entry scripts do (rank 1 after rank 0, so that rank 0 is the first
# reporter), then, once both reported (so that neither is stopped by torchrun before it has said its line), exits
# with that code; or that is killed by SIGKILL.
WORKER = """
import os, sys, time
from pathlib import Path
from lm_experiments_tools.errors import FAILURE_REPORTS_ENV
from lm_experiments_tools.run_folder import report_failure
mode, rank = sys.argv[1], int(os.environ["RANK"])
if mode == "killed":
    if rank == 1:
        os.kill(os.getpid(), 9)
    time.sleep(120)
reports = Path(os.environ[FAILURE_REPORTS_ENV])
while rank == 1 and not (reports / "rank0.json").exists():
    time.sleep(0.05)
line = "error: batch_size=-3 is invalid" if mode == "same" else f"error: shard {rank} is empty"
report_failure(line, 2 if rank == 0 else 1)
while len(list(reports.glob("rank*.json"))) < 2:
    time.sleep(0.05)
sys.exit(2 if rank == 0 else 1)
"""


def launch(tmp_path, mode: str) -> tuple:
    """(exit code, stderr lines other than torchrun's log) of two workers in `mode` under the launcher."""
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    finished = subprocess.run([sys.executable, "-m", "lm_experiments_tools.launcher", "torchrun", "--standalone",
                               "--nproc_per_node", "2", str(worker), mode], capture_output=True, text=True,
                              timeout=TIMEOUT_S, env={**os.environ, "OMP_NUM_THREADS": "1"})
    lines = [line for line in finished.stderr.splitlines() if not TORCHRUN_LOG_LINE.match(line)]
    return finished.returncode, lines


def test_the_same_line_from_every_process_is_printed_once_with_the_first_reporters_code():
    reports = [{"rank": 1, "line": "error: x", "exit_code": 1, "time": 2.0},
               {"rank": 0, "line": "error: x", "exit_code": 2, "time": 1.0}]
    assert summarize(sorted(reports, key=lambda report: report["time"])) == (["error: x"], 2)


def test_different_lines_are_each_printed_with_their_rank():
    reports = [{"rank": 0, "line": "error: a", "exit_code": 2, "time": 1.0},
               {"rank": 1, "line": "error: b", "exit_code": 1, "time": 2.0}]
    assert summarize(reports) == (["rank 0: error: a", "rank 1: error: b"], 2)


def test_a_process_without_a_report_is_named_with_its_signal_or_code():
    assert "rank 3 was killed by SIGKILL" in describe_unreported(3, -9)
    assert "rank 0 exited with code 7" in describe_unreported(0, 7)


@pytest.mark.slow
def test_two_processes_refusing_the_same_input_end_as_one_line_and_exit_code_2(tmp_path):
    code, lines = launch(tmp_path, "same")
    assert (code, lines) == (2, ["error: batch_size=-3 is invalid"])


@pytest.mark.slow
def test_processes_with_different_causes_each_say_theirs_once(tmp_path):
    code, lines = launch(tmp_path, "differ")
    assert (code, lines) == (2, ["rank 0: error: shard 0 is empty", "rank 1: error: shard 1 is empty"])


@pytest.mark.slow
def test_a_killed_process_is_named_in_one_line_with_exit_code_1(tmp_path):
    code, lines = launch(tmp_path, "killed")
    assert code == 1 and len(lines) == 1 and "rank 1 was killed by SIGKILL" in lines[0], lines


@pytest.mark.slow
def test_a_command_that_is_not_a_launcher_is_refused_in_one_line():
    finished = subprocess.run([sys.executable, "-m", "lm_experiments_tools.launcher", "mpirun", "-n", "2"],
                              capture_output=True, text=True, timeout=TIMEOUT_S)
    assert finished.returncode == 2
    assert finished.stderr.splitlines() == ["error: mpirun -n: expected 'torchrun ARGS' or 'accelerate launch ARGS'"]


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["torchrun", "accelerate"])
def test_a_refused_flag_through_scripts_launch_sh_is_one_line_and_exit_code_2(launcher, tmp_path):
    command = f'NP=2 LAUNCHER={launcher}; source scripts/launch.sh; launch run_finetuning_babilong_rmt.py "$@"'
    finished = subprocess.run(["bash", "-c", command, "launch", "--task", "qa1", "--batch_size", "-3",
                               "--model_path", str(tmp_path / "run")], cwd=REPO_ROOT, capture_output=True,
                              text=True, timeout=TIMEOUT_S, env={**os.environ, "OMP_NUM_THREADS": "1"})
    lines = [line for line in finished.stderr.splitlines() if not TORCHRUN_LOG_LINE.match(line)]
    assert (finished.returncode, lines) == (2, ["error: batch_size=-3 is invalid: expected an integer >= 1"])
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_ctrl_c_while_the_entry_script_loads_its_libraries_ends_it_at_once_without_a_traceback():
    process = subprocess.Popen([sys.executable, "run_finetuning_babilong_rmt.py", "--task", "qa1"], cwd=REPO_ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + TIMEOUT_S
    # torch's library mapped and transformers not yet imported: the script is inside its imports
    while not any("libtorch" in (mapped.path or "") for mapped in psutil.Process(process.pid).memory_maps()):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.01)
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=TIMEOUT_S)
    assert process.returncode == -signal.SIGINT and output == ""
