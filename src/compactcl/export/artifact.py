"""Packed artifact (.ccl): the deployed model at its real size, as one small self-checking file.

Format /3 (written) is a compact frame (``utils/frame.py``): magic, an 8-byte digest, the JSON
header DEFLATE'd, then three flat blobs back to back (little-endian, no pickle):

* ``u8``  : bit-packed weight codes, relative indices of sparse tensors, affine zero points,
  log exponents (int8 stored as uint8 + 128);
* ``f16`` : float values that are exactly fp16 — biases and batch-norm tensors after
  ``quantize_`` (which rounds them so), k-means codebooks and linear scales (fitted as fp16
  values) — 2 bytes each, lossless;
* ``f32`` : everything else that is float (unquantized weights, grids fp16 cannot hold).

The header is ``{"format": "compactcl.artifact/3", "spec", "meta", "n", "layers"}``: ``n`` the
blob lengths, ``layers`` one entry per state-dict tensor *in the order the spec's model builds
them*, so names and shapes are left out (the spec rebuilds them on the meta device; an entry
keeps ``shape`` only where it differs, e.g. a structurally pruned layer, and a model kind that
cannot be built there stores ``keys``). An entry says the tensor's encoding
(``{"enc": "kmeans", "bits": 3}``, ``{"dt": "f16"}``, ...); its bytes follow from its shape and
bits, so no offsets are stored. A tensor that is mostly zeros is stored as relative indices of
its non-zeros (``export/sparse.py``, Deep Compression's scheme; index width chosen per tensor) +
only the non-zero codes/values. After a quantized weight's codes come its grid's parameters,
written and read by its quantization method (``QuantMethod.write_grid`` / ``read_grid``, e.g.
``"sym"`` + scales for linear, the codebook for k-means).

Formats /1 and /2 (a safetensors file with the JSON header, names and shapes in its metadata)
are still read.

Loading is exact: the rebuilt model's weights equal the in-memory quantized model's bit
for bit.

>>> nbytes = save_artifact(model, "model.ccl")  # doctest: +SKIP
>>> model2 = load_artifact("model.ccl")  # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as st_load
from torch import nn

from ..compress.quantize.packing import pack_bits, packed_nbytes, unpack_bits, unpack_mask
from ..compress.quantize.methods import QUANT_METHODS
from ..compress.quantize.state import WeightQuant, get_weight_quant, set_weight_quant
from ..errors import CompactCLError
from ..models.checkpoint import model_from_state, read_header, spec_layout, verify_digest
from ..utils.atomic import atomic_write_bytes
from ..utils.frame import is_frame, pack_frame, read_frame
from .sparse import best_index_bits, decode_positions, encode_gaps, entries_for

__all__ = ["save_artifact", "load_artifact", "pack_artifact", "artifact_nbytes", "artifact_breakdown", "FORMAT"]

# /3: compact frame, DEFLATE'd header, names and shapes rebuilt from the spec (see above);
# /2: safetensors, the sha256 covers the header as well as the tensors; /1: tensor-only digest.
FORMAT = "compactcl.artifact/3"
READABLE_FORMATS = ("compactcl.artifact/1", "compactcl.artifact/2", FORMAT)
_BLOBS = ("u8", "f16", "f32")
_NP = {"u8": np.dtype(np.uint8), "f16": np.dtype("<f2"), "f32": np.dtype("<f4")}


class _Writer:
    def __init__(self) -> None:
        self.parts: dict[str, list[np.ndarray]] = {k: [] for k in _BLOBS}
        self.code_bytes = 0  # of the u8 blob, the packed weight codes (the rest: grids, sparse indices)

    def put(self, blob: str, a: np.ndarray) -> None:
        self.parts[blob].append(np.ascontiguousarray(a, dtype=_NP[blob]).reshape(-1))

    def blobs(self) -> dict[str, np.ndarray]:
        return {k: np.concatenate(v) if v else np.zeros(0, _NP[k]) for k, v in self.parts.items()}


class _Reader:
    def __init__(self, blobs: dict[str, np.ndarray], source: str) -> None:
        self.data = {k: blobs[k] if k in blobs else np.zeros(0, _NP[k]) for k in _BLOBS}
        self.pos = {k: 0 for k in _BLOBS}
        self.source = source

    def take(self, blob: str, n: int) -> np.ndarray:
        start = self.pos[blob]
        if start + n > self.data[blob].size:
            raise CompactCLError(f"{self.source}: the {blob} data ends early; the file is truncated or was "
                                 "written by another version. Re-export it.")
        self.pos[blob] = start + n
        return self.data[blob][start: start + n]

    def check_done(self) -> None:
        left = {k: self.data[k].size - self.pos[k] for k in _BLOBS if self.data[k].size != self.pos[k]}
        if left:
            raise CompactCLError(f"{self.source}: {left} values left unread; the header does not match the data.")


def _float_blob(t: torch.Tensor, half: bool) -> str:
    if half:
        return "f16"
    return "f16" if bool(torch.isfinite(t).all()) and torch.equal(t.half().float(), t) else "f32"


def _sparse_index_bits(mask: np.ndarray, item_bits: int, force: bool = False) -> tuple[np.ndarray, int] | None:
    """(non-zero positions, index bits) when relative indices beat dense storage (or ``force``)."""
    positions = np.flatnonzero(mask.reshape(-1))
    b, _ = best_index_bits(positions, item_bits)
    sparse_bytes = packed_nbytes(entries_for(positions, b), b) + packed_nbytes(len(positions), item_bits)
    if force or sparse_bytes < packed_nbytes(mask.size, item_bits):
        return positions, b
    return None


def _put_sparse(wr: "_Writer", entry: dict[str, Any], positions: np.ndarray, idx_bits: int) -> None:
    stored = encode_gaps(positions, idx_bits)
    entry.update({"sparse": 2, "ib": idx_bits, "ne": int(len(stored))})
    wr.put("u8", pack_bits(stored, idx_bits))


def _take_mask(rd: "_Reader", entry: dict[str, Any], n: int) -> np.ndarray:
    """The non-zero mask of a sparse entry: a bitmask (sparse=1) or relative indices (sparse=2)."""
    if entry.get("sparse") == 2:
        b, count = int(entry["ib"]), int(entry["ne"])
        stored = unpack_bits(rd.take("u8", packed_nbytes(count, b)), b, count)
        try:
            positions = decode_positions(stored, b, n)
        except ValueError as e:
            raise CompactCLError(f"{rd.source}: {e}; the artifact is corrupted") from e
        mask = np.zeros(n, dtype=bool)
        mask[positions] = True
        return mask
    return unpack_mask(rd.take("u8", (n + 7) // 8), n)


def _write_quant(wr: _Writer, name: str, w: torch.Tensor, wq: WeightQuant) -> dict[str, Any]:
    codes = wq.encode(w)
    mask = w != 0
    dense_exact = torch.equal(wq.decode(codes), w)
    if not torch.equal(wq.decode(codes, mask), w):
        raise CompactCLError(f"layer {name!r}: its weights are no longer on its {wq.method} quantization grid "
                             "(changed after quantize_); quantize the model again before saving.")
    sparse = _sparse_index_bits(mask.numpy(), wq.bits, force=not dense_exact)
    entry: dict[str, Any] = {"shape": list(w.shape), "enc": wq.method, "bits": wq.bits}
    if sparse is not None:
        _put_sparse(wr, entry, *sparse)
        packed = pack_bits(codes[mask].numpy(), wq.bits)
    else:
        packed = pack_bits(codes.numpy(), wq.bits)
    wr.put("u8", packed)
    wr.code_bytes += packed.size
    if wq.axis is not None:
        entry["axis"] = wq.axis
    wq.quant_method.write_grid(wq, entry, wr)  # the method's header keys and grid tensors follow the codes
    return entry


def _read_quant(rd: _Reader, entry: dict[str, Any]) -> tuple[torch.Tensor, WeightQuant]:
    shape, bits, method = tuple(entry["shape"]), int(entry["bits"]), entry["enc"]
    n = int(np.prod(shape)) if shape else 1
    mask = None
    if entry.get("sparse"):
        mask_np = _take_mask(rd, entry, n)
        nnz = int(mask_np.sum())
        codes_np = np.zeros(n, np.uint8)
        codes_np[mask_np] = unpack_bits(rd.take("u8", packed_nbytes(nnz, bits)), bits, nnz)
        mask = torch.from_numpy(mask_np).reshape(shape)
    else:
        codes_np = unpack_bits(rd.take("u8", packed_nbytes(n, bits)), bits, n)
    quant_method = QUANT_METHODS.get(method)
    if quant_method is None:
        raise CompactCLError(f"{rd.source}: unknown weight encoding {method!r}; upgrade compactcl to read it.")
    wq = quant_method.read_grid(entry, rd)
    codes = torch.from_numpy(codes_np.astype(np.int64)).reshape(shape)
    return wq.decode(codes, mask), wq


def _write_float(wr: _Writer, t: torch.Tensor, half: bool) -> dict[str, Any]:
    blob = _float_blob(t, half)
    entry: dict[str, Any] = {"shape": list(t.shape), "dt": blob}
    flat = t.reshape(-1).numpy()
    item_bits = 16 if blob == "f16" else 32
    mask = flat != 0
    sparse = _sparse_index_bits(mask, item_bits) if t.numel() >= 64 else None
    if sparse is not None:
        _put_sparse(wr, entry, *sparse)
        wr.put(blob, flat[mask])
    else:
        wr.put(blob, flat)
    return entry


def _read_float(rd: _Reader, entry: dict[str, Any]) -> torch.Tensor:
    shape = tuple(entry["shape"])
    n = int(np.prod(shape)) if shape else 1
    blob = entry["dt"]
    if entry.get("sparse"):
        mask = _take_mask(rd, entry, n)
        flat = np.zeros(n, np.float32)
        flat[mask] = rd.take(blob, int(mask.sum()))
    else:
        flat = rd.take(blob, n).astype(np.float32)
    return torch.from_numpy(flat).reshape(shape)


def _tensor_order(spec: dict[str, Any], state: dict[str, torch.Tensor]) -> tuple[list[str], dict[str, tuple] | None]:
    """The order tensors are stored in and the spec's shapes: the spec's model's state-dict order when it
    builds the same tensors (then the header names none), else the model's own order (names stored)."""
    try:
        layout = spec_layout(spec, len(state), "model")
    except CompactCLError:
        layout = None  # a spec the meta device cannot build
    if layout is None or sorted(k for k, _ in layout) != sorted(state):
        return list(state), None
    return [k for k, _ in layout], dict(layout)


