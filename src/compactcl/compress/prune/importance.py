"""Importance scores: a tiny contract, one registry.

A score function takes a weight tensor (and, for gradient-based scores, its gradient) and
returns one non-negative score per weight (``dim=None``) or one per slice along ``dim``
(``dim=0``: per output channel / filter). Lower score = pruned first. Scores are pure
tensor math; the pruners in :mod:`.unstructured` and :mod:`.structured` only rank them.

>>> w = torch.tensor([[1.0, -2.0], [0.5, 0.0]])
>>> score("l1", w, dim=0)
tensor([3.0000, 0.5000])
"""

from __future__ import annotations

from typing import Callable, Protocol

import torch

__all__ = ["ImportanceFn", "IMPORTANCES", "register_importance", "list_importances", "get_importance",
           "score", "magnitude_l1", "magnitude_l2", "taylor", "activation_mean"]


class ImportanceFn(Protocol):
    def __call__(self, weight: torch.Tensor, grad: torch.Tensor | None = None, dim: int | None = None) -> torch.Tensor: ...


IMPORTANCES: dict[str, ImportanceFn] = {}
# Scores that cannot be computed from weights alone: callers must fill .grad first.
NEEDS_GRAD: set[str] = set()


def register_importance(name: str, needs_grad: bool = False) -> Callable[[ImportanceFn], ImportanceFn]:
    def wrap(fn: ImportanceFn) -> ImportanceFn:
        IMPORTANCES[name] = fn
        if needs_grad:
            NEEDS_GRAD.add(name)
        return fn

    return wrap


def list_importances() -> list[str]:
    return sorted(IMPORTANCES)


def get_importance(name: str) -> ImportanceFn:
    if name not in IMPORTANCES:
        from ...errors import CompactCLError

        raise CompactCLError(f"unknown importance {name!r}; choose one of {', '.join(list_importances())}")
    return IMPORTANCES[name]


def score(name: str, weight: torch.Tensor, grad: torch.Tensor | None = None, dim: int | None = None) -> torch.Tensor:
    """Score ``weight`` with the registered importance ``name`` (see module docstring)."""
    return get_importance(name)(weight, grad, dim)


def _reduce(per_weight: torch.Tensor, dim: int | None, p: float = 1.0) -> torch.Tensor:
    """Per-weight scores -> one per slice along ``dim`` (p-norm of the slice's per-weight scores)."""
    if dim is None:
        return per_weight
    flat = per_weight.detach().movedim(dim, 0).reshape(per_weight.shape[dim], -1)
    return flat.sum(1) if p == 1.0 else flat.pow(p).sum(1).pow(1.0 / p)


@register_importance("l1")
def magnitude_l1(weight: torch.Tensor, grad: torch.Tensor | None = None, dim: int | None = None) -> torch.Tensor:
    """|w| per weight; the L1 norm of each slice per channel (Li et al., 2017)."""
    return _reduce(weight.detach().abs(), dim, 1.0)


@register_importance("l2")
def magnitude_l2(weight: torch.Tensor, grad: torch.Tensor | None = None, dim: int | None = None) -> torch.Tensor:
    """|w| per weight (same ranking as w^2); the L2 norm of each slice per channel."""
    return _reduce(weight.detach().abs(), dim, 2.0)


@register_importance("taylor", needs_grad=True)
def taylor(weight: torch.Tensor, grad: torch.Tensor | None = None, dim: int | None = None) -> torch.Tensor:
    """First-order Taylor estimate of the loss change when a weight is zeroed: |w * dL/dw|
    (Molchanov et al., 2017/2019); summed over each slice per channel."""
    if grad is None:
        from ...errors import CompactCLError

        raise CompactCLError("the 'taylor' importance needs gradients: run a backward pass on training data "
                             "first (compactcl.compress.prune.accumulate_grads) or use 'l1'/'l2'")
    return _reduce((weight.detach() * grad.detach()).abs(), dim, 1.0)


def activation_mean(activations: torch.Tensor, channel_dim: int = 1) -> torch.Tensor:
    """Mean |activation| per channel over a batch of feature maps (N, C, ...) -> (C,):
    channels that rarely fire contribute little downstream."""
    a = activations.detach().abs().movedim(channel_dim, 0)
    return a.reshape(a.shape[0], -1).mean(1)
