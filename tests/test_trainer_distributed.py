"""Multi-process training on CPU (gloo), started the way users start it: torchrun, two torchrun agents as two
machines and `accelerate launch`, each through a launcher (scripts/launch.sh), all matching one process with the
same total batch; clean exits on every path (normal end, early stopping, SIGTERM to every rank, an error on one
rank); and the launch variables of every launcher in scripts/."""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch

from conftest import default_sigint
from lm_experiments_tools import TrainerArgs
from lm_experiments_tools.checkpoint import find_latest_checkpoint, load_checkpoint
from lm_experiments_tools.trainer import _deferred_stop_signals
from test_launchers import LAUNCH_VARIABLES
from test_trainer_checkpoint import wait_for_file
from trainer_scripts.collective_then_exit import WORLD_SIZE
from trainer_scripts.tiny_task import build_trainer, dataset_metrics, flat_parameters, keep_errors

REPO_ROOT = Path(__file__).resolve().parent.parent
SCRIPT = Path(__file__).parent / "trainer_scripts" / "train_tiny.py"
LAUNCHER = Path(__file__).parent / "trainer_scripts" / "launch_tiny.sh"
EXIT_RACE_SCRIPT = Path(__file__).parent / "trainer_scripts" / "collective_then_exit.py"
DDP_EXIT_SCRIPT = Path(__file__).parent / "trainer_scripts" / "ddp_then_exit.py"
FAIL_ON_ONE_RANK_SCRIPT = Path(__file__).parent / "trainer_scripts" / "fail_on_one_rank.py"
FAILURE_EXIT_SECONDS = 60  # far below gloo's 30-minute collective timeout, which a wrong exit barrier would wait for
COMMON_FLAGS = {"iters": 3, "lr": 0.05, "valid_interval": 3, "save_interval": 3, "seed": 5}
TIMEOUT = 240
EXIT_RACE_RUNS = 6


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def flag_list(flags: dict) -> list:
    return [item for name, value in flags.items() for item in (f"--{name}", str(value))]


def launcher_env(**variables) -> dict:
    """The test's environment without launch variables, the venv's torchrun/accelerate first on PATH, a free port
    and `variables`."""
    inherited = {name: value for name, value in os.environ.items() if name not in LAUNCH_VARIABLES}
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    return {**inherited, "PATH": path, "OMP_NUM_THREADS": "1", "MASTER_PORT": str(free_port()), **variables}


