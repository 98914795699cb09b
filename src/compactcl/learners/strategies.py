"""The learners. Each loss is a plain function of (model, x, y); the loop is shared."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ..compress.distill.losses import old_class_kd
from ..data.datasets import TensorData
from ..data.stream import Task
from .base import Learner, LearnerState, register_learner
from .loop import train

__all__ = ["Finetune", "Joint", "LwF", "Replay", "ICaRL", "DER"]


def ce_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(x), y)


def ce_kd_loss(old: nn.Module | None, temperature: float, weight: float):
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


def der_loss(n_old: int, aux_weight: float = 1.0):
    """DER: cross-entropy on the joint head + auxiliary loss (new classes vs one 'old' class)."""

    def loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits, aux = model.forward_train(x)
        out = F.cross_entropy(logits, y)
        if aux is not None:
            aux_y = torch.where(y >= n_old, y - n_old + 1, torch.zeros_like(y))
            out = out + aux_weight * F.cross_entropy(aux, aux_y)
        return out

    return loss


def _cfg(state: LearnerState, task: Task):
    cfg = copy.copy(state.train)
    cfg.seed = state.train.seed + 7919 * task.index  # a different shuffle per task, reproducible
    return cfg


@register_learner
class Finetune(Learner):
    """Plain fine-tuning on each new task: the lower bound (catastrophic forgetting)."""

    name = "finetune"

    def fit_task(self, state: LearnerState, task: Task) -> LearnerState:
        state, _ = self.begin(state, task)
        train(state.model, task.train, ce_loss, _cfg(state, task), desc=f"task {task.index}")
        return state


@register_learner
class Joint(Learner):
    """Retrains on every task's data seen so far: the upper bound."""

    name = "joint"

    def fit_task(self, state: LearnerState, task: Task) -> LearnerState:
        state, _ = self.begin(state, task)
        state.archive = state.archive + [task.train]
        train(state.model, TensorData.cat(state.archive), ce_loss, _cfg(state, task), desc=f"task {task.index}")
        return state

    def adopt_task(self, state: LearnerState, task: Task, model: nn.Module) -> LearnerState:
        state = super().adopt_task(state, task, model)
        state.archive = state.archive + [task.train]
        return state


@register_learner
class LwF(Learner):
    """Learning without Forgetting (Li & Hoiem): distil the previous model on new data, no memory."""

    name = "lwf"
    distills = True

    def fit_task(self, state: LearnerState, task: Task) -> LearnerState:
        state, old = self.begin(state, task)
        loss = ce_kd_loss(old, self.temperature, self.distill_weight)
        train(state.model, task.train, loss, _cfg(state, task), desc=f"task {task.index}")
        return state


@register_learner
class Replay(Learner):
    """Experience replay: new data + exemplars, cross-entropy only."""

    name = "replay"
    uses_memory = True

    def loss(self, old: nn.Module | None):
        return ce_loss

    def fit_task(self, state: LearnerState, task: Task) -> LearnerState:
        state, old = self.begin(state, task)
        train(state.model, self.with_memory(state, task.train), self.loss(old), _cfg(state, task),
              desc=f"task {task.index}")
        state.memory.update(state.model, task.train)
        state.classifier = "nme" if self.nme else "logits"
        return state

    def adopt_task(self, state: LearnerState, task: Task, model: nn.Module) -> LearnerState:
        state = super().adopt_task(state, task, model)
        state.classifier = "nme" if self.nme else "logits"
        return state


@register_learner
class ICaRL(Replay):
    """iCaRL (Rebuffi et al.): replay + distillation of the old model; nearest-mean-of-exemplars with ``nme: true``."""

    name = "icarl"
    distills = True

    def loss(self, old: nn.Module | None):
        return ce_kd_loss(old, self.temperature, self.distill_weight)


@register_learner
class DER(Learner):
    """Dynamically Expandable Representation (Yan et al.): a new frozen-after-use branch per task."""

    name = "der"
    grows_branches = True
    uses_memory = True

    def fit_task(self, state: LearnerState, task: Task) -> LearnerState:
        n_old = len(state.seen_labels)
        state, _ = self.begin(state, task)
        loss = der_loss(n_old, self.distill_weight)
        train(state.model, self.with_memory(state, task.train), loss, _cfg(state, task), desc=f"task {task.index}")
        state.model.end_task()
        state.memory.update(state.model, task.train)
        return state
