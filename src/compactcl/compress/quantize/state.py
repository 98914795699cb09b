"""How a quantized layer is represented: dequantized weights in ``.weight`` + a small grid description.

``quantize_`` leaves every layer an ordinary ``nn.Conv2d`` / ``nn.Linear`` whose weight holds
the exact dequantized values, so the model runs, exports to ONNX, deep-copies and prunes
like any other. The grid (scale/zero point, exponent, or codebook) rides along as a plain
attribute ``module.weight_quant`` (:class:`WeightQuant`); the integer codes are recomputed
from the weights when the artifact is packed, and :meth:`WeightQuant.encode` checks that the
weights still lie on the grid.
"""

from __future__ import annotations

from torch import nn

from .methods.base import WeightQuant

__all__ = ["WeightQuant", "get_weight_quant", "set_weight_quant", "quantized_layers", "ATTR"]

ATTR = "weight_quant"


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
