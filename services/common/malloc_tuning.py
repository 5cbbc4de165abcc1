"""glibc's allocator told to keep freed memory for reuse: much faster PyTorch work on a CPU.

Each denoising or training step allocates and frees the same large activation buffers. By
default glibc gives freed memory at the top of the heap back to the kernel as soon as more
than 128 KiB is free (a trim), so the next step's buffers come back as fresh pages, each
one faulted in and zeroed by the kernel. On the SD 1.5 architecture at 256² on a 2-core
CPU that is millions of page faults and a fifth of the time spent in the kernel; keeping
the freed memory makes a step about 25% faster and leaves the process's memory at its
working set, which the next request needs again anyway (measured in bench/RESULTS.md).

Work done in a thread other than the main one (every generation job runs in one) would
still fault: glibc gives other threads arenas of their own, small mmapped heaps that do not
keep memory like the main one. One arena for the process sends every thread to the main
heap; the generator computes in one thread at a time, so nothing waits on its lock.

The same as starting the process with `MALLOC_TRIM_THRESHOLD_`, `MALLOC_TOP_PAD_`,
`MALLOC_MMAP_THRESHOLD_` and `MALLOC_ARENA_MAX=1`, but done from the code so every way of
starting a service gets it. A no-op where the C library is not glibc (macOS, musl).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8

KEEP_FREED_BYTES = 2**31 - 1  # mallopt takes an int: never trim below 2 GiB free
TOP_PAD_BYTES = 256 * 1024 * 1024  # grow the heap in large steps
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024  # glibc's largest: blocks under it come from the heap


def keep_freed_memory_for_reuse() -> bool:
    """Sets the allocator up for tensor work; True where it took effect."""
    path = ctypes.util.find_library("c")
    if path is None:
        return False
    libc = ctypes.CDLL(path)
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None or not hasattr(libc, "gnu_get_libc_version"):
        return False
    settings = (
        (M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES),
        (M_TRIM_THRESHOLD, KEEP_FREED_BYTES),
        (M_TOP_PAD, TOP_PAD_BYTES),
        (M_ARENA_MAX, 1),
    )
    results = [mallopt(option, value) for option, value in settings]  # each, even after a refusal
    applied = all(result == 1 for result in results)
    if not applied:
        log.warning("glibc refused the allocator settings; tensor work may be slower")
    return applied
