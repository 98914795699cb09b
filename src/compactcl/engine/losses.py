"""Losses as plain functions (cross-entropy, Hinton KD, KD mixed with hard labels, FitNets hints).

Tensor in, scalar out, no state: learners (LwF, iCaRL), :func:`compactcl.compress.distill.distill`
and every compression fine-tune build their loss closures from these (the training loop takes
``loss(model, x, y)``), and the tests check them against a naive loop.

>>> s, t, y = torch.randn(4, 10), torch.randn(4, 10), torch.tensor([0, 1, 2, 3])
>>> bool(kd_ce_loss(s, t, y, temperature=4.0, alpha=0.9) > 0)
True
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ce_loss", "teacher_kd_loss", "kd_loss", "kd_ce_loss", "old_class_kd", "hint_loss", "make_adapter"]


def ce_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Plain cross-entropy of ``model(x)``: the loss of fine-tuning, joint training and replay."""
    return F.cross_entropy(model(x), y)


def teacher_kd_loss(teacher: nn.Module, temperature: float, alpha: float):
    """``loss(model, x, y)``: hard labels + a frozen teacher's soft targets (:func:`kd_ce_loss`) —
    how every compression step fine-tunes (prune, QAT, the ladder's rungs)."""

    def loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            t = teacher(x)
        return kd_ce_loss(model(x), t, y, temperature, alpha)

    return loss


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 2.0) -> torch.Tensor:
    """Hinton et al.'s soft-target loss: KL(teacher_T || student_T) * T^2, batch mean.

    The T^2 factor keeps gradient magnitudes comparable across temperatures (the soft-target
    gradient shrinks as 1/T^2), so ``alpha`` means the same thing at T=1 and T=20.
    The teacher is detached: gradients flow into the student only.

    >>> z = torch.randn(3, 5)
    >>> float(kd_loss(z, z, temperature=4.0)) < 1e-6
    True
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    t = float(temperature)
    log_p_student = F.log_softmax(student_logits / t, dim=1)  # (B, K)
    p_teacher = F.softmax(teacher_logits.detach() / t, dim=1)  # (B, K)
    return F.kl_div(log_p_student, p_teacher, reduction="batchmean") * (t * t)


def kd_ce_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
               temperature: float = 4.0, alpha: float = 0.9) -> torch.Tensor:
    """``alpha * kd_loss + (1 - alpha) * cross_entropy(student, targets)``: Hinton's mix.

    Why mix: the hard labels correct the teacher where it is wrong; the soft targets carry
    its "dark knowledge" (which wrong classes are near). ``alpha=0`` is plain cross-entropy,
    ``alpha=1`` pure distillation (no labels needed).

    >>> z, y = torch.randn(2, 3), torch.tensor([0, 2])
    >>> torch.allclose(kd_ce_loss(z, z, y, alpha=0.0), F.cross_entropy(z, y))
    True
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    # Skip the unused term: alpha=0 must not need a teacher output, alpha=1 not need labels.
    out = student_logits.new_zeros(())
    if alpha > 0:
        out = out + alpha * kd_loss(student_logits, teacher_logits, temperature)
    if alpha < 1:
        out = out + (1.0 - alpha) * F.cross_entropy(student_logits, targets)
    return out


def old_class_kd(logits: torch.Tensor, old_logits: torch.Tensor, temperature: float = 2.0) -> torch.Tensor:
    """LwF/iCaRL distillation: KD restricted to the classes the old model knew.

    >>> old, new = torch.randn(2, 3), torch.randn(2, 5)
    >>> torch.allclose(old_class_kd(new, old), kd_loss(new[:, :3], old))
    True
    """
    n_old = old_logits.shape[1]
    return kd_loss(logits[:, :n_old], old_logits, temperature)


def hint_loss(student_features: torch.Tensor, teacher_features: torch.Tensor,
              adapter: torch.nn.Module | None = None) -> torch.Tensor:
    """FitNets hint: mean squared error between (adapted) student and teacher features.

    The adapter (see :func:`make_adapter`) maps the narrower student features to the
    teacher's width; it is trained with the student and thrown away afterwards.
    """
    s = adapter(student_features) if adapter is not None else student_features
    t = teacher_features.detach()
    if s.shape != t.shape:
        raise ValueError(f"hint shapes differ after the adapter: student {tuple(s.shape)} vs teacher "
                         f"{tuple(t.shape)}; pass an adapter that maps one to the other (make_adapter)")
    return F.mse_loss(s, t)


def make_adapter(student_shape: torch.Size | tuple[int, ...], teacher_shape: torch.Size | tuple[int, ...]) -> nn.Module:
    """The learned regressor of FitNets: ``nn.Linear`` for (B, D) features, 1x1 conv for (B, C, H, W) maps.

    A 1x1 conv (not FitNets' larger kernel) because here student and teacher maps share their
    spatial size; a mismatch is an error rather than a silent resize.

    >>> make_adapter((8, 16), (8, 64))
    Linear(in_features=16, out_features=64, bias=True)
    """
    s, t = tuple(student_shape), tuple(teacher_shape)
    if len(s) == 2 and len(t) == 2:
        return nn.Linear(s[1], t[1])
    if len(s) == 4 and len(t) == 4:
        if s[2:] != t[2:]:
            raise ValueError(f"hint maps differ in spatial size: student {s[2:]} vs teacher {t[2:]}; "
                             "pick layers at the same resolution")
        return nn.Conv2d(s[1], t[1], kernel_size=1)
    raise ValueError(f"cannot adapt student features of shape {s} to teacher features of shape {t}; "
                     "both must be (B, D) or both (B, C, H, W)")
