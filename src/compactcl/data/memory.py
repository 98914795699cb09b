"""Exemplar memory with a fixed *total* budget shared by every class seen so far.

"Fixed memory" means different things in different libraries: here ``size`` is the total
number of stored images (iCaRL's K, PyCIL's ``memory_size``), so each of the C classes seen
keeps ``size // C`` exemplars and old classes give up exemplars as new ones arrive. Herding
(iCaRL) orders exemplars so that any prefix best matches the class mean; removal drops from
the end of that order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from .datasets import TensorData

__all__ = ["ExemplarMemory", "herding", "extract_features"]


@torch.no_grad()
def extract_features(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """L2-normalised features (N, D) of ``model.features``."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    feats = torch.cat([model.features(x[i: i + batch_size].to(device)).float().cpu()
                       for i in range(0, len(x), batch_size)])
    model.train(was_training)
    return F.normalize(feats, dim=1)


def herding(features: torch.Tensor, m: int) -> list[int]:
    """iCaRL herding: greedily pick ``m`` rows whose running mean best approximates the mean."""
    mu = features.mean(0)
    chosen: list[int] = []
    running = torch.zeros_like(mu)
    available = torch.ones(len(features), dtype=torch.bool)
    for k in range(1, min(m, len(features)) + 1):
        candidates = (running.unsqueeze(0) + features) / k  # (N, D) mean if each row were added
        dist = (mu.unsqueeze(0) - candidates).norm(dim=1)
        dist[~available] = float("inf")
        i = int(dist.argmin())
        chosen.append(i)
        available[i] = False
        running += features[i]
    return chosen


@dataclass
class ExemplarMemory:
    size: int
    selection: str = "herding"  # or "random"
    seed: int = 0
    x: dict[int, torch.Tensor] = field(default_factory=dict)  # label -> (m, C, H, W), herding order
    means: dict[int, torch.Tensor] = field(default_factory=dict)  # label -> normalised class mean

    def __post_init__(self) -> None:
        if self.size < 0:
            raise ValueError(f"memory.size must be >= 0, got {self.size}")
        if self.selection not in ("herding", "random"):
            raise ValueError(f"memory.selection must be 'herding' or 'random', got {self.selection!r}")

    def __len__(self) -> int:
        return sum(len(v) for v in self.x.values())

    def data(self) -> TensorData | None:
        if not self.x:
            return None
        labels = sorted(self.x)
        return TensorData(torch.cat([self.x[c] for c in labels]),
                          torch.cat([torch.full((len(self.x[c]),), c, dtype=torch.long) for c in labels]))

    def update(self, model: nn.Module, task_train: TensorData) -> None:
        """Shrink old classes to the new per-class quota, then add exemplars of the task's classes."""
        new_labels = sorted(int(c) for c in task_train.y.unique())
        n_classes = len(set(self.x) | set(new_labels))
        per_class = self.size // n_classes if n_classes else 0
        for c in list(self.x):
            self.x[c] = self.x[c][:per_class]
        rng = np.random.default_rng(self.seed + 1000 * n_classes)
        for c in new_labels:
            xc = task_train.x[task_train.y == c]
            if self.selection == "herding":
                order = herding(extract_features(model, xc), per_class)
            else:
                order = rng.permutation(len(xc))[:per_class].tolist()
            self.x[c] = xc[order].clone()
        self.compute_means(model)

    def compute_means(self, model: nn.Module) -> None:
        """Class means of normalised exemplar features, for the nearest-mean classifier."""
        self.means = {c: F.normalize(extract_features(model, xc).mean(0), dim=0) for c, xc in self.x.items() if len(xc)}

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {f"memory.{c}": xc for c, xc in self.x.items()}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.x = {int(k.split(".")[1]): v for k, v in tensors.items() if k.startswith("memory.")}
