"""Unstructured (weight-level) sparsity: masks, L1 regularisation, the AGP schedule.

Pure math first (mask selection, the cubic schedule, the L1 term), module surgery after:
masks live in a ``torch.nn.utils.parametrize`` parametrization (``weight = original * mask``)
so any optimiser, any training loop and ``copy.deepcopy`` keep pruned weights at zero;
:func:`strip_masks_` bakes the zeros in and leaves a plain model for saving.
"""

from __future__ import annotations

from typing import Callable, Mapping

import torch
from torch import nn
from torch.nn.utils import parametrize

from ...errors import CompactCLError
from .importance import NEEDS_GRAD, get_importance

__all__ = ["select_masks", "agp_sparsity", "l1_penalty", "with_l1", "prunable_layers", "layer_scores",
           "apply_masks_", "masks_of", "strip_masks_", "is_masked", "sparsity_of", "layer_sparsity",
           "magnitude_prune_", "WeightMask"]

# ----------------------------------------------------------------------------- pure math


def _check_ratio(ratio: float, what: str = "ratio") -> None:
    if not 0.0 <= ratio < 1.0:
        raise CompactCLError(f"pruning {what} must be in [0, 1), got {ratio}; e.g. 0.9 keeps 10% of the weights")


def select_masks(scores: Mapping[str, torch.Tensor], ratio: float | Mapping[str, float],
                 scope: str = "global") -> dict[str, torch.Tensor]:
    """Boolean keep-masks that drop the lowest-scoring fraction ``ratio`` of weights.

    ``scope="global"`` ranks all layers together (one threshold); ``"layer"`` drops ``ratio``
    (a float, or a per-layer dict) of each layer. Exactly ``round(ratio * n)`` weights are
    dropped, ties broken by position, so the result is deterministic.
    """
    if scope not in ("global", "layer"):
        raise CompactCLError(f"pruning scope must be 'global' or 'layer', got {scope!r}")
    if scope == "global":
        if not isinstance(ratio, (int, float)):
            raise CompactCLError("global pruning takes one ratio; use scope='layer' for per-layer ratios")
        _check_ratio(float(ratio))
        names = list(scores)
        flat = torch.cat([scores[n].detach().flatten().float() for n in names]) if names else torch.zeros(0)
        keep = _keep_flat(flat, int(round(float(ratio) * flat.numel())))
        out, start = {}, 0
        for n in names:
            size = scores[n].numel()
            out[n] = keep[start: start + size].view_as(scores[n])
            start += size
        return out
    out = {}
    for n, s in scores.items():
        r = float(ratio[n]) if isinstance(ratio, Mapping) else float(ratio)
        _check_ratio(r, f"ratio of {n}")
        out[n] = _keep_flat(s.detach().flatten().float(), int(round(r * s.numel()))).view_as(s)
    return out


def _keep_flat(flat: torch.Tensor, n_drop: int) -> torch.Tensor:
    keep = torch.ones(flat.numel(), dtype=torch.bool, device=flat.device)
    if n_drop > 0:
        order = torch.argsort(flat, stable=True)
        keep[order[:n_drop]] = False
    return keep


def agp_sparsity(step: int, total_steps: int, final: float, initial: float = 0.0) -> float:
    """Automated Gradual Pruning (Zhu & Gupta, 2017): s_t = s_f + (s_i - s_f) (1 - t/n)^3.

    Prunes fast while many redundant weights remain, slowly near the target.

    >>> [round(agp_sparsity(t, 4, 0.8), 3) for t in range(5)]
    [0.0, 0.463, 0.7, 0.787, 0.8]
    """
    if total_steps <= 0:
        return final
    t = min(max(step, 0), total_steps) / total_steps
    return final + (initial - final) * (1.0 - t) ** 3


def l1_penalty(weights: list[torch.Tensor]) -> torch.Tensor:
    """Sum of |w| over ``weights``: added to the loss it drives small weights to exactly-prunable zero."""
    if not weights:
        return torch.zeros(())
    return torch.stack([w.abs().sum() for w in weights]).sum()


LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def with_l1(loss_fn: LossFn, strength: float, include_head: bool = True) -> LossFn:
    """``loss_fn`` plus ``strength`` x the L1 norm of the model's prunable weights."""

    def loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        ws = [m.weight for m in prunable_layers(model, include_head).values()]
        return loss_fn(model, x, y) + strength * l1_penalty(ws)

    return loss


