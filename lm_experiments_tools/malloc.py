"""glibc malloc settings that keep segment checkpointing's CPU memory bounded (README, "Memory-bounded BPTT").

With segment checkpointing each segment's activations are recomputed in the backward pass and freed again. glibc's
malloc raises its mmap threshold to the largest block freed (up to 32 MiB), so after the first step every activation
comes from the heap, and each recompute-then-free cycle leaves holes around longer-lived blocks that the next
segment's blocks do not fit: peak memory grows with the number of segments. A fixed mmap threshold gives every
tensor from 256 KiB on pages of its own, returned to the system when freed (1.11x the 1-segment peak at 32 segments
instead of 1.48x, encoder, README "Memory-bounded BPTT"; at about 1.5x the CPU time per segment, as fresh pages are
zeroed); a trim threshold returns the heap's free top, and at most two arenas keep free space from spreading over
arenas. tcmalloc and jemalloc (the launchers preload tcmalloc: as flat, and faster) need none of this and are left
alone.
"""
import ctypes
import logging
import os
import platform

logger = logging.getLogger(__name__)

# mallopt parameters of glibc's malloc.h
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8
MMAP_THRESHOLD_BYTES = 256 << 10  # blocks from 256 KiB on (activations, gradients) are mapped and unmapped whole
TRIM_THRESHOLD_BYTES = 4 << 20  # free space above this at the heap's top goes back to the system
ARENA_MAX = 2
OTHER_ALLOCATORS = ("tcmalloc", "jemalloc", "mimalloc")


def glibc_malloc_in_use() -> bool:
    """Whether this process allocates with glibc's malloc (glibc, and no other allocator preloaded)."""
    preload = os.environ.get("LD_PRELOAD", "")
    return platform.libc_ver()[0] == "glibc" and not any(name in preload for name in OTHER_ALLOCATORS)


def tune_malloc_for_segment_checkpointing() -> bool:
    """Set glibc's malloc so that segment checkpointing's peak memory does not grow with the segments (see above).

    Affects the allocations made afterwards, which is where the activations are. Returns whether the settings were
    applied: False under another allocator or a C library without mallopt. The entry scripts call it
    (rmt_experiments.memory_options); code that calls modeling_rmt's wrappers with segment_checkpointing=True
    directly should call it first (or preload tcmalloc), since modeling_rmt depends on torch and transformers only.
    """
    if not glibc_malloc_in_use():
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    applied = all(mallopt(parameter, value) == 1 for parameter, value in (
        (M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES), (M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES), (M_ARENA_MAX, ARENA_MAX)))
    if applied:
        logger.info(f"segment checkpointing under glibc's malloc: mmap threshold {MMAP_THRESHOLD_BYTES >> 10} KiB, "
                    f"trim threshold {TRIM_THRESHOLD_BYTES >> 20} MiB, at most {ARENA_MAX} arenas")
    return applied
