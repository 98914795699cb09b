"""DER, Dynamically Expandable Representation (Yan et al., CVPR 2021): a new backbone branch per
task, the old ones frozen; the head reads all branches. Its growing model is what the deployer
distils back into a fixed-size student."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..data.stream import Task
from ..engine.loop import LossFn
from ..models.net import DERNet
from .base import Learner, LearnerOptions, LearnerState, register_learner


class DEROptions(LearnerOptions):
    aux_weight: float = Field(1.0, ge=0)  # weight of the auxiliary loss (new classes vs one 'old' class)


def der_loss(n_old: int, aux_weight: float = 1.0) -> LossFn:
    """Cross-entropy on the joint head + ``aux_weight`` x the auxiliary head's cross-entropy."""

    def loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits, aux = model.forward_train(x)
        out = F.cross_entropy(logits, y)
        if aux is not None:
            aux_y = torch.where(y >= n_old, y - n_old + 1, torch.zeros_like(y))
            out = out + aux_weight * F.cross_entropy(aux, aux_y)
        return out

    return loss


@register_learner
class DER(Learner):
    """New data + exemplars; after the task the auxiliary head is dropped and exemplars chosen."""

    name = "der"
    Options = DEROptions
    network = DERNet
    uses_memory = True
    builtin_backbone_reason = "grows backbone branches"

    def fit_task(self, state: LearnerState, task: Task) -> LearnerState:
        n_old = len(state.seen_labels)
        state, _ = self.begin(state, task)
        self.train_on(state, task, self.with_memory(state, task.train), der_loss(n_old, self.options.aux_weight))
        state.model.end_task()
        state.memory.update(state.model, task.train)
        return state
