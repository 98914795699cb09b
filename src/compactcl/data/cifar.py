"""CIFAR-10 / CIFAR-100 from the files Krizhevsky distributes, named by ``data.root``; nothing downloads.

``root`` is the tarball (``cifar-10-binary.tar.gz``, ``cifar-100-python.tar.gz``, ...), its
extracted folder (``cifar-10-batches-bin/``), or a folder holding that folder (torchvision's
root). The *binary* version is preferred: fixed-size records (CIFAR-10: 1 label byte; CIFAR-100:
coarse + fine label bytes; then 3,072 pixel bytes, R then G then B planes of 32x32, row-major),
so the record count is the file's size / record size, checked to divide exactly and bounded
before anything is allocated. The *python* version (what torchvision downloads) is a pickle;
it is read only through :class:`RestrictedUnpickler`, which builds dicts, lists, bytes and
numpy arrays and refuses every other global before it can run.

Images are standardised like :func:`~compactcl.data.datasets.folder` (one mean/std over the
training pixels), class names come from ``batches.meta`` / ``meta`` (``*.txt`` in the binary
version) when present.
"""

from __future__ import annotations

import io
import pickle
import stat
import tarfile
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CompactCLError
from .datasets import (DEFAULT_MAX_IN_MEMORY_MB, DatasetSplits, _check_labels, _pixel_splits, _uint8_stats,
                       register_dataset)

__all__ = ["RestrictedUnpickler", "safe_unpickle", "read_cifar_records", "cifar10", "cifar100", "CIFAR10_CLASSES",
           "PIXELS"]

PIXELS = 3 * 32 * 32  # bytes of one image in a record
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
_MAX_META_BYTES = 1 << 20  # a class-name file is a few hundred bytes
_MAX_MEMBERS = 1000  # entries listed in a tarball (CIFAR's hold about ten)

# (folder names in the tarball / torchvision root, train files, test file, label names file, label bytes)
_LAYOUTS: dict[str, dict[str, Any]] = {
    "cifar10-bin": {"dirs": ["cifar-10-batches-bin"], "train": [f"data_batch_{i}.bin" for i in range(1, 6)],
                    "test": "test_batch.bin", "meta": "batches.meta.txt", "label_bytes": 1},
    "cifar10-py": {"dirs": ["cifar-10-batches-py"], "train": [f"data_batch_{i}" for i in range(1, 6)],
                   "test": "test_batch", "meta": "batches.meta"},
    "cifar100-bin": {"dirs": ["cifar-100-binary"], "train": ["train.bin"], "test": "test.bin",
                     "meta": "fine_label_names.txt", "label_bytes": 2},
    "cifar100-py": {"dirs": ["cifar-100-python"], "train": ["train"], "test": "test", "meta": "meta"},
}


# --- the restricted unpickler ----------------------------------------------------------------

def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode`` as Python 3 pickles ``bytes`` at protocol 2; only the text codecs it uses."""
    if encoding.lower().replace("-", "").replace("_", "") not in ("latin1", "utf8", "ascii"):
        raise pickle.UnpicklingError(f"refused _codecs.encode with codec {encoding!r}")
    return str(text).encode(encoding)


def _numpy_globals() -> dict[tuple[str, str], Any]:
    try:
        from numpy._core import multiarray, numeric  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    allowed: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
                                           ("_codecs", "encode"): _latin1_encode}
    for mod in ("numpy.core", "numpy._core"):  # files written by numpy 1.x name numpy.core, 2.x numpy._core
        allowed[(f"{mod}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{mod}.numeric", "_frombuffer")] = numeric._frombuffer  # protocol 5 arrays
    return allowed


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler for data files: dicts, lists, tuples, strings, bytes, numbers and numpy arrays.

    Every global a pickle names is looked up in a short allow-list (numpy's array/dtype
    reconstructors, the latin-1 bytes encoder); anything else — ``os.system``, ``eval``,
    ``builtins.getattr`` — raises before it is called, so a malicious file runs nothing.
    Object arrays are refused too: their items would be unpickled as arbitrary objects.
    """

    def __init__(self, file: io.BufferedIOBase, source: str = "pickle"):
        super().__init__(file, encoding="latin1")  # Python 2 pickles (CIFAR's) hold str as latin-1
        self.source = source
        self._allowed = _numpy_globals()

    def find_class(self, module: str, name: str) -> Any:
        found = self._allowed.get((module, name))
        if found is None:
            raise CompactCLError(f"{self.source}: the pickle asks for {module}.{name}, which a data file never "
                                 "needs; refused without running it. The file is not a CIFAR batch, or was "
                                 "tampered with: use the binary version or re-download it from its publisher.")
        return found

    def persistent_load(self, pid: Any) -> Any:
        raise CompactCLError(f"{self.source}: the pickle uses persistent ids; refused (not a data file)")


