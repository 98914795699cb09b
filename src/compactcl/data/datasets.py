"""Datasets as in-memory tensors, one registry: digits (built in), idx (MNIST format), folder, arrays.

Every loader returns :class:`DatasetSplits`: images ``(N, C, H, W)`` standardised with the training
split's per-channel mean and std (recorded in ``normalization`` as lists, one number per channel).
Images that come as integer pixels (digits, 8-bit IDX, image folders, CIFAR) are *kept* as uint8
(1 byte a value) with their :class:`PixelScale`; models see float32 batches normalised on the
run's device (:meth:`TensorData.batch`). Arrays handed in as floats (:func:`from_arrays`, float
IDX) have no integer pixels to keep and stay float32.
"""

from __future__ import annotations

import functools
import gzip
import math
import os
import stat
import struct
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch

from ..errors import CompactCLError

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["TensorData", "EVAL_BATCH", "image_batches", "PixelScale", "pixel_levels", "DatasetSplits", "load_dataset",
           "list_datasets", "register_dataset", "read_idx",
           "from_arrays", "DATASETS", "FASHION_MNIST_ROOT", "LazyImages", "lazy_folder", "augment_batch",
           "per_channel", "standardize_array"]

FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}


@dataclass(frozen=True)
class PixelScale:
    """How stored uint8 pixels become the float32 images models see: ``(p / levels - mean[c]) / std[c]``.

    ``levels`` is 255 (8-bit images) or 16 (scikit-learn's digits, values 0..16); ``mean``/``std``
    one number per channel. Applied per batch on the batch's device with tensor (not scalar)
    operands, so every step is one correctly rounded float32 operation: the very numbers
    :func:`standardize_array` gives on the CPU, also on CUDA (where a scalar divisor would be
    turned into a multiplication by its reciprocal).
    """

    levels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @staticmethod
    def of(normalization: dict[str, Any] | None, channels: int | None = None) -> "PixelScale | None":
        """The scale a dataset's ``normalization`` record describes, or None (unknown pixel scale)."""
        levels = pixel_levels(normalization)
        if levels is None:
            return None
        mean, std = normalization["mean"], normalization["std"]
        channels = channels or (len(mean) if isinstance(mean, (list, tuple)) else 1)
        return PixelScale(levels, tuple(per_channel(mean, channels)), tuple(per_channel(std, channels)))

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 (N, C, H, W) -> float32 standardised images, on ``pixels``' device."""
        levels, mean, std = _scale_operands(self, pixels.device)
        return (pixels.to(torch.float32) / levels - mean) / std


