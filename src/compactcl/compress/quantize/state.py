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
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .methods.base import get_method

if TYPE_CHECKING:
    from .methods.base import QuantMethod

__all__ = ["WeightQuant", "get_weight_quant", "set_weight_quant", "quantized_layers", "ATTR"]

ATTR = "weight_quant"


@dataclass
class WeightQuant:
    """The grid one layer's weights live on: plain data; the registered method ``method`` gives it meaning.

    ``params`` and ``options`` are the method's own (each method's docstring lists them, e.g.
    a uniform grid's ``scale``/``zero_point``, a codebook). ``axis`` is 0 for per-output-channel
    parameters.
    """

    method: str  # a name in compactcl.compress.quantize.methods.list_methods()
    bits: int
    params: dict[str, torch.Tensor]
    axis: int | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def encode(self, w: torch.Tensor) -> torch.Tensor:
        """Unsigned codes (int64, shape of ``w``) of weights on this grid (nearest grid point otherwise)."""
        return self.quant_method.encode(self, w.detach().float().cpu())

    def decode(self, codes: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Float32 weights of ``codes``; outside ``mask`` (when given) the weight is 0."""
        return self.quant_method.dequantize(self, codes, mask)

    def fake(self, w: torch.Tensor) -> torch.Tensor:
        """Snap ``w`` to the grid (nearest point), keeping zeros zero. Used by QAT's forward pass."""
        return self.quant_method.fake(self, w)

    def on_grid(self, w: torch.Tensor) -> bool:
        """True when ``w`` decodes back from its codes exactly (zeros may be carried by a mask)."""
        return self.quant_method.on_grid(self, w.detach().float().cpu())

    @property
    def quant_method(self) -> "QuantMethod":
        """The registered :class:`~compactcl.compress.quantize.methods.QuantMethod` that owns this grid."""
        return get_method(self.method)


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
