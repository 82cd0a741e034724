"""The launch variables of every launcher in scripts/ (NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT, LAUNCHER,
ACCELERATE_CONFIG) and the Slurm example, checked on the commands they build: stub `torchrun`, `accelerate`,
`srun` and `scontrol` on PATH record what they are given instead of starting anything (with
`conftest.stub_the_launchers_python`)."""
import os
import shlex
import socket
import subprocess
from pathlib import Path

import pytest

from conftest import stub_the_launchers_python

REPO_ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = REPO_ROOT / "scripts"
SLURM_SCRIPT = SCRIPTS / "slurm" / "multinode.sbatch"
# launcher -> (entry point it starts, variables it needs besides the defaults)
LAUNCHERS = {
    "arxiv/finetune_arxiv_rmt.sh": ("run_finetuning_arxiv_rmt.py", {}),
    "arxiv/finetune_arxiv_baseline.sh": ("run_finetuning_arxiv_rmt.py", {}),
    "arxiv/finetune_arxiv_rmt_curriculum.sh": ("run_finetuning_arxiv_rmt.py", {"SEGMENTS": "2"}),
    "babilong/finetune_babilong_rmt.sh": ("run_finetuning_babilong_rmt.py", {}),
    "babilong/finetune_babilong_rmt_curriculum.sh": ("run_finetuning_babilong_rmt.py", {}),
    "babilong/finetune_babilong_detect_memorize_rmt_curriculum.sh": ("run_finetuning_babilong_rmt.py", {}),
    "babilong/finetune_babilong_reasoning_rmt_curriculum.sh": ("run_finetuning_babilong_rmt.py", {}),
    "babilong/eval_babilong_rmt_from_cpt.sh": ("run_finetuning_babilong_rmt.py", {"MODEL_CPT": "/runs/stage7"}),
}
RECORDER = '#!/usr/bin/env bash\necho "$(basename "$0") node=${SLURM_NODEID:--} $*" >> "$STUB_LOG"\n'
STUB_SRUN = """#!/usr/bin/env bash
# srun stand-in: runs the command once per node of --nodes=N, in turn, as Slurm would on each machine
echo "srun $*" >> "$STUB_LOG"
nodes=1
while [[ $1 == -* ]]; do [[ $1 == --nodes=* ]] && nodes=${1#--nodes=}; shift; done
for (( node = 0; node < nodes; node++ )); do SLURM_NODEID=$node SLURM_PROCID=$node "$@" || exit; done
"""
LAUNCH_VARIABLES = {"NP", "NNODES", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT", "LAUNCHER", "ACCELERATE_CONFIG"}
STUB_SCONTROL = '#!/usr/bin/env bash\n[[ "$1 $2" == "show hostnames" ]] && printf "gpu-017\\ngpu-018\\n"\n'


@pytest.fixture
def stubs(tmp_path):
    """A folder of stub commands and the log they append their arguments to."""
    folder = tmp_path / "bin"
    folder.mkdir()
    for name, text in {"torchrun": RECORDER, "accelerate": RECORDER, "srun": STUB_SRUN,
                       "scontrol": STUB_SCONTROL}.items():
        (folder / name).write_text(text)
        (folder / name).chmod(0o755)
    stub_the_launchers_python(folder)
    return folder, tmp_path / "stub.log"


def run_launcher(script: Path, stubs, variables: dict, cwd: Path, *args) -> tuple:
    """Run `script` with the stubs first on PATH; returns the finished process and the recorded command lines."""
    folder, log = stubs
    inherited = {name: value for name, value in os.environ.items() if name not in LAUNCH_VARIABLES}
    env = {**inherited, "PATH": f"{folder}{os.pathsep}{os.environ['PATH']}", "STUB_LOG": str(log),
           "RUNS_DIR": str(cwd / "runs"), **variables}
    finished = subprocess.run(["bash", str(script), *args], env=env, cwd=cwd, capture_output=True, text=True,
                              timeout=60)
    return finished, log.read_text().splitlines() if log.exists() else []


def option_values(command_line: str) -> dict:
    """{'--option': value} of a recorded command line (flags without a value map to True)."""
    words = shlex.split(command_line)
    values = {}
    for i, word in enumerate(words):
        if word.startswith("--"):
            has_value = i + 1 < len(words) and not words[i + 1].startswith("--")
            values.setdefault(word, words[i + 1] if has_value else True)
    return values


def test_no_launcher_calls_torchrun_or_accelerate_itself():
    for script in SCRIPTS.rglob("*.sh"):
        if script.name != "launch.sh":
            text = script.read_text()
            assert "torchrun " not in text and "accelerate launch" not in text, script


@pytest.mark.parametrize("name", sorted(LAUNCHERS))
def test_single_machine_default_is_torchrun_on_one_node(name, stubs, tmp_path):
    entry_point, needed = LAUNCHERS[name]
    finished, calls = run_launcher(SCRIPTS / name, stubs, {**needed, "NP": "2"}, tmp_path)
    assert finished.returncode == 0, finished.stderr
    assert calls and all(call.startswith("torchrun ") for call in calls)
    options = option_values(calls[0])
    assert {key: options[key] for key in ("--nnodes", "--node_rank", "--master_addr", "--nproc_per_node")} == {
        "--nnodes": "1", "--node_rank": "0", "--master_addr": "127.0.0.1", "--nproc_per_node": "2"}
    assert 1 <= int(options["--master_port"]) <= 65535
    assert f"/{entry_point} " in calls[0]


def test_one_machine_takes_a_free_port_so_two_runs_can_share_it(stubs, tmp_path):
    """Without MASTER_PORT a one-machine launch asks the system for a free port (29500 may be another run's);
    several machines need an agreed port: 29500 unless MASTER_PORT says otherwise."""
    launcher = SCRIPTS / "arxiv" / "finetune_arxiv_rmt.sh"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        ports = set()
        for _ in range(3):
            _, calls = run_launcher(launcher, stubs, {"NP": "1"}, tmp_path)
            ports.add(int(option_values(calls[-1])["--master_port"]))
        assert taken not in ports
    _, calls = run_launcher(launcher, stubs, {"NP": "1", "MASTER_PORT": str(taken)}, tmp_path)
    assert option_values(calls[-1])["--master_port"] == str(taken)
    _, calls = run_launcher(launcher, stubs, {"NP": "1", "NNODES": "2", "NODE_RANK": "0", "MASTER_ADDR": "10.0.0.1"},
                            tmp_path)
    assert option_values(calls[-1])["--master_port"] == "29500"


@pytest.mark.parametrize("name", sorted(LAUNCHERS))
@pytest.mark.parametrize("launcher", ["torchrun", "accelerate"])
def test_multi_machine_variables_reach_the_launch_command(name, launcher, stubs, tmp_path):
    entry_point, needed = LAUNCHERS[name]
    variables = {**needed, "LAUNCHER": launcher, "NP": "4", "NNODES": "2", "NODE_RANK": "1",
                 "MASTER_ADDR": "gpu-017", "MASTER_PORT": "29533", "TBS": "64", "BS": "4"}
    finished, calls = run_launcher(SCRIPTS / name, stubs, variables, tmp_path)
    assert finished.returncode == 0, finished.stderr
    options = option_values(calls[0])
    if launcher == "torchrun":
        expected = {"--nnodes": "2", "--node_rank": "1", "--master_addr": "gpu-017", "--master_port": "29533",
                    "--nproc_per_node": "4"}
    else:
        assert calls[0].startswith("accelerate node=- launch ")
        expected = {"--multi_gpu": True, "--num_processes": "8", "--num_machines": "2", "--machine_rank": "1",
                    "--main_process_ip": "gpu-017", "--main_process_port": "29533", "--mixed_precision": "no"}
    assert {key: options.get(key) for key in expected} == expected
    assert f"/{entry_point} " in calls[0]
    if "--gradient_accumulation_steps" in options:  # training launchers: TBS = BS * NP * NNODES * GRAD_ACC
        assert options["--gradient_accumulation_steps"] == "2"


@pytest.mark.slow
def test_accelerate_config_is_passed_and_one_process_is_not_multi_gpu(stubs, tmp_path):
    config = tmp_path / "accelerate.yaml"
    config.write_text("compute_environment: LOCAL_MACHINE\ndistributed_type: MULTI_GPU\nmixed_precision: bf16\n"
                      "num_processes: 8\nnum_machines: 1\n")
    variables = {"LAUNCHER": "accelerate", "ACCELERATE_CONFIG": str(config), "NP": "1"}
    finished, calls = run_launcher(SCRIPTS / "arxiv" / "finetune_arxiv_rmt.sh", stubs, variables, tmp_path)
    assert finished.returncode == 0, finished.stderr
    options = option_values(calls[0])
    assert options["--config_file"] == str(config) and options["--num_processes"] == "1"
    assert options["--mixed_precision"] == "no" and "--multi_gpu" not in options


@pytest.mark.slow
@pytest.mark.parametrize("variables, expected", [
    ({"NNODES": "two"}, "error: NNODES=two: expected a positive integer"),
    ({"NNODES": "0"}, "error: NNODES=0: expected a positive integer"),
    ({"NNODES": "2", "NODE_RANK": "2", "MASTER_ADDR": "10.0.0.1"},
     "error: NODE_RANK=2: expected an integer from 0 to NNODES-1=1"),
    ({"NNODES": "2", "NODE_RANK": "1"},
     "error: NNODES=2 without MASTER_ADDR: expected the address of the NODE_RANK=0 machine"),
    ({"NNODES": "2", "MASTER_ADDR": "10.0.0.1"},
     "error: NNODES=2 without NODE_RANK: expected this machine's rank, 0 .. 1"),
    ({"NODE_RANK": "-1"}, "error: NODE_RANK=-1: expected an integer from 0 to NNODES-1=0"),
    ({"MASTER_PORT": "70000"}, "error: MASTER_PORT=70000: expected a port number from 1 to 65535"),
    ({"MASTER_PORT": "port"}, "error: MASTER_PORT=port: expected a port number from 1 to 65535"),
    ({"MASTER_ADDR": "a b"}, "error: MASTER_ADDR='a b': expected a host name or IP address"),
    ({"LAUNCHER": "mpirun"}, "error: LAUNCHER=mpirun: expected torchrun or accelerate"),
    ({"ACCELERATE_CONFIG": "{tmp}/a.yaml"}, "error: ACCELERATE_CONFIG={tmp}/a.yaml with LAUNCHER=torchrun: "
                                            "expected LAUNCHER=accelerate"),
    ({"LAUNCHER": "accelerate", "ACCELERATE_CONFIG": "{tmp}/missing.yaml"},
     "error: ACCELERATE_CONFIG={tmp}/missing.yaml: expected an existing config file"),
    ({"LAUNCHER": "accelerate", "ACCELERATE_CONFIG": "{tmp}/broken.yaml"},
     "error: ACCELERATE_CONFIG={tmp}/broken.yaml: expected a config file written by accelerate config"),
    ({"LAUNCHER": "accelerate", "ACCELERATE_CONFIG": "{tmp}/deepspeed.yaml"},
     "error: ACCELERATE_CONFIG={tmp}/deepspeed.yaml asks for distributed_type DEEPSPEED: expected NO, MULTI_CPU "
     "or MULTI_GPU (the Trainer runs torch DDP)"),
    ({"NNODES": "2", "NODE_RANK": "0", "MASTER_ADDR": "10.0.0.1", "NP": "3", "TBS": "32", "BS": "4"},
     "error: TBS=32 is not divisible by BS*NP*NNODES=24: expected a multiple"),
])
@pytest.mark.parametrize("name", ["arxiv/finetune_arxiv_rmt.sh", "babilong/finetune_babilong_rmt.sh",
                                  "babilong/eval_babilong_rmt_from_cpt.sh"])
def test_bad_launch_variables_exit_2_with_one_line(name, variables, expected, stubs, tmp_path):
    (tmp_path / "a.yaml").write_text("compute_environment: LOCAL_MACHINE\ndistributed_type: NO\n")
    (tmp_path / "broken.yaml").write_text("distributed_type: [\n")
    (tmp_path / "deepspeed.yaml").write_text("compute_environment: LOCAL_MACHINE\ndistributed_type: DEEPSPEED\n")
    if "TBS" in variables and name.startswith("babilong/eval"):
        pytest.skip("the evaluation launcher has no total batch")
    variables = {key: value.format(tmp=tmp_path) for key, value in {**LAUNCHERS[name][1], **variables}.items()}
    finished, calls = run_launcher(SCRIPTS / name, stubs, variables, tmp_path)
    assert finished.returncode == 2 and finished.stderr.strip() == expected.format(tmp=tmp_path)
    assert calls == []  # nothing launched


def test_slurm_script_starts_the_launcher_on_every_node_of_the_allocation(stubs, tmp_path):
    slurm = {"SLURM_JOB_NUM_NODES": "2", "SLURM_JOB_NODELIST": "gpu-[017-018]", "SLURM_JOB_ID": "4242",
             "SLURM_GPUS_ON_NODE": "8", "SLURM_SUBMIT_DIR": str(REPO_ROOT), "TBS": "64", "BS": "4"}
    finished, calls = run_launcher(SLURM_SCRIPT, stubs, slurm, tmp_path, "--eval_n_segments", "16")
    assert finished.returncode == 0, finished.stderr
    assert calls[0].startswith("srun --nodes=2 --ntasks-per-node=1 ")
    launches = calls[1:]
    assert len(launches) == 2
    for node, call in enumerate(launches):
        assert call.startswith(f"torchrun node={node} ")
        options = option_values(call)
        assert {key: options[key] for key in ("--nnodes", "--node_rank", "--master_addr", "--master_port",
                                              "--nproc_per_node", "--gradient_accumulation_steps")} == {
            "--nnodes": "2", "--node_rank": str(node), "--master_addr": "gpu-017",
            "--master_port": str(20000 + 4242), "--nproc_per_node": "8", "--gradient_accumulation_steps": "1"}
        assert "/run_finetuning_babilong_rmt.py " in call and call.endswith("--eval_n_segments 16")


@pytest.mark.parametrize("name", ["babilong/finetune_babilong_rmt.sh", "arxiv/finetune_arxiv_rmt.sh"])
@pytest.mark.parametrize("variables, preloaded, warned", [
    ({"SEGMENT_CHECKPOINTING": "1"}, "libtcmalloc_minimal.so.4", False),
    ({"SEGMENT_CHECKPOINTING": "0"}, "", False),
    ({"SEGMENT_CHECKPOINTING": "1", "MALLOC_PRELOAD": ""}, "", False),
    ({"SEGMENT_CHECKPOINTING": "1", "MALLOC_PRELOAD": "libmissing_malloc.so"}, "", True),
])
def test_segment_checkpointing_preloads_the_allocator(name, variables, preloaded, warned, stubs, tmp_path):
    if preloaded and subprocess.run(["env", "true"], env={"LD_PRELOAD": preloaded}, capture_output=True).stderr:
        pytest.skip(f"{preloaded} is not installed")
    folder, log = stubs
    (folder / "torchrun").write_text('#!/usr/bin/env bash\necho "LD_PRELOAD=${LD_PRELOAD:-}" >> "$STUB_LOG"\n')
    finished, calls = run_launcher(SCRIPTS / name, stubs, {"LD_PRELOAD": "", **variables}, tmp_path)
    assert finished.returncode == 0, finished.stderr
    assert calls == [f"LD_PRELOAD={preloaded}"]
    assert ("warning: MALLOC_PRELOAD=libmissing_malloc.so cannot be loaded" in finished.stderr) == warned


@pytest.mark.slow
@pytest.mark.parametrize("bf16, trained_in_bf16", [("1", True), ("0", False)])
def test_offline_babilong_job_trains_under_bf16_as_asked_and_evaluates_in_float32(bf16, trained_in_bf16, stubs,
                                                                                   tmp_path):
    job = SCRIPTS / "babilong" / "offline_babilong_job.sh"
    variables = {"BF16": bf16, "N_TRAIN": "40", "N_TEST": "20", "LONG_SEGMENTS": "4", "PYTHONPATH": str(REPO_ROOT)}
    finished, calls = run_launcher(job, stubs, variables, tmp_path)  # ends at the plot: the stubs train nothing
    trainings = [call for call in calls if "--validate_only" not in call]
    evaluations = [call for call in calls if "--validate_only" in call]
    assert len(trainings) == 2 and len(evaluations) == 2, (calls, finished.stderr)  # short stage, curriculum
    assert all(("--bf16" in shlex.split(call)) == trained_in_bf16 for call in trainings)
    assert not any("--bf16" in shlex.split(call) for call in evaluations)


def test_offline_babilong_job_rejects_an_unknown_bf16_value_before_it_starts(stubs, tmp_path):
    finished, calls = run_launcher(SCRIPTS / "babilong" / "offline_babilong_job.sh", stubs, {"BF16": "maybe"},
                                   tmp_path)
    assert finished.returncode == 2 and finished.stderr.strip() == "error: BF16=maybe: expected auto, 0 or 1"
    assert calls == [] and not (tmp_path / "runs").exists()  # no stories generated, nothing launched