def _check_plain(obj: Any, source: str, depth: int = 0) -> None:
    """What a restricted pickle built holds only plain data: no object arrays, bounded nesting."""
    if depth > 8:
        raise CompactCLError(f"{source}: the pickle nests deeper than a data file does; refused")
    if isinstance(obj, np.ndarray):
        if obj.dtype.hasobject:
            raise CompactCLError(f"{source}: the pickle holds an array of Python objects; refused")
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _check_plain(k, source, depth + 1)
            _check_plain(v, source, depth + 1)
    elif isinstance(obj, (list, tuple)):
        if any(isinstance(v, (dict, list, tuple, np.ndarray)) for v in obj):
            for v in obj:
                _check_plain(v, source, depth + 1)
    elif not isinstance(obj, (str, bytes, int, float, bool, type(None))):
        raise CompactCLError(f"{source}: the pickle built a {type(obj).__name__}; refused (not a data file)")


def safe_unpickle(data: bytes, source: str = "pickle") -> Any:
    """Unpickle ``data`` with :class:`RestrictedUnpickler`; malformed or disallowed content -> CompactCLError.

    The whole file is in memory already (its size bounded by the caller), so a length field
    in the pickle cannot make a read allocate more than the file holds.

    >>> import pickle
    >>> safe_unpickle(pickle.dumps({"labels": [1, 2]}))
    {'labels': [1, 2]}
    """
    try:
        obj = RestrictedUnpickler(io.BytesIO(data), source).load()
    except CompactCLError:
        raise
    except Exception as e:  # noqa: BLE001 - truncated or corrupted pickles raise many kinds
        raise CompactCLError(f"{source}: not a readable pickle ({type(e).__name__}: {e}); the file is truncated "
                             "or corrupted. Re-download it, or use the binary version.") from e
    _check_plain(obj, source)
    return obj


# --- where the files are: a folder or a tarball ----------------------------------------------

class _Files:
    """Files by base name, in a folder or a tarball; sizes known before anything is read."""

    def __init__(self, root: Path):
        self.root = root
        self.tar: tarfile.TarFile | None = None
        self.members: dict[str, Any] = {}
        if root.is_file():
            try:
                self.tar = tarfile.open(root, "r:*")
                for i, m in enumerate(self.tar):  # headers only (a gzip stream decompresses through)
                    if i >= _MAX_MEMBERS:
                        raise CompactCLError(f"{root}: over {_MAX_MEMBERS} entries; a CIFAR tarball has about "
                                             "ten. Name the CIFAR archive itself.")
                    if m.isfile():
                        self.members.setdefault(Path(m.name).name, m)
            except (tarfile.TarError, OSError, EOFError) as e:
                raise CompactCLError(f"{root}: not a readable tarball ({e}); name the extracted folder or "
                                     "re-download the archive") from e
        elif not root.is_dir():
            raise CompactCLError(f"data.root {root} does not exist; name the CIFAR tarball or its extracted folder")

    def folder(self, layout: dict[str, Any]) -> Path | None:
        """The folder of ``layout``'s files: root itself or root/<its folder name>."""
        for cand in [self.root] + [self.root / d for d in layout["dirs"]]:
            if (cand / layout["test"]).exists():
                return cand
        return None

    def has(self, layout: dict[str, Any]) -> bool:
        return layout["test"] in self.members if self.tar is not None else self.folder(layout) is not None

    def size(self, layout: dict[str, Any], name: str) -> int:
        if self.tar is not None:
            if name not in self.members:
                raise CompactCLError(f"{self.root}: the archive has no {name}; it is incomplete. Re-download it.")
            return int(self.members[name].size)
        path = self._path(layout, name)
        mode = path.stat().st_mode
        if not stat.S_ISREG(mode):
            raise CompactCLError(f"{path} is not a regular file; CIFAR batches are plain files")
        return path.stat().st_size

    def _path(self, layout: dict[str, Any], name: str) -> Path:
        folder = self.folder(layout)
        path = (folder or self.root) / name
        if not path.exists():
            raise CompactCLError(f"missing {path}; the CIFAR folder is incomplete (expected "
                                 f"{', '.join(layout['train'])}, {layout['test']}). Re-extract the archive.")
        return path

    def read(self, layout: dict[str, Any], name: str, size: int) -> bytes:
        """Exactly ``size`` bytes (the size checked by the caller), or a named error."""
        return b"".join(self.pieces(layout, name, size, size))

    def pieces(self, layout: dict[str, Any], name: str, size: int, piece: int):
        """The file's ``size`` bytes in pieces of ``piece`` bytes (the last may be shorter); a file
        shorter or longer than ``size`` is a named error."""
        done = 0
        try:
            fh = self.tar.extractfile(self.members[name]) if self.tar is not None else \
                open(self._path(layout, name), "rb")
            assert fh is not None  # members are regular files
            with fh:
                while done < size:
                    data = fh.read(min(piece, size - done))
                    if not data:
                        break
                    done += len(data)
                    yield data
                done += len(fh.read(1))  # one byte more tells a file longer than listed
        except (OSError, EOFError, tarfile.TarError) as e:
            raise CompactCLError(f"{self.root}: cannot read {name} ({e}); the file is truncated. Re-download it.") from e
        if done != size:
            raise CompactCLError(f"{self.root}: {name} holds {done} bytes, its listing says {size}; the file "
                                 "changed while reading or is truncated")

    def close(self) -> None:
        if self.tar is not None:
            self.tar.close()


