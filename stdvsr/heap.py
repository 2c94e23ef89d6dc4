"""How the process's C allocator treats the memory a training step frees (imported by the ``stdvsr`` command at
start-up, so it does not import torch)."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os

#: glibc's mallopt parameters (malloc.h) and what :func:`keep_freed_memory` sets them to
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MALLOC_SETTINGS = {M_MMAP_THRESHOLD: 64 << 20, M_TRIM_THRESHOLD: 512 << 20}


@functools.cache
def keep_freed_memory() -> bool:
    """Let glibc's malloc keep the memory a training step frees for the next step, instead of giving it back to
    the system and faulting it in again, zeroed, page by page. Called once per process by the ``stdvsr`` command
    and the pipelines' scripts (:func:`stdvsr.pool.run_script`); returns whether it changed anything.

    Measured (fastdvdnet-quarter's bf16 channels-last step, one thread): 2,500 minor page faults a step with
    glibc's defaults, whose dynamic thresholds still return the step's few-MB activations to the system; 3 with
    allocations under 64 MiB served from the heap and its top trimmed only beyond 512 MiB. A process keeps its
    peak heap instead (it needs that much again at the next step); the numbers computed do not change. Skipped
    where the C library is not glibc, or where the user has set glibc's own ``MALLOC_TRIM_THRESHOLD_`` /
    ``MALLOC_MMAP_THRESHOLD_`` (or preloaded another allocator, which glibc's settings do not reach anyway).
    """
    if any(os.environ.get(name) for name in ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_")):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (macOS, Windows, musl without mallopt)
        return False
    return all(mallopt(param, value) == 1 for param, value in MALLOC_SETTINGS.items())
