"""FOSTER, Feature Boosting and Compression (Wang et al., ECCV 2022): every task first *boosts* —
a new backbone branch, trained beside the frozen old one, learns what the old model gets wrong —
then *compresses* the two-branch model back into one backbone by distillation. The working model
stays one backbone (model kind ``single``) from task to task: the compression stage lives inside
the learner.

Differences from the paper (and PyCIL's ``foster.py``):

- the boosting model is DER's two-branch net (:class:`~compactcl.models.net.DERNet`) with DER's
  auxiliary head (new classes + one "old" class), where FOSTER's auxiliary head covers all classes;
- no logit adjustment of the boosting cross-entropy and no feature-enhancement weighting schedule;
- the compression's balanced KD weights the teacher's probabilities by inverse class frequency
  (PyCIL: by the "effective number" of samples), and the student starts from the previous
  single-backbone model (warm start, for short schedules) rather than from scratch.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..data.datasets import TensorData
from ..data.stream import Task
from ..engine.loop import LossFn
from ..engine.losses import ce_loss, old_class_kd
from ..models.net import DERNet, IncrementalNet
from .base import DistillOptions, Learner, LearnerState, register_learner

__all__ = ["FOSTER", "FOSTEROptions", "boosted_net", "balanced_kd"]


class FOSTEROptions(DistillOptions):
    aux_weight: float = Field(1.0, ge=0)  # the new branch's auxiliary cross-entropy (new classes vs 'old')
    compress_epochs: int | None = Field(None, ge=1)  # distillation into one backbone; None: learner.epochs
    compress_temperature: float = Field(1.0, gt=0)  # 2 (the paper) lost ~8 points of the newest task at 6 epochs on digits


def boosted_net(old: IncrementalNet, n_new: int) -> DERNet:
    """A two-branch net: ``old``'s backbone (frozen) + a copy of it to train, a head over both that
    starts as ``old``'s head (old outputs unchanged at the start) with ``n_new`` more rows."""
    net = DERNet(old.backbone_name, old.in_channels, old.input_size, 0, old.backbone_kwargs, branches=1)
    net = net.to(old.head.weight.device)
    net.branches[0].load_state_dict(old.backbone.state_dict())
    net.head = copy.deepcopy(old.head).requires_grad_(True)
    net.grow(n_new)  # new branch initialised from the old one; the old branch frozen
    return net


def boost_loss(old: nn.Module, n_old: int, temperature: float, distill_weight: float, aux_weight: float) -> LossFn:
    """CE on the joint head + ``aux_weight`` x the new branch's auxiliary CE + KD of the old model's logits."""

    def loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits, aux = model.forward_train(x)
        out = F.cross_entropy(logits, y)
        if aux is not None:
            out = out + aux_weight * F.cross_entropy(aux, torch.where(y >= n_old, y - n_old + 1, torch.zeros_like(y)))
        with torch.no_grad():
            old_logits = old(x)
        return out + distill_weight * old_class_kd(logits, old_logits, temperature)

    return loss


def balanced_kd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, class_weights: torch.Tensor,
                temperature: float) -> torch.Tensor:
    """Cross-entropy of the student (at ``temperature``) to the teacher's probabilities reweighted by
    ``class_weights`` (K,) and renormalised: a rare (old) class keeps its share of the soft targets.

    >>> z = torch.randn(3, 4)
    >>> bool(torch.allclose(balanced_kd(z, z, torch.ones(4), 2.0),
    ...      -(F.softmax(z / 2, 1) * F.log_softmax(z / 2, 1)).sum(1).mean() * 4))
    True
    """
    t = float(temperature)
    p = F.softmax(teacher_logits.detach() / t, dim=1) * class_weights  # (B, K)
    p = p / p.sum(dim=1, keepdim=True)
    return -(p * F.log_softmax(student_logits / t, dim=1)).sum(dim=1).mean() * (t * t)


def compress_loss(teacher: nn.Module, class_weights: torch.Tensor, temperature: float) -> LossFn:
    def loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            t = teacher(x)
        return balanced_kd(model(x), t, class_weights.to(x.device), temperature)

    return loss


def inverse_frequency(data: TensorData, num_classes: int) -> torch.Tensor:
    """(K,) weights proportional to 1 / (images of the class), mean 1 over the classes present."""
    counts = torch.bincount(data.y, minlength=num_classes).float()
    w = torch.where(counts > 0, 1.0 / counts.clamp(min=1), torch.zeros_like(counts))
    return w * (counts > 0).sum() / w.sum()


@register_learner
class FOSTER(Learner):
    """Task 0: one backbone, cross-entropy. Later tasks: boost (two branches), then compress to one."""

    name = "foster"
    Options = FOSTEROptions
    uses_memory = True
    distills = True
    builtin_backbone_reason = "boosts with a second copy of its backbone"

    def fit_task(self, state: LearnerState, task: Task) -> LearnerState:
        n_old = len(state.seen_labels)
        state, old = self.begin(state, task)  # state.model (the student) grown; old = frozen previous model
        data = self.with_memory(state, task.train)
        if old is None:
            self.train_on(state, task, data, ce_loss)
        else:
            o = self.options
            boost = copy.copy(state)
            boost.model = boosted_net(old, len(task.labels))
            self.train_on(boost, task, data, boost_loss(old, n_old, o.temperature, o.distill_weight, o.aux_weight))
            teacher = boost.model.eval().requires_grad_(False)
            squeeze = copy.copy(state)
            squeeze.train = copy.copy(state.train)
            squeeze.train.epochs = o.compress_epochs or state.train.epochs
            weights = inverse_frequency(data, state.model.num_classes)
            self.train_on(squeeze, task, data, compress_loss(teacher, weights, o.compress_temperature))
        state.memory.update(state.model, task.train)
        return state
