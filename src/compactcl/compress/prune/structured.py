"""Structural pruning: remove whole channels and physically shrink the layers.

Torch-Pruning's DependencyGraph finds every layer coupled to a channel (batch norm after a
conv, both sides of a residual add, the slice of a concatenation, depthwise convs whose
in = out channels) and removes the channel everywhere at once; its MetaPruner picks the
channels from our importance registry (:class:`compactcl.compress.prune.importance`).
The classifier head's outputs (the classes) and DER's auxiliary head are never pruned.
The result is a plain, smaller ``nn.Module``: ``save_checkpoint`` stores it and
``load_checkpoint`` rebuilds it from the saved weight shapes.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from ...errors import CompactCLError
from .importance import get_importance

__all__ = ["prune_channels_", "channel_counts", "refresh_out_dims_", "group_importance", "nearest_multiple_ratios"]


def group_importance(name: str = "l2"):
    """A Torch-Pruning ``Importance`` that scores a coupled channel group with our registry.

    Every conv/linear whose outputs (or inputs) are the group's channels contributes its
    per-channel score, batch norms contribute |gamma| (x grad for Taylor); contributions are
    averaged over the group and normalised by their mean, like Torch-Pruning's own group scores.
    """
    import torch_pruning as tp
    from torch_pruning.pruner import function as F

    fn = get_importance(name)

    class _GroupScore(tp.importance.Importance):
        @torch.no_grad()
        def __call__(self, group) -> torch.Tensor | None:
            parts: list[tuple[torch.Tensor, list[int]]] = []
            for i, (dep, idxs) in enumerate(group):
                layer, prune_fn, root = dep.layer, dep.pruning_fn, group[i].root_idxs
                if any(r is None for r in root):
                    continue
                # a depthwise conv's input channel is its output channel: scored once, as an output
                if prune_fn in (F.prune_conv_out_channels, F.prune_linear_out_channels,
                                F.prune_depthwise_conv_out_channels):
                    w, g = layer.weight, layer.weight.grad
                    parts.append((fn(w, g, 0)[idxs], root))
                elif prune_fn in (F.prune_conv_in_channels, F.prune_linear_in_channels):
                    w, g = layer.weight.transpose(0, 1), layer.weight.grad
                    s = fn(w, None if g is None else g.transpose(0, 1), 0)
                    if isinstance(layer, nn.Conv2d) and layer.groups not in (1, layer.in_channels):
                        s = s.repeat(layer.groups)  # grouped conv: each group sees its own slice
                    parts.append((s[idxs], root))
                elif prune_fn == F.prune_batchnorm_out_channels and layer.affine:
                    w, g = layer.weight, layer.weight.grad
                    parts.append((fn(w, g, None)[idxs], root))
            if not parts:
                return None
            n = len(group[0].root_idxs)
            total = torch.zeros(n)
            count = torch.zeros(n)
            for s, root in parts:
                total.scatter_add_(0, torch.tensor(root), s.float().cpu())
                count.scatter_add_(0, torch.tensor(root), torch.ones(len(root)))
            score = total / count.clamp(min=1)
            return score / score.mean().clamp(min=1e-12)

    return _GroupScore()


def _ignored(model: nn.Module) -> list[nn.Module]:
    """Layers whose outputs must keep their size: the head (classes) and DER's auxiliary head."""
    out = [m for name in ("head", "aux_head") if isinstance(m := getattr(model, name, None), nn.Module)]
    if not out:
        raise CompactCLError(f"{type(model).__name__} has no .head; structural pruning needs the compactcl "
                             "model interface (features, head) to know which outputs are classes")
    return out


def prune_channels_(model: nn.Module, ratio: float, example_inputs: torch.Tensor, importance: str = "l2",
                    round_to: int | None = None, global_pruning: bool = False,
                    layer_ratios: Mapping[nn.Module, float] | None = None, max_ratio: float = 0.9,
                    round_mode: str = "nearest") -> nn.Module:
    """Remove ``ratio`` of the channels of every prunable conv/linear (or of all together with
    ``global_pruning``), keep channel counts multiples of ``round_to`` if given; in place.

    ``round_mode="nearest"`` keeps the multiple of ``round_to`` nearest to (1 - ratio) x C
    (32 channels at 30% -> 24); ``"floor"`` is Torch-Pruning's own rule, the multiple at or
    below it (32 -> 16: it removes half the channels when asked for 30%).

    >>> net = IncrementalNet("cnn", 1, 8, 10)  # doctest: +SKIP
    >>> prune_channels_(net, 0.3, torch.zeros(1, 1, 8, 8))  # doctest: +SKIP
    """
    if not 0.0 <= ratio < 1.0:
        raise CompactCLError(f"channel pruning ratio must be in [0, 1), got {ratio}; 0.3 removes 30% of channels")
    if round_to is not None and round_to < 1:
        raise CompactCLError(f"round_to must be a positive channel multiple (e.g. 8), got {round_to}")
    if round_mode not in ("nearest", "floor"):
        raise CompactCLError(f"round_mode must be 'nearest' or 'floor', got {round_mode!r}")
    if round_to and round_mode == "nearest" and layer_ratios is None and not global_pruning:
        layer_ratios = nearest_multiple_ratios(model, ratio, round_to)
    was_training = model.training
    model.eval()
    kwargs = dict(importance=importance, ratio=ratio, round_to=round_to, global_pruning=global_pruning,
                  layer_ratios=layer_ratios, max_ratio=max_ratio)
    branches = getattr(model, "branches", None)
    if isinstance(branches, nn.ModuleList) and len(branches) > 1:
        if getattr(model, "aux_head", None) is not None:
            raise CompactCLError("this DER model still has its auxiliary head (mid-task); call "
                                 "model.end_task() before pruning so only the deployed head is kept")
        _prune_branches(model, branches, example_inputs, **kwargs)
    else:
        _meta_prune(model, example_inputs, _ignored(model), **kwargs)
    refresh_out_dims_(model, example_inputs)
    model.train(was_training)
    return model


