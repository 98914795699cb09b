"""Quantization-aware fine-tuning: recover the accuracy low-bit grids lose.

* by default (linear, log): a latent full-precision weight is trained; the forward pass uses
  its grid-snapped value (:meth:`QuantMethod.fake`) and the gradient passes straight through
  the rounding (STE).
* a method may train something else (:meth:`QuantMethod.qat_attach_`): k-means fixes the codes
  and trains the *centroids* (``methods/kmeans.py``, Deep Compression).

Pruned (zero) weights stay zero throughout. The grid parameters (scale, exponent range)
are those ``quantize_`` fitted; only weights/centroids (and biases, batch norm) move.

>>> qat_(model, KMeansQuantConfig(bits=3), train_data, QATConfig(epochs=3))  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from ...data.datasets import TensorData
from ...engine.loop import LossFn, TrainConfig, train
from ...engine.losses import ce_loss
from .api import QuantConfig, quantize_, round_side_tensors_
from .methods.base import StraightThrough  # re-exported: they lived here before
from .methods.kmeans import SharedWeights
from .state import quantized_layers, set_weight_quant

__all__ = ["QATConfig", "qat_", "StraightThrough", "SharedWeights"]


@dataclass(frozen=True)
class QATConfig:
    epochs: int = 3
    lr: float = 1e-3
    optimizer: str = "adam"
    batch_size: int = 64
    seed: int = 0
    schedule: str = "cosine"
    fp16_side: bool = True  # re-round biases/BN to fp16 after training (see quantize_)
    device: str = "cpu"  # where the model is: the run's device (grids and codes stay on the CPU)

    def train_config(self) -> TrainConfig:
        return TrainConfig(epochs=self.epochs, lr=self.lr, optimizer=self.optimizer, batch_size=self.batch_size,
                           seed=self.seed, schedule=self.schedule, weight_decay=0.0, device=self.device)


def qat_(model: nn.Module, config: QuantConfig | None, data: TensorData, qat: QATConfig = QATConfig(),
         loss_fn: LossFn | None = None) -> list[float]:
    """Quantize ``model`` with ``config`` and fine-tune it on ``data`` in place; return epoch losses.

    With ``config=None`` the model must already be quantized; its grids are kept and
    fine-tuning starts from its current (grid) weights. Otherwise the latent weights start
    from the model's full-precision weights, which usually recovers more.
    """
    if config is not None:
        latent = {name: m.weight.detach().clone() for name, m in model.named_modules()
                  if isinstance(getattr(m, "weight", None), torch.Tensor)}
        quantize_(model, config)
    else:
        latent = {}
    layers = quantized_layers(model)
    if not layers:
        raise ValueError("qat_: no quantized layers; pass a config or quantize_ the model first")
    for name, wq in layers.items():
        m = model.get_submodule(name)
        start = latent.get(name, m.weight.detach())
        mask = (start != 0).to(m.weight.dtype)
        wq.quant_method.qat_attach_(m, wq, start, mask)  # what trains (latent weight, centroids) is the method's
    try:
        history = train(model, data, loss_fn or ce_loss, qat.train_config(), desc="qat")
    finally:
        for name, wq in layers.items():
            m = model.get_submodule(name)
            wq.quant_method.qat_collect(wq, m.parametrizations.weight[0])
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)
            with torch.no_grad():  # exact grid values (guards against any float drift)
                w = m.weight.detach().float().cpu()
                m.weight.copy_(wq.decode(wq.encode(w), w != 0).to(m.weight.device, m.weight.dtype))
            m.weight.requires_grad_(True)
            set_weight_quant(m, wq)
    if qat.fp16_side:
        round_side_tensors_(model)
    model.eval()
    return history

