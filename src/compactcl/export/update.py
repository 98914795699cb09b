"""Over-the-air update size: the bytes a device holding task t-1's artifact needs for task t's.

The delta is zlib (DEFLATE) with the previous artifact as a preset dictionary — a standard,
decodable format (``zlib.decompressobj(zdict=previous)``); DEFLATE's window makes the previous
file useful up to its last 32 KiB, which covers this project's deployment budgets. The update
is the delta or the whole artifact, whichever is smaller.
"""

from __future__ import annotations

import zlib

__all__ = ["make_update", "apply_update", "update_size"]


def make_update(previous: bytes | None, new: bytes) -> tuple[str, bytes]:
    """("delta", payload) or ("full", new) — whichever is smaller."""
    if previous:
        comp = zlib.compressobj(level=9, zdict=previous[-32768:])
        delta = comp.compress(new) + comp.flush()
        if len(delta) < len(new):
            return "delta", delta
    return "full", new


def apply_update(previous: bytes | None, kind: str, payload: bytes) -> bytes:
    """Rebuild the new artifact on the device."""
    if kind == "full":
        return payload
    dec = zlib.decompressobj(zdict=previous[-32768:])
    return dec.decompress(payload) + dec.flush()


def update_size(previous: bytes | None, new: bytes) -> dict[str, int | str]:
    kind, payload = make_update(previous, new)
    return {"kind": kind, "bytes": len(payload)}
