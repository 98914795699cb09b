"""Learning without Forgetting (Li & Hoiem, 2016): distil the previous model on new data, no memory."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..data.stream import Task
from ..engine.loop import LossFn
from ..engine.losses import old_class_kd
from .base import DistillOptions, Learner, LearnerState, register_learner


def ce_kd_loss(old: nn.Module | None, temperature: float, weight: float) -> LossFn:
    """Cross-entropy on all seen classes + distillation of the old model's logits (LwF, iCaRL)."""

    def loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = model(x)
        out = F.cross_entropy(logits, y)
        if old is not None:
            with torch.no_grad():
                old_logits = old(x)
            out = out + weight * old_class_kd(logits, old_logits, temperature)
        return out

    return loss


@register_learner
class LwF(Learner):
    """New task's data, cross-entropy + ``distill_weight`` x KD (at ``temperature``) on the old classes."""

    name = "lwf"
    Options = DistillOptions
    distills = True

    def fit_task(self, state: LearnerState, task: Task) -> LearnerState:
        state, old = self.begin(state, task)
        self.train_on(state, task, task.train, ce_kd_loss(old, self.options.temperature, self.options.distill_weight))
        return state
