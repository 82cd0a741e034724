"""Two gloo processes that gather a Python object and end right away: the pattern that aborted at exit ("terminate
called without an active exception", exit code -6, in about 3 of 10 runs on a loaded 2-core machine) while the
process group was left for the interpreter's shutdown to destroy. tests/test_trainer_distributed.py starts it."""
import os

import torch.distributed as dist

from lm_experiments_tools.utils import init_distributed

WORLD_SIZE = 2


def gather_then_exit(rank: int, port: int) -> None:
    """torch.multiprocessing target: join the group as `rank`, gather three times and return (the process ends)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(WORLD_SIZE))
    init_distributed()
    gathered = [None] * WORLD_SIZE
    for _ in range(3):
        dist.all_gather_object(gathered, {"rank": rank, "values": list(range(100))})
