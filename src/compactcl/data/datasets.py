"""Datasets as in-memory tensors, one registry: digits (built in), idx (MNIST format), folder, arrays.

Every loader returns :class:`DatasetSplits` with images as float32 ``(N, C, H, W)`` tensors,
standardised with the training split's mean and std (recorded in ``normalization``).
"""

from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..errors import CompactCLError

__all__ = ["TensorData", "DatasetSplits", "load_dataset", "list_datasets", "register_dataset", "read_idx",
           "from_arrays", "DATASETS", "FASHION_MNIST_ROOT"]

FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}


@dataclass
class TensorData:
    """Images ``x`` (N, C, H, W) float32 and integer labels ``y`` (N,)."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, index: torch.Tensor | np.ndarray) -> "TensorData":
        index = torch.as_tensor(index, dtype=torch.long)
        return TensorData(self.x[index], self.y[index])

    @staticmethod
    def cat(parts: list["TensorData"]) -> "TensorData":
        parts = [p for p in parts if len(p)]
        if not parts:
            raise ValueError("nothing to concatenate")
        return TensorData(torch.cat([p.x for p in parts]), torch.cat([p.y for p in parts]))


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
        return int(self.train.x.shape[1])

    @property
    def input_size(self) -> int:
        return int(self.train.x.shape[-1])


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


def _standardize(name: str, train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                 class_names: list[str] | None = None) -> DatasetSplits:
    """uint8/float arrays (N, C, H, W) in [0, 1] -> standardised tensors; stats from train only."""
    if train_x.ndim != 4 or test_x.ndim != 4 or train_x.shape[1:] != test_x.shape[1:]:
        raise CompactCLError(f"{name}: images must be (N, C, H, W) with the same shape in train and test; "
                             f"got {train_x.shape} and {test_x.shape}")
    if train_x.shape[2] != train_x.shape[3]:
        raise CompactCLError(f"{name}: images must be square, got {train_x.shape[2]}x{train_x.shape[3]}; resize them")
    mean, std = float(train_x.mean()), float(train_x.std()) or 1.0
    to_t = lambda a: torch.from_numpy(((a - mean) / std).astype(np.float32))  # noqa: E731
    labels = np.concatenate([train_y, test_y])
    if labels.min() < 0:
        raise CompactCLError(f"{name}: labels must be 0..K-1, found {labels.min()}")
    num_classes = int(labels.max()) + 1
    return DatasetSplits(name, TensorData(to_t(train_x), torch.from_numpy(train_y.astype(np.int64))),
                         TensorData(to_t(test_x), torch.from_numpy(test_y.astype(np.int64))), num_classes,
                         class_names or [str(i) for i in range(num_classes)],
                         {"scale": "pixel/255" if name != "digits" else "pixel/16", "mean": mean, "std": std})


def from_arrays(x_train: Any, y_train: Any, x_test: Any, y_test: Any, name: str = "arrays",
                class_names: list[str] | None = None) -> DatasetSplits:
    """Wrap in-memory arrays (N, C, H, W) or (N, H, W), values in [0, 1], labels 0..K-1."""
    arrays = [np.asarray(a) for a in (x_train, y_train, x_test, y_test)]
    xs = [a[:, None] if a.ndim == 3 else a for a in (arrays[0], arrays[2])]
    if len(xs[0]) != len(arrays[1]) or len(xs[1]) != len(arrays[3]):
        raise CompactCLError(f"{name}: {len(xs[0])} training images but {len(arrays[1])} labels "
                             f"(test: {len(xs[1])} vs {len(arrays[3])}); pass one label per image")
    return _standardize(name, xs[0].astype(np.float32), arrays[1], xs[1].astype(np.float32), arrays[3], class_names)


def _stratified_split(y: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    return train_test_split(idx, test_size=test_fraction, stratify=y, random_state=seed)


@register_dataset("digits")
def digits(root: str | None = None, test_fraction: float = 0.2) -> DatasetSplits:
    """scikit-learn's 1,797 8x8 handwritten digits; a fixed stratified 80/20 train/test split."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.images / 16.0).astype(np.float32)[:, None]  # (N, 1, 8, 8)
    y = bunch.target.astype(np.int64)
    tr, te = _stratified_split(y, test_fraction, seed=0)  # the data split is fixed, not the run's seed
    return _standardize("digits", x[tr], y[tr], x[te], y[te])


