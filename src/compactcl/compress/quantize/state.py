"""How a quantized layer is represented: dequantized weights in ``.weight`` + a small grid description.

``quantize_`` leaves every layer an ordinary ``nn.Conv2d`` / ``nn.Linear`` whose weight holds
the exact dequantized values, so the model runs, exports to ONNX, deep-copies and prunes
like any other. The grid (scale/zero point, exponent, or codebook) rides along as a plain
attribute ``module.weight_quant`` (:class:`WeightQuant`); the integer codes are recomputed
from the weights when the artifact is packed, and :meth:`WeightQuant.encode` checks that the
weights still lie on the grid.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from . import primitives as P

__all__ = ["WeightQuant", "get_weight_quant", "set_weight_quant", "quantized_layers", "ATTR"]

ATTR = "weight_quant"


@dataclass
class WeightQuant:
    """The grid one layer's weights live on.

    ``params``: linear -> ``scale`` (float32), ``zero_point`` (int32); log -> ``emax`` (int32);
    kmeans -> ``codebook`` (float32). ``axis`` is 0 for per-output-channel parameters.
    """

    method: str  # "linear" | "log" | "kmeans"
    bits: int
    params: dict[str, torch.Tensor]
    axis: int | None = None
    options: dict[str, Any] = field(default_factory=dict)  # linear: symmetric; log: levels; kmeans: zero_code

    def encode(self, w: torch.Tensor) -> torch.Tensor:
        """Unsigned codes (int64, shape of ``w``) of weights on this grid (nearest grid point otherwise)."""
        w = w.detach().float().cpu()
        if self.method == "linear":
            return P.quantize_linear(w, self.bits, self.axis, self.options.get("symmetric", True),
                                     self.params["scale"], self.params["zero_point"])[0]
        if self.method == "log":
            return P.quantize_log(w, self.bits, self.params["emax"], self.axis, self.options.get("levels"))
        if self.method == "kmeans":
            codebook, zc = self.params["codebook"], self.options.get("zero_code")
            if zc is None:
                return P.assign_codebook(w, codebook)
            # non-zero weights only choose among fitted centroids: a tiny weight never becomes 0
            keep = torch.tensor([i for i in range(codebook.numel()) if i != zc], dtype=torch.int64)
            codes = keep[P.assign_codebook(w, codebook[keep])] if keep.numel() else torch.zeros(w.shape, dtype=torch.int64)
            return torch.where(w == 0, torch.full((), zc, dtype=torch.int64), codes)
        raise ValueError(f"unknown quantization method {self.method!r}")

    def decode(self, codes: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Float32 weights of ``codes``; outside ``mask`` (when given) the weight is 0."""
        if self.method == "linear":
            w = P.dequantize_linear(codes, self.params["scale"], self.params["zero_point"], self.bits, self.axis,
                                    self.options.get("symmetric", True))
        elif self.method == "log":
            w = P.dequantize_log(codes, self.bits, self.params["emax"], self.axis, self.options.get("levels"))
        elif self.method == "kmeans":
            w = P.dequantize_kmeans(codes, self.params["codebook"])
        else:
            raise ValueError(f"unknown quantization method {self.method!r}")
        return torch.where(mask, w, torch.zeros(())) if mask is not None else w

    def fake(self, w: torch.Tensor) -> torch.Tensor:
        """Snap ``w`` to the grid (nearest point), keeping zeros zero. Used by QAT's forward pass."""
        if self.method == "linear":
            return P.fake_quantize_linear(w, self.params["scale"].to(w.device), self.params["zero_point"].to(w.device),
                                          self.bits, self.axis, self.options.get("symmetric", True))
        out = self.decode(self.encode(w)).to(w.device)
        return torch.where(w != 0, out, torch.zeros((), device=w.device)) if self.method == "kmeans" else out

    def on_grid(self, w: torch.Tensor) -> bool:
        """True when ``w`` decodes back from its codes exactly (zeros may be carried by a mask)."""
        w = w.detach().float().cpu()
        return torch.equal(self.decode(self.encode(w), w != 0), w)


def get_weight_quant(module: nn.Module) -> WeightQuant | None:
    return getattr(module, ATTR, None)


def set_weight_quant(module: nn.Module, wq: WeightQuant | None) -> None:
    if wq is None:
        module.__dict__.pop(ATTR, None)
    else:
        module.__dict__[ATTR] = wq


def quantized_layers(model: nn.Module) -> dict[str, WeightQuant]:
    """``{module name: WeightQuant}`` for every quantized layer of ``model``."""
    return {name: wq for name, m in model.named_modules() if (wq := get_weight_quant(m)) is not None}
