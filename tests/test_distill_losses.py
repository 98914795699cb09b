"""Distillation losses against naive references: a python loop over samples, explicit softmaxes."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compactcl.compress.distill import hint_loss, kd_ce_loss, kd_loss, make_adapter, old_class_kd


def _logits(b: int = 5, k: int = 7, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    s = (3 * torch.randn(b, k, generator=g, dtype=torch.float64)).requires_grad_(True)
    t = 3 * torch.randn(b, k, generator=g, dtype=torch.float64)
    y = torch.randint(0, k, (b,), generator=g)
    return s, t, y


def _naive_kd(s: torch.Tensor, t: torch.Tensor, temperature: float) -> float:
    """mean over samples of sum_k p_t (log p_t - log p_s), times T^2, in plain python floats."""
    total = 0.0
    for srow, trow in zip(s.tolist(), t.tolist()):
        zs = [v / temperature for v in srow]
        zt = [v / temperature for v in trow]
        ls = math.log(sum(math.exp(v) for v in zs))
        lt = math.log(sum(math.exp(v) for v in zt))
        for a, b in zip(zs, zt):
            log_ps, log_pt = a - ls, b - lt
            total += math.exp(log_pt) * (log_pt - log_ps)
    return total / len(s) * temperature ** 2


def _naive_ce(s: torch.Tensor, y: torch.Tensor) -> float:
    total = 0.0
    for row, label in zip(s.tolist(), y.tolist()):
        total += math.log(sum(math.exp(v) for v in row)) - row[label]
    return total / len(s)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0, 20.0])
def test_kd_loss_matches_naive_loop_and_explicit_kl(temperature: float) -> None:
    s, t, _ = _logits()
    got = kd_loss(s, t, temperature)
    assert got.item() == pytest.approx(_naive_kd(s, t, temperature), rel=1e-10, abs=1e-12)
    p_s, p_t = torch.softmax(s / temperature, 1), torch.softmax(t / temperature, 1)
    explicit = F.kl_div(torch.log(p_s), p_t, reduction="sum") / len(s) * temperature ** 2
    torch.testing.assert_close(got, explicit)


@pytest.mark.parametrize("temperature", [1.0, 4.0, 8.0])
def test_kd_gradient_is_t_over_batch_times_prob_difference(temperature: float) -> None:
    # d/ds [T^2 KL(p_t || softmax(s/T))] = T (p_s - p_t): the T^2 factor cancels the 1/T^2 shrinkage
    s, t, _ = _logits()
    t = t.clone().requires_grad_(True)
    kd_loss(s, t, temperature).backward()
    expected = temperature * (torch.softmax(s / temperature, 1) - torch.softmax(t / temperature, 1)) / len(s)
    torch.testing.assert_close(s.grad, expected.detach())
    assert t.grad is None  # the teacher is a constant target


def test_kd_loss_zero_for_identical_logits_and_positive_otherwise() -> None:
    s, t, _ = _logits()
    assert kd_loss(t, t, 4.0).abs().item() < 1e-12
    assert kd_loss(s, t, 4.0).item() > 0


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.9, 1.0])
def test_kd_ce_loss_mixes_soft_and_hard_terms(alpha: float) -> None:
    s, t, y = _logits(seed=1)
    temperature = 4.0
    got = kd_ce_loss(s, t, y, temperature, alpha)
    expected = alpha * _naive_kd(s, t, temperature) + (1 - alpha) * _naive_ce(s, y)
    assert got.item() == pytest.approx(expected, rel=1e-10, abs=1e-12)
    got.backward()
    onehot = F.one_hot(y, s.shape[1]).double()
    grad = (alpha * temperature * (torch.softmax(s / temperature, 1) - torch.softmax(t / temperature, 1))
            + (1 - alpha) * (torch.softmax(s, 1) - onehot)) / len(s)
    torch.testing.assert_close(s.grad, grad.detach())


def test_kd_ce_loss_rejects_bad_arguments() -> None:
    s, t, y = _logits()
    with pytest.raises(ValueError, match="alpha"):
        kd_ce_loss(s, t, y, alpha=1.5)
    with pytest.raises(ValueError, match="temperature"):
        kd_loss(s, t, temperature=0.0)


def test_old_class_kd_only_touches_old_columns() -> None:
    s, t, _ = _logits(k=9)
    old = t[:, :6]
    got = old_class_kd(s, old, 2.0)
    assert got.item() == pytest.approx(_naive_kd(s[:, :6], old, 2.0), rel=1e-10)
    got.backward()
    assert torch.all(s.grad[:, 6:] == 0)


def test_hint_loss_with_linear_adapter_matches_naive_mse() -> None:
    g = torch.Generator().manual_seed(0)
    fs, ft = torch.randn(4, 3, generator=g), torch.randn(4, 5, generator=g)
    adapter = make_adapter(fs.shape, ft.shape)
    assert isinstance(adapter, nn.Linear) and (adapter.in_features, adapter.out_features) == (3, 5)
    mapped = fs @ adapter.weight.T + adapter.bias
    naive = sum((a - b) ** 2 for ra, rb in zip(mapped.tolist(), ft.tolist()) for a, b in zip(ra, rb)) / ft.numel()
    assert hint_loss(fs, ft, adapter).item() == pytest.approx(naive, rel=1e-5)


def test_hint_adapter_for_maps_is_1x1_conv_and_shapes_are_checked() -> None:
    adapter = make_adapter((2, 4, 6, 6), (2, 16, 6, 6))
    assert isinstance(adapter, nn.Conv2d) and adapter.kernel_size == (1, 1)
    ft = torch.randn(2, 16, 6, 6, requires_grad=True)
    hint_loss(torch.randn(2, 4, 6, 6), ft, adapter).backward()
    assert ft.grad is None and adapter.weight.grad is not None
    with pytest.raises(ValueError, match="spatial"):
        make_adapter((2, 4, 6, 6), (2, 16, 3, 3))
    with pytest.raises(ValueError, match="adapt"):
        make_adapter((2, 4), (2, 16, 3, 3))
    with pytest.raises(ValueError, match="shapes differ"):
        hint_loss(torch.randn(2, 4), torch.randn(2, 8))
