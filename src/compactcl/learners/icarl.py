"""iCaRL (Rebuffi et al., CVPR 2017): replay + distillation of the old model; nearest-mean-of-exemplars
classification with ``nme: true``."""

from __future__ import annotations

from torch import nn

from ..engine.loop import LossFn
from .base import DistillOptions, register_learner
from .lwf import ce_kd_loss
from .replay import Replay, ReplayOptions


class ICaRLOptions(ReplayOptions, DistillOptions):
    pass


@register_learner
class ICaRL(Replay):
    """Replay whose loss adds LwF's distillation of the previous model on new data + exemplars."""

    name = "icarl"
    Options = ICaRLOptions
    distills = True

    def loss(self, old: nn.Module | None) -> LossFn:
        return ce_kd_loss(old, self.options.temperature, self.options.distill_weight)
