"""BiC, Bias Correction (Wu et al., CVPR 2019, "Large Scale Incremental Learning"): replay with
distillation, then a two-parameter linear layer on the new classes' logits, ``alpha * o + beta``,
fitted on a small validation set held out of the training data — as many images of each new
class as of each old class — while everything else stays frozen.

Why: with many new images and few exemplars the head favours the new classes; a held-out,
class-balanced set shows by how much, and two numbers per task undo it.

Differences from the paper (and PyCIL's ``bic.py``):

- the correction is folded into the head once fitted (the new rows' weights times ``alpha``, their
  bias ``alpha * b + beta``; the same logits): the model stays an ordinary one-backbone net, so
  checkpoints, resume, compression and ONNX need nothing new, and it costs no bytes. The next
  task trains the folded rows, where the paper keeps earlier tasks' bias layers apart and fixed;
- ``alpha, beta`` are fitted full-batch with L-BFGS on the held-out logits (computed once: the rest
  is frozen), not with SGD epochs, plus a small ridge ``bias_ridge * ((alpha - 1)^2 + beta^2)``: a
  dozen held-out images are often separable, and without it the fit runs off (measured on digits,
  3 tasks x 2, mlp, 6 epochs: alpha 28, beta -94, the first task at 0.47 where iCaRL keeps 0.92);
- the distillation is the engine's KD on the old classes with the T^2 factor (the paper: soft-target
  cross-entropy at T = 2 without it); the paper's weighting ``lambda = n_old / (n_old + n_new)`` of
  KD against cross-entropy is kept;
- the held-out images per class are ``bias_val_fraction`` of the old classes' exemplars per class
  (at least one; PyCIL: 0.1 x memory / classes); with under two exemplars per old class there is
  nothing to hold out and the task ends without correction.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..data.datasets import TensorData
from ..data.stream import Task
from ..engine.loop import LossFn, model_logits
from ..engine.losses import old_class_kd
from .base import Learner, LearnerOptions, LearnerState, register_learner

__all__ = ["BiC", "BiCOptions", "bic_loss", "fit_bias_correction", "fold_bias_correction_", "hold_out_per_class"]


class BiCOptions(LearnerOptions):
    temperature: float = Field(2.0, gt=0)  # the paper's T for the distillation of the old classes
    bias_val_fraction: float = Field(0.1, gt=0, lt=1)  # of an old class's exemplars, held out per class
    bias_iterations: int = Field(100, ge=1)  # L-BFGS iterations fitting alpha, beta
    bias_ridge: float = Field(0.05, ge=0)  # x ((alpha - 1)^2 + beta^2): a few held-out images are often separable


def bic_loss(old: nn.Module | None, n_old: int, n_new: int, temperature: float) -> LossFn:
    """``(1 - lam) * CE + lam * KD`` on the old classes, ``lam = n_old / (n_old + n_new)`` (BiC's eq. 3)."""
    lam = n_old / (n_old + n_new)

    def loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = model(x)
        ce = F.cross_entropy(logits, y)
        if old is None:
            return ce
        with torch.no_grad():
            old_logits = old(x)
        return (1 - lam) * ce + lam * old_class_kd(logits, old_logits, temperature)

    return loss


def hold_out_per_class(data: TensorData, per_class: int, generator: torch.Generator) -> tuple[TensorData, TensorData]:
    """(train, held out): ``per_class`` random images of every class held out (at most all but one of a class)."""
    keep, out = [], []
    for c in data.y.unique().tolist():
        idx = torch.nonzero(data.y == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=generator)]
        take = min(per_class, len(idx) - 1)  # never a whole class: stage 1 must still see it
        out.append(idx[:take])
        keep.append(idx[take:])
    return data.subset(torch.cat(keep).sort().values), data.subset(torch.cat(out).sort().values)


def fit_bias_correction(logits: torch.Tensor, y: torch.Tensor, n_old: int, iterations: int = 100,
                        ridge: float = 0.05, fit_beta: bool = True) -> tuple[float, float]:
    """``(alpha, beta)`` minimising the cross-entropy of ``logits`` (N, K) whose columns ``n_old:``
    become ``alpha * o + beta`` (BiC's stage 2), plus ``ridge * ((alpha - 1)^2 + beta^2)``; convex in
    (alpha, beta).

    >>> z = torch.tensor([[2., 0.], [0., 1.]]); a, b = fit_bias_correction(z, torch.tensor([0, 1]), 1)
    >>> a > 1.0  # the new class must win its image back
    True
    """
    z = logits.detach().double()
    alpha = torch.ones((), dtype=torch.float64, requires_grad=True)
    beta = torch.zeros((), dtype=torch.float64, requires_grad=fit_beta)
    params = [alpha, beta] if fit_beta else [alpha]
    opt = torch.optim.LBFGS(params, lr=1.0, max_iter=iterations, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(torch.cat([z[:, :n_old], alpha * z[:, n_old:] + beta], dim=1), y)
        loss = loss + ridge * ((alpha - 1) ** 2 + beta ** 2)
        loss.backward()
        return loss

    opt.step(closure)
    return float(alpha.detach()), float(beta.detach())


@torch.no_grad()
def fold_bias_correction_(head: nn.Linear, n_old: int, alpha: float, beta: float) -> None:
    """Rows ``n_old:`` of ``head`` in place so they output ``alpha * logit + beta``."""
    head.weight[n_old:] *= alpha
    if head.bias is not None:
        head.bias[n_old:] = alpha * head.bias[n_old:] + beta


@register_learner
class BiC(Learner):
    """Stage 1: new data + exemplars (less a held-out set), CE + KD. Stage 2: fit and fold ``alpha, beta``."""

    name = "bic"
    Options = BiCOptions
    uses_memory = True
    distills = True

    def fit_task(self, state: LearnerState, task: Task) -> LearnerState:
        o = self.options
        n_old = len(state.seen_labels)
        state, old = self.begin(state, task)
        exemplars = state.memory.data()
        per_old_class = min((len(v) for v in state.memory.x.values() if len(v)), default=0)  # an emptied class holds nothing out
        held = max(1, round(o.bias_val_fraction * per_old_class)) if per_old_class >= 2 else 0
        loss = bic_loss(old, n_old, len(task.labels), o.temperature)
        if old is None or exemplars is None or not held:
            self.train_on(state, task, self.with_memory(state, task.train), loss)
        else:
            g = torch.Generator().manual_seed(state.train.seed + 7919 * task.index)
            new_train, new_val = hold_out_per_class(task.train, held, g)
            old_train, old_val = hold_out_per_class(exemplars, held, g)
            self.train_on(state, task, TensorData.cat([new_train, old_train]), loss)
            val = TensorData.cat([new_val, old_val])
            fit_beta = state.model.head.bias is not None
            alpha, beta = fit_bias_correction(model_logits(state.model, val), val.y, n_old, o.bias_iterations,
                                               o.bias_ridge, fit_beta)
            fold_bias_correction_(state.model.head, n_old, alpha, beta)
        state.memory.update(state.model, task.train)
        return state
