"""Logarithmic grid: sign + power-of-two exponent, the top exponent per tensor or per output channel."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ....errors import CompactCLError
from .. import primitives as P
from .base import BlobReader, BlobWriter, QuantConfig, QuantMethod, WeightQuant, register_method

__all__ = ["LogQuantConfig", "LogQuant"]


@dataclass(frozen=True)
class LogQuantConfig(QuantConfig):
    """Sign + power-of-two exponent. ``levels`` exponents per sign (default ``2**(bits-1)-1``,
    one code kept for zero); ``max_exponent`` fixes the top exponent instead of fitting it."""

    per_channel: bool = False
    levels: int | None = None
    max_exponent: int | None = None
    method = "log"

    def __post_init__(self) -> None:
        super().__post_init__()
        for b in {self.bits, *self.layer_bits.values()}:
            try:
                P.log_levels(b, self.levels)
            except ValueError as e:
                raise CompactCLError(f"LogQuantConfig: {e}; lower levels or raise bits") from e


@register_method
class LogQuant(QuantMethod):
    """``params``: ``emax`` (int32, the top exponent); ``options``: ``levels``."""

    name = "log"
    config = LogQuantConfig
    options = ("per_channel",)

    def fit(self, w: torch.Tensor, cfg: LogQuantConfig, bits: int) -> WeightQuant:
        axis = 0 if cfg.per_channel else None
        if cfg.max_exponent is not None:
            emax = torch.full((w.shape[0],) if axis == 0 else (), cfg.max_exponent, dtype=torch.int32)
        else:
            emax = P.log_qparams(w, axis)
        return WeightQuant(self.name, bits, {"emax": emax}, axis, {"levels": P.log_levels(bits, cfg.levels)})

    def encode(self, wq: WeightQuant, w: torch.Tensor) -> torch.Tensor:
        return P.quantize_log(w, wq.bits, wq.params["emax"], wq.axis, wq.options.get("levels"))

    def decode(self, wq: WeightQuant, codes: torch.Tensor) -> torch.Tensor:
        return P.dequantize_log(codes, wq.bits, wq.params["emax"], wq.axis, wq.options.get("levels"))

    # ONNX: the default codebook path (QuantMethod.onnx_table): every code's ±2**e, exact in fp16 when the
    # exponents fit (then stored as 2 bytes a value)

    def write_grid(self, wq: WeightQuant, entry: dict[str, Any], wr: BlobWriter) -> None:
        entry["levels"] = int(wq.options["levels"])
        # exponents are int8: stored as uint8 + 128
        wr.put("u8", (wq.params["emax"].numpy().astype(np.int16) + 128).astype(np.uint8))

    def grid_values(self, entry: dict[str, Any], channels: int) -> dict[str, int]:
        return {"u8": channels}  # one top exponent per channel

    def read_grid(self, entry: dict[str, Any], rd: BlobReader) -> WeightQuant:
        axis = entry.get("axis")
        emax = torch.from_numpy(rd.take("u8", self.channels(entry)).astype(np.int32) - 128)
        emax = emax if axis is not None else emax.reshape(())
        return WeightQuant(self.name, int(entry["bits"]), {"emax": emax}, axis, {"levels": int(entry["levels"])})
