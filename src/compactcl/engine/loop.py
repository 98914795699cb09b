"""The thin training loop every learner shares: in-memory tensors, seeded shuffles, one optimiser.

Images stay as stored (uint8 pixels for datasets that have them): each batch is gathered,
moved to the run's device and normalised there (:meth:`TensorData.batch`), then augmented
there when asked (seeded, vectorised: :func:`~compactcl.data.datasets.augment_batch`).

Scale and speed (issue 8), all off the hot path unless asked for:

- **Several processes** (``torchrun --nproc_per_node=N``, see :mod:`compactcl.utils.distributed`):
  the loss closure runs *inside* PyTorch's ``DistributedDataParallel`` forward, so every learner
  works unchanged whatever it calls (``model(x)``, DER's ``model.forward_train(x)``, a distiller's
  student taps). Every rank draws the same seeded permutation and the same global batches
  (``batch_size`` is the *global* batch); rank r trains on ``batch[r::world]`` and its loss is
  weighted by ``world * n_r / n_batch``, so DDP's gradient average equals the single-process
  gradient of the global batch exactly — also for a last batch that does not split evenly.
  (Batch-norm statistics stay per rank, as usual with DDP: models with batch norm agree with
  one process within a tolerance, models without it to float rounding.)
- **CUDA**: the whole training set (as stored: 1 byte a value for pixels) is copied to the GPU
  once when it fits (``data_on_device``), otherwise batches go through pinned memory with
  non-blocking copies;
  ``bf16`` autocasts forward + loss, ``channels_last`` (default: on for conv models on CUDA)
  switches memory format, ``compile`` runs the loss step through ``torch.compile``.
- **No per-step host sync on CUDA**: losses are summed on the device; the NaN/inf check reads
  the sum every ``nan_check_every`` steps (and at each epoch end) and names the step range.
  On one CPU process (no sync cost) the check stays per step, before the update.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ..data.datasets import EVAL_BATCH, TensorData, image_batches
from ..errors import CompactCLError
from ..utils import distributed as dist

__all__ = ["TrainConfig", "TrainHooks", "train", "model_logits", "predict", "accuracy", "LossFn"]

# loss(model, x, y) -> scalar; closes over whatever the learner needs (old model, memory)
LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class TrainHooks:
    """Where a learner or a logger steps into the loop, without copying it.

    ``after_backward(model, step)``: gradients are in ``.grad`` and the optimizer has not stepped
    yet — gradient surgery (masking frozen rows, clipping, FOSTER/MEMO-style rescaling).
    ``end_epoch(model, epoch, mean_loss)``: after each epoch (logging, weight aligning, early stops).
    """

    after_backward: Callable[[nn.Module, int], None] | None = None
    end_epoch: Callable[[nn.Module, int, float], None] | None = None

    def then(self, other: "TrainHooks | None") -> "TrainHooks":
        """Both sets of hooks, ``self`` first (a learner's own hooks, then the run's logging)."""
        if other is None:
            return self
        return TrainHooks(_chain(self.after_backward, other.after_backward), _chain(self.end_epoch, other.end_epoch))


def _chain(first: Callable | None, second: Callable | None) -> Callable | None:
    if first is None or second is None:
        return first or second
    return lambda *args: (first(*args), second(*args))[-1]


@dataclass
class TrainConfig:
    epochs: int = 10
    iterations: int | None = None  # if set, overrides epochs (the Split-MNIST protocol counts iterations)
    batch_size: int = 64  # the global batch: under torchrun each rank takes batch_size // world of it
    lr: float = 0.05
    optimizer: str = "sgd"  # or "adam"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"  # or "constant", or "multistep" (lr x gamma at each of ``milestones``)
    milestones: tuple[int, ...] = ()  # epochs at which "multistep" multiplies the lr by gamma
    gamma: float = 0.1
    device: str = "cpu"
    seed: int = 0
    progress: bool = False
    augment: bool = False  # random crop + flip of training batches (data.augment_batch)
    augment_padding: int = 2  # the crop's zero padding (PyCIL and Mammoth pad CIFAR by 4)
    # speed options (CUDA first; each also runs on CPU)
    bf16: bool = False  # autocast forward + loss to bfloat16 (fast on recent GPUs; on most CPUs slower)
    channels_last: bool | None = None  # None: on for conv models on CUDA, off on CPU
    compile: bool | str = False  # torch.compile the loss step; a string names the backend ("inductor", "eager")
    nan_check_every: int = 0  # 0: every step on one CPU process, every 50 steps on CUDA / several processes
    data_on_device: bool | None = None  # None: copy the whole set to the GPU when it fits in half its free memory
    # The first task's own schedule (PyCIL trains task 0 longer, with other milestones and decay);
    # None: the same as every task. Learners pick it with :meth:`for_task`.
    first: "TrainConfig | None" = None

    def for_task(self, index: int) -> "TrainConfig":
        """The configuration task ``index`` trains with: ``first`` for task 0 when set."""
        return self.first if index == 0 and self.first is not None else self


def _optimizer(params: list[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    raise CompactCLError(f"unknown optimizer {cfg.optimizer!r}; use 'sgd' or 'adam'")


def _scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig, total: int,
               steps_per_epoch: int) -> torch.optim.lr_scheduler.LRScheduler | None:
    """Stepped once per optimizer step: cosine over all steps, or multistep at epoch milestones."""
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, total)
    if cfg.schedule == "multistep":
        steps = [m * steps_per_epoch for m in cfg.milestones]  # epoch e ends after e * steps_per_epoch steps
        return torch.optim.lr_scheduler.MultiStepLR(opt, steps, gamma=cfg.gamma)
    if cfg.schedule == "constant":
        return None
    raise CompactCLError(f"unknown schedule {cfg.schedule!r}; use 'cosine', 'multistep' or 'constant'")


class _LossStep(nn.Module):
    """``forward(x, y) = loss_fn(model, x, y)``: the unit DDP and torch.compile wrap.

    Running the whole closure as the forward means DDP sees every use of the model's
    parameters, however the closure reaches them (``model(x)``, ``forward_train``, hooks).
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(self.model, x, y)


