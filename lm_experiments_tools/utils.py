"""Helpers for experiment scripts: class lookup by name, distributed setup and run bookkeeping.

A script starts with `init_distributed()` (it reads the environment that `torchrun` and `accelerate launch` set),
builds its samplers and data loaders, calls `prepare_run(args, logger)` to record the run next to its checkpoints,
and hands everything to `Trainer`. The process group is torn down when the process exits, whichever way it exits.
Nothing here runs at import time.
"""
import atexit
import dataclasses
import functools
import gc
import importlib
import json
import logging
import os
import platform
import subprocess
import sys
import weakref
from argparse import Namespace
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.distributed as dist

from lm_experiments_tools.errors import BadInputError

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
GIT_DIFF_FILE = "git.diff"

_distributed_context = None  # set once by init_distributed()
_group_holders = weakref.WeakSet()  # objects that release their hold on the process group before a normal teardown


@dataclasses.dataclass(frozen=True)
class DistributedContext:
    """Where this process runs: its rank among all processes, its rank on this node, the process count and device."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def get_cls_by_name(name: str):
    """Import a class (or any attribute) given as 'module:Class'.

    Args:
        name: 'package.module:ClassName', e.g. 'transformers:AutoModelForSequenceClassification'.

    Returns:
        The attribute found.
    """
    module_name, sep, attr_name = name.partition(":")
    if not sep or not module_name or not attr_name:
        raise ValueError(f"class name {name!r} is not of the form 'module:Class'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"cannot import module {module_name!r} of {name!r}: {error}") from error
    if not hasattr(module, attr_name):
        raise ValueError(f"module {module_name!r} has no attribute {attr_name!r} (from {name!r})")
    return getattr(module, attr_name)


def parse_positive_ints(text: str, flag: str) -> list:
    """The comma-separated positive integers of a list flag such as --curriculum 1,2,4.

    Raises:
        BadInputError naming the flag and its value when an item is empty, not an integer or below 1.
    """
    try:
        values = [int(item) for item in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise BadInputError(f"--{flag} {text!r}: expected comma-separated positive integers, e.g. 1,2,4")
    return values


def get_optimizer(name: str):
    """Find an optimizer class by name.

    Args:
        name: a class of `torch.optim` ('AdamW'), of `transformers.optimization` ('Adafactor'), or 'module:Class'.

    Returns:
        The optimizer class (not an instance).
    """
    if ":" in name:
        return get_cls_by_name(name)
    if hasattr(torch.optim, name):
        return getattr(torch.optim, name)
    transformers_optimization = importlib.import_module("transformers.optimization")
    if hasattr(transformers_optimization, name):
        return getattr(transformers_optimization, name)
    raise ValueError(f"unknown optimizer {name!r}: expected a torch.optim or transformers optimizer name "
                     f"(e.g. 'AdamW', 'Adafactor') or 'module:Class'")


def init_distributed() -> DistributedContext:
    """Set up the process group when launched by torchrun or `accelerate launch`; `python script.py` gets one process.

    Idempotent: later calls return the first call's result. NCCL on CUDA, gloo on CPU. The group is destroyed at
    exit (normal end, SystemExit, uncaught exception) unless `destroy_distributed` was called before.

    Returns:
        DistributedContext with rank, local_rank, world_size and device.
    """
    global _distributed_context
    if _distributed_context is not None:
        return _distributed_context
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        # torch.distributed.nn.functional takes `group=group.WORLD` as default arguments, evaluated when it is first
        # imported: imported after the group exists (DistributedDataParallel imports it), it holds the group until
        # the interpreter shuts down, and destroy_process_group cannot free it. Imported first, it holds None.
        importlib.import_module("torch.distributed.nn.functional")
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        atexit.register(_destroy_distributed_at_exit)
    if dist.is_initialized():
        rank, world_size = dist.get_rank(), dist.get_world_size()
    _distributed_context = DistributedContext(rank, local_rank, world_size, device)
    return _distributed_context


def hold_process_group(holder) -> None:
    """Have `holder.release_process_group()` called before the process group is destroyed on a normal ending.

    A DistributedDataParallel wrapper holds the group in its reducer; while anything holds it, destroying the group
    frees nothing and gloo's worker threads live on into interpreter shutdown (see `destroy_distributed`). The
    holder is referenced weakly: one that is garbage already holds nothing.

    Args:
        holder: an object with a `release_process_group()` method that drops its references to the group.
    """
    _group_holders.add(holder)


def destroy_distributed(failed: bool = False) -> None:
    """Tear down the process group (if any) so that the next `init_distributed` starts afresh.

    On a normal ending the group is really freed, which joins gloo's worker threads, before the interpreter shuts
    down: the holders registered with `hold_process_group` (the Trainer's DistributedDataParallel wrapper) let go of
    it and garbage holding it is collected first. A gloo worker thread that outlives this call may finish its last
    collective late, dropping the last reference to a tensor that Python code had used; that takes the GIL, and
    taking the GIL while the interpreter shuts down ends the thread with pthread_exit, whose unwinding through a
    noexcept destructor aborts the process ("terminate called without an active exception", exit code -6).
    Every process first waits at a barrier for all the others, so that none closes its connections (or, hosting
    the store, takes it down) while a slower peer is still in its last collective.

    Args:
        failed: the process is ending on an error. There is no barrier then, because the other processes may never
            reach theirs, and the holders keep the group (so a gloo group held by a DistributedDataParallel
            wrapper is forgotten, not freed), because joining a worker thread would wait for a collective that the
            other processes may never join; NCCL groups are aborted for the same reason.
    """
    global _distributed_context
    if dist.is_available() and dist.is_initialized():
        if not failed:
            _release_process_group()
            dist.barrier()
            dist.destroy_process_group()  # drops the last reference: the group's destructor joins its threads
        elif dist.get_backend() == "nccl":
            dist.distributed_c10d._abort_process_group()
        else:
            dist.destroy_process_group()
    _distributed_context = None


def _release_process_group() -> None:
    for holder in list(_group_holders):
        holder.release_process_group()
    _group_holders.clear()
    gc.collect()  # wrappers of finished runs that sit in reference cycles


def _destroy_distributed_at_exit() -> None:
    # the interpreter records an uncaught exception in sys.last_value before it runs the exit handlers
    destroy_distributed(failed=getattr(sys, "last_value", None) is not None)


def get_distributed_rank() -> int:
    """Rank of this process: from the process group when it exists, else from torchrun's RANK, else 0."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def rank_0(fn):
    """Decorator: run `fn` only on rank 0; other ranks get None."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if get_distributed_rank() == 0:
            return fn(*args, **kwargs)
        return None
    return wrapper


def _args_to_dict(args) -> dict:
    if dataclasses.is_dataclass(args):
        return dataclasses.asdict(args)
    if isinstance(args, Namespace):
        return vars(args).copy()
    if isinstance(args, dict):
        return dict(args)
    raise ValueError(f"args of type {type(args).__name__} is not supported: expected a dataclass, "
                     f"an argparse.Namespace or a dict")


def _run_git(*command: str) -> str | None:
    """Output of a git command in the folder of this package's checkout, None when git is unavailable."""
    repo_dir = Path(__file__).resolve().parent.parent
    try:
        result = subprocess.run(["git", *command], cwd=repo_dir, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout if result.returncode == 0 else None


def collect_run_configuration(args) -> dict:
    """Everything needed to tell a run apart and repeat it.

    Args:
        args: a dataclass, argparse.Namespace or dict of the run's arguments.

    Returns:
        A JSON-serialisable dict: args, environment (CUDA_VISIBLE_DEVICES, world size), machine, git commit.
    """
    commit = _run_git("rev-parse", "HEAD")
    return {
        "args": json.loads(json.dumps(_args_to_dict(args), default=str)),
        "environment": {
            "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "world_size": int(os.environ.get("WORLD_SIZE", "1")),
            "command": sys.argv,
        },
        "machine": {
            "hostname": platform.node(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        },
        "git_commit": commit.strip() if commit else None,
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def prepare_run(args, logger: logging.Logger | None = None) -> None:
    """Create `args.model_path` and write config.json and git.diff there (rank 0 only).

    Args:
        args: the run's arguments (dataclass, argparse.Namespace or dict) with a `model_path` entry; a None
            model_path writes nothing.
        logger: where to report what was written; defaults to this module's logger.
    """
    logger = logger or logging.getLogger(__name__)
    model_path = _args_to_dict(args).get("model_path")
    if model_path is None or get_distributed_rank() != 0:
        return
    model_path = Path(model_path)
    model_path.mkdir(parents=True, exist_ok=True)
    configuration = collect_run_configuration(args)
    (model_path / CONFIG_FILE).write_text(json.dumps(configuration, indent=2))
    (model_path / GIT_DIFF_FILE).write_text(_run_git("diff", "HEAD") or "")
    logger.info(f"run configuration written to {model_path / CONFIG_FILE} (git commit "
                f"{configuration['git_commit']}), uncommitted changes to {model_path / GIT_DIFF_FILE}")
