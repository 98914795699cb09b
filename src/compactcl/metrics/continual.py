"""Continual-learning metrics from an accuracy matrix. Pure functions.

``acc[t][i]`` is the accuracy on task ``i``'s test split after training task ``t`` (i <= t).
Rows may be ragged (only seen tasks) or square with NaN above the diagonal.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["to_matrix", "average_accuracy", "average_incremental_accuracy", "final_accuracy",
           "forgetting", "backward_transfer", "summarize"]


def to_matrix(acc: Sequence[Sequence[float]]) -> np.ndarray:
    """Square (T, T) float matrix with NaN above the diagonal."""
    T = len(acc)
    out = np.full((T, T), np.nan)
    for t, row in enumerate(acc):
        if len(row) < t + 1:
            raise ValueError(f"row {t} of the accuracy matrix has {len(row)} entries, needs {t + 1}")
        out[t, : t + 1] = row[: t + 1]
    return out


def average_accuracy(acc: Sequence[Sequence[float]], t: int) -> float:
    """Mean accuracy over tasks 0..t after training task t."""
    return float(np.mean(to_matrix(acc)[t, : t + 1]))


def average_incremental_accuracy(acc: Sequence[Sequence[float]]) -> float:
    """Mean over t of the average accuracy after task t (Rebuffi et al.)."""
    return float(np.mean([average_accuracy(acc, t) for t in range(len(acc))]))


def final_accuracy(acc: Sequence[Sequence[float]]) -> float:
    return average_accuracy(acc, len(acc) - 1)


def forgetting(acc: Sequence[Sequence[float]]) -> float:
    """Mean over old tasks of (best accuracy before the last task - final accuracy) (Chaudhry et al.)."""
    m = to_matrix(acc)
    T = len(m)
    if T < 2:
        return 0.0
    return float(np.mean([np.max(m[i:T - 1, i]) - m[T - 1, i] for i in range(T - 1)]))


def backward_transfer(acc: Sequence[Sequence[float]]) -> float:
    """Mean over old tasks of (final accuracy - accuracy just after learning it) (Lopez-Paz & Ranzato)."""
    m = to_matrix(acc)
    T = len(m)
    if T < 2:
        return 0.0
    return float(np.mean([m[T - 1, i] - m[i, i] for i in range(T - 1)]))


def summarize(acc: Sequence[Sequence[float]]) -> dict[str, float]:
    return {"average_incremental_accuracy": average_incremental_accuracy(acc),
            "final_accuracy": final_accuracy(acc),
            "forgetting": forgetting(acc),
            "bwt": backward_transfer(acc)}