def _compact_layers(entries: list[dict[str, Any]], keys: list[str], shapes: dict[str, tuple] | None,
                    ) -> dict[str, Any]:
    """The header's layer table without what the spec rebuilds: names, and shapes where they match."""
    if shapes is None:
        return {"keys": keys, "layers": entries}
    return {"layers": [{k: v for k, v in e.items() if not (k == "shape" and tuple(v) == shapes[key])}
                       for e, key in zip(entries, keys)]}


# Tensors a /3 layer table may list (a 10-branch DER ResNet-32 has ~2,000): bounds the model a spec builds.
MAX_LAYER_ENTRIES = 16_384


def _expand_layers(header: dict[str, Any], source: str) -> dict[str, dict[str, dict[str, Any]]]:
    """The /2-style layer table (module -> tensor -> entry with its shape) of a /3 header."""
    entries, keys = header.get("layers"), header.get("keys")
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise CompactCLError(f"{source}: its header has no valid layer table; the artifact is corrupted.")
    if len(entries) > MAX_LAYER_ENTRIES:  # before the spec's model is built: DEFLATE makes entries nearly free
        raise CompactCLError(f"{source}: its layer table has {len(entries):,} entries, over the limit of "
                             f"{MAX_LAYER_ENTRIES:,} tensors; the artifact is corrupted or crafted.")
    if keys is None:
        layout = spec_layout(header.get("spec"), len(entries), source)
        if layout is None:
            raise CompactCLError(f"{source}: its header names no tensors for a model kind that cannot be rebuilt "
                                 "from its spec; the artifact is corrupted.")
        keys, shapes = [k for k, _ in layout], [list(shape) for _, shape in layout]
    else:
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise CompactCLError(f"{source}: its header's tensor names are not a list of strings; it is corrupted.")
        shapes = [None] * len(keys)
    if len(keys) != len(entries) or len(set(keys)) != len(keys):
        raise CompactCLError(f"{source}: its layer table has {len(entries)} entries for {len(keys)} tensors of its "
                             "model spec; the artifact is corrupted or was written by another version.")
    layers: dict[str, dict[str, dict[str, Any]]] = {}
    for key, entry, shape in zip(keys, entries, shapes):
        module, _, leaf = key.rpartition(".")
        layers.setdefault(module, {})[leaf] = {"shape": shape, **entry} if shape is not None else dict(entry)
    return layers