@functools.lru_cache(maxsize=32)
def _scale_operands(scale: PixelScale, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(levels, mean, std) as float32 tensors on ``device``, made once: no host-to-device copy per batch."""
    shape, opts = (1, len(scale.mean), 1, 1), {"dtype": torch.float32, "device": device}
    return (torch.tensor(float(scale.levels), **opts), torch.tensor(scale.mean, **opts).view(shape),
            torch.tensor(scale.std, **opts).view(shape))


PIXEL_LEVELS = {"pixel/255": 255, "pixel/16": 16}  # DatasetSplits.normalization["scale"] -> integer levels


def pixel_levels(normalization: dict[str, Any] | None) -> int | None:
    """The integer pixel range (255, or 16 for sklearn's digits) behind ``normalization``, or None
    when the images cannot be stored as uint8 (unknown scale, no mean/std)."""
    if not normalization or not {"mean", "std"} <= set(normalization):
        return None
    return PIXEL_LEVELS.get(normalization.get("scale", ""))


# Images a model sees at once when nothing trains (evaluation, features, teacher outputs). Its
# activations are freed each batch, so this bounds a run's working memory: on a width-8 CNN at
# 32x32 a 512-image batch took ~100 MiB at its peak, 128 images ~40 MiB (benchmarks/data_memory.py).
EVAL_BATCH = 128


@dataclass
class TensorData:
    """Images and integer labels ``y`` (N,).

    ``images`` holds what the source gave: uint8 pixels when ``scale`` is set (1 byte a value;
    models see ``scale.normalize`` of them, batch by batch), else float32 images used as they
    are (arrays handed in as floats). ``rows`` (optional) selects and orders rows of ``images``:
    subsets and class-incremental tasks share one copy of a dataset's pixels.

    :meth:`batch` is how every consumer reads images (the training loop, evaluation, herding,
    the deployer): float32 (B, C, H, W) on the device asked for. ``x`` builds all of them at
    once (4 bytes a value), for small sets and for callers that want a plain tensor.
    """

    images: torch.Tensor
    y: torch.Tensor
    scale: PixelScale | None = None
    rows: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.y)

    @property
    def shape(self) -> tuple[int, ...]:
        """(N, C, H, W) of the images this set holds."""
        return (len(self), *self.images.shape[1:])

    @property
    def nbytes(self) -> int:
        """Bytes of the images this set selects, as stored (uint8: 1 a value)."""
        return len(self) * math.prod(self.images.shape[1:]) * self.images.element_size()

    def stored(self, index: Any = None) -> torch.Tensor:
        """The stored images (uint8 pixels, or floats) of ``index`` (rows of this set; None: all)."""
        if self.rows is None:
            return self.images if index is None else self.images[index]
        return self.images[self.rows if index is None else self.rows[index]]

    def batch(self, index: Any = None, device: torch.device | str | None = None,
              non_blocking: bool = False) -> torch.Tensor:
        """Float32 images (B, C, H, W) of ``index`` (a slice or index tensor; None: all) on ``device``
        (default: where they are stored), normalised there. From the host to CUDA, the stored
        bytes travel pinned and without blocking."""
        stored = self.stored(index)
        if device is not None and stored.device != torch.device(device):
            if non_blocking:
                stored = stored.pin_memory()
            stored = stored.to(device, non_blocking=non_blocking)
        return self.scale.normalize(stored) if self.scale is not None else stored

    @property
    def x(self) -> torch.Tensor:
        """Every image as float32 (N, C, H, W) — a new tensor of 4 bytes a value."""
        return self.batch()

    def to(self, device: torch.device | str) -> "TensorData":
        """This set with its selected rows stored on ``device`` (itself when they already are)."""
        if self.images.device == torch.device(device) and self.y.device == torch.device(device):
            return self
        return TensorData(self.stored().to(device), self.y.to(device), self.scale)

    def subset(self, index: torch.Tensor | np.ndarray) -> "TensorData":
        """Rows ``index`` of this set; shares the stored images (no copy)."""
        index = torch.as_tensor(index, dtype=torch.long)
        rows = index if self.rows is None else self.rows[index]
        return TensorData(self.images, self.y[index], self.scale, rows)

    def relabel(self, y: torch.Tensor) -> "TensorData":
        """The same images with labels ``y``."""
        return TensorData(self.images, y, self.scale, self.rows)

    @staticmethod
    def cat(parts: list["TensorData"]) -> "TensorData":
        """One set of ``parts`` in order: rows of one shared store stay shared; parts stored alike
        (same pixel scale) are joined as stored; a mix of scales is joined as float32."""
        parts = [p for p in parts if len(p)]
        if not parts:
            raise ValueError("nothing to concatenate")
        y = torch.cat([p.y for p in parts])
        first = parts[0]
        if all(p.images is first.images and p.scale == first.scale for p in parts):
            rows = torch.cat([p.rows if p.rows is not None else torch.arange(len(p.images)) for p in parts])
            return TensorData(first.images, y, first.scale, rows)
        if all(p.scale == first.scale for p in parts):
            return TensorData(torch.cat([p.stored() for p in parts]), y, first.scale)
        return TensorData(torch.cat([p.x for p in parts]), y)


def image_batches(x: "torch.Tensor | TensorData", batch_size: int = EVAL_BATCH,
                  device: torch.device | str | None = None):
    """Float images of ``x`` (a float tensor as it is, or a data set normalised batch by batch) in order,
    ``batch_size`` at a time, on ``device`` (default: where they are): a whole set scored without
    a float copy of it."""
    for i in range(0, len(x), batch_size):
        if isinstance(x, TensorData):
            yield x.batch(slice(i, i + batch_size), device)
        else:
            yield x[i: i + batch_size] if device is None else x[i: i + batch_size].to(device)


@dataclass
class DatasetSplits:
    name: str
    train: TensorData
    test: TensorData
    num_classes: int
    class_names: list[str] = field(default_factory=list)
    normalization: dict[str, Any] = field(default_factory=dict)

    @property
    def in_channels(self) -> int:
        return int(self.train.shape[1])

    @property
    def input_size(self) -> int:
        return int(self.train.shape[-1])


Loader = Callable[..., DatasetSplits]
DATASETS: dict[str, Loader] = {}


def register_dataset(name: str) -> Callable[[Loader], Loader]:
    def wrap(fn: Loader) -> Loader:
        DATASETS[name] = fn
        return fn

    return wrap


def list_datasets() -> list[str]:
    return sorted(DATASETS)


def load_dataset(name: str, root: str | None = None, **kwargs) -> DatasetSplits:
    """Load dataset ``name`` (see :func:`list_datasets`), reading files under ``root`` when it has any."""
    if name not in DATASETS:
        raise CompactCLError(f"unknown dataset {name!r}; choose one of {', '.join(list_datasets())}")
    return DATASETS[name](root=root, **kwargs)


def _check_images(name: str, train_x: np.ndarray, test_x: np.ndarray) -> None:
    if train_x.ndim != 4 or test_x.ndim != 4 or train_x.shape[1:] != test_x.shape[1:]:
        raise CompactCLError(f"{name}: images must be (N, C, H, W) with the same shape in train and test; "
                             f"got {train_x.shape} and {test_x.shape}")
    if train_x.shape[2] != train_x.shape[3]:
        raise CompactCLError(f"{name}: images must be square, got {train_x.shape[2]}x{train_x.shape[3]}; resize them")
    if not len(train_x) or not len(test_x):
        raise CompactCLError(f"{name}: {len(train_x)} training and {len(test_x)} test images; both splits need images")


def _float_stats(name: str, train_x: np.ndarray, test_x: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of float images in [0, 1] (float32 arithmetic); NaN/inf refused."""
    # per channel, each channel's numbers computed exactly as one scalar over a 1-channel set was
    mean = [float(train_x[:, c].mean()) for c in range(train_x.shape[1])]
    _check_finite(name, "training", train_x, sum(mean))
    _check_finite(name, "test", test_x, float(test_x.sum()))
    return mean, [float(train_x[:, c].std()) or 1.0 for c in range(train_x.shape[1])]


def _standardize(name: str, train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                 class_names: list[str] | None = None) -> DatasetSplits:
    """Float arrays (N, C, H, W) in [0, 1] -> standardised float32 tensors; stats from train only."""
    _check_images(name, train_x, test_x)
    num_classes = _check_labels(name, train_y, test_y)
    mean, std = _float_stats(name, train_x, test_x)
    to_t = lambda a: torch.from_numpy(standardize_array(a, mean, std))  # noqa: E731
    return DatasetSplits(name, TensorData(to_t(train_x), torch.from_numpy(train_y.astype(np.int64))),
                         TensorData(to_t(test_x), torch.from_numpy(test_y.astype(np.int64))), num_classes,
                         class_names or [str(i) for i in range(num_classes)],
                         {"scale": "pixel/255", "mean": mean, "std": std})


def _pixel_splits(name: str, train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                  num_classes: int, class_names: list[str] | None, normalization: dict[str, Any]) -> DatasetSplits:
    """uint8 pixel arrays (N, C, H, W) kept as they are, with the scale ``normalization`` records."""
    scale = PixelScale.of(normalization, train_x.shape[1])
    train_x, test_x = (a if a.flags.writeable else a.copy() for a in (train_x, test_x))  # IDX bodies are read-only
    data = lambda x, y: TensorData(torch.from_numpy(x), torch.from_numpy(y.astype(np.int64)), scale)  # noqa: E731
    return DatasetSplits(name, data(train_x, train_y), data(test_x, test_y), num_classes,
                         class_names or [str(i) for i in range(num_classes)], normalization)


def per_channel(value: float | list[float] | tuple[float, ...], channels: int) -> list[float]:
    """A recorded mean or std as one float per channel: lists as they are (length checked), a scalar
    (files written before normalization was per channel) repeated."""
    if isinstance(value, (list, tuple)):
        if len(value) != channels:
            raise CompactCLError(f"normalization holds {len(value)} values for {channels}-channel images; "
                                 "the file is inconsistent, export it again")
        return [float(v) for v in value]
    return [float(value)] * channels


def standardize_array(a: np.ndarray, mean: Any, std: Any) -> np.ndarray:
    """(N, C, H, W) values in [0, 1] -> float32 ``(a - mean[c]) / std[c]``, channel by channel with
    Python-float statistics, so a 1-channel set gets the very float32 operations of a scalar mean/std."""
    mean, std = per_channel(mean, a.shape[1]), per_channel(std, a.shape[1])
    out = np.empty(a.shape, dtype=np.float32)
    for c in range(a.shape[1]):
        out[:, c] = (a[:, c] - mean[c]) / std[c]
    return out


def _check_labels(name: str, train_y: np.ndarray, test_y: np.ndarray) -> int:
    """The number of classes K; refuse labels that are not 0..K-1 with every class in both splits.

    Checked before anything is sized by K: a label of 2e9 would otherwise allocate per-class
    tables of 2e9 entries. A class missing from a split would train or test nothing silently.
    """
    for split, y in (("training", train_y), ("test", test_y)):
        if y.ndim != 1:
            raise CompactCLError(f"{name}: {split} labels must be one integer per image, got shape {y.shape}")
        integral = np.issubdtype(y.dtype, np.integer) or (
            np.issubdtype(y.dtype, np.floating) and bool(np.isfinite(y).all()) and bool((y == np.floor(y)).all()))
        if not integral:
            raise CompactCLError(f"{name}: {split} labels must be integers 0..K-1, got {y.dtype} values")
        if len(y) and y.min() < 0:
            raise CompactCLError(f"{name}: labels must be 0..K-1, found {int(y.min())} in the {split} labels")
    top = max(int(train_y.max()), int(test_y.max()))
    if top >= min(len(train_y), len(test_y)):  # K classes need K images in each split at least
        raise CompactCLError(f"{name}: found label {top}, but with {len(train_y)} training and {len(test_y)} test "
                             f"images at most {min(len(train_y), len(test_y))} classes can have images in both "
                             "splits; labels must be 0..K-1 with every class present. The label file is corrupted "
                             "or not from this dataset.")
    num_classes = top + 1
    for split, y in (("training", train_y), ("test", test_y)):
        counts = np.bincount(y.astype(np.int64), minlength=num_classes)
        empty = np.flatnonzero(counts == 0)
        if len(empty):
            listed = ", ".join(map(str, empty[:10].tolist())) + (", ..." if len(empty) > 10 else "")
            raise CompactCLError(f"{name}: class {listed} has no {split} images (labels run 0..{top}); every class "
                                 "0..K-1 needs images in both training and test. Relabel the classes without gaps "
                                 "or add the missing images.")
    return num_classes


def _check_finite(name: str, split: str, x: np.ndarray, total: float) -> None:
    """Refuse NaN/inf pixels at load (``total`` is any sum over ``x``: non-finite iff a pixel is)."""
    if math.isfinite(total):
        return
    for start in range(0, len(x), _CHUNK):  # name the first bad image, one chunk of flags at a time
        part = x[start: start + _CHUNK].reshape(len(x[start: start + _CHUNK]), -1)
        rows = np.flatnonzero(~np.isfinite(part).all(axis=1))
        if len(rows):
            first = start + int(rows[0])
            break
    else:  # every pixel is finite but their sum overflowed: values far outside [0, 1]
        raise CompactCLError(f"{name}: {split} pixel values are so large that their sum overflows; images must "
                             "hold values in [0, 1] (IDX: 0..255)")
    raise CompactCLError(f"{name}: {split} image {first} holds NaN or infinite pixel values; the data is "
                         "corrupted (this is not a learning-rate problem). Fix or drop those images.")


def from_arrays(x_train: Any, y_train: Any, x_test: Any, y_test: Any, name: str = "arrays",
                class_names: list[str] | None = None) -> DatasetSplits:
    """Wrap in-memory arrays (N, C, H, W) or (N, H, W), values in [0, 1], labels 0..K-1."""
    arrays = [np.asarray(a) for a in (x_train, y_train, x_test, y_test)]
    xs = [a[:, None] if a.ndim == 3 else a for a in (arrays[0], arrays[2])]
    if len(xs[0]) != len(arrays[1]) or len(xs[1]) != len(arrays[3]):
        raise CompactCLError(f"{name}: {len(xs[0])} training images but {len(arrays[1])} labels "
                             f"(test: {len(xs[1])} vs {len(arrays[3])}); pass one label per image")
    return _standardize(name, xs[0].astype(np.float32), arrays[1], xs[1].astype(np.float32), arrays[3], class_names)


@register_dataset("python")
def handed_in(root: str | None = None, **options: Any) -> DatasetSplits:
    """Stands for data handed to ``compactcl.run(..., data=...)``: there is nothing to load by name."""
    raise CompactCLError("this run's data was handed in from Python (compactcl.run(..., data=...)); there is no "
                         "file to load it from: pass the same data= again (to resume, too)")


def _stratified_split(y: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    return train_test_split(idx, test_size=test_fraction, stratify=y, random_state=seed)


@register_dataset("digits")
def digits(root: str | None = None, test_fraction: float = 0.2) -> DatasetSplits:
    """scikit-learn's 1,797 8x8 handwritten digits; a fixed stratified 80/20 train/test split."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # (N, 1, 8, 8), values 0..16; reshape, not [:, None]: a 0 stride on C would make convolutions pick
    # the channels-last path (other rounding) for these 1-channel batches
    pixels = bunch.images.astype(np.uint8).reshape(len(bunch.images), 1, 8, 8)
    y = bunch.target.astype(np.int64)
    tr, te = _stratified_split(y, test_fraction, seed=0)  # the data split is fixed, not the run's seed
    _check_images("digits", pixels[tr], pixels[te])
    num_classes = _check_labels("digits", y[tr], y[te])
    mean, std = _float_stats("digits", pixels[tr].astype(np.float32) / np.float32(16), pixels[te])
    return _pixel_splits("digits", pixels[tr], y[tr], pixels[te], y[te], num_classes, None,
                         {"scale": "pixel/16", "mean": mean, "std": std})


# --- IDX (the MNIST file format) -------------------------------------------------------------

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


# The largest IDX file read: as many values as fit max_in_memory_mb of float32 (a folder's default
# bound), 512M values, ten times Fashion-MNIST's whole training set.
DEFAULT_MAX_IN_MEMORY_MB = 2048.0
_MAX_IDX_VALUES = int(DEFAULT_MAX_IN_MEMORY_MB * 2 ** 20) // 4


def read_idx(path: str | os.PathLike, max_values: int = _MAX_IDX_VALUES) -> np.ndarray:
    """Read one IDX file (raw or gzip-compressed) into an array of its stored shape.

    The header's shape is checked against ``max_values`` before the body is read, and at
    most the header's size + 1 byte is ever decompressed: a small gzip that inflates to
    gigabytes, or a header promising terabytes, is refused without holding more than the
    header honestly describes.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            head = f.read(4)
            if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] not in _IDX_DTYPES:
                raise CompactCLError(f"{path}: not an IDX file (bad magic number); expected MNIST-format data")
            ndim = head[3]
            dims = f.read(4 * ndim)
            if ndim == 0 or len(dims) < 4 * ndim:
                raise CompactCLError(f"{path}: IDX header truncated ({ndim} dimensions)")
            shape = struct.unpack(f">{ndim}I", dims)
            dtype = np.dtype(_IDX_DTYPES[head[2]])
            count = math.prod(shape)  # exact (np.prod of 2**32-sized dims would overflow)
            if count > max_values:
                raise CompactCLError(
                    f"{path}: its IDX header claims shape {shape} ({count:,} values), over the limit of "
                    f"{max_values:,} values ({max_values * 4 / 2 ** 30:.0f} GiB as float32); the file is corrupted "
                    "or crafted. Split the dataset, or raise data.options.max_in_memory_mb if it is genuine.")
            expected = count * dtype.itemsize
            body = f.read(expected + 1)  # one byte more tells a too-long body without reading all of it
    except (OSError, EOFError, zlib.error) as e:
        raise CompactCLError(f"{path}: cannot read ({e}); the file is truncated or not gzip. Reinstall it.") from e
    if len(body) != expected:
        size = f"has {len(body)} bytes, its header promises {expected}" if len(body) < expected else \
            f"is longer than the {expected} bytes its header promises"
        raise CompactCLError(f"{path}: IDX body {size}; "
                             "the file is truncated or corrupted. Reinstall or re-download it.")
    return np.frombuffer(body, dtype=dtype).reshape(shape)


_IDX_FILES = {"train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
              "test_x": "t10k-images-idx3-ubyte", "test_y": "t10k-labels-idx1-ubyte"}


def _find_idx(root: Path, stem: str, hint: str) -> Path:
    for candidate in (root / stem, root / f"{stem}.gz", root / stem.replace("-idx", ".idx")):
        if candidate.is_file():
            return candidate
    raise CompactCLError(f"missing {stem}[.gz] in {root}. {hint}")


@register_dataset("idx")
def idx(root: str | None = None, hint: str = "", name: str = "idx",
        max_in_memory_mb: float = DEFAULT_MAX_IN_MEMORY_MB) -> DatasetSplits:
    """The four MNIST-format IDX files (gzip or raw) in folder ``root``; each at most ``max_in_memory_mb`` as float32."""
    if not root:
        raise CompactCLError("dataset 'idx' needs data.root: a folder holding train-images-idx3-ubyte[.gz], "
                             "train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]")
    base = Path(root).expanduser()
    hint = hint or "Put the four MNIST-format files there (names as in the MNIST distribution)."
    limit = int(max_in_memory_mb * 2 ** 20) // 4
    arrays = {k: read_idx(_find_idx(base, stem, hint), limit) for k, stem in _IDX_FILES.items()}
    for key, arr in arrays.items():
        want = 3 if key.endswith("_x") else 1  # images (N, H, W), labels (N,)
        if arr.ndim != want:
            raise CompactCLError(f"{base}: {_IDX_FILES[key]} has {arr.ndim} dimensions {arr.shape}, expected {want}; "
                                 "images and labels may be swapped or the file is not MNIST-format")
    for split in ("train", "test"):
        if len(arrays[f"{split}_x"]) != len(arrays[f"{split}_y"]):
            raise CompactCLError(f"{base}: {split} images and labels differ in count; a file is truncated")
    tx, vx = (a.reshape(len(a), 1, *a.shape[1:]) for a in (arrays["train_x"], arrays["test_x"]))  # (N, 1, H, W)
    if tx.dtype != np.uint8 or vx.dtype != np.uint8:  # IDX of other types: float images, value / 255
        to_x = lambda a: a.astype(np.float32) / 255.0  # noqa: E731
        return _standardize(name, to_x(tx), arrays["train_y"], to_x(vx), arrays["test_y"])
    _check_images(name, tx, vx)
    num_classes = _check_labels(name, arrays["train_y"], arrays["test_y"])  # labels checked as stored
    # the float32 statistics IDX runs have always had (a transient float copy at load), so their numbers stay
    mean, std = _float_stats(name, tx.astype(np.float32) / np.float32(255), vx)
    return _pixel_splits(name, tx, arrays["train_y"], vx, arrays["test_y"], num_classes, None, {"scale": "pixel/255", "mean": mean, "std": std})


@register_dataset("fashion-mnist")
def fashion_mnist(root: str | None = None) -> DatasetSplits:
    """Zalando's Fashion-MNIST (60k/10k 28x28), from Debian's dataset-fashion-mnist package."""
    hint = ("Install it with `make data` (Debian package dataset-fashion-mnist, files in "
            f"{FASHION_MNIST_ROOT}/) or set data.root to a folder with the four IDX files.")
    splits = idx(root=root or FASHION_MNIST_ROOT, hint=hint, name="fashion-mnist")
    splits.class_names = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker",
                          "bag", "ankle-boot"]
    return splits


@register_dataset("mnist")
def mnist(root: str | None = None) -> DatasetSplits:
    """MNIST from a folder you name (data.root); nothing is downloaded."""
    return idx(root=root, name="mnist", hint="Copy the four MNIST IDX files there; compactcl never downloads.")


# --- image folders ---------------------------------------------------------------------------
#
# Memory bound: files are listed first and the size of the result (uint8, 1 byte a value,
# N x C x S x S) is checked against ``max_in_memory_mb`` *before* anything is decoded. Photos
# are decoded once, one at a time, into a preallocated uint8 (N, C, S, S) array that the run
# keeps: peak = 1 byte a value + one decoded photo. Above the limit, :func:`lazy_folder` keeps
# only file paths and decodes on access (memory = the batch you index), for your own DataLoader.

_CHUNK = 1024  # images standardised at a time: bounds the float temporaries


# Decoded images are bounded in pixels (64M, 192 MB as RGB) whatever Pillow's global MAX_IMAGE_PIXELS
# says, and Pillow's DecompressionBombWarning is an error here: a small file must not decode to gigabytes.
MAX_IMAGE_PIXELS = 2 ** 26
MAX_IMAGE_SIZE = 4096  # data.options.image_size: the side images are resized to


def _listdir(folder: Path) -> list[Path]:
    try:
        return list(folder.iterdir())
    except OSError as e:
        raise CompactCLError(f"cannot list {folder} ({e}); check the path and its permissions") from e


def _class_dirs(base: Path) -> list[Path]:
    return sorted(p for p in _listdir(base) if p.is_dir() and not p.name.startswith("."))


def _check_regular(path: Path) -> None:
    """Refuse anything named like an image that is not a regular file (FIFO, socket, device, folder, bad link).

    Refused rather than skipped: reading a FIFO blocks forever, and skipping would quietly train
    on other data than the folder lists, so the user is told which path to remove.
    """
    try:
        mode = path.stat().st_mode  # follows symlinks: a link to a real image is fine
    except OSError as e:  # dangling link, symlink loop (ELOOP), permissions
        raise CompactCLError(f"{path}: cannot open it ({e.strerror or e}); remove it or fix the link") from e
    if not stat.S_ISREG(mode):
        kind = ("a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else
                "a folder" if stat.S_ISDIR(mode) else "a device or special file")
        raise CompactCLError(f"{path} is {kind}, not an image file; remove it from the dataset folder")


def _list_folder(base: Path, classes: list[str]) -> tuple[list[Path], np.ndarray]:
    """Image files and labels of ``base/<class>/*`` in class order; every class must have images."""
    files, labels = [], []
    for label, cls in enumerate(classes):
        found = sorted(p for p in _listdir(base / cls) if p.suffix.lower() in IMAGE_SUFFIXES) \
            if (base / cls).is_dir() else []
        for p in found:
            _check_regular(p)
        if not found:
            raise CompactCLError(f"class folder {base / cls} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}); "
                                 "add images or remove the empty folder")
        files += found
        labels += [label] * len(found)
    return files, np.asarray(labels, dtype=np.int64)


def _to_8bit(im: "Image.Image") -> "Image.Image":
    """16/32-bit greyscale (PNG mode I;16 or I) -> 8-bit "L" scaled by 255/65535; convert("L") would clip to 255."""
    from PIL import Image

    if im.mode not in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        return im
    wide = np.asarray(im).astype(np.int64).clip(0, 65535)  # (H, W), 16-bit range
    return Image.fromarray(((wide * 255 + 32767) // 65535).astype(np.uint8), "L")


def _decode(path: Path, size: int, channels: int) -> np.ndarray:
    """One image file -> uint8 (C, size, size), bilinear resize."""
    from PIL import Image

    # O_NONBLOCK: a FIFO swapped in after listing cannot block the open; fstat then refuses it
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:  # removed, a dangling link or a symlink loop since it was listed
        raise CompactCLError(f"{path}: cannot open it ({e.strerror or e}); remove it or fix the link") from e
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise CompactCLError(f"{path} is not a regular file; remove it from the dataset folder")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(fh) as im:
                    if im.width * im.height > MAX_IMAGE_PIXELS:  # checked on the header, before decoding
                        raise CompactCLError(f"{path}: image too large to decode ({im.width}x{im.height} pixels, over "
                                             f"the limit of {MAX_IMAGE_PIXELS:,}), possibly a decompression bomb; "
                                             "shrink or remove it")
                    im = _to_8bit(im).convert("L" if channels == 1 else "RGB").resize((size, size), Image.BILINEAR)
                    arr = np.asarray(im, dtype=np.uint8)
        except CompactCLError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise CompactCLError(f"{path}: image too large to decode, Pillow refuses it as a possible decompression "
                                 f"bomb ({e}); shrink or remove it") from e
        except Exception as e:  # noqa: BLE001 - Pillow's plugins raise OSError, SyntaxError, ValueError, ...
            raise CompactCLError(f"{path}: not a readable image ({type(e).__name__}: {e}); delete or replace it") from e
    return arr[None] if channels == 1 else arr.transpose(2, 0, 1)


def _decode_all(files: list[Path], size: int, channels: int) -> np.ndarray:
    out = np.empty((len(files), channels, size, size), dtype=np.uint8)  # (N, C, S, S), 1 byte a value
    for i, f in enumerate(files):
        out[i] = _decode(f, size, channels)
    return out


def _uint8_stats(x: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of ``x / 255`` (N, C, S, S), exact: integer sums from a histogram of
    the 256 pixel values per channel, chunk by chunk (no wide copy of x)."""
    channels = x.shape[1]
    counts = np.zeros((channels, 256), dtype=np.int64)
    for i in range(0, len(x), _CHUNK):
        for c in range(channels):
            counts[c] += np.bincount(x[i: i + _CHUNK, c].reshape(-1), minlength=256)
    values = np.arange(256, dtype=np.int64)
    total = [int(counts[c] @ values) for c in range(channels)]
    squares = [int(counts[c] @ (values * values)) for c in range(channels)]
    return _stats_from_sums(total, squares, x.size // channels if channels else 0)


def _stats_from_sums(total: list[int], squares: list[int], n: int) -> tuple[list[float], list[float]]:
    """Mean and std of pixel/255 from per-channel integer sums over ``n`` values a channel."""
    mean = [t / n / 255.0 for t in total]
    std = [max(q / n / 255.0 ** 2 - m * m, 0.0) ** 0.5 or 1.0 for q, m in zip(squares, mean)]
    return mean, std


def _to_float(x: np.ndarray, mean: Any, std: Any) -> torch.Tensor:
    """uint8 (N, C, S, S) -> standardised float32 tensor, written chunk by chunk into one buffer."""
    mean, std = per_channel(mean, x.shape[1]), per_channel(std, x.shape[1])
    out = torch.empty(x.shape, dtype=torch.float32)
    for i in range(0, len(x), _CHUNK):
        part = torch.from_numpy(x[i: i + _CHUNK]).float().div_(255.0)
        for c in range(x.shape[1]):
            out[i: i + _CHUNK, c] = part[:, c].sub_(mean[c]).div_(std[c])
    return out


def _folder_files(root: str | None, test_fraction: float) -> tuple[Path, list[str], list[Path], np.ndarray,
                                                                   list[Path], np.ndarray]:
    """(base, classes, train files, train labels, test files, test labels) of an image folder."""
    if not root:
        raise CompactCLError("dataset 'folder' needs data.root: a folder with one sub-folder of images per class")
    base = Path(root).expanduser()
    if not base.is_dir():
        raise CompactCLError(f"data.root {base} is not a folder; point it at a folder with one sub-folder per class")
    held_out = next((base / n for n in ("test", "val") if (base / n).is_dir()), None)
    if (base / "train").is_dir() and held_out is not None:  # train/ + test/ (or val/, as ImageNet ships)
        classes = [p.name for p in _class_dirs(base / "train")]
        tr_files, tr_y = _list_folder(base / "train", classes)
        te_files, te_y = _list_folder(held_out, classes)
        return base, classes, tr_files, tr_y, te_files, te_y
    classes = [p.name for p in _class_dirs(base)]
    if len(classes) < 2:
        raise CompactCLError(f"{base}: found {len(classes)} class folder(s); need at least two sub-folders of images")
    files, y = _list_folder(base, classes)
    counts = np.bincount(y, minlength=len(classes))
    if counts.min() < 2:  # a stratified train/test split needs an image of each class on both sides
        raise CompactCLError(f"class folder {base / classes[int(counts.argmin())]} holds {counts.min()} image; "
                             "each class needs at least 2 (one for training, one for testing)")
    try:
        tr, te = _stratified_split(y, test_fraction, seed=0)  # split on file names: nothing decoded yet
    except ValueError as e:  # e.g. a test_fraction that leaves no room for every class
        raise CompactCLError(f"{base}: cannot split {len(y)} images of {len(classes)} classes into train and "
                             f"test with test_fraction={test_fraction} ({e}); add images or change it") from e
    return base, classes, [files[i] for i in tr], y[tr], [files[i] for i in te], y[te]


def _check_image_options(image_size: Any, channels: Any) -> None:
    if isinstance(image_size, bool) or not isinstance(image_size, int) or not 1 <= image_size <= MAX_IMAGE_SIZE:
        raise CompactCLError(f"data.options.image_size must be a whole number of pixels in 1..{MAX_IMAGE_SIZE}, "
                             f"got {image_size!r}")
    if channels not in (1, 3) or isinstance(channels, bool):
        raise CompactCLError(f"data.options.channels must be 1 (grey) or 3 (RGB), got {channels!r}")


def _folder_normalization(image_size: int, channels: int, mean: list[float], std: list[float]) -> dict[str, Any]:
    return {"scale": "pixel/255", "mean": mean, "std": std, "resize": [image_size, image_size],
            "channels": channels, "interpolation": "bilinear"}


@register_dataset("folder")
def folder(root: str | None = None, image_size: int = 32, channels: int = 3, test_fraction: float = 0.2,
           max_in_memory_mb: float = DEFAULT_MAX_IN_MEMORY_MB) -> DatasetSplits:
    """One sub-folder of images per class (``root/<class>/*.png``), or ``root/train`` + ``root/test``
    (or ``root/val``; ``test`` when both are there).

    Images are decoded once, resized to ``image_size`` squared and held in memory as uint8
    (1 byte a value); batches are standardised with the training split's per-channel mean and
    std (recorded in ``normalization``, one number per channel). If the pixels would take more
    than ``max_in_memory_mb``, it refuses before decoding anything, with the fixes.
    """
    _check_image_options(image_size, channels)
    base, classes, tr_files, tr_y, te_files, te_y = _folder_files(root, test_fraction)
    n = len(tr_files) + len(te_files)
    need_mb = n * channels * image_size * image_size / 2 ** 20
    if need_mb > max_in_memory_mb:
        raise CompactCLError(
            f"{base}: {n} images at {channels}x{image_size}x{image_size} take {need_mb:.3g} MB as uint8 pixels, "
            f"over max_in_memory_mb={max_in_memory_mb:g}. Lower data.options.image_size, raise "
            "data.options.max_in_memory_mb if you have the memory, or read the images lazily with "
            "compactcl.data.datasets.lazy_folder() in your own DataLoader.")
    tx, vx = _decode_all(tr_files, image_size, channels), _decode_all(te_files, image_size, channels)
    mean, std = _uint8_stats(tx)
    return _pixel_splits(f"folder:{base.name}", tx, tr_y, vx, te_y, len(classes), classes,
                         _folder_normalization(image_size, channels, mean, std))


class LazyImages:
    """Image files decoded on access: ``imgs[i]`` -> (C, S, S), ``imgs[idx]`` -> (B, C, S, S) float32.

    Holds only paths and labels (``y``), so memory is the batch you index, whatever the folder
    size. Standardised exactly like :func:`folder`. For a DataLoader over a folder too big for
    memory::

        loader = DataLoader(range(len(imgs)), batch_size=64, shuffle=True,
                            collate_fn=lambda idx: (imgs[idx], imgs.y[idx]))
    """

    def __init__(self, files: list[Path], labels: np.ndarray, image_size: int, channels: int,
                 mean: Any, std: Any):
        self.files = list(files)
        self.y = torch.as_tensor(labels, dtype=torch.long)
        self.image_size, self.channels = image_size, channels
        self.mean, self.std = per_channel(mean, channels), per_channel(std, channels)

    def __len__(self) -> int:
        return len(self.files)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.files), self.channels, self.image_size, self.image_size)

    def __getitem__(self, index: int | slice | list[int] | np.ndarray | torch.Tensor) -> torch.Tensor:
        if isinstance(index, (int, np.integer)) or (isinstance(index, torch.Tensor) and index.ndim == 0):
            return self[[int(index)]][0]
        picks = range(len(self))[index] if isinstance(index, slice) else torch.as_tensor(index).reshape(-1)
        if isinstance(picks, torch.Tensor) and picks.dtype == torch.bool:
            picks = picks.nonzero().flatten()
        u8 = _decode_all([self.files[int(i)] for i in picks], self.image_size, self.channels)
        return _to_float(u8, self.mean, self.std)  # (B, C, S, S)

    def materialize(self) -> TensorData:
        """All images in memory as :class:`TensorData`: uint8 pixels with their scale, as :func:`folder` holds them."""
        pixels = torch.from_numpy(_decode_all(self.files, self.image_size, self.channels))
        return TensorData(pixels, self.y.clone(), PixelScale(255, tuple(self.mean), tuple(self.std)))


def lazy_folder(root: str | None = None, image_size: int = 32, channels: int = 3, test_fraction: float = 0.2,
                mean: float | list[float] | None = None, std: float | list[float] | None = None) -> tuple[LazyImages, LazyImages, dict[str, Any]]:
    """(train, test, normalization) of an image folder, decoded on access: for folders too big for memory.

    Without ``mean``/``std`` (one number, or one per channel), one streaming pass over the
    training images computes them per channel (memory: one image at a time); the split and the
    numbers match :func:`folder`.
    """
    _check_image_options(image_size, channels)
    base, classes, tr_files, tr_y, te_files, te_y = _folder_files(root, test_fraction)
    if mean is None or std is None:
        total, squares, count = [0] * channels, [0] * channels, 0
        for f in tr_files:
            a = _decode(f, image_size, channels).astype(np.int64)  # (C, S, S)
            for c in range(channels):
                total[c] += int(a[c].sum())
                squares[c] += int((a[c] * a[c]).sum())
            count += a[0].size
        mean, std = _stats_from_sums(total, squares, count)
    mean, std = per_channel(mean, channels), per_channel(std, channels)
    norm = {**_folder_normalization(image_size, channels, mean, std), "classes": classes}
    return (LazyImages(tr_files, tr_y, image_size, channels, mean, std),
            LazyImages(te_files, te_y, image_size, channels, mean, std), norm)


def augment_batch(x: torch.Tensor, generator: torch.Generator, padding: int = 2, flip: bool = True) -> torch.Tensor:
    """Random crop with zero padding + random horizontal flip of a batch (B, C, H, W); returns a new tensor.

    A batch tensor transform, so it plugs into the in-memory training loop (``loss_fn(model,
    augment_batch(xb, gen), yb)``) without a per-image pipeline. Zero padding is the mean pixel
    of standardised images. Seeded by ``generator`` (a CPU ``torch.Generator``): same seed, same crops.
    """
    b, _, h, w = x.shape
    out = x
    if padding > 0:
        padded = torch.nn.functional.pad(x, (padding, padding, padding, padding))  # (B, C, H+2p, W+2p)
        dy = torch.randint(0, 2 * padding + 1, (b,), generator=generator).to(x.device)
        dx = torch.randint(0, 2 * padding + 1, (b,), generator=generator).to(x.device)
        rows = (dy[:, None] + torch.arange(h, device=x.device))[:, :, None]  # (B, H, 1)
        cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, :]  # (B, 1, W)
        batch = torch.arange(b, device=x.device)[:, None, None]
        out = padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)  # (B, C, H, W)
    if flip:
        mask = (torch.rand(b, generator=generator) < 0.5).to(x.device)[:, None, None, None]
        out = torch.where(mask, out.flip(-1), out)
    return out.contiguous()
