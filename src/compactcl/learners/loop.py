"""The thin training loop every learner shares: in-memory tensors, seeded shuffles, one optimiser."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ..data.datasets import TensorData
from ..errors import CompactCLError

__all__ = ["TrainConfig", "train", "predict", "accuracy", "LossFn"]

# loss(model, x, y) -> scalar; closes over whatever the learner needs (old model, memory)
LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class TrainConfig:
    epochs: int = 10
    iterations: int | None = None  # if set, overrides epochs (the Split-MNIST protocol counts iterations)
    batch_size: int = 64
    lr: float = 0.05
    optimizer: str = "sgd"  # or "adam"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"  # or "constant"
    device: str = "cpu"
    seed: int = 0
    progress: bool = False
    augment: bool = False  # random crop + flip of training batches (data.augment_batch)
    on_epoch: Callable[[int, float], None] | None = None  # (epoch, mean loss), e.g. a TensorBoard logger


def _optimizer(params: list[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    raise CompactCLError(f"unknown optimizer {cfg.optimizer!r}; use 'sgd' or 'adam'")


def train(model: nn.Module, data: TensorData, loss_fn: LossFn, cfg: TrainConfig, desc: str = "train") -> list[float]:
    """Train ``model`` on ``data`` in place; return the mean loss of each epoch.

    Raises :class:`CompactCLError` naming the step if the loss becomes NaN or infinite.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params or len(data) == 0:
        return []
    opt = _optimizer(params, cfg)
    steps_per_epoch = max(1, math.ceil(len(data) / cfg.batch_size))
    total = cfg.iterations or cfg.epochs * steps_per_epoch
    epochs = math.ceil(total / steps_per_epoch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, total) if cfg.schedule == "cosine" else None
    gen = torch.Generator().manual_seed(cfg.seed)
    aug_gen = torch.Generator().manual_seed(cfg.seed + 1)  # its own stream: augmenting keeps the shuffle
    device = torch.device(cfg.device)
    x_all, y_all = data.x.to(device), data.y.to(device)
    model.train()
    history: list[float] = []
    step = 0
    bar = _progress(epochs, desc, cfg.progress)
    for epoch in range(epochs):
        order = torch.randperm(len(data), generator=gen).to(device)
        running, count = 0.0, 0
        for i in range(0, len(data), cfg.batch_size):
            if step >= total:
                break
            idx = order[i: i + cfg.batch_size]
            xb = x_all[idx]
            if cfg.augment:
                from ..data.datasets import augment_batch

                xb = augment_batch(xb, aug_gen)
            loss = loss_fn(model, xb, y_all[idx])
            if not torch.isfinite(loss):
                raise CompactCLError(f"{desc}: loss became {loss.item()} at epoch {epoch}, step {step}; "
                                     "lower the learning rate (learner.lr) — the last good checkpoint is kept")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            running += loss.item() * len(idx)
            count += len(idx)
            step += 1
        history.append(running / max(count, 1))
        if cfg.on_epoch is not None:
            cfg.on_epoch(epoch, history[-1])
        if bar is not None:
            bar.set_postfix(loss=f"{history[-1]:.3f}")
            bar.update(1)
    if bar is not None:
        bar.close()
    model.eval()
    return history


def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="epoch", leave=False)


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 512, means: dict[int, torch.Tensor] | None = None) -> torch.Tensor:
    """Predicted labels (N,): argmax of the logits, or the nearest class mean when ``means`` is given."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(x), batch_size):
        xb = x[i: i + batch_size].to(device)
        if means:
            labels = sorted(means)
            feats = torch.nn.functional.normalize(model.features(xb).float(), dim=1)
            centers = torch.stack([means[c] for c in labels]).to(feats.device)
            out.append(torch.tensor(labels)[torch.cdist(feats, centers).argmin(1).cpu()])
        else:
            out.append(model(xb).argmax(1).cpu())
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long)


def accuracy(model: nn.Module, data: TensorData, means: dict[int, torch.Tensor] | None = None) -> float:
    if len(data) == 0:
        return float("nan")
    return float((predict(model, data.x, means=means) == data.y).float().mean())
