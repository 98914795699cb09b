"""Handing freed memory back to the system between a run's tasks.

glibc keeps freed heap blocks for reuse; a task's training, scoring and compression free and
reallocate blocks of every size, the next task's allocations land around the ones still free, and
the process's resident size (RSS) creeps up task after task. ``malloc_trim(0)`` returns the free
pages of every arena. Where there is no glibc (macOS, musl, Windows) this only collects garbage.
"""

from __future__ import annotations

import ctypes
import functools
import gc
import sys
from typing import Callable

__all__ = ["release_freed_memory"]


def release_freed_memory() -> bool:
    """Collect garbage, then give the C heap's free pages back; True when the heap was trimmed."""
    gc.collect()
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        trim = ctypes.CDLL(None).malloc_trim  # the process's own C library; musl has none
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int  # int malloc_trim(size_t pad)
    return trim
