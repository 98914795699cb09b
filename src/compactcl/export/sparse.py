"""Deep Compression's relative-index sparse encoding (Han et al. 2016, section 2). Pure numpy.

Each non-zero is stored as the gap to the previous one in ``idx_bits`` bits; a gap longer
than ``2**idx_bits`` is bridged by filler entries whose value is zero. At 10% density a 4-bit
gap costs ~0.4 bits per weight, where a bitmask costs 1: the difference between ~30x and ~20x
on a 90%-pruned LeNet-300-100.
"""

from __future__ import annotations

import numpy as np

__all__ = ["encode_gaps", "decode_positions", "entries_for", "best_index_bits"]


def entries_for(positions: np.ndarray, idx_bits: int) -> int:
    """How many (gap, value) entries the encoding needs: non-zeros + fillers."""
    gaps = np.diff(positions, prepend=-1)
    return int(positions.size + ((gaps - 1) // (1 << idx_bits)).sum())


def encode_gaps(positions: np.ndarray, idx_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted non-zero positions -> (stored gaps minus one, index into ``positions`` or -1 for fillers).

    >>> g, src = encode_gaps(np.array([2, 20]), 3)   # max gap 8: 20 - 2 = 18 needs two fillers
    >>> g.tolist(), src.tolist()
    ([2, 7, 7, 1], [0, -1, -1, 1])
    """
    positions = np.asarray(positions, dtype=np.int64)
    span = 1 << idx_bits
    gaps = np.diff(positions, prepend=-1)  # >= 1
    fillers = (gaps - 1) // span
    counts = fillers + 1
    total = int(counts.sum())
    stored = np.full(total, span - 1, dtype=np.int64)  # fillers advance a full span
    src = np.full(total, -1, dtype=np.int64)
    last = np.cumsum(counts) - 1  # the real entry closes each run
    stored[last] = gaps - fillers * span - 1
    src[last] = np.arange(positions.size)
    return stored, src


def decode_positions(stored: np.ndarray, n: int) -> np.ndarray:
    """Positions of every entry (fillers included); raises ValueError if they run past ``n``."""
    pos = np.cumsum(np.asarray(stored, dtype=np.int64) + 1) - 1
    if pos.size and (pos[-1] >= n or pos[0] < 0):
        raise ValueError(f"relative indices run past the tensor's {n} values")
    return pos


def best_index_bits(positions: np.ndarray, value_bits: int, choices: range = range(2, 9)) -> tuple[int, int]:
    """(index bits, total payload bits) minimising gaps + values for these non-zeros."""
    costs = [(entries_for(positions, b) * (b + value_bits), b) for b in choices]
    bits, b = min(costs)
    return b, bits
