"""Save checkpoint version 1 to argv[1], then write version 2 in small timed chunks so that a test can kill the
process while the second write is in progress. torch.save is slowed down whatever file it writes to, so a writer
that wrote straight into the target file would be caught with a truncated checkpoint.
"""
import io
import os
import sys
import time

import torch

from lm_experiments_tools.checkpoint import save_checkpoint

CHUNK_BYTES = 64 * 1024
PAUSE_SECONDS = 0.2


def slow_torch_save(obj, file, real_save=torch.save, **kwargs):
    buffer = io.BytesIO()
    real_save(obj, buffer, **kwargs)
    data = buffer.getvalue()
    target = open(file, "wb") if isinstance(file, (str, os.PathLike)) else file
    for start in range(0, len(data), CHUNK_BYTES):
        target.write(data[start:start + CHUNK_BYTES])
        target.flush()
        print(f"wrote {start + CHUNK_BYTES} of {len(data)} bytes", flush=True)
        time.sleep(PAUSE_SECONDS)


def main():
    path = sys.argv[1]
    save_checkpoint(path, {"model_state_dict": {"weight": torch.zeros(10)}, "iteration": 1})
    print("saved version 1", flush=True)
    torch.save = slow_torch_save
    save_checkpoint(path, {"model_state_dict": {"weight": torch.ones(1_000_000)}, "iteration": 2})
    print("saved version 2", flush=True)


if __name__ == "__main__":
    main()
