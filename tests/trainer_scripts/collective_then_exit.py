"""Gather a Python object over gloo with one other process and end right away: the pattern that aborted at exit
("terminate called without an active exception", exit code -6, in 3 of 10 runs on a loaded 2-core machine) while
the process group was left for the interpreter's shutdown to destroy. tests/test_trainer_distributed.py starts two.

With LINGER (seconds), rank 0 works that much longer after the collectives and prints when it is done; every rank
prints when its teardown at exit is over, so a test can check that no rank tears down before the others are done.

Usage: python collective_then_exit.py RANK PORT [LINGER]
"""
import atexit
import os
import sys
import time

import torch.distributed as dist

from lm_experiments_tools.distributed import init_distributed

WORLD_SIZE = 2


def main():
    rank, port = sys.argv[1], sys.argv[2]
    linger = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
    # registered before init_distributed, so it runs after the teardown registered there
    atexit.register(lambda: print(f"torn down {time.time()}", flush=True))
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, RANK=rank, LOCAL_RANK=rank,
                      WORLD_SIZE=str(WORLD_SIZE))
    init_distributed()
    gathered = [None] * WORLD_SIZE
    for _ in range(3):
        dist.all_gather_object(gathered, {"rank": int(rank), "values": list(range(100))})
    if linger and rank == "0":
        time.sleep(linger)
        print(f"done {time.time()}", flush=True)


if __name__ == "__main__":
    main()
