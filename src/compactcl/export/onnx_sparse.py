"""Sparse weight codes in the ONNX: per tensor, the smaller of the dense packed codes or a
relative-index form, decoded in the graph by ops ONNX Runtime constant-folds at load.

A pruned layer's codes are one *background* code (the one its zeros have) almost everywhere.
The sparse form stores, for every other code, the gap from the previous one (bit-packed at
the index width that costs least) and the code itself (bit-packed at the layer's width), and
rebuilds the dense codes in the graph with three ops::

    dense = ScatterElements(Expand(background, [n]), CumSum(gaps), codes)

A gap longer than the index width can say is bridged by *filler* entries that advance the
widest gap and write the background code (Deep Compression's padding, Han et al. 2016). The
``.ccl`` uses skip codes that carry no value instead (:mod:`compactcl.export.sparse`): fewer
bits, but rebuilding that in a graph takes ~10 ops — more bytes than it saves on the small
layers a budget holds — and filtering the skips out needs ``Compress``/``NonZero``, ops ORT
does *not* fold (their output shape depends on values). ``CumSum``, ``Expand`` and
``ScatterElements`` fold to one initializer at load, so inference runs the dense graph as
before; the method's own decode (codebook ``Gather``, scale ``Mul``, mask ``Where``) then reads
these codes unchanged: the form is exact for every method.

ONNX's own ``sparse_initializer`` was measured as the alternative: ORT densifies it at load
too, but it holds unpacked values with 16/32/64-bit absolute indices — 6 bytes per non-zero
at best, where this form costs ``bits + index bits`` (about 1 byte at 4 bits).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..compress.quantize.onnx_graph import DecodeGraph

__all__ = ["SparseCodesGraph", "SPARSE_MODES", "padded_gaps", "sparse_cost_bits"]

SPARSE_MODES = ("auto", "never", "always")
# bytes beyond the payload, after name shortening (measured on real files; tests/test_onnx_sparse.py
# checks the choices they drive): a sparse tensor's 3 ops, its constants and a Split (part) ...
SPARSE_TENSOR_BYTES = 240
# ... and the unpack of a bit width no other codes use yet (BitShift ... ReduceSum, Split);
# a mask and codes rebuilt from one position stream: two tensors' ops, one CumSum
NEW_WIDTH_BYTES = 300
LINKED_BYTES = 360


def padded_gaps(positions: np.ndarray, idx_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted positions -> (gaps, real): ``CumSum(gaps)`` lists the positions, with fillers
    (``real`` False) where a gap exceeds ``2**idx_bits - 1``; the first gap is the first position.

    >>> g, real = padded_gaps(np.array([2, 20]), 3)   # widest gap 7: 18 = 7 + 7 + 4
    >>> g.tolist(), real.tolist()
    ([2, 7, 7, 4], [True, False, False, True])
    """
    top = (1 << idx_bits) - 1
    gaps = np.diff(np.asarray(positions, dtype=np.int64), prepend=0)
    fillers = np.maximum(gaps - 1, 0) // top
    ends = np.cumsum(fillers + 1) - 1
    stored = np.full(int(ends[-1]) + 1 if len(ends) else 0, top, dtype=np.int64)
    stored[ends] = gaps - fillers * top
    real = np.zeros(len(stored), dtype=bool)
    real[ends] = True
    return stored, real


