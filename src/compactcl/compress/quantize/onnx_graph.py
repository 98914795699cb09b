"""In-graph weight decode for ONNX: bit-packed codes + a grid, turned back into float32 weights by
standard operators that ONNX Runtime constant-folds when it loads the model (so inference runs
the dense graph: the decode costs nothing per call, the file keeps the codes).

Only ops with all-constant inputs that ORT's constant folding executes are used (opset 18):
``BitShift``/``BitwiseAnd`` (unpack), ``Reshape``/``Slice``/``Cast``/``Mul``/``ReduceSum``,
``Gather``/``GatherElements`` (codebook lookup), ``Add``/``Sub``/``Where``. ``DequantizeLinear``
is avoided on purpose: ORT keeps it in the graph and decodes at every call.

The unpack follows :func:`~compactcl.compress.quantize.packing.pack_bits` exactly (LSB first,
codes back to back; all layers of one bit width in one blob). Each
:class:`~compactcl.compress.quantize.methods.QuantMethod` builds its decode with a
:class:`DecodeGraph` in :meth:`~compactcl.compress.quantize.methods.QuantMethod.onnx_decode`.

``onnx`` is imported only when a graph is built.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .packing import pack_bits

__all__ = ["DecodeGraph", "OPSET"]

OPSET = 18  # BitwiseAnd needs 18


class DecodeGraph:
    """Collects the nodes and initializers of every layer's decode, with short unique names
    (names are bytes in a file counted against a budget) and shared constants.

    Codes, fp16 values and small int64 tensors are *deferred*: :meth:`codes`, :meth:`half` and
    :meth:`ints` return a tensor name at once, and :meth:`finish` stores all codes of one bit width
    as one packed blob (one unpack, then ``Split``), all fp16 values as one blob (one ``Cast``,
    then ``Split``) and all shapes and split sizes as one int8/int16 blob (likewise) — per-tensor
    framing and decode nodes would otherwise cost more bytes than a small model's codes.
    """

    def __init__(self, prefix: str = "q") -> None:
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self._prefix = prefix
        self._n = 0
        self._shared: dict[str, str] = {}
        self._codes: dict[int, list[tuple[np.ndarray, tuple[int, ...], str]]] = {}
        self._halves: list[tuple[np.ndarray, str]] = []
        self._ints: list[tuple[np.ndarray, str]] = []

    # ------------------------------------------------------------------------------- basics
    def name(self) -> str:
        self._n += 1
        return f"{self._prefix}{self._n:x}"

    def const(self, a: np.ndarray, key: str | None = None) -> str:
        """An initializer holding ``a`` (shared by ``key`` when given)."""
        from onnx import numpy_helper

        if key is not None and key in self._shared:
            return self._shared[key]
        name = self.name()
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(a), name))
        if key is not None:
            self._shared[key] = name
        return name

    def shape(self, dims: tuple[int, ...] | list[int]) -> str:
        dims = tuple(int(d) for d in dims)
        key = f"shape{dims}"
        if key not in self._shared:
            self._shared[key] = self.ints(np.array(dims, dtype=np.int64))
        return self._shared[key]

    def ints(self, a: np.ndarray) -> str:
        """1-D int64 ``a`` (shapes, split sizes), read from the shared small-integer blob when its
        values fit int16 (the blob is stored at int8/int16 and widened by one ``Cast``)."""
        a = np.asarray(a, dtype=np.int64).reshape(-1)
        if not a.size or np.abs(a).max() > np.iinfo(np.int16).max:
            return self.const(a)
        out = self.name()
        self._ints.append((a, out))
        return out

    def op(self, op_type: str, inputs: list[str], out: str | list[str] | None = None, **attrs: Any) -> str:
        from onnx import helper

        outs = [self.name()] if out is None else [out] if isinstance(out, str) else list(out)
        self.nodes.append(helper.make_node(op_type, inputs, outs, **attrs))
        return outs[0]

    def float_values(self, a: np.ndarray) -> str:
        """float32 values ``a``: stored as fp16 when that is lossless (half the bytes)."""
        half = self.half(a)
        return half if half is not None else self.const(np.asarray(a, dtype=np.float32))

    def half(self, a: np.ndarray) -> str | None:
        """float32 ``a`` read from the shared fp16 blob, or None when fp16 would change a value."""
        a = np.asarray(a, dtype=np.float32)
        h = a.astype(np.float16)
        if not (np.isfinite(a).all() and np.array_equal(h.astype(np.float32), a)):
            return None
        out = self.name()
        self._halves.append((h, out))
        return out

    # ------------------------------------------------------------------------------- codes
    def codes(self, codes: np.ndarray, bits: int, shape: tuple[int, ...] | None = None) -> str:
        """int64 tensor of unsigned ``codes`` (< 2**bits), stored bit-packed, shaped ``shape`` (default: theirs)."""
        codes = np.asarray(codes)
        if codes.size and (codes.min() < 0 or codes.max() >= 2 ** bits):
            raise ValueError(f"codes must be in [0, {2 ** bits}) for {bits} bits")
        out = self.name()
        self._codes.setdefault(int(bits), []).append(
            (codes.reshape(-1), tuple(codes.shape) if shape is None else tuple(shape), out))
        return out

    def mask(self, mask: np.ndarray) -> str:
        """bool tensor of ``mask``, stored one bit per element."""
        from onnx import TensorProto

        mask = np.asarray(mask, dtype=bool)
        return self.op("Cast", [self.codes(mask.astype(np.uint8), 1)], to=TensorProto.BOOL)

    # ------------------------------------------------------------------------------- lookup
    def lookup(self, table: np.ndarray, codes: np.ndarray, bits: int, axis: int | None) -> str:
        """float32 ``table[codes]``: ``table`` is (K,) for one grid per tensor, or (C, K) with one
        row per output channel (``axis=0``) — the codebook path every grid can take.

        Only the table entries some code uses are stored (codes re-indexed into them, same width,
        same decoded values): an 8-bit k-means codebook of a 96-weight head is 256 floats, of
        which at most 96 are ever read — 640 bytes a small budget cannot spare."""
        shape = tuple(codes.shape)
        table, codes = np.asarray(table, dtype=np.float32), np.asarray(codes)
        used = np.unique(codes)
        if 0 < len(used) < table.shape[-1]:
            table, codes = table[..., used], np.searchsorted(used, codes)
        table_name = self.float_values(table)
        if axis is None:
            return self.op("Gather", [table_name, self.codes(codes, bits)])
        if axis != 0:
            raise ValueError("per-channel tables are per output channel (axis 0)")
        rows = self.codes(codes, bits, (shape[0], int(np.prod(shape[1:], dtype=np.int64))))
        picked = self.op("GatherElements", [table_name, rows], axis=1)
        return self.op("Reshape", [picked, self.shape(shape)])

    # ------------------------------------------------------------------------------- finish
    def finish(self) -> tuple[list[Any], list[Any]]:
        """(nodes, initializers) in topological order: the shared blobs' decode first."""
        head_nodes, self.nodes = self.nodes, []
        for bits, items in sorted(self._codes.items()):
            self._emit_codes(bits, items)
        if self._halves:
            self._emit_halves()
        body, self.nodes = self.nodes, []
        self._emit_ints()  # last: every shape and split size is known now; its decode goes first
        self._codes, self._halves, self._ints = {}, [], []
        nodes, self.nodes = self.nodes + body + head_nodes, []
        return nodes, self.initializers

    def _split(self, flat: str, parts: list[tuple[int, tuple[int, ...], str]], total: int, blob: bool = True) -> None:
        """Cut the 1-D ``flat`` (``total`` long) into ``parts`` (size, shape, output name); the
        sizes come from the small-integer blob unless ``blob`` is False (the blob's own split)."""
        sizes = [n for n, _, _ in parts]
        pad = total - sum(sizes)
        # a 1-D part is a Split output itself; others are reshaped from one
        pieces = [out if shape == (n,) else self.name() for n, shape, out in parts]
        if len(parts) == 1 and not pad:
            if pieces[0] == parts[0][2]:
                self.op("Identity", [flat], out=pieces[0])
            else:
                pieces = [flat]
        else:
            names = pieces + ([self.name()] if pad else [])
            sizes_arr = np.array(sizes + ([pad] if pad else []), np.int64)
            self.op("Split", [flat, self.ints(sizes_arr) if blob else self.const(sizes_arr)], out=names, axis=0)
        for piece, (n, shape, out) in zip(pieces, parts):
            if piece != out:
                self.op("Reshape", [piece, self.shape(shape)], out=out)

    def _emit_codes(self, bits: int, items: list[tuple[np.ndarray, tuple[int, ...], str]]) -> None:
        from onnx import TensorProto

        flat = np.concatenate([c for c, _, _ in items]) if items else np.zeros(0, np.uint8)
        n = len(flat)
        per = 8 // np.gcd(8, bits)  # codes per whole number of bytes: pad to it, so bits reshape to (-1, bits)
        total = -(-n // per) * per
        packed = pack_bits(np.concatenate([flat, np.zeros(total - n, flat.dtype)]), bits)
        if bits == 8:
            codes = self.op("Cast", [self.const(packed)], to=TensorProto.INT64)
        elif 8 % bits == 0:  # whole codes per byte: shift each slot down and mask it (no bit planes to sum)
            col = self.const(packed.reshape(-1, 1))
            shifts = self.const(np.arange(0, 8, bits, dtype=np.uint8)[None, :], key=f"slots{bits}")
            slots = self.op("BitwiseAnd", [self.op("BitShift", [col, shifts], direction="RIGHT"),
                                           self.const(np.array((1 << bits) - 1, dtype=np.uint8), key=f"low{bits}")])
            codes = self.op("Cast", [self.op("Reshape", [slots, self.shape((-1,))])], to=TensorProto.INT64)
        else:  # codes straddle bytes: unpack bit planes, weight and sum them per code
            col = self.const(packed.reshape(-1, 1))
            shifts = self.const(np.arange(8, dtype=np.uint8)[None, :], key="slots1")
            bitplanes = self.op("BitwiseAnd", [self.op("BitShift", [col, shifts], direction="RIGHT"),
                                               self.const(np.array(1, dtype=np.uint8), key="low1")])
            planes = self.op("Cast", [self.op("Reshape", [bitplanes, self.shape((-1, bits))])],
                             to=TensorProto.INT64)
            weights = self.const((1 << np.arange(bits, dtype=np.int64))[None, :])
            codes = self.op("ReduceSum", [self.op("Mul", [planes, weights]),
                                          self.const(np.array([1], np.int64), key="axis1")], keepdims=0)
        self._split(codes, [(len(c), shape, out) for c, shape, out in items], total)

    def _emit_halves(self) -> None:
        from onnx import TensorProto

        blob = np.concatenate([h.reshape(-1) for h, _ in self._halves])
        flat = self.op("Cast", [self.const(blob)], to=TensorProto.FLOAT)
        self._split(flat, [(h.size, tuple(h.shape), out) for h, out in self._halves], blob.size)

    def _emit_ints(self) -> None:
        """The deferred int64 tensors: one int8/int16 blob, ``Cast`` and ``Split`` (sizes int64),
        when that is smaller than plain int64 initializers (~12 bytes of framing each)."""
        from onnx import TensorProto, numpy_helper

        items, self._ints = self._ints, []
        blob = np.concatenate([a for a, _ in items]) if items else np.zeros(0, np.int64)
        dtype = np.int8 if blob.size and np.abs(blob).max() <= np.iinfo(np.int8).max else np.int16
        plain = sum(8 * a.size + 12 for a, _ in items)
        packed = blob.size * np.dtype(dtype).itemsize + 8 * len(items) + 12 * 2 + 30 + 4 * len(items)
        if packed >= plain:
            self.initializers.extend(numpy_helper.from_array(a, out) for a, out in items)
            return
        flat = self.op("Cast", [self.const(blob.astype(dtype))], to=TensorProto.INT64)
        self._split(flat, [(a.size, (a.size,), out) for a, out in items], blob.size, blob=False)