def _has_conv(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def _fits_on_device(data: TensorData, device: torch.device) -> bool:
    free, _ = torch.cuda.mem_get_info(device)
    return data.nbytes + data.y.numel() * data.y.element_size() <= free // 2


def train(model: nn.Module, data: TensorData, loss_fn: LossFn, cfg: TrainConfig, desc: str = "train",
          hooks: TrainHooks | None = None) -> list[float]:
    """Train ``model`` on ``data`` in place; return the mean loss of each epoch.

    Raises :class:`CompactCLError` naming the epoch and step (or step range, when the check is
    batched) if the loss becomes NaN or infinite.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params or len(data) == 0:
        return []
    device = torch.device(dist.resolve_device(cfg.device))
    cuda = device.type == "cuda"
    world, rank = (dist.world_size(), dist.rank()) if dist.is_distributed() else (1, 0)
    channels_last = (cuda if cfg.channels_last is None else cfg.channels_last) and len(data.shape) == 4 \
        and _has_conv(model)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    opt = _optimizer(params, cfg)
    steps_per_epoch = max(1, math.ceil(len(data) / cfg.batch_size))
    total = cfg.iterations or cfg.epochs * steps_per_epoch
    epochs = math.ceil(total / steps_per_epoch)
    sched = _scheduler(opt, cfg, total, steps_per_epoch)
    gen = torch.Generator().manual_seed(cfg.seed)
    aug_gen = torch.Generator().manual_seed(cfg.seed + 1)  # its own stream: augmenting keeps the shuffle
    on_device = not cuda or (cfg.data_on_device if cfg.data_on_device is not None else _fits_on_device(data, device))
    # too big for the GPU: batches are gathered on the host, pinned, copied without blocking
    source = data.to(device) if on_device else data
    y_all = source.y

    step_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    if world > 1 or cfg.compile:
        unit: nn.Module = _LossStep(model, loss_fn)
        if world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            # static_graph: the set of parameters a closure uses is fixed within one train() call
            # (DER's frozen branches have requires_grad False; an unused trainable parameter is allowed).
            unit = DDP(unit, device_ids=[device.index if device.index is not None else torch.cuda.current_device()]
                       if cuda else None, static_graph=True)
        if cfg.compile:
            backend = cfg.compile if isinstance(cfg.compile, str) else "inductor"
            unit = torch.compile(unit, backend=backend)
        step_fn = unit
    else:
        def step_fn(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return loss_fn(model, x, y)

    every = cfg.nan_check_every or (1 if device.type == "cpu" and world == 1 else 50)
    per_step_check = every == 1 and world == 1  # checked before the update, the model stays good
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if cfg.bf16 else None
    acc_dtype = torch.float64 if device.type in ("cpu", "cuda") else torch.float32
    model.train()
    history: list[float] = []
    step = 0
    bar = _progress(epochs, desc, cfg.progress and dist.is_main())
    try:
        for epoch in range(epochs):
            order = torch.randperm(len(data), generator=gen)
            if on_device:
                order = order.to(device, non_blocking=True)
            running = torch.zeros((), dtype=acc_dtype, device=device)
            window = torch.zeros((), dtype=acc_dtype, device=device)
            window_start, count = step, 0
            for i in range(0, len(data), cfg.batch_size):
                if step >= total:
                    break
                idx = order[i: i + cfg.batch_size]
                n_global = len(idx)
                weight = 1.0
                if world > 1:
                    local = idx[rank::world]
                    weight = world * len(local) / n_global
                    if len(local) == 0:  # a last batch smaller than the world: take part, contribute nothing
                        local = idx[:1]
                    idx = local
                n = len(idx) if weight else 0
                xb = source.batch(idx, device, non_blocking=not on_device)
                yb = y_all[idx] if on_device else y_all[idx].pin_memory().to(device, non_blocking=True)
                if channels_last:
                    xb = xb.contiguous(memory_format=torch.channels_last)
                if cfg.augment:
                    from ..data.datasets import augment_batch

                    xb = augment_batch(xb, aug_gen, padding=cfg.augment_padding)
                if autocast is not None:
                    with autocast:
                        loss = step_fn(xb, yb)
                else:
                    loss = step_fn(xb, yb)
                if per_step_check and not torch.isfinite(loss):
                    raise CompactCLError(f"{desc}: loss became {loss.item()} at epoch {epoch}, step {step}; "
                                         "lower the learning rate (learner.lr) — the last good checkpoint is kept")
                opt.zero_grad(set_to_none=True)
                (loss * weight if weight != 1.0 else loss).backward()
                if hooks is not None and hooks.after_backward is not None:
                    hooks.after_backward(model, step)
                opt.step()
                if sched is not None:
                    sched.step()
                lv = loss.detach().to(acc_dtype)
                running += lv * n
                count += n
                step += 1
                if not per_step_check:
                    window += lv * (1 if n else 0)
                    last = step >= total or i + cfg.batch_size >= len(data)
                    if step % every == 0 or last:
                        _check_window(window, desc, epoch, window_start, step - 1)
                        window.zero_()
                        window_start = step
            history.append(_epoch_mean(running, count))
            if hooks is not None and hooks.end_epoch is not None:
                hooks.end_epoch(model, epoch, history[-1])
            if bar is not None:
                bar.set_postfix(loss=f"{history[-1]:.3f}")
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        if channels_last:  # checkpoints (safetensors) want contiguous tensors
            model.to(memory_format=torch.contiguous_format)
    dist.broadcast_module(model)  # batch-norm statistics differ per rank: every rank keeps rank 0's model
    model.eval()
    return history


def _check_window(window: torch.Tensor, desc: str, epoch: int, first: int, last: int) -> None:
    """One host sync for a window of steps; under DDP the sum is reduced so every rank raises together."""
    total = dist.all_reduce_sum(window.clone()) if dist.is_distributed() else window
    if not bool(torch.isfinite(total)):
        where = f"step {last}" if first == last else f"one of steps {first}..{last}"
        raise CompactCLError(f"{desc}: loss became {float(total)} at epoch {epoch}, {where}; "
                             "lower the learning rate (learner.lr) — the last good checkpoint is kept")


def _epoch_mean(running: torch.Tensor, count: int) -> float:
    if dist.is_distributed():
        both = torch.stack([running, torch.tensor(float(count), dtype=running.dtype, device=running.device)])
        dist.all_reduce_sum(both)
        running, count = both[0], int(both[1])
    return float(running) / max(count, 1)


def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    from ..utils.console import on_terminal

    return tqdm(total=total, desc=desc, unit="epoch", leave=False, disable=not on_terminal())


@torch.no_grad()
def model_logits(model: nn.Module, x: torch.Tensor | TensorData, batch_size: int = EVAL_BATCH) -> torch.Tensor:
    """Float logits (N, K) on the CPU of float images or a data set, batch by batch, in eval mode
    on the model's device (the CPU for a model without parameters); the model's mode is restored."""
    was_training = model.training
    model.eval()
    param = next(model.parameters(), None)
    device = param.device if param is not None else "cpu"
    out = torch.cat([model(xb).float().cpu() for xb in image_batches(x, batch_size, device)])
    model.train(was_training)
    return out


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor | TensorData, batch_size: int = EVAL_BATCH,
            means: dict[int, torch.Tensor] | None = None) -> torch.Tensor:
    """Predicted labels (N,) of float images or a data set, batch by batch: argmax of the logits,
    or the nearest class mean when ``means`` is given."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    for xb in image_batches(x, batch_size, device):
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
    return float((predict(model, data, means=means) == data.y).float().mean())
