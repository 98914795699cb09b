"""Model size and cost: parameters, non-zeros, multiply-accumulates, fp32 bytes."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["count_params", "count_nonzero", "count_flops", "fp32_bytes", "FP32_BYTES_KIND"]

# what fp32_bytes counts, said wherever it is printed as the baseline size (the CLI verbs, metrics.json bytes.fp32)
FP32_BYTES_KIND = "fp32 weights: 4 bytes per parameter, buffers not counted"


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_nonzero(model: nn.Module) -> int:
    return sum(int((p != 0).sum()) for p in model.parameters())


def fp32_bytes(model: nn.Module) -> int:
    """4 bytes a parameter: the size of the weights at full precision. The one baseline size of
    compactcl: ``metrics.json``'s ``bytes.fp32`` and every CLI verb's ``baseline_bytes``."""
    return 4 * count_params(model)


@torch.no_grad()
def count_flops(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward pass on a batch of one (the convention of thop,
    fvcore and Torch-Pruning: one MAC counted as one FLOP). Conv and linear layers only."""
    total = 0

    def conv_hook(m: nn.Conv2d, inp, out):
        nonlocal total
        k = m.kernel_size[0] * m.kernel_size[1] * (m.in_channels // m.groups)
        total += out.numel() * k

    def linear_hook(m: nn.Linear, inp, out):
        nonlocal total
        total += out.numel() * m.in_features

    hooks = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(linear_hook))
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        model(torch.zeros(1, *input_shape[-3:], device=device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return int(total)