# --- readers ---------------------------------------------------------------------------------

def _check_records(size: int, label_bytes: int, source: str) -> int:
    """The record size; refuses ``size`` bytes that are not a whole, non-zero number of records."""
    record = label_bytes + PIXELS
    if size % record or not size:
        raise CompactCLError(f"{source}: {size} bytes is not a whole number of {record}-byte records "
                             f"({label_bytes} label byte(s) + {PIXELS} pixels); the file is truncated, or it is "
                             f"the other CIFAR (CIFAR-10 records have 1 label byte, CIFAR-100 2)")
    return record


def read_cifar_records(data: bytes, label_bytes: int, source: str = "cifar") -> tuple[np.ndarray, np.ndarray]:
    """Binary CIFAR records -> (images uint8 (N, 3, 32, 32), labels uint8 (N, label_bytes)); views of ``data``.

    >>> x, y = read_cifar_records(bytes([7]) + bytes(3072), label_bytes=1)
    >>> x.shape, int(y[0, 0])
    ((1, 3, 32, 32), 7)
    """
    record = _check_records(len(data), label_bytes, source)
    rows = np.frombuffer(data, dtype=np.uint8).reshape(-1, record)  # (N, label_bytes + 3072)
    return rows[:, label_bytes:].reshape(-1, 3, 32, 32), rows[:, :label_bytes]


_RECORDS_A_PIECE = 1024  # records read at a time: the pixels land in place, no second copy of a file


