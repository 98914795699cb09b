"""Exemplar memory with a fixed *total* budget shared by every class seen so far.

"Fixed memory" means different things in different libraries: here ``size`` is the total
number of stored images (iCaRL's K, PyCIL's ``memory_size``), so each of the C classes seen
keeps ``size // C`` exemplars and old classes give up exemplars as new ones arrive. Herding
(iCaRL) orders exemplars so that any prefix best matches the class mean; removal drops from
the end of that order.

Exemplars are kept as what images are: uint8 pixels, 1 byte a value (float32 images take 4),
whenever the memory knows the dataset's ``normalization`` (``scale`` pixel/255 or pixel/16,
``mean``, ``std``: one number per channel, or one for all in files written before). Pixels of a
dataset that keeps uint8 (:class:`~compactcl.data.datasets.PixelScale`) are copied as they are;
float images are rounded to pixels (exact for images that came from 8-bit pixels).
:meth:`ExemplarMemory.data` hands them out as uint8 with the dataset's scale, standardised per
batch like the dataset's own images. ``bytes`` is the alternative to
``size``: the budget in bytes of stored pixels, ``size = bytes // (bytes of one image)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from .datasets import EVAL_BATCH, PixelScale, TensorData, image_batches, per_channel, pixel_levels

__all__ = ["ExemplarMemory", "herding", "extract_features", "encode_uint8", "decode_uint8", "pixel_levels"]


def encode_uint8(x: torch.Tensor, normalization: dict[str, Any]) -> torch.Tensor:
    """Standardised float images -> their uint8 pixels (rounded; exact for images that were 8-bit)."""
    levels, channels = pixel_levels(normalization), x.shape[-3]
    mean, std = per_channel(normalization["mean"], channels), per_channel(normalization["std"], channels)
    pixels = x.double()  # float64: the float32 error is far below half a level
    for c in range(channels):  # (..., C, H, W)
        pixels[..., c, :, :] = (pixels[..., c, :, :] * std[c] + mean[c]) * levels
    return pixels.round().clamp(0, 255).to(torch.uint8)


def decode_uint8(u: torch.Tensor, normalization: dict[str, Any]) -> torch.Tensor:
    """uint8 pixels (N, C, H, W) -> float32 standardised images: the dataset's own per-batch
    normalisation (:class:`~compactcl.data.datasets.PixelScale`), so 8-bit images come back bit-identical."""
    return PixelScale.of(normalization, u.shape[-3]).normalize(u)


@torch.no_grad()
def extract_features(model: nn.Module, x: torch.Tensor | TensorData, batch_size: int = EVAL_BATCH) -> torch.Tensor:
    """L2-normalised features (N, D) of ``model.features``, batch by batch (float images or a data set)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    feats = torch.cat([model.features(xb).float().cpu() for xb in image_batches(x, batch_size, device)])
    model.train(was_training)
    return F.normalize(feats, dim=1)


def herding(features: torch.Tensor, m: int) -> list[int]:
    """iCaRL herding: greedily pick ``m`` rows whose running mean best approximates the mean."""
    mu = features.mean(0)
    chosen: list[int] = []
    running = torch.zeros_like(mu)
    available = torch.ones(len(features), dtype=torch.bool)
    for k in range(1, min(m, len(features)) + 1):
        candidates = (running.unsqueeze(0) + features) / k  # (N, D) mean if each row were added
        dist = (mu.unsqueeze(0) - candidates).norm(dim=1)
        dist[~available] = float("inf")
        i = int(dist.argmin())
        chosen.append(i)
        available[i] = False
        running += features[i]
    return chosen


