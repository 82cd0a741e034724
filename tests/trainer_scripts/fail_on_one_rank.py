"""Rank 1 fails inside exit_with_one_line (as the entry points do) while rank 0 waits in a collective that rank 1
never joins: both must end with exit code 1 at once, none waiting at the exit barrier of a normal ending.
tests/test_trainer_distributed.py starts two.

Usage: python fail_on_one_rank.py RANK PORT
"""
import os
import sys

import torch
import torch.distributed as dist

from lm_experiments_tools.distributed import init_distributed
from lm_experiments_tools.run_folder import exit_with_one_line

WORLD_SIZE = 2


def main():
    rank, port = sys.argv[1], sys.argv[2]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, RANK=rank, LOCAL_RANK=rank,
                      WORLD_SIZE=str(WORLD_SIZE))
    context = init_distributed()
    with exit_with_one_line():
        if context.rank == 1:
            raise RuntimeError("failing on purpose on rank 1")
        dist.all_reduce(torch.zeros(1))


if __name__ == "__main__":
    main()