def nearest_multiple_ratios(model: nn.Module, ratio: float, round_to: int) -> dict[nn.Module, float]:
    """Per-layer ratios that keep round((1 - ratio) C / round_to) * round_to channels (at least
    ``round_to``). Coupled layers have equal C, so they get equal ratios. The tiny margin makes
    Torch-Pruning's ``int(C * (1 - r))`` land exactly on the multiple."""
    ignored = {id(m) for m in _ignored(model)}
    out = {}
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)) and id(m) not in ignored:
            c = m.out_channels if isinstance(m, nn.Conv2d) else m.out_features
            keep = min(c, max(round_to, round_to * round(c * (1 - ratio) / round_to)))
            out[m] = max(0.0, (c - keep) / c - 1e-6)
    return out


def _meta_prune(model: nn.Module, example_inputs: torch.Tensor, ignored: list[nn.Module], importance: str,
                ratio: float, round_to: int | None, global_pruning: bool,
                layer_ratios: Mapping[nn.Module, float] | None, max_ratio: float) -> None:
    import torch_pruning as tp

    # The graph is traced through autograd: frozen parameters (DER's old branches) would be
    # invisible to it, so every parameter takes part while tracing and is re-frozen after
    # (torch-pruning replaces Parameter objects, so names mark them).
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    try:
        for p in model.parameters():
            p.requires_grad_(True)
        pruner = tp.pruner.MetaPruner(
            model, example_inputs, importance=group_importance(importance), pruning_ratio=ratio,
            pruning_ratio_dict=dict(layer_ratios) if layer_ratios else None, global_pruning=global_pruning,
            max_pruning_ratio=max_ratio, ignored_layers=ignored, round_to=round_to)
        pruner.step()
    finally:
        for n, p in model.named_parameters():
            p.requires_grad_(n not in frozen)


class _BranchWithHead(nn.Module):
    """One DER branch and the head's columns that read it: a model Torch-Pruning can trace alone."""

    def __init__(self, branch: nn.Module, head: nn.Linear):
        super().__init__()
        self.branch, self.head = branch, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.branch(x))


@torch.no_grad()
def _prune_branches(model: nn.Module, branches: nn.ModuleList, example_inputs: torch.Tensor, **kwargs) -> None:
    """DER: prune each branch with its slice of the head, then sew the head back together.

    Torch-Pruning 1.6 maps concatenation indices wrongly when several identical branches feed one
    ``torch.cat`` (index past the head's input size), so each branch is pruned on its own; the
    head keeps its outputs (classes) and loses exactly the input columns of removed features.
    """
    head: nn.Linear = model.head
    dims = [int(b(example_inputs).shape[1]) for b in branches]
    cols, start = [], 0
    for branch, d in zip(branches, dims):
        part = nn.Linear(d, head.out_features, bias=False).to(head.weight.device)
        part.weight.copy_(head.weight[:, start: start + d])
        start += d
        wrapper = _BranchWithHead(branch, part)
        with torch.enable_grad():
            _meta_prune(wrapper, example_inputs, [part], **kwargs)
        cols.append(part.weight.detach())
    weight = torch.cat(cols, dim=1)
    new = nn.Linear(weight.shape[1], head.out_features, bias=head.bias is not None).to(head.weight.device)
    new.weight.copy_(weight)
    if head.bias is not None:
        new.bias.copy_(head.bias)
    new.weight.requires_grad_(head.weight.requires_grad)
    model.head = new


@torch.no_grad()
def refresh_out_dims_(model: nn.Module, example_inputs: torch.Tensor) -> nn.Module:
    """Backbones record ``out_dim``; after their last channels shrink, measure it again."""
    hooks, dims = [], {}
    for m in model.modules():
        if isinstance(getattr(m, "out_dim", None), int) and m is not model:
            hooks.append(m.register_forward_hook(lambda mod, i, o: dims.__setitem__(mod, o.shape[-1])))
    was_training = model.training
    model.eval()
    try:
        model(example_inputs)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    for m, d in dims.items():
        m.out_dim = int(d)
    return model


def channel_counts(model: nn.Module) -> dict[str, int]:
    """Output channels (convs) / features (linears) of every layer, for reports and tests."""
    return {n: (m.out_channels if isinstance(m, nn.Conv2d) else m.out_features)
            for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