# --- IDX (the MNIST file format) -------------------------------------------------------------

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (raw or gzip-compressed) into an array of its stored shape."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise CompactCLError(f"{path}: cannot read ({e}); the file is truncated or not gzip. Reinstall it.") from e
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise CompactCLError(f"{path}: not an IDX file (bad magic number); expected MNIST-format data")
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        raise CompactCLError(f"{path}: IDX header truncated")
    shape = struct.unpack(f">{ndim}I", data[4: 4 + 4 * ndim])
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    body = data[4 + 4 * ndim:]
    if len(body) != expected:
        raise CompactCLError(f"{path}: IDX body has {len(body)} bytes, its header promises {expected}; "
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
def idx(root: str | None = None, hint: str = "", name: str = "idx") -> DatasetSplits:
    """The four MNIST-format IDX files (gzip or raw) in folder ``root``."""
    if not root:
        raise CompactCLError("dataset 'idx' needs data.root: a folder holding train-images-idx3-ubyte[.gz], "
                             "train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]")
    base = Path(root).expanduser()
    hint = hint or "Put the four MNIST-format files there (names as in the MNIST distribution)."
    arrays = {k: read_idx(_find_idx(base, stem, hint)) for k, stem in _IDX_FILES.items()}
    for split in ("train", "test"):
        if len(arrays[f"{split}_x"]) != len(arrays[f"{split}_y"]):
            raise CompactCLError(f"{base}: {split} images and labels differ in count; a file is truncated")
    to_x = lambda a: (a.astype(np.float32) / 255.0)[:, None]  # noqa: E731 - (N, 28, 28) -> (N, 1, 28, 28)
    return _standardize(name, to_x(arrays["train_x"]), arrays["train_y"].astype(np.int64),
                        to_x(arrays["test_x"]), arrays["test_y"].astype(np.int64))


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


def _class_dirs(base: Path) -> list[Path]:
    return sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))


def _read_folder(base: Path, classes: list[str], size: int, channels: int) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    xs, ys = [], []
    for label, cls in enumerate(classes):
        files = sorted(p for p in (base / cls).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) \
            if (base / cls).is_dir() else []
        if not files:
            raise CompactCLError(f"class folder {base / cls} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}); "
                                 "add images or remove the empty folder")
        for f in files:
            try:
                with Image.open(f) as im:
                    im = im.convert("L" if channels == 1 else "RGB").resize((size, size), Image.BILINEAR)
                    arr = np.asarray(im, dtype=np.float32) / 255.0
            except OSError as e:
                raise CompactCLError(f"{f}: not a readable image ({e}); delete or replace it") from e
            xs.append(arr[None] if channels == 1 else arr.transpose(2, 0, 1))
            ys.append(label)
    return np.stack(xs), np.asarray(ys, dtype=np.int64)


@register_dataset("folder")
def folder(root: str | None = None, image_size: int = 32, channels: int = 3, test_fraction: float = 0.2) -> DatasetSplits:
    """One sub-folder of images per class (``root/<class>/*.png``), or ``root/train`` + ``root/test``."""
    if not root:
        raise CompactCLError("dataset 'folder' needs data.root: a folder with one sub-folder of images per class")
    base = Path(root).expanduser()
    if not base.is_dir():
        raise CompactCLError(f"data.root {base} is not a folder; point it at a folder with one sub-folder per class")
    if (base / "train").is_dir() and (base / "test").is_dir():
        classes = [p.name for p in _class_dirs(base / "train")]
        tx, ty = _read_folder(base / "train", classes, image_size, channels)
        vx, vy = _read_folder(base / "test", classes, image_size, channels)
    else:
        classes = [p.name for p in _class_dirs(base)]
        if len(classes) < 2:
            raise CompactCLError(f"{base}: found {len(classes)} class folder(s); need at least two sub-folders of images")
        x, y = _read_folder(base, classes, image_size, channels)
        tr, te = _stratified_split(y, test_fraction, seed=0)
        tx, ty, vx, vy = x[tr], y[tr], x[te], y[te]
    splits = _standardize(f"folder:{base.name}", tx, ty, vx, vy, classes)
    splits.normalization.update({"scale": "pixel/255", "resize": [image_size, image_size],
                                 "channels": channels, "interpolation": "bilinear"})
    return splits