def start_launcher(env: dict, *args) -> subprocess.Popen:
    return subprocess.Popen(["bash", str(LAUNCHER), *map(str, args)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def finish(process: subprocess.Popen) -> str:
    output, _ = process.communicate(timeout=TIMEOUT)
    assert "terminate called" not in output, output[-3000:]
    return output


def tiny_run_args(tmp_path, name: str) -> list:
    return [*flag_list(COMMON_FLAGS), "--batch_size", "2", "--dropout", "0", "--shuffle", "false",
            "--model_path", tmp_path / name, "--params_out", tmp_path / f"{name}.pt",
            "--results_out", tmp_path / f"{name}.results", "--exit_report", tmp_path / f"{name}.exit"]


def single_process_reference():
    trainer = build_trainer(TrainerArgs(batch_size=4, **COMMON_FLAGS), shuffle=False, keep_for_metrics_fn=keep_errors,
                            metrics_fn=dataset_metrics)
    return flat_parameters(trainer.model), trainer.train(), flat_parameters(trainer.model)


def check_matches_single_process(tmp_path, name: str, n_ranks: int = 2) -> None:
    initial, single_results, single_parameters = single_process_reference()
    parameters = torch.load(tmp_path / f"{name}.pt", weights_only=True)
    assert not torch.allclose(parameters, initial)
    torch.testing.assert_close(parameters, single_parameters, rtol=1e-5, atol=1e-7)
    results = [json.loads((tmp_path / f"{name}.results.rank{rank}.json").read_text()) for rank in range(n_ranks)]
    assert all(result == results[0] for result in results)  # every process took its decisions on the same numbers
    assert not (tmp_path / f"{name}.results.rank{n_ranks}.json").exists()  # exactly n_ranks processes ran
    assert results[0]["n_samples"] == results[0]["n_distinct"] == 24  # both shards gathered
    assert results[0]["mae"] == pytest.approx(single_results["mae"], rel=1e-5)
    check_torn_down(tmp_path / f"{name}.exit", n_ranks)


def check_torn_down(report_prefix: Path, n_ranks: int) -> None:
    """Each rank's last exit handler found no process group and no gloo thread left (the group was freed, not only
    forgotten)."""
    for rank in range(n_ranks):
        report = json.loads(Path(f"{report_prefix}.rank{rank}.json").read_text())
        assert report == {"process_group_left": False, "gloo_threads_left": 0}, report


@pytest.mark.slow
def test_two_processes_match_one_process_with_double_batch(tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    command = [torchrun, "--standalone", "--nproc_per_node", "2", str(SCRIPT),
               *map(str, tiny_run_args(tmp_path, "ddp"))]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert completed.returncode == 0, completed.stdout + completed.stderr
    check_matches_single_process(tmp_path, "ddp")
    assert len(list((tmp_path / "ddp").glob("events.out.tfevents.*"))) == 1  # rank 0 alone writes
    assert (tmp_path / "ddp" / "model_3.pth").exists()


@pytest.mark.slow
def test_two_machines_through_the_launcher_match_one_process(tmp_path):
    """Two torchrun agents rendezvous on 127.0.0.1 as NODE_RANK 0 and 1 of NNODES=2, one process each."""
    env = launcher_env(NNODES="2", NP="1", MASTER_ADDR="127.0.0.1")
    nodes = [start_launcher({**env, "NODE_RANK": str(rank)}, *tiny_run_args(tmp_path, "nodes")) for rank in (0, 1)]
    outputs = [finish(node) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], "\n".join(output[-2000:] for output in outputs)
    check_matches_single_process(tmp_path, "nodes")


@pytest.mark.slow
def test_accelerate_two_processes_match_one_process_whatever_the_config_says(tmp_path):
    """NP and the Trainer's precision win over a config asking for 4 processes, fp16 and one GPU id."""
    config = tmp_path / "accelerate.yaml"
    config.write_text("compute_environment: LOCAL_MACHINE\ndistributed_type: MULTI_GPU\nmixed_precision: fp16\n"
                      "num_processes: 4\nnum_machines: 1\nmachine_rank: 0\ngpu_ids: '0'\nuse_cpu: false\n")
    env = launcher_env(LAUNCHER="accelerate", ACCELERATE_CONFIG=str(config), NP="2")
    launcher = start_launcher(env, *tiny_run_args(tmp_path, "accelerate"))
    output = finish(launcher)
    assert launcher.returncode == 0, output[-3000:]
    check_matches_single_process(tmp_path, "accelerate")  # fp16 autocast would not match to 1e-5


def interruptible_args(model_path, *extra) -> list:
    """20 steps with dropout, shuffled data, a linear schedule and checkpoints every 5 steps."""
    return ["--model_path", model_path, "--iters", "20", "--batch_size", "2", "--lr", "0.05", "--lr_scheduler",
            "linear", "--num_warmup_steps", "3", "--num_training_steps", "20", "--valid_interval", "5",
            "--save_interval", "5", "--save_best", "--log_interval", "5", "--seed", "3", *extra]


def command_line(process: psutil.Process) -> list:
    """The process's arguments; [] for one that has ended (a launcher's short-lived helpers end while listed)."""
    try:
        return process.cmdline()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return []


def training_ranks(launcher: subprocess.Popen) -> list:
    """The worker processes under a launcher (not the torchrun agent itself)."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        workers = [child for child in psutil.Process(launcher.pid).children(recursive=True)
                   if str(SCRIPT) in (arguments := command_line(child))
                   and not any("torchrun" in arg for arg in arguments)]
        if len(workers) == 2:
            return workers
        time.sleep(0.05)
    raise AssertionError("the two training processes did not start")


@pytest.mark.slow
def test_sigterm_to_every_rank_saves_one_checkpoint_and_resume_equals_uninterrupted(tmp_path):
    env = launcher_env(NP="2")
    reference = start_launcher(env, *interruptible_args(tmp_path / "reference", "--params_out", tmp_path / "ref.pt"))
    output = finish(reference)
    assert reference.returncode == 0, output[-3000:]

    run = tmp_path / "run"
    launcher = start_launcher(launcher_env(NP="2"), *interruptible_args(run, "--step_sleep", "0.1", "--exit_report",
                                                                        tmp_path / "exit"))
    ranks = training_ranks(launcher)
    wait_for_file(run / "model_5.pth", launcher)
    for rank in ranks:  # as a cluster does at preemption
        rank.send_signal(signal.SIGTERM)
    output = finish(launcher)
    assert launcher.returncode == 0, output[-3000:]
    assert output.count("SIGTERM received: stopped after step") == 1, output[-3000:]
    stopped_at = load_checkpoint(find_latest_checkpoint(run))
    assert 5 < stopped_at["iteration"] < 20 and len(stopped_at["rng_states"]) == 2  # both ranks saved together
    interval_checkpoints = {f"model_{step}.pth" for step in (5, 10, 15)}
    extra_checkpoints = {path.name for path in run.glob("model_*.pth")} - interval_checkpoints - {"model_best.pth"}
    assert extra_checkpoints <= {f"model_{stopped_at['iteration']}.pth"}
    check_torn_down(tmp_path / "exit", 2)

    resumed = start_launcher(env, *interruptible_args(run, "--resume", "--params_out", tmp_path / "resumed.pt"))
    output = finish(resumed)
    assert resumed.returncode == 0, output[-3000:]
    assert f"resuming from {run / 'model_{}.pth'.format(stopped_at['iteration'])}" in output
    assert torch.equal(torch.load(tmp_path / "resumed.pt", weights_only=True),
                       torch.load(tmp_path / "ref.pt", weights_only=True))


@pytest.mark.slow
def test_ctrl_c_through_the_launcher_saves_and_exits_130_with_one_line(tmp_path):
    run = tmp_path / "run"
    launcher = subprocess.Popen(["bash", str(LAUNCHER), *map(str, interruptible_args(run, "--step_sleep", "0.1"))],
                                env=launcher_env(NP="2"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                preexec_fn=default_sigint,  # a suite run as a background job inherits it ignored
                                start_new_session=True)  # its own terminal group: Ctrl-C signals that group
    training_ranks(launcher)
    wait_for_file(run / "model_5.pth", launcher)
    os.killpg(launcher.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
    output = finish(launcher)
    assert launcher.returncode == 130, output[-3000:]
    stopped_at = load_checkpoint(find_latest_checkpoint(run))["iteration"]
    assert 5 < stopped_at < 20
    # the one report of the interrupt is the main process's, naming the checkpoint saved; the launcher adds none
    reports = [line for line in output.splitlines() if "SIGINT" in line or "interrupted" in line]
    assert len(reports) == 1 and f"SIGINT received: stopped after step {stopped_at}, resumable checkpoint " \
        f"{run / f'model_{stopped_at}.pth'}" in reports[0], output[-3000:]
    assert "Traceback" not in output, output[-3000:]


def test_a_late_stop_signal_cannot_kill_a_process_that_is_already_stopping():
    """A rank stopped by another rank's SIGTERM may get its own after training ended; it must still exit 0."""
    default = signal.getsignal(signal.SIGTERM)
    try:
        with _deferred_stop_signals():
            pass
        assert signal.getsignal(signal.SIGTERM) is default  # an ordinary end restores the handlers
        with pytest.raises(SystemExit), _deferred_stop_signals() as received:
            raise SystemExit(0)
        assert signal.getsignal(signal.SIGTERM) is not default
        os.kill(os.getpid(), signal.SIGTERM)  # the late signal is recorded, not fatal
        assert received == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, default)


@pytest.mark.slow
@pytest.mark.parametrize("ending, flags, expected_code", [
    ("early stopping", ["--lr", "1e-30", "--early_stopping_patience", "1", "--valid_interval", "2"], 0),
    ("error on rank 1", ["--fail_at_batch", "4", "--valid_interval", "100"], 1),
])
def test_every_ending_tears_the_process_group_down(tmp_path, ending, flags, expected_code):
    launcher = start_launcher(launcher_env(NP="2"), "--model_path", tmp_path / "run", "--iters", "20",
                              "--batch_size", "2", "--exit_report", tmp_path / "exit", *flags)
    output = finish(launcher)
    assert launcher.returncode == expected_code, output[-3000:]
    if ending == "early stopping":
        assert "early stopping at step 4" in output
        check_torn_down(tmp_path / "exit", 2)
    else:
        # a failing process cannot join its gloo threads: it ends at once, before the exit handlers registered
        # ahead of the process group (the report's) and before an interpreter shutdown that those threads could abort
        assert "failing on purpose on batch 4 of rank 1" in output  # the test script's own traceback
        # the launcher names the first process to fail and its code (an abort would be SIGABRT, see also finish)
        assert re.search(r"^error: process of rank \d exited with code 1 without a report", output, re.M), output[-3000:]
        assert not list(tmp_path.glob("exit.rank*.json"))


def run_two_ranks(script: Path, *args, timeout: float = TIMEOUT) -> tuple:
    """Start `script RANK PORT *args` as rank 0 and rank 1 of a gloo group; their exit codes and outputs."""
    port = str(free_port())
    processes = [subprocess.Popen([sys.executable, str(script), str(rank), port, *map(str, args)],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  env={**os.environ, "OMP_NUM_THREADS": "1"})
                 for rank in range(WORLD_SIZE)]
    try:
        outputs = [process.communicate(timeout=timeout)[0] for process in processes]
    finally:
        for process in processes:
            process.kill()
    return [process.returncode for process in processes], outputs


@pytest.mark.slow
def test_processes_ending_right_after_a_collective_exit_cleanly():
    """The exit race behind 'terminate called without an active exception' (3 of 10 runs aborted before
    init_distributed registered the teardown)."""
    for _ in range(EXIT_RACE_RUNS):
        codes, outputs = run_two_ranks(EXIT_RACE_SCRIPT)
        assert codes == [0] * WORLD_SIZE, "\n".join(outputs)[-3000:]


@pytest.mark.slow
def test_teardown_joins_gloo_threads_although_a_ddp_model_is_alive():
    """A DistributedDataParallel wrapper alive at exit held the group past destroy_process_group (so did
    torch.distributed.nn.functional's default arguments), and gloo's threads ran on into interpreter shutdown,
    where one taking the GIL aborts the process: the library's teardown frees the group and joins them."""
    codes, outputs = run_two_ranks(DDP_EXIT_SCRIPT)
    assert codes == [0] * WORLD_SIZE, "\n".join(outputs)[-3000:]
    for output in outputs:
        assert "gloo threads while training: 3" in output and "gloo threads left: 0" in output, output[-3000:]


@pytest.mark.slow
def test_no_process_tears_down_while_another_is_still_working():
    """Rank 1 ends right after the last collective, rank 0 works 2 s longer: rank 1 waits for it at exit instead of
    destroying its group and ending while its peer still runs."""
    codes, outputs = run_two_ranks(EXIT_RACE_SCRIPT, 2)
    assert codes == [0] * WORLD_SIZE, "\n".join(outputs)[-3000:]
    rank0_done = float(outputs[0].split("done ")[1].split()[0])
    rank1_torn_down = float(outputs[1].split("torn down ")[1].split()[0])
    assert rank1_torn_down >= rank0_done, outputs


@pytest.mark.slow
def test_a_failure_on_one_rank_ends_every_process_at_once():
    """The exit barrier is for normal endings only: a rank failing through exit_with_one_line skips it."""
    codes, outputs = run_two_ranks(FAIL_ON_ONE_RANK_SCRIPT, timeout=FAILURE_EXIT_SECONDS)
    assert codes == [1] * WORLD_SIZE, "\n".join(outputs)[-3000:]
    assert "rank 1: error: failing on purpose on rank 1" in outputs[1]