def _pack(model: nn.Module, meta: dict[str, Any] | None, half: bool) -> tuple[bytes, dict[str, int]]:
    if not hasattr(model, "spec"):
        raise CompactCLError(f"{type(model).__name__} has no .spec; pack compactcl models "
                             "(IncrementalNet/DERNet) or wrap yours with compactcl.from_module().")
    owners = {f"{name}.weight" if name else "weight": m for name, m in model.named_modules()
              if get_weight_quant(m) is not None}
    wr = _Writer()
    state = model.state_dict()
    keys, shapes = _tensor_order(model.spec, state)
    entries: list[dict[str, Any]] = []  # one encoding a tensor, in ``keys`` order
    for key in keys:
        t = state[key].detach().cpu()
        if key in owners:
            entry = _write_quant(wr, key.rpartition(".")[0], t.float(), get_weight_quant(owners[key]))
        elif t.is_floating_point():
            entry = _write_float(wr, t.float(), half)
        elif t.numel() <= 16:
            entry = {"shape": list(t.shape), "int": t.reshape(-1).tolist()}
            if t.dtype != torch.int64:
                entry["dtype"] = str(t.dtype)[6:]
        else:
            raise CompactCLError(f"tensor {key!r} ({t.dtype}, {t.numel()} values) has no artifact encoding")
        entries.append(entry)
    blobs = wr.blobs()
    data = b"".join(blobs[k].astype(_NP[k], copy=False).tobytes() for k in _BLOBS)
    header = {"format": FORMAT, "spec": model.spec, "meta": meta or {}, "n": [int(blobs[k].size) for k in _BLOBS],
              **_compact_layers(entries, keys, shapes)}
    raw = pack_frame(header, data)
    return raw, {"codes": wr.code_bytes, "tables": len(data) - wr.code_bytes, "header": len(raw) - len(data)}


