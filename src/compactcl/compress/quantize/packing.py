"""Bit packing: ``n`` integer codes of ``b`` bits -> ``ceil(n * b / 8)`` bytes, and back.

A 4-bit code takes half a byte, a 3-bit code 3/8 of one: the packed artifact's size is the
real size of the codes, not a byte per code. Vectorised with numpy (bits are laid out
little-endian, code after code, with no padding between codes).

>>> import numpy as np
>>> codes = np.array([1, 2, 3, 0, 7], dtype=np.uint8)
>>> packed = pack_bits(codes, 3); packed.nbytes
2
>>> unpack_bits(packed, 3, 5).tolist()
[1, 2, 3, 0, 7]
"""

from __future__ import annotations

import numpy as np

__all__ = ["pack_bits", "unpack_bits", "packed_nbytes", "pack_mask", "unpack_mask"]


def packed_nbytes(n: int, bits: int) -> int:
    return (n * bits + 7) // 8


def pack_bits(codes: np.ndarray, bits: int) -> np.ndarray:
    """Pack unsigned ``codes`` (< 2**bits, any integer dtype) into a uint8 array."""
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be in 1..8, got {bits}")
    codes = np.asarray(codes).reshape(-1)
    if codes.size and (codes.min() < 0 or codes.max() >= 2 ** bits):
        raise ValueError(f"codes must be in [0, {2 ** bits}) to pack into {bits} bits")
    codes = codes.astype(np.uint8)
    if bits == 8:
        return codes.copy()
    planes = (codes[:, None] >> np.arange(bits, dtype=np.uint8)) & 1  # (n, bits), LSB first
    return np.packbits(planes.reshape(-1), bitorder="little")


def unpack_bits(packed: np.ndarray, bits: int, n: int) -> np.ndarray:
    """Inverse of :func:`pack_bits`: the first ``n`` codes as uint8."""
    packed = np.asarray(packed, dtype=np.uint8).reshape(-1)
    if packed.size < packed_nbytes(n, bits):
        raise ValueError(f"{packed.size} bytes cannot hold {n} codes of {bits} bits")
    if bits == 8:
        return packed[:n].copy()
    planes = np.unpackbits(packed, count=n * bits, bitorder="little").reshape(n, bits)
    return (planes << np.arange(bits, dtype=np.uint8)).sum(axis=1, dtype=np.uint8)


def pack_mask(mask: np.ndarray) -> np.ndarray:
    """Boolean mask -> one bit per element."""
    return np.packbits(np.asarray(mask, dtype=bool).reshape(-1), bitorder="little")


def unpack_mask(packed: np.ndarray, n: int) -> np.ndarray:
    return np.unpackbits(np.asarray(packed, dtype=np.uint8), count=n, bitorder="little").astype(bool)
