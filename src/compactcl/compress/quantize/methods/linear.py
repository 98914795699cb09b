"""Uniform (linear) grid: symmetric (zero point 0) or affine, per output channel or per tensor."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .. import primitives as P
from .base import (BlobReader, BlobWriter, QuantConfig, QuantMethod, WeightQuant, fp16_values, is_fp16,
                   register_method)

if TYPE_CHECKING:
    from ..onnx_graph import DecodeGraph

__all__ = ["LinearQuantConfig", "LinearQuant"]


@dataclass(frozen=True)
class LinearQuantConfig(QuantConfig):
    """Uniform grid: symmetric (zero point 0) or affine, per output channel or per tensor."""

    per_channel: bool = True
    symmetric: bool = True
    method = "linear"


@register_method
class LinearQuant(QuantMethod):
    """``params``: ``scale`` (float32 holding fp16 values when they fit), ``zero_point`` (int32); ``options``:
    ``symmetric``."""

    name = "linear"
    config = LinearQuantConfig
    options = ("per_channel", "symmetric")

    def fit(self, w: torch.Tensor, cfg: LinearQuantConfig, bits: int) -> WeightQuant:
        axis = 0 if cfg.per_channel else None
        scale, zp = P.linear_qparams(w, bits, cfg.symmetric, axis)
        scale = fp16_values(scale)  # the grid is fitted on fp16 scales: 2 bytes each in the artifact
        return WeightQuant(self.name, bits, {"scale": scale, "zero_point": zp}, axis, {"symmetric": cfg.symmetric})

    def encode(self, wq: WeightQuant, w: torch.Tensor) -> torch.Tensor:
        return P.quantize_linear(w, wq.bits, wq.axis, wq.options.get("symmetric", True),
                                 wq.params["scale"], wq.params["zero_point"])[0]

    def decode(self, wq: WeightQuant, codes: torch.Tensor) -> torch.Tensor:
        return P.dequantize_linear(codes, wq.params["scale"], wq.params["zero_point"], wq.bits, wq.axis,
                                   wq.options.get("symmetric", True))

    def fake(self, wq: WeightQuant, w: torch.Tensor) -> torch.Tensor:
        # PyTorch's own fake-quant op: same values as decode(encode(w)), on w's device
        return P.fake_quantize_linear(w, wq.params["scale"].to(w.device), wq.params["zero_point"].to(w.device),
                                      wq.bits, wq.axis, wq.options.get("symmetric", True))

    def onnx_decode(self, wq: WeightQuant, codes: torch.Tensor, graph: "DecodeGraph") -> str:
        # (codes + qmin - zero_point) * scale, the float ops of P.dequantize_linear in the same order
        # (bit-exact); per-channel scales cost C floats where a codebook would cost C * 2**bits
        from onnx import TensorProto

        qmin, _ = P.qrange(wq.bits, wq.options.get("symmetric", True))
        bshape = (-1,) + (1,) * (codes.dim() - 1) if wq.axis == 0 else ()
        q = graph.op("Cast", [graph.codes(codes.numpy(), wq.bits)], to=TensorProto.FLOAT)
        if qmin:
            q = graph.op("Add", [q, graph.const(np.array(qmin, np.float32))])
        zp = wq.params["zero_point"].float().numpy()
        if zp.any():
            q = graph.op("Sub", [q, graph.const(zp.reshape(bshape).astype(np.float32))])
        return graph.op("Mul", [q, graph.float_values(wq.params["scale"].float().numpy().reshape(bshape))])

    def write_grid(self, wq: WeightQuant, entry: dict[str, Any], wr: BlobWriter) -> None:
        symmetric = bool(wq.options.get("symmetric", True))
        entry["sym"] = int(symmetric)
        if is_fp16(wq.params["scale"]):
            entry["h"] = 1
        wr.put("f16" if entry.get("h") else "f32", wq.params["scale"].numpy())
        if not symmetric:
            wr.put("u8", wq.params["zero_point"].numpy())  # affine range is [0, 2**bits)

    def grid_values(self, entry: dict[str, Any], channels: int) -> dict[str, int]:
        scales = "f16" if entry.get("h") else "f32"
        return {scales: channels, "u8": 0 if entry.get("sym", 1) else channels}  # scales (+ zero points)

    def read_grid(self, entry: dict[str, Any], rd: BlobReader) -> WeightQuant:
        axis, channels = entry.get("axis"), self.channels(entry)
        scale = torch.from_numpy(rd.take("f16" if entry.get("h") else "f32", channels).astype(np.float32))
        sym = bool(entry.get("sym", 1))
        zp = (torch.from_numpy(rd.take("u8", channels).astype(np.int32)) if not sym
              else torch.zeros(channels, dtype=torch.int32))
        if axis is None:
            scale, zp = scale.reshape(()), zp.reshape(())
        return WeightQuant(self.name, int(entry["bits"]), {"scale": scale, "zero_point": zp}, axis, {"symmetric": sym})