# ----------------------------------------------------------------------------- module surgery


class WeightMask(nn.Module):
    """Parametrization ``weight = original * mask``; the mask is a buffer so it deep-copies and saves."""

    def __init__(self, mask: torch.Tensor):
        super().__init__()
        self.register_buffer("mask", mask.detach().clone().bool())

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * self.mask.to(w.dtype)


def prunable_layers(model: nn.Module, include_head: bool = True) -> dict[str, nn.Module]:
    """Conv and linear layers by module name. DER's auxiliary head is never included (it is
    dropped after a task); the classifier head is optional (Deep Compression prunes it)."""
    out = {}
    for name, m in model.named_modules():
        if not isinstance(m, (nn.Conv2d, nn.Linear)) or m.weight.numel() == 0:
            continue
        top = name.split(".")[0]
        if top == "aux_head" or (top == "head" and not include_head):
            continue
        out[name] = m
    return out


def _original(m: nn.Module) -> torch.Tensor:
    return m.parametrizations.weight.original if is_masked(m) else m.weight


def layer_scores(model: nn.Module, importance: str = "l1", include_head: bool = True,
                 layers: list[str] | None = None) -> dict[str, torch.Tensor]:
    """Per-weight importance of every prunable layer (effective, masked weights)."""
    fn = get_importance(importance)
    out = {}
    for name, m in prunable_layers(model, include_head).items():
        if layers is not None and name not in layers:
            continue
        grad = _original(m).grad
        if importance in NEEDS_GRAD and grad is None:
            raise CompactCLError(f"importance {importance!r} needs gradients but layer {name!r} has none; "
                                 "call accumulate_grads(model, data) first")
        w = m.weight.detach()
        out[name] = fn(w, None if grad is None else grad * (w != 0), None)
    return out


def is_masked(m: nn.Module) -> bool:
    return parametrize.is_parametrized(m, "weight")


def apply_masks_(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> nn.Module:
    """Attach (or replace) keep-masks on the named layers; zeroes the dropped weights now and for
    every later optimiser step. In place; returns ``model``."""
    for name, mask in masks.items():
        m = model.get_submodule(name)
        if tuple(mask.shape) != tuple(m.weight.shape):
            raise CompactCLError(f"mask for {name!r} has shape {tuple(mask.shape)}, the weight "
                                 f"{tuple(m.weight.shape)}; the masks belong to another model")
        mask = mask.to(m.weight.device)
        if is_masked(m):
            m.parametrizations.weight[0].mask.copy_(mask)
        else:
            parametrize.register_parametrization(m, "weight", WeightMask(mask))
        with torch.no_grad():  # the stored value at 0 too: momentum/decay cannot revive it after strip
            _original(m).mul_(mask.to(m.weight.dtype))
    return model


def masks_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: m.parametrizations.weight[0].mask.clone() for n, m in model.named_modules()
            if isinstance(m, (nn.Conv2d, nn.Linear)) and is_masked(m)}


def strip_masks_(model: nn.Module) -> nn.Module:
    """Bake masks into the weights and remove the parametrizations: a plain model with zeros,
    ready for save_checkpoint / save_artifact / ONNX. In place; returns ``model``."""
    for m in model.modules():
        if is_masked(m):
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)
    return model


def layer_sparsity(model: nn.Module, include_head: bool = True) -> dict[str, float]:
    """Fraction of zero weights of each prunable layer."""
    return {n: float((m.weight == 0).float().mean()) for n, m in prunable_layers(model, include_head).items()}


def sparsity_of(model: nn.Module, include_head: bool = True) -> float:
    """Fraction of zero weights over all prunable layers together."""
    layers = prunable_layers(model, include_head).values()
    total = sum(m.weight.numel() for m in layers)
    zeros = sum(int((m.weight == 0).sum()) for m in layers)
    return zeros / max(total, 1)


def magnitude_prune_(model: nn.Module, ratio: float | Mapping[str, float], scope: str = "global",
                     importance: str = "l1", include_head: bool = True) -> dict[str, torch.Tensor]:
    """Mask the lowest-importance weights (a ratio overall, or per layer with a dict); return the masks."""
    layers = list(ratio) if isinstance(ratio, Mapping) else None
    scores = layer_scores(model, importance, include_head, layers)
    masks = select_masks(scores, ratio, "layer" if isinstance(ratio, Mapping) else scope)
    apply_masks_(model, masks)
    return masks
