"""What compute devices this host really has, as the runtimes see them."""

from __future__ import annotations

import ctypes.util
import os
from functools import cache

__all__ = ["cuda_available", "resident_memory_bytes"]


@cache
def cuda_available() -> bool:
    """True when an NVIDIA driver is loadable and reports at least one device."""
    # cuInit honours CUDA_VISIBLE_DEVICES, so a hidden GPU counts as absent.
    name = ctypes.util.find_library("cuda") or "libcuda.so.1"
    try:
        lib = ctypes.CDLL(name)
    except OSError:
        return False
    if lib.cuInit(0) != 0:
        return False
    count = ctypes.c_int(0)
    return lib.cuDeviceGetCount(ctypes.byref(count)) == 0 and count.value > 0


def resident_memory_bytes() -> int:
    """Resident set size of this process (Linux ``/proc``; 0 where unavailable)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE")