def sparse_cost_bits(positions: np.ndarray, bits: int, idx_bits: int) -> int:
    """Payload bits of the sparse form: one index and one code per entry, fillers included."""
    gaps = np.diff(np.asarray(positions, dtype=np.int64), prepend=0)
    entries = len(gaps) + int((np.maximum(gaps - 1, 0) // ((1 << idx_bits) - 1)).sum())
    return entries * (idx_bits + bits)


class SparseCodesGraph(DecodeGraph):
    """A :class:`DecodeGraph` that stores each codes tensor dense or sparse, whichever is smaller
    (``sparse="auto"``); ``"never"``/``"always"`` force one form (to measure both)."""

    def __init__(self, prefix: str = "q", sparse: str = "auto") -> None:
        if sparse not in SPARSE_MODES:
            raise ValueError(f"sparse must be one of {SPARSE_MODES}, got {sparse!r}")
        super().__init__(prefix)
        self.sparse = sparse

    def finish(self) -> tuple[list[Any], list[Any]]:
        head, self.nodes = self.nodes, []
        pending, self._codes = self._codes, {}
        widths = set(pending)  # bit widths whose unpack the file has anyway
        items = [(bits, flat, shape, out) for bits, group in sorted(pending.items()) for flat, shape, out in group]
        done: set[str] = set()
        if self.sparse != "never":  # a pruned layer's mask and its codes: one position stream for both
            for mask in items:
                for codes in items:
                    if (mask[0] == 1 and codes is not mask and not {mask[3], codes[3]} & done
                            and mask[1].size == codes[1].size and self._store_linked(mask, codes, widths)):
                        done |= {mask[3], codes[3]}
                        break
        for bits, flat, shape, out in items:
            if out not in done and not self._store_sparse(bits, flat, shape, out, widths):
                self._codes.setdefault(bits, []).append((flat, shape, out))
        rebuild, self.nodes = self.nodes, []
        nodes, inits = super().finish()  # the packed blobs' unpack: the sparse forms read their parts from it
        return nodes + rebuild + head, inits

    # ------------------------------------------------------------------------------- costs
    def _plan(self, bits: int, positions: np.ndarray, widths: set[int]) -> tuple[int, int]:
        """(payload bits, index bits) of the cheapest index width for these positions; a width no
        codes use yet also pays for its unpack."""
        return min((sparse_cost_bits(positions, bits, b) + 8 * NEW_WIDTH_BYTES * (b not in widths), b)
                   for b in range(1, 9))

    def _best_bits(self, bits: int, flat: np.ndarray, widths: set[int]) -> int:
        """Estimated bits of the cheaper form of one codes tensor on its own."""
        used, counts = np.unique(flat, return_counts=True)
        positions = np.flatnonzero(flat != used[np.argmax(counts)])
        return min(flat.size * bits, self._plan(bits, positions, widths)[0] + 8 * SPARSE_TENSOR_BYTES)

    # ------------------------------------------------------------------------------- forms
    def _scatter(self, background: int, n: int, where: str | None, values: str | None, out: str,
                 shape: tuple[int, ...]) -> None:
        """``out`` = ``background`` everywhere but ``values`` at ``where``, shaped ``shape``."""
        bg = self.const(np.array(background, np.int64), key=f"bg{background}")
        flat_out = out if shape == (n,) else self.name()
        base = self.op("Expand", [bg, self.shape((n,))], out=None if where else flat_out)
        if where:
            self.op("ScatterElements", [base, where, values], out=flat_out, axis=0)
        if flat_out != out:
            self.op("Reshape", [flat_out, self.shape(shape)], out=out)

    def _where(self, positions: np.ndarray, idx_bits: int) -> tuple[str, np.ndarray]:
        """The positions (and fillers) as a rebuilt int64 tensor; also which entries are real."""
        gaps, real = padded_gaps(positions, idx_bits)
        where = self.op("CumSum", [self.codes(gaps, idx_bits), self.const(np.array(0, np.int64), key="axis0_i64")])
        return where, real

    def _store_sparse(self, bits: int, flat: np.ndarray, shape: tuple[int, ...], out: str, widths: set[int]) -> bool:
        """Emit the sparse rebuild of the codes ``out`` and return True when that form is the
        smaller one (or forced); return False, emitting nothing, to keep them dense."""
        n = flat.size
        if self.sparse == "never" or n == 0:
            return False
        used, counts = np.unique(flat, return_counts=True)
        background = int(used[np.argmax(counts)])
        positions = np.flatnonzero(flat != background)
        cost, idx_bits = self._plan(bits, positions, widths)
        if self.sparse == "auto" and cost + 8 * SPARSE_TENSOR_BYTES >= n * bits:
            return False
        if not len(positions):  # every code is the background (a layer pruned away)
            self._scatter(background, n, None, None, out, shape)
            return True
        where, real = self._where(positions, idx_bits)
        values = np.full(len(real), background, dtype=np.int64)
        values[real] = flat[positions]
        self._scatter(background, n, where, self.codes(values, bits), out, shape)
        widths.add(idx_bits)
        return True

    def _store_linked(self, mask: tuple, codes: tuple, widths: set[int]) -> bool:
        """A 0/1 ``mask`` and ``codes`` that are one value wherever the mask is 0 (a pruned layer in
        mask mode): both rebuilt from the mask's positions, stored once, when that is the cheapest
        (or forced). Return False, emitting nothing, otherwise."""
        _, m, m_shape, m_out = mask
        bits, c, c_shape, c_out = codes
        off = m == 0
        if not off.any() or off.all() or m.max() > 1:
            return False
        background = np.unique(c[off])
        if len(background) != 1:
            return False
        positions = np.flatnonzero(~off)
        cost, idx_bits = self._plan(bits + 1, positions, widths)  # + 1: the mask's bit per entry (fillers: 0)
        separate = self._best_bits(1, m, widths) + self._best_bits(bits, c, widths)
        if self.sparse == "auto" and cost + 8 * LINKED_BYTES >= separate:
            return False
        where, real = self._where(positions, idx_bits)
        values = np.full(len(real), int(background[0]), dtype=np.int64)
        values[real] = c[positions]
        self._scatter(int(background[0]), c.size, where, self.codes(values, bits), c_out, c_shape)
        self._scatter(0, m.size, where, self.codes(real.astype(np.int64), 1), m_out, m_shape)
        widths.add(idx_bits)
        return True
