"""Distributed set-up: the process group under torchrun or `accelerate launch`, this process's rank and device.

A script starts with `init_distributed()` (it reads the environment that `torchrun` and `accelerate launch` set),
builds its samplers and data loaders and hands everything to `Trainer`. The process group is torn down when the
process exits, whichever way it exits. Nothing here runs at import time.
"""
import atexit
import dataclasses
import functools
import gc
import importlib
import logging
import os
import sys
import weakref
from collections.abc import Callable
from typing import NoReturn

import torch
import torch.distributed as dist

from .errors import RUN_FAILURE_EXIT_CODE

_distributed_context = None  # set once by init_distributed()
_group_holders = weakref.WeakSet()  # objects that release their hold on the process group before a normal teardown
_threads_left_behind = False  # a failure tore a multi-process group down without joining its worker threads


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


def init_distributed() -> DistributedContext:
    """Set up the process group when launched by torchrun or `accelerate launch`; `python script.py` gets one process.

    Idempotent: later calls return the first call's result. NCCL on CUDA, gloo on CPU. The group is destroyed at
    exit (normal end, SystemExit, uncaught exception) unless `destroy_distributed` was called before; after an
    uncaught exception the process ends as `exit_after_failure` ends it.

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


class MainProcessRefused(Exception):
    """Raised on the other processes when a decision of the main process (`decide_on_main_process`) failed; the
    main process reports the cause itself, so that a run ends with one line, not one per process."""

    def __init__(self, exit_code: int):
        super().__init__(f"the main process refused to go on (exit code {exit_code})")
        self.exit_code = exit_code


def decide_on_main_process(decide: Callable[[], None], is_main: bool) -> None:
    """Run `decide` (a check that may raise, such as taking a lock) on the main process only; under torchrun every
    process then learns its outcome, so that all stop at the same point when it raised.

    Without that, the others would go on into their next collective, which the main process never joins: they
    would fail later with a connection error of their own, and write where the main process refused to.

    Raises:
        what `decide` raised, on the main process.
        MainProcessRefused: on the other processes, when `decide` raised; its exit_code is that of the error
            (`exit_code` of BadInputError and RunFailure, else 1).
    """
    error = None
    if is_main:
        try:
            decide()
        except Exception as raised:  # any outcome must reach the others, which wait for it
            error = raised
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        outcome = [None if error is None else getattr(error, "exit_code", RUN_FAILURE_EXIT_CODE)]
        dist.broadcast_object_list(outcome, src=0)
        if not is_main and outcome[0] is not None:
            raise MainProcessRefused(outcome[0])
    if error is not None:
        raise error


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
    global _distributed_context, _threads_left_behind
    if dist.is_available() and dist.is_initialized():
        _threads_left_behind = _threads_left_behind or (failed and dist.get_world_size() > 1)
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


def exit_after_failure(code: int) -> NoReturn:
    """End this process with exit code `code` after a failure, its process group torn down as a failure.

    A process of a multi-process run ends at once (os._exit) once logs and standard streams are flushed: the worker
    threads of its process group could not be joined (see `destroy_distributed`), and a worker thread that is still
    finishing a collective while the interpreter shuts down aborts the process ("terminate called without an active
    exception", exit code -6 instead of `code`). Exit handlers registered before the process group was set up do
    not run on that path. A single process raises SystemExit(code).
    """
    destroy_distributed(failed=True)
    if _threads_left_behind:
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        os._exit(code)
    sys.exit(code)


def _destroy_distributed_at_exit() -> None:
    if not (dist.is_available() and dist.is_initialized()):
        return  # torn down before the exit, normally or by exit_after_failure
    # the interpreter records an uncaught exception in sys.last_value before it runs the exit handlers
    error = getattr(sys, "last_value", None)
    if error is None:
        destroy_distributed()
    else:
        # what the interpreter would have exited with: 130 after Ctrl-C, 1 after any other exception
        exit_after_failure(130 if isinstance(error, KeyboardInterrupt) else 1)


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
