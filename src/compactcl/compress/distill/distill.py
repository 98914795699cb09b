"""``distill(teacher, student, data, config) -> student``: train a small model on a big one's soft targets.

Why a separate verb: the working model of a growing learner (DER) gets bigger every task; the
deployed model must stay a fixed size, so the grown net is distilled into a fixed student
(FOSTER-style compression) before pruning and quantization.

The loss is ``alpha * KD_T + (1 - alpha) * CE + hint_weight * sum(FitNets hints)``; the
training loop is the one every learner uses (:func:`compactcl.engine.loop.train`).

>>> from compactcl.data import load_dataset
>>> from compactcl.models import IncrementalNet
>>> d = load_dataset("digits")
>>> teacher = IncrementalNet("mlp", 1, 8, 10)
>>> student = IncrementalNet("mlp", 1, 8, 10, {"hidden": [16]})
>>> student = distill(teacher, student, d.train, DistillConfig(epochs=1))
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from torch import nn

from ...data.datasets import EVAL_BATCH, TensorData, image_batches
from ...errors import CompactCLError
from ...engine.loop import TrainConfig, train
from ...engine.losses import hint_loss, kd_ce_loss, make_adapter

__all__ = ["DistillConfig", "distill", "FEATURES"]

FEATURES = "features"  # hint name meaning ``model.features(x)``, the penultimate (B, D) vector
_MAX_CACHE_BYTES = 1 << 30  # above this, teacher outputs are recomputed per batch instead of cached


@dataclass
class DistillConfig:
    """How to distil. Validated on construction; ``to_dict``/``from_dict`` round-trip through JSON.

    ``hints`` lists FitNets pairs ``(student_layer, teacher_layer)``; a bare name means the same
    layer in both; ``"features"`` is ``model.features(x)``, any other name a module path from
    ``named_modules()`` (e.g. ``"backbone.body.3"``).

    >>> DistillConfig(temperature=4, alpha=0.9, hints=["features"]).hints
    (('features', 'features'),)
    """

    temperature: float = 4.0
    alpha: float = 0.9  # weight of the soft-target term; 1 - alpha goes to the hard labels
    epochs: int = 10
    iterations: int | None = None  # if set, overrides epochs
    lr: float = 0.05
    optimizer: str = "sgd"  # or "adam"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"  # or "constant"
    batch_size: int = 64
    hints: tuple[tuple[str, str], ...] = ()
    hint_weight: float = 1.0
    cache_teacher: bool = True  # no augmentation in the loop, so teacher outputs are fixed: compute once
    device: str = "cpu"
    seed: int = 0
    progress: bool = False
    version: int = field(default=1)

    def __post_init__(self) -> None:
        self.hints = tuple((h, h) if isinstance(h, str) else tuple(h) for h in self.hints)  # type: ignore[misc]
        checks = [
            (self.temperature > 0, f"temperature must be > 0 (typical 2-8), got {self.temperature}"),
            (0.0 <= self.alpha <= 1.0, f"alpha must be in [0, 1] (0 = labels only, 1 = teacher only), got {self.alpha}"),
            (self.epochs >= 1 or (self.iterations or 0) >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.iterations is None or self.iterations >= 1, f"iterations must be >= 1 or null, got {self.iterations}"),
            (self.lr > 0, f"lr must be > 0, got {self.lr}"),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.optimizer in ("sgd", "adam"), f"optimizer must be 'sgd' or 'adam', got {self.optimizer!r}"),
            (self.schedule in ("cosine", "constant"), f"schedule must be 'cosine' or 'constant', got {self.schedule!r}"),
            (self.hint_weight >= 0, f"hint_weight must be >= 0, got {self.hint_weight}"),
            (all(len(h) == 2 and all(isinstance(n, str) for n in h) for h in self.hints),
             f"hints must be layer names or (student_layer, teacher_layer) pairs, got {self.hints!r}"),
            (self.version == 1, f"DistillConfig version {self.version} is not supported by this compactcl (1)"),
        ]
        for ok, message in checks:
            if not ok:
                raise CompactCLError(f"distill config: {message}")

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["hints"] = [list(h) for h in self.hints]
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DistillConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise CompactCLError(f"distill config: unknown key(s) {unknown}; known keys are {sorted(known)}")
        return cls(**d)

    def train_config(self) -> TrainConfig:
        return TrainConfig(epochs=self.epochs, iterations=self.iterations, batch_size=self.batch_size, lr=self.lr,
                           optimizer=self.optimizer, momentum=self.momentum, weight_decay=self.weight_decay,
                           schedule=self.schedule, device=self.device, seed=self.seed, progress=self.progress)


class _OutputsWithHints:
    """Runs a model once and returns its logits plus the named intermediate outputs."""

    def __init__(self, model: nn.Module, names: list[str], role: str):
        self.model, self.names = model, names
        self._store: dict[str, torch.Tensor] = {}
        self._handles = []
        modules = dict(model.named_modules())
        if FEATURES in names and not (hasattr(model, "features") and hasattr(model, "head")):
            raise CompactCLError(f"{role} has no features()/head, so hint {FEATURES!r} is unavailable; "
                                 "name a module from named_modules() instead")
        for name in names:
            if name == FEATURES:
                continue
            if name not in modules:
                raise CompactCLError(f"{role} has no module {name!r} for a hint; some of its modules: "
                                     f"{[n for n in modules if n][:12]}")
            self._handles.append(modules[name].register_forward_hook(partial(self._save, name)))

    def _save(self, name: str, module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        self._store[name] = output

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        self._store = {}
        if FEATURES in self.names:
            feats = self.model.features(x)  # (B, D)
            logits = self.model.head(feats)  # (B, K)
            self._store[FEATURES] = feats
        else:
            logits = self.model(x)
        return logits, [self._store[n] for n in self.names]

    def close(self) -> None:
        for h in self._handles:
            h.remove()


class _StudentWithAdapters(nn.Module):
    """Student + hint adapters in one module, so the shared loop optimises both."""

    def __init__(self, student: nn.Module, adapters: list[nn.Module]):
        super().__init__()
        self.student = student
        self.adapters = nn.ModuleList(adapters)


@torch.no_grad()
def _teacher_outputs(tap: _OutputsWithHints, data: TensorData, device: torch.device | str,
                     batch_size: int = EVAL_BATCH) -> tuple[torch.Tensor, list[torch.Tensor]]:
    logits, hints = [], []
    for xb in image_batches(data, batch_size, device):
        lg, hs = tap(xb)
        logits.append(lg.float())
        hints.append([h.float() for h in hs])
    return torch.cat(logits), [torch.cat(col) for col in zip(*hints)] if hints and hints[0] else []


def distill(teacher: nn.Module, student: nn.Module, data: TensorData, config: DistillConfig | None = None) -> nn.Module:
    """Train ``student`` in place on ``data`` with ``teacher``'s soft targets; return it (eval mode).

    ``teacher`` is any module returning logits (an ``IncrementalNet``, a grown ``DERNet``, a
    plain ``nn.Sequential``); it runs in eval mode without gradients and its mode is restored
    afterwards. ``student`` must output as many classes as the teacher. Hint layers get a
    learned adapter (``nn.Linear`` or 1x1 conv) that is discarded after training.

    >>> cfg = DistillConfig(temperature=4.0, alpha=0.9, epochs=20, hints=["features"])
    >>> # student = distill(teacher, create_student("narrow-cnn", teacher), task.train, cfg)
    """
    cfg = config or DistillConfig()
    if len(data) == 0:
        raise CompactCLError("distill: the training data is empty; pass the task's training split")
    device = torch.device(cfg.device)
    teacher_was_training = teacher.training
    teacher.to(device).eval()
    student.to(device)
    s_tap = _OutputsWithHints(student, [s for s, _ in cfg.hints], "student")
    t_tap = _OutputsWithHints(teacher, [t for _, t in cfg.hints], "teacher")
    try:
        # One probe batch: check the class counts and size the adapters before training starts.
        probe = data.batch(slice(0, min(len(data), 2)), device)
        student.eval()
        with torch.no_grad():
            t_logits, t_hints = t_tap(probe)
            s_logits, s_hints = s_tap(probe)
        if t_logits.shape[1] != s_logits.shape[1]:
            raise CompactCLError(f"distill: teacher has {t_logits.shape[1]} outputs, student {s_logits.shape[1]}; "
                                 "build the student with the teacher's num_classes (create_student does)")
        with torch.random.fork_rng(devices=[]):  # seeded adapters without touching the caller's RNG
            torch.manual_seed(cfg.seed)
            adapters = [make_adapter(s.shape, t.shape).to(device) for s, t in zip(s_hints, t_hints)]
        pupil = _StudentWithAdapters(student, adapters)

        n_hint_values = sum(t[0].numel() for t in t_hints)
        cache = cfg.cache_teacher and len(data) * (t_logits.shape[1] + n_hint_values) * 4 <= _MAX_CACHE_BYTES
        if cache:
            cached_logits, cached_hints = _teacher_outputs(t_tap, data, device)
            labels = data.y.to(device)
            # The loop hands the loss (x, index): the index looks up the label and the teacher's outputs.
            train_data = data.relabel(torch.arange(len(data)))
        else:
            train_data = data

        def loss_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            if cache:
                idx, y = y, labels[y]
                tl, th = cached_logits[idx], [h[idx] for h in cached_hints]
            else:
                with torch.no_grad():
                    tl, th = t_tap(x)
            sl, sh = s_tap(x)
            out = kd_ce_loss(sl, tl, y, cfg.temperature, cfg.alpha)
            if cfg.hint_weight > 0:
                for adapter, s, t in zip(model.adapters, sh, th):
                    out = out + cfg.hint_weight * hint_loss(s, t, adapter)
            return out

        train(pupil, train_data, loss_fn, cfg.train_config(), desc="distill")
    finally:
        s_tap.close()
        t_tap.close()
        teacher.train(teacher_was_training)
    return student.eval()
