"""Distillation losses as plain functions (Hinton KD, FitNets hints, old-class distillation)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["kd_loss", "old_class_kd", "hint_loss"]


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 2.0) -> torch.Tensor:
    """Hinton et al.'s soft-target loss: KL(teacher_T || student_T) * T^2, batch mean.

    The T^2 factor keeps gradient magnitudes comparable across temperatures.
    """
    t = temperature
    log_p_student = F.log_softmax(student_logits / t, dim=1)
    p_teacher = F.softmax(teacher_logits.detach() / t, dim=1)
    return F.kl_div(log_p_student, p_teacher, reduction="batchmean") * (t * t)


def old_class_kd(logits: torch.Tensor, old_logits: torch.Tensor, temperature: float = 2.0) -> torch.Tensor:
    """LwF/iCaRL distillation: KD restricted to the classes the old model knew."""
    n_old = old_logits.shape[1]
    return kd_loss(logits[:, :n_old], old_logits, temperature)


def hint_loss(student_features: torch.Tensor, teacher_features: torch.Tensor,
              adapter: torch.nn.Module | None = None) -> torch.Tensor:
    """FitNets hint: mean squared error between (adapted) student and teacher features."""
    s = adapter(student_features) if adapter is not None else student_features
    return F.mse_loss(s, teacher_features.detach())