def pack_artifact(model: nn.Module, meta: dict[str, Any] | None = None, half: bool = False) -> bytes:
    """The artifact's bytes (what :func:`save_artifact` writes).

    ``half=True`` also stores unquantized float weights in fp16 (lossy for them; quantized
    weights and fp16-exact tensors are always stored exactly).
    """
    return _pack(model, meta, half)[0]


def artifact_breakdown(model: nn.Module, meta: dict[str, Any] | None = None, half: bool = False) -> dict[str, int]:
    """Where the artifact's bytes go: ``codes`` (packed weight codes), ``tables`` (everything else in the
    data: codebooks, scales, sparse indices, biases and batch norm, unquantized tensors) and ``header``
    (the frame: magic, digest and the DEFLATE'd JSON header); they sum to its size."""
    return _pack(model, meta, half)[1]


def artifact_nbytes(model: nn.Module, meta: dict[str, Any] | None = None) -> int:
    """Size in bytes the artifact of ``model`` would have on disk (nothing written)."""
    return len(pack_artifact(model, meta))


def save_artifact(model: nn.Module, path: str | os.PathLike, meta: dict[str, Any] | None = None,
                  half: bool = False) -> int:
    """Write the packed artifact atomically; return its size on disk (``os.stat``)."""
    atomic_write_bytes(path, pack_artifact(model, meta, half))
    return Path(path).stat().st_size


