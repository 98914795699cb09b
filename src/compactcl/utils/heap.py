"""Handing freed memory back to the system between a run's tasks.

glibc keeps freed heap blocks for reuse; a task's training, scoring and compression free and
reallocate blocks of every size, the next task's allocations land around the ones still free, and
the process's resident size (RSS) creeps up task after task. ``malloc_trim(0)`` returns the free
pages of every arena (in well under a millisecond). Where there is no glibc (macOS, musl, Windows)
it does nothing. No ``gc.collect()`` here: with torch loaded a full collection takes ~50 ms, and a
run's tensors are freed by reference counting as soon as a task lets go of them.
"""

from __future__ import annotations

import ctypes
import functools
import sys
from typing import Callable

__all__ = ["release_freed_memory"]


def release_freed_memory() -> bool:
    """Give the C heap's free pages back to the system; True when the heap was trimmed."""
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