def _binary_split(files: _Files, layout: dict[str, Any], names: list[str], fine: bool) -> tuple[np.ndarray, np.ndarray]:
    """The files' records read piece by piece into one preallocated uint8 (N, 3, 32, 32) array."""
    lb = layout["label_bytes"]
    sizes = [files.size(layout, name) for name in names]
    record = max(_check_records(size, lb, f"{files.root}: {name}") for name, size in zip(names, sizes))
    x = np.empty((sum(sizes) // record, 3, 32, 32), dtype=np.uint8)
    y = np.empty(len(x), dtype=np.int64)
    at = 0
    for name, size in zip(names, sizes):
        for data in files.pieces(layout, name, size, record * _RECORDS_A_PIECE):
            px, labels = read_cifar_records(data, lb, f"{files.root}: {name}")
            x[at: at + len(px)] = px
            y[at: at + len(px)] = labels[:, -1] if fine else labels[:, 0]  # CIFAR-100: coarse byte, then fine byte
            at += len(px)
    return x, y


def _python_split(files: _Files, layout: dict[str, Any], names: list[str], label_key: str) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for name in names:
        source = f"{files.root}: {name}"
        batch = safe_unpickle(files.read(layout, name, files.size(layout, name)), source)
        if not isinstance(batch, dict):
            raise CompactCLError(f"{source}: holds a {type(batch).__name__}, not a CIFAR batch (a dict)")
        batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
        x, y = batch.get("data"), batch.get(label_key)
        if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != PIXELS:
            raise CompactCLError(f"{source}: 'data' must be a uint8 array (N, {PIXELS}), got "
                                 f"{getattr(x, 'dtype', type(x).__name__)} {getattr(x, 'shape', '')}")
        y = np.asarray(y if y is not None else [])
        if y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
            raise CompactCLError(f"{source}: {label_key!r} must be one integer label per image ({len(x)}); "
                                 f"got {y.dtype} {y.shape}")
        xs.append(x.reshape(-1, 3, 32, 32))
        ys.append(y.astype(np.int64))
    return np.concatenate(xs), np.concatenate(ys)


def _class_names(files: _Files, layout: dict[str, Any], key: str, count: int, fallback: list[str]) -> list[str]:
    """Names from the meta file when it is there and lists ``count`` names; else ``fallback``."""
    name = layout["meta"]
    try:
        size = files.size(layout, name)
    except CompactCLError:
        return fallback
    if size > _MAX_META_BYTES:
        raise CompactCLError(f"{files.root}: {name} is {size:,} bytes; a class-name file is a few hundred. "
                             "The file is corrupted: delete it (names then default to numbers).")
    data = files.read(layout, name, size)
    if name.endswith(".txt"):
        names = [line.strip() for line in data.decode("utf-8", "replace").splitlines() if line.strip()]
    else:
        meta = safe_unpickle(data, f"{files.root}: {name}")
        meta = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in meta.items()} \
            if isinstance(meta, dict) else {}
        names = [n.decode("latin1") if isinstance(n, bytes) else str(n) for n in meta.get(key, [])]
    if len(names) != count:
        raise CompactCLError(f"{files.root}: {name} lists {len(names)} class names for {count} classes; the "
                             "file is from another dataset or corrupted. Delete it or fix it.")
    return names


def _load(kind: str, root: str | None, max_in_memory_mb: float, fine: bool = True) -> DatasetSplits:
    title = "CIFAR-10" if kind == "cifar10" else "CIFAR-100"
    if not root:
        raise CompactCLError(f"dataset {kind!r} needs data.root: the {title} tarball (binary or python version) or "
                             "its extracted folder; compactcl never downloads")
    files = _Files(Path(root).expanduser())
    try:
        bin_layout, py_layout = _LAYOUTS[f"{kind}-bin"], _LAYOUTS[f"{kind}-py"]
        layout = bin_layout if files.has(bin_layout) else py_layout if files.has(py_layout) else None
        if layout is None:
            raise CompactCLError(f"{root}: no {title} files found (looked for {bin_layout['test']} or "
                                 f"{py_layout['test']}, in it or in {bin_layout['dirs'][0]}/ / "
                                 f"{py_layout['dirs'][0]}/); name the {title} tarball or its extracted folder")
        names = layout["train"] + [layout["test"]]
        sizes = [files.size(layout, n) for n in names]
        # Bounded before reading: the pixels are at most the files' bytes, kept as uint8.
        need_mb = sum(sizes) / 2 ** 20
        if need_mb > max_in_memory_mb:
            raise CompactCLError(f"{root}: {sum(sizes):,} bytes of batches would take about {need_mb:.0f} MB as "
                                 f"uint8 pixels, over max_in_memory_mb={max_in_memory_mb:g}; the files are not {title}'s "
                                 "(about 180 MB), or raise data.options.max_in_memory_mb if they are genuine")
        if "label_bytes" in layout:
            (tx, ty), (vx, vy) = (_binary_split(files, layout, layout["train"], fine),
                                  _binary_split(files, layout, [layout["test"]], fine))
        else:
            key = "labels" if kind == "cifar10" else ("fine_labels" if fine else "coarse_labels")
            (tx, ty), (vx, vy) = (_python_split(files, layout, layout["train"], key),
                                  _python_split(files, layout, [layout["test"]], key))
        num_classes = _check_labels(title, ty, vy)
        fallback = CIFAR10_CLASSES if kind == "cifar10" and num_classes == 10 else [str(i) for i in range(num_classes)]
        key = "label_names" if kind == "cifar10" else ("fine_label_names" if fine else "coarse_label_names")
        if kind == "cifar100" and not fine and layout is bin_layout:
            layout = {**layout, "meta": "coarse_label_names.txt"}
        names = _class_names(files, layout, key, num_classes, fallback)
    finally:
        files.close()
    mean, std = _uint8_stats(tx)
    return _pixel_splits(kind, tx, ty, vx, vy, num_classes, names, {"scale": "pixel/255", "mean": mean, "std": std})


@register_dataset("cifar10")
def cifar10(root: str | None = None, max_in_memory_mb: float = DEFAULT_MAX_IN_MEMORY_MB) -> DatasetSplits:
    """CIFAR-10 (50k/10k 32x32 RGB, 10 classes) from its tarball or extracted folder ``root``."""
    return _load("cifar10", root, max_in_memory_mb)


@register_dataset("cifar100")
def cifar100(root: str | None = None, labels: str = "fine",
             max_in_memory_mb: float = DEFAULT_MAX_IN_MEMORY_MB) -> DatasetSplits:
    """CIFAR-100 (50k/10k 32x32 RGB) from its tarball or folder ``root``; ``labels`` fine (100) or coarse (20)."""
    if labels not in ("fine", "coarse"):
        raise CompactCLError(f"data.options.labels must be 'fine' (100 classes) or 'coarse' (20), got {labels!r}")
    return _load("cifar100", root, max_in_memory_mb, fine=labels == "fine")

