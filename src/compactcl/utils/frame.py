"""The compact frame of a packed artifact (``.ccl`` format /3): a JSON header DEFLATE'd, then raw data.

::

    magic     4 bytes   b"CCL3"
    digest    8 bytes   the first 8 bytes of sha256 over everything after them (catches damage)
    length    uvarint   bytes of the compressed header
    header    raw DEFLATE (RFC 1951) of the header's compact JSON
    data      the rest: what the header says it is

A small model's header is a large share of its file (a 6 KB artifact spent 2.7 KB on JSON and
safetensors framing); DEFLATE shrinks it ~4x with the standard library alone. Reading is bounded:
the header inflates to at most :data:`MAX_HEADER` bytes, so a crafted file cannot be a
decompression bomb.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from typing import Any

from ..errors import CompactCLError

__all__ = ["MAGIC", "MAX_HEADER", "pack_frame", "is_frame", "read_frame"]

MAGIC = b"CCL3"
DIGEST_BYTES = 8
MAX_HEADER = 2 ** 20  # inflated JSON header; real ones are a few KB


def _uvarint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _read_uvarint(data: bytes, pos: int) -> tuple[int, int]:
    n = shift = 0
    while pos < len(data) and shift < 35:
        byte = data[pos]
        n |= (byte & 0x7F) << shift
        pos += 1
        if not byte & 0x80:
            return n, pos
        shift += 7
    raise ValueError("the header length is cut off")


def pack_frame(header: dict[str, Any], data: bytes) -> bytes:
    """The file: magic, digest, the DEFLATE'd JSON ``header``, ``data``."""
    comp = zlib.compressobj(9, zlib.DEFLATED, -15, 9)
    z = comp.compress(json.dumps(header, separators=(",", ":")).encode()) + comp.flush()
    body = _uvarint(len(z)) + z + data
    return MAGIC + hashlib.sha256(body).digest()[:DIGEST_BYTES] + body


def is_frame(prefix: bytes) -> bool:
    """True when a file starting with ``prefix`` is a compact frame."""
    return prefix[: len(MAGIC)] == MAGIC


def read_frame(raw: bytes, source: str) -> tuple[dict[str, Any], bytes]:
    """(header, data) of a framed file's bytes, after checking its digest."""
    start = len(MAGIC) + DIGEST_BYTES
    if not is_frame(raw) or len(raw) < start:
        raise CompactCLError(f"{source}: not a compactcl artifact, or truncated; export it again.")
    body = raw[start:]
    if hashlib.sha256(body).digest()[:DIGEST_BYTES] != raw[len(MAGIC): start]:
        raise CompactCLError(f"{source}: checksum mismatch, the file was changed, truncated or corrupted after "
                             "saving. Export it again from its run folder.")
    try:
        n, pos = _read_uvarint(body, 0)
        if pos + n > len(body):
            raise ValueError("the header runs past the end of the file")
        inflate = zlib.decompressobj(-15)
        text = inflate.decompress(body[pos: pos + n], MAX_HEADER)
        if inflate.unconsumed_tail or not inflate.eof:
            raise ValueError(f"the header does not inflate to one JSON text of at most {MAX_HEADER:,} bytes")
        header = json.loads(text)
    except (ValueError, zlib.error, RecursionError, UnicodeDecodeError) as e:
        raise CompactCLError(f"{source}: its header cannot be read ({e}); the file is corrupted or crafted.") from e
    if not isinstance(header, dict):
        raise CompactCLError(f"{source}: its header is not a JSON object; the file is corrupted.")
    return header, body[pos + n:]
