"""Train a DistributedDataParallel model a few steps over gloo with one other process, keep it alive to the end,
and report at exit whether gloo's threads outlived the library's teardown: they must not, because a gloo worker
thread still alive while the interpreter shuts down may take the GIL there and abort the process ("terminate called
without an active exception", exit code -6). tests/test_trainer_distributed.py starts two.

Usage: python ddp_then_exit.py RANK PORT
"""
import atexit
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from lm_experiments_tools.distributed import hold_process_group, init_distributed

WORLD_SIZE = 2
GLOO_THREAD_PREFIXES = ("pt_gloo", "gloo")  # pt_gloo_runloop: worker threads; gloo_tcp_loop: the transport's loop


def gloo_thread_count() -> int:
    """Threads of this process that belong to gloo, found by name in /proc. A thread that ends between the listing
    and the reading of its name is not counted."""
    count = 0
    for tid in os.listdir("/proc/self/task"):
        try:
            count += Path(f"/proc/self/task/{tid}/comm").read_text().startswith(GLOO_THREAD_PREFIXES)
        except FileNotFoundError:
            pass
    return count


class Holder:
    """Holds the process group through its DDP wrapper, as the Trainer does, and lets go of it at teardown."""

    def __init__(self, model: nn.Module):
        self.ddp_model = DistributedDataParallel(model)
        hold_process_group(self)

    def release_process_group(self) -> None:
        self.ddp_model = None


def main():
    rank, port = sys.argv[1], sys.argv[2]
    # registered before init_distributed, so it runs after the teardown registered there
    atexit.register(lambda: print(f"gloo threads left: {gloo_thread_count()}", flush=True))
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, RANK=rank, LOCAL_RANK=rank,
                      WORLD_SIZE=str(WORLD_SIZE))
    init_distributed()
    global holder  # alive until the interpreter shuts down, like a Trainer kept by a script
    holder = Holder(nn.Linear(8, 1))
    optimizer = torch.optim.SGD(holder.ddp_model.parameters(), lr=0.01)
    for _ in range(3):
        holder.ddp_model(torch.randn(4, 8)).pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
        dist.all_reduce(torch.ones(2))  # a tensor that Python code used, as the Trainer's stop flags are
    print(f"gloo threads while training: {gloo_thread_count()}", flush=True)


if __name__ == "__main__":
    main()
