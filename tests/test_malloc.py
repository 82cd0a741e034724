"""glibc malloc tuning for segment checkpointing (lm_experiments_tools.malloc), observed on the allocator itself."""
import subprocess
import sys
from pathlib import Path

import pytest

from lm_experiments_tools import malloc

REPO_ROOT = Path(__file__).resolve().parent.parent
# allocates a 4 MiB block, frees it, allocates again and prints whether the block is mapped (not from the heap)
PROBE = """
import ctypes, sys
from lm_experiments_tools.malloc import tune_malloc_for_segment_checkpointing

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype, libc.malloc.restype, libc.free.argtypes = MallInfo2, ctypes.c_void_p, [ctypes.c_void_p]
if sys.argv[1] == "tuned":
    assert tune_malloc_for_segment_checkpointing()
size = 4 << 20
libc.free(libc.malloc(size))  # mapped either way; by default freeing it raises the mmap threshold above it
block = libc.malloc(size)
print(libc.mallinfo2().hblkhd >= size)
"""


@pytest.mark.slow
@pytest.mark.skipif(not malloc.glibc_malloc_in_use(), reason="glibc's malloc is not this process's allocator")
@pytest.mark.parametrize("mode, mapped", [("default", False), ("tuned", True)])
def test_tuned_glibc_maps_large_blocks_after_a_free(mode, mapped):
    result = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, cwd=REPO_ROOT,
                            env={"PATH": "", "PYTHONPATH": str(REPO_ROOT)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(mapped)


def test_another_allocator_is_left_alone(monkeypatch):
    monkeypatch.setenv("LD_PRELOAD", "libtcmalloc_minimal.so.4")
    assert not malloc.glibc_malloc_in_use() and not malloc.tune_malloc_for_segment_checkpointing()