def load_artifact(path: str | os.PathLike) -> nn.Module:
    """Rebuild the model of a ``.ccl`` file (eval mode); quantized layers get their ``weight_quant`` back."""
    path = Path(path)
    if not path.is_file():
        read_header(path)  # names the missing file
    raw = path.read_bytes()
    if is_frame(raw):
        header, data = read_frame(raw, str(path))  # the digest covers header and data
        if header.get("format") != FORMAT:
            raise CompactCLError(f"{path} has format {header.get('format')!r}, not {FORMAT}; the file is corrupted "
                                 "or was written by a newer compactcl.")
        blobs = _split_blobs(header, data, path)
    else:
        header = read_header(path)
        if header.get("format") not in READABLE_FORMATS:
            raise CompactCLError(f"{path} has format {header.get('format')!r}, not {FORMAT}; use compactcl.load().")
        try:
            tensors = st_load(raw)
        except Exception as e:  # safetensors raises its own error types for damaged files
            raise CompactCLError(f"{path}: cannot read its tensors ({e}); the file is truncated or corrupted.") from e
        verify_digest(header, tensors, path, "Export it again from its run folder.")
        blobs = {k: t.numpy() for k, t in tensors.items()}
    try:
        if header.get("format") == FORMAT:
            header = {**header, "layers": _expand_layers(header, str(path))}
        _check_layer_table(header, blobs, path)  # before _decode allocates anything a shape claims
        return _decode(header, blobs, path)
    except CompactCLError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError, OverflowError,
            MemoryError) as e:  # a /1 header is not covered by the checksum: a damaged one fails here
        raise CompactCLError(f"{path}: its header does not describe its data ({type(e).__name__}: {str(e)[:200]}); "
                             "the artifact is corrupted or was written by another version. Export it again.") from e