@dataclass
class ExemplarMemory:
    size: int
    selection: str = "herding"  # or "random"
    seed: int = 0
    x: dict[int, torch.Tensor] = field(default_factory=dict)  # label -> (m, C, H, W), herding order
    means: dict[int, torch.Tensor] = field(default_factory=dict)  # label -> normalised class mean
    # the dataset's normalization: with a known pixel scale, exemplars are stored as uint8
    normalization: dict[str, Any] | None = None
    bytes: int | None = None  # a budget in bytes of stored images instead of ``size`` (which it then sets)

    def __post_init__(self) -> None:
        if self.size < 0:
            raise ValueError(f"memory.size must be >= 0, got {self.size}")
        if self.bytes is not None and self.bytes < 0:
            raise ValueError(f"memory.bytes must be >= 0, got {self.bytes}")
        if self.selection not in ("herding", "random"):
            raise ValueError(f"memory.selection must be 'herding' or 'random', got {self.selection!r}")

    def __len__(self) -> int:
        return sum(len(v) for v in self.x.values())

    @property
    def codec(self) -> str:
        """How exemplars are stored: ``uint8`` pixels, or ``float32`` (normalization unknown)."""
        return "uint8" if pixel_levels(self.normalization) else "float32"

    @property
    def nbytes(self) -> int:
        """Bytes of the stored exemplar images (what the state file holds for them, headers aside)."""
        return sum(v.numel() * v.element_size() for v in self.x.values())

    def image_bytes(self, shape: tuple[int, ...]) -> int:
        """Bytes one (C, H, W) image takes in this memory."""
        return math.prod(shape) * (1 if self.codec == "uint8" else 4)

    def _scale(self, channels: int) -> PixelScale | None:
        return PixelScale.of(self.normalization, channels)

    def _class_data(self, c: int) -> TensorData:
        xc = self.x[c]
        scale = self._scale(xc.shape[1]) if xc.dtype == torch.uint8 else None
        return TensorData(xc, torch.full((len(xc),), c, dtype=torch.long), scale)

    def _store(self, part: TensorData) -> torch.Tensor:
        if self.codec != "uint8":
            return part.x
        if part.scale is not None and part.scale == self._scale(part.shape[1]):
            return part.stored().clone()  # the dataset's own pixels
        return encode_uint8(part.x, self.normalization)

    def data(self) -> TensorData | None:
        """Every exemplar, by label (uint8 with the dataset's scale, or float32)."""
        if not self.x:
            return None
        parts = [self._class_data(c) for c in sorted(self.x)]
        return TensorData.cat(parts) if len(self) else parts[0]

    def update(self, model: nn.Module, task_train: TensorData) -> None:
        """Shrink old classes to the new per-class quota, then add exemplars of the task's classes."""
        new_labels = sorted(int(c) for c in task_train.y.unique())
        if self.bytes is not None:
            self.size = self.bytes // self.image_bytes(tuple(task_train.shape[1:]))
        n_classes = len(set(self.x) | set(new_labels))
        per_class = self.size // n_classes if n_classes else 0
        for c in list(self.x):
            self.x[c] = self.x[c][:per_class]
        rng = np.random.default_rng(self.seed + 1000 * n_classes)
        for c in new_labels:
            xc = task_train.subset(torch.nonzero(task_train.y == c).flatten())
            if self.selection == "herding":
                order = herding(extract_features(model, xc), per_class)
            else:
                order = rng.permutation(len(xc))[:per_class].tolist()
            self.x[c] = self._store(xc.subset(order))
        self.compute_means(model)

    def compute_means(self, model: nn.Module) -> None:
        """Class means of normalised exemplar features, for the nearest-mean classifier."""
        self.means = {c: F.normalize(extract_features(model, self._class_data(c)).mean(0), dim=0)
                      for c, xc in self.x.items() if len(xc)}

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {f"memory.{c}": xc for c, xc in self.x.items()}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.x = {int(k.split(".")[1]): v for k, v in tensors.items() if k.startswith("memory.")}
        if self.bytes is not None and self.x:
            self.size = self.bytes // self.image_bytes(tuple(next(iter(self.x.values())).shape[1:]))
