"""release_freed_memory gives a fragmented C heap's free pages back to the system (glibc)."""

import ctypes
import os

import pytest

from compactcl.utils.heap import _malloc_trim, release_freed_memory


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(_malloc_trim() is None or "malloc" in os.environ.get("LD_PRELOAD", ""),
                    reason="needs glibc's malloc_trim and glibc's heap (no jemalloc/tcmalloc preloaded)")
def test_free_heap_pages_are_returned():
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    block, count = 64 * 1024, 2000  # below glibc's mmap threshold: served from the heap, 128 MiB in all
    blocks = [libc.malloc(block) for _ in range(count)]
    assert all(blocks)
    for b in blocks:
        ctypes.memset(b, 1, block)  # touched: resident
    for i, b in enumerate(blocks):
        if i % 10:
            libc.free(b)  # every tenth block stays: the free space is fragmented, not at the heap's top
    held = _rss_bytes()
    assert release_freed_memory() is True
    trimmed = _rss_bytes()
    for b in blocks[::10]:
        libc.free(b)
    assert held - trimmed > 0.5 * count * block * 0.9, (held, trimmed)  # most of the 115 MiB freed came back