def _split_blobs(header: dict[str, Any], data: bytes, path: Path) -> dict[str, np.ndarray]:
    """The u8/f16/f32 blobs of a /3 file's data, as long as its header's ``n`` says."""
    counts = header.get("n")
    if (not isinstance(counts, list) or len(counts) != len(_BLOBS)
            or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts)):
        raise CompactCLError(f"{path}: its header has no valid blob lengths; the artifact is corrupted.")
    sizes = [c * _NP[k].itemsize for k, c in zip(_BLOBS, counts)]
    if sum(sizes) != len(data):
        raise CompactCLError(f"{path}: its header describes {sum(sizes):,} data bytes but the file holds "
                             f"{len(data):,}; the artifact is corrupted or was written by another version.")
    blobs, start = {}, 0
    for k, size in zip(_BLOBS, sizes):
        blobs[k] = np.frombuffer(data, _NP[k], size // _NP[k].itemsize, start)
        start += size
    return blobs


# Sparse entries may describe zeros that no stored byte backs (runs after the last non-zero, all-zero
# tensors); this many such values in all is allowed (64 MB as float32), nothing more.
_MAX_UNBACKED = 2 ** 24


def _int(entry: dict[str, Any], key: str, lo: int, hi: int, what: str) -> int:
    value = entry.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise CompactCLError(f"{what}: {key}={value!r} is not an integer in [{lo}, {hi}]")
    return value


def _check_layer_table(header: dict[str, Any], blobs: dict[str, np.ndarray], path: Path) -> None:
    """Refuse a layer table that asks for more values than the u8/f16/f32 blobs can hold, before decoding.

    Each entry's bytes follow from its shape, bits and encoding (see the module docstring), so
    the bytes every entry needs at least are summed per blob and compared with what the file
    holds: a crafted ``shape: [1e5, 1e5]`` is refused here instead of allocating 9.3 GiB.
    """
    layers = header.get("layers")
    if not isinstance(layers, dict) or not all(isinstance(es, dict) for es in layers.values()):
        raise CompactCLError(f"{path}: its header has no valid layer table; the artifact is corrupted.")
    have = {k: int(blobs[k].size) if k in blobs else 0 for k in _BLOBS}
    need = {k: 0 for k in _BLOBS}
    unbacked = 0
    for module, entries in layers.items():
        for leaf, entry in entries.items():
            what = f"{path}: layer entry {module + '.' if module else ''}{leaf}"
            shape = entry.get("shape") if isinstance(entry, dict) else None
            if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                      for d in shape):
                raise CompactCLError(f"{what} has no valid shape ({shape!r}); the artifact is corrupted.")
            n = math.prod(shape)
            try:
                if "int" in entry:
                    if not isinstance(entry["int"], list) or len(entry["int"]) != n:
                        raise CompactCLError(f"{what}: shape {shape} does not match its stored integers")
                    continue
                sparse = entry.get("sparse") or 0
                if sparse not in (1, 2):
                    if sparse:
                        raise CompactCLError(f"{what}: unknown sparse encoding {sparse!r}")
                elif sparse == 2:  # relative indices: each code advances at most 2**ib - 1 positions
                    ib, ne = _int(entry, "ib", 1, 8, what), _int(entry, "ne", 0, 8 * have["u8"], what)
                    need["u8"] += packed_nbytes(ne, ib)
                    unbacked += max(0, n - ne * ((1 << ib) - 1))
                else:  # a bitmask, one bit a value
                    need["u8"] += (n + 7) // 8
                if "enc" in entry:
                    bits = _int(entry, "bits", 1, 8, what)
                    method = QUANT_METHODS.get(entry["enc"]) if isinstance(entry["enc"], str) else None
                    if method is None:
                        raise CompactCLError(f"{what}: unknown weight encoding {entry['enc']!r}; upgrade compactcl "
                                             "(or import the module of that quantization method) to read it.")
                    axis = entry.get("axis")
                    channels = shape[_int(entry, "axis", -len(shape), len(shape) - 1, what)] if axis is not None else 1
                    if not sparse:
                        need["u8"] += packed_nbytes(n, bits)
                    for blob, count in method.grid_values(entry, channels).items():
                        need[blob] += count
                else:
                    blob = entry.get("dt")
                    if blob not in ("f16", "f32"):
                        raise CompactCLError(f"{what}: unknown float storage {blob!r}")
                    need[blob] += 0 if sparse else n
            except CompactCLError as e:
                raise CompactCLError(f"{e}; the artifact is corrupted or was written by another version.") from None
            over = [k for k in _BLOBS if need[k] > have[k]]
            if over or unbacked > _MAX_UNBACKED:
                held = ", ".join(f"{have[k]:,} {k}" for k in _BLOBS)
                raise CompactCLError(f"{what} claims shape {shape} ({n:,} values), more than the file's data can "
                                     f"hold ({held} values in all); the artifact is truncated, corrupted or "
                                     "crafted. Refusing to decode it.")


def _decode(header: dict[str, Any], blobs: dict[str, np.ndarray], path: Path) -> nn.Module:
    rd = _Reader(blobs, str(path))
    state: dict[str, torch.Tensor] = {}
    grids: dict[str, WeightQuant] = {}
    items = [(f"{module}.{leaf}" if module else leaf, e) for module, es in header["layers"].items()
             for leaf, e in es.items()]
    for key, entry in items:
        if "enc" in entry:
            state[key], grids[key.rpartition(".")[0]] = _read_quant(rd, entry)
        elif "int" in entry:
            dtype = getattr(torch, entry.get("dtype", "int64"))
            if not isinstance(dtype, torch.dtype):
                raise CompactCLError(f"{path}: tensor {key!r} has unknown dtype {entry.get('dtype')!r}")
            state[key] = torch.tensor(entry["int"], dtype=dtype).reshape(entry["shape"])
        else:
            state[key] = _read_float(rd, entry)
    rd.check_done()
    model = model_from_state(header["spec"], state, str(path))
    for name, wq in grids.items():
        set_weight_quant(model.get_submodule(name), wq)
    return model
