"""K-means shared weights (Deep Compression): a per-layer codebook of ``2**bits`` centroids.

QAT trains the centroids, not the weights: the codes stay fixed and a centroid's gradient is
the sum of the gradients of the weights that share it — what autograd gives for
``codebook[codes]``. A pruned layer reserves one code for exact zero (``zero_code``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from ....errors import CompactCLError
from .. import primitives as P
from .base import (BlobReader, BlobWriter, QuantConfig, QuantMethod, WeightQuant, fp16_values, is_fp16,
                   register_method)

__all__ = ["KMeansQuantConfig", "KMeansQuant", "SharedWeights"]


@dataclass(frozen=True)
class KMeansQuantConfig(QuantConfig):
    """Per-layer shared-weight codebook of ``2**bits`` centroids (Deep Compression)."""

    init: str = "linear"  # "linear" | "density" | "kmeans++"
    iters: int = 30
    seed: int = 0
    method = "kmeans"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.init not in ("linear", "density", "kmeans++"):
            raise CompactCLError(f"KMeansQuantConfig: init {self.init!r} unknown; use 'linear', 'density' or 'kmeans++'")


class SharedWeights(nn.Module):
    """Parametrization: weight = ``codebook[codes]``; the codebook is the trainable parameter."""

    def __init__(self, wq: WeightQuant, codes: torch.Tensor, mask: torch.Tensor):
        super().__init__()
        self.codebook = nn.Parameter(wq.params["codebook"].clone())
        zc = wq.options.get("zero_code")
        trainable = torch.ones_like(self.codebook)
        if zc is not None:
            trainable[zc] = 0.0  # the reserved zero stays exactly zero
        self.register_buffer("trainable", trainable)
        self.register_buffer("codes", codes)
        self.register_buffer("mask", mask)

    def forward(self, original: torch.Tensor) -> torch.Tensor:
        codebook = self.codebook * self.trainable
        return codebook[self.codes] * self.mask


@register_method
class KMeansQuant(QuantMethod):
    """``params``: ``codebook`` (float32 holding fp16 values, at most ``2**bits`` entries: those used);
    ``options``: ``zero_code`` (int or None). One grid per layer."""

    name = "kmeans"
    config = KMeansQuantConfig
    min_bits = 1  # two centroids still carry a layer (binary weights)
    options = ()  # one codebook per layer: no per-channel choice

    def fit(self, w: torch.Tensor, cfg: KMeansQuantConfig, bits: int) -> WeightQuant:
        res = P.quantize_kmeans(w, bits, cfg.init, cfg.iters, cfg.seed)
        wq = WeightQuant(self.name, bits, {"codebook": fp16_values(res.codebook)}, None, {"zero_code": res.zero_code})
        # only the centroids some weight uses are kept: a 160-weight head at 8 bits needs at most
        # 160 of its 256 entries, and the artifact stores the codebook (codes keep their width)
        used = torch.unique(self.encode(wq, w))
        zc = res.zero_code
        return WeightQuant(self.name, bits, {"codebook": wq.params["codebook"][used].clone()}, None,
                           {"zero_code": None if zc is None else int(torch.searchsorted(used, zc))})

    def encode(self, wq: WeightQuant, w: torch.Tensor) -> torch.Tensor:
        codebook, zc = wq.params["codebook"], wq.options.get("zero_code")
        if zc is None:
            return P.assign_codebook(w, codebook)
        # non-zero weights only choose among fitted centroids: a tiny weight never becomes 0
        keep = torch.tensor([i for i in range(codebook.numel()) if i != zc], dtype=torch.int64)
        codes = keep[P.assign_codebook(w, codebook[keep])] if keep.numel() else torch.zeros(w.shape, dtype=torch.int64)
        return torch.where(w == 0, torch.full((), zc, dtype=torch.int64), codes)

    def decode(self, wq: WeightQuant, codes: torch.Tensor) -> torch.Tensor:
        return P.dequantize_kmeans(codes, wq.params["codebook"])

    def fake(self, wq: WeightQuant, w: torch.Tensor) -> torch.Tensor:
        out = wq.decode(wq.encode(w)).to(w.device)
        return torch.where(w != 0, out, torch.zeros((), device=w.device))  # pruned zeros stay zero

    def qat_attach_(self, module: nn.Module, wq: WeightQuant, start: torch.Tensor, mask: torch.Tensor) -> None:
        p = SharedWeights(wq, wq.encode(start.cpu()).to(module.weight.device), mask)
        parametrize.register_parametrization(module, "weight", p)
        module.parametrizations.weight.original.requires_grad_(False)  # only the centroids train

    def qat_collect(self, wq: WeightQuant, parametrization: nn.Module) -> None:
        if isinstance(parametrization, SharedWeights):
            p = parametrization
            wq.params["codebook"] = fp16_values((p.codebook * p.trainable).detach().cpu())

    def onnx_table(self, wq: WeightQuant, channels: int) -> np.ndarray:
        return wq.params["codebook"].float().numpy()  # the ONNX decode is Gather(codebook, codes)

    def grid_nbytes(self, numel: int, bits: int) -> int:
        return 2 * min(2 ** bits, numel)  # fp16 centroids, at most one a weight

    def write_grid(self, wq: WeightQuant, entry: dict[str, Any], wr: BlobWriter) -> None:
        codebook = wq.params["codebook"].float()
        if wq.options.get("zero_code") is not None:
            entry["zc"] = int(wq.options["zero_code"])
        if codebook.numel() != 2 ** wq.bits:
            entry["k"] = int(codebook.numel())  # fewer entries than codes can address: only those used
        if is_fp16(codebook):
            entry["h"] = 1
        wr.put("f16" if entry.get("h") else "f32", codebook.numpy())

    def grid_values(self, entry: dict[str, Any], channels: int) -> dict[str, int]:
        return {"f16" if entry.get("h") else "f32": self._entries(entry)}  # the codebook

    def read_grid(self, entry: dict[str, Any], rd: BlobReader) -> WeightQuant:
        bits = int(entry["bits"])
        blob = "f16" if entry.get("h") else "f32"
        codebook = torch.from_numpy(rd.take(blob, self._entries(entry)).astype(np.float32))
        return WeightQuant(self.name, bits, {"codebook": codebook}, None, {"zero_code": entry.get("zc")})

    @staticmethod
    def _entries(entry: dict[str, Any]) -> int:
        """Codebook entries of an artifact entry: ``k`` when fewer than ``2**bits`` (format /3), else ``2**bits``."""
        full = 2 ** int(entry["bits"])
        k = entry.get("k", full)
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= full:
            raise CompactCLError(f"k-means codebook size k={k!r} is not an integer in [1, {full}]")
        return k
