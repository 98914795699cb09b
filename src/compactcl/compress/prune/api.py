"""One verb, many configs: ``prune_(model, MagnitudeConfig(0.9), data)``.

Each config type maps to one handler in ``PRUNERS``; adding a method never touches
:func:`prune_`. Every method is followed by :func:`finetune_` (masks, if any, stay on during
fine-tuning) and :func:`finalize_` (masks baked in: a plain model to save or export).

>>> model = IncrementalNet("mlp", 1, 8, 10)                       # doctest: +SKIP
>>> result = prune_(model, MagnitudeConfig(ratio=0.9), data)      # doctest: +SKIP
>>> finetune_(model, data.train, TrainConfig(epochs=2)); finalize_(model)  # doctest: +SKIP
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace, fields
from typing import Any, Callable

import torch
from torch import nn

from ...data.datasets import TensorData
from ...errors import CompactCLError
from ...engine.losses import ce_loss
from ...engine.loop import LossFn, TrainConfig, accuracy, train
from .importance import IMPORTANCES
from .sensitivity import (DEFAULT_RATIOS, Sensitivity, check_layers, ratios_for_target, ratios_within_drop,
                          sensitivity_analysis)
from .structured import prune_channels_
from .unstructured import (agp_sparsity, apply_masks_, layer_scores, magnitude_prune_, prunable_layers,
                           select_masks, strip_masks_, with_l1)

__all__ = ["MagnitudeConfig", "L1Config", "SensitivityConfig", "StructuredConfig", "PruneData", "PruneResult",
           "PRUNERS", "register_pruner", "list_methods", "config_for", "prune_", "finetune_", "finalize_",
           "accumulate_grads", "cross_entropy"]


cross_entropy = ce_loss  # the default fine-tuning loss (kept under this name: tests and scripts use it)


def _ratio_ok(ratio: float, what: str) -> None:
    if not 0.0 <= ratio < 1.0:
        raise CompactCLError(f"{what}.ratio must be in [0, 1), got {ratio}")


def _importance_ok(name: str, what: str) -> None:
    if name not in IMPORTANCES:
        raise CompactCLError(f"{what}.importance {name!r} is unknown; choose one of {', '.join(sorted(IMPORTANCES))}")


@dataclass
class MagnitudeConfig:
    """Zero the ``ratio`` lowest-importance weights (global or per layer); ``schedule="agp"``
    reaches ``ratio`` gradually over ``agp_steps`` prune-then-train rounds (Zhu & Gupta)."""

    ratio: float = 0.9
    scope: str = "global"  # or "layer"
    importance: str = "l1"
    include_head: bool = True
    schedule: str = "oneshot"  # or "agp"
    agp_steps: int = 4
    version: int = 1

    def __post_init__(self) -> None:
        _ratio_ok(self.ratio, "magnitude")
        _importance_ok(self.importance, "magnitude")
        if self.scope not in ("global", "layer"):
            raise CompactCLError(f"magnitude.scope must be 'global' or 'layer', got {self.scope!r}")
        if self.schedule not in ("oneshot", "agp"):
            raise CompactCLError(f"magnitude.schedule must be 'oneshot' or 'agp', got {self.schedule!r}")
        if self.agp_steps < 1:
            raise CompactCLError(f"magnitude.agp_steps must be >= 1, got {self.agp_steps}")


@dataclass
class L1Config:
    """Train with ``strength`` x sum|w| added to the loss (weights drift to zero), then magnitude-prune."""

    ratio: float = 0.9
    strength: float = 1e-4
    epochs: int = 2
    scope: str = "global"
    include_head: bool = True
    version: int = 1

    def __post_init__(self) -> None:
        _ratio_ok(self.ratio, "l1")
        if self.strength < 0 or self.epochs < 0:
            raise CompactCLError(f"l1.strength and l1.epochs must be >= 0, got {self.strength}, {self.epochs}")


@dataclass
class SensitivityConfig:
    """Measure each layer's sensitivity, then prune per layer to an overall sparsity ``ratio`` or,
    with ``max_drop``, each layer as far as its own curve stays within that accuracy drop."""

    ratio: float = 0.8
    ratios: tuple[float, ...] = DEFAULT_RATIOS
    importance: str = "l1"
    include_head: bool = True
    sensitivity: Sensitivity | None = None  # reuse a saved analysis instead of measuring again
    max_drop: float | None = None  # per-layer accuracy drop (0.01 = one point); ``ratio`` is then not used
    version: int = 1

    def __post_init__(self) -> None:
        _ratio_ok(self.ratio, "sensitivity")
        _importance_ok(self.importance, "sensitivity")
        if self.max_drop is not None and not 0.0 <= self.max_drop <= 1.0:
            raise CompactCLError(f"sensitivity.max_drop must be an accuracy drop in [0, 1] (0.01 = one point), "
                                 f"got {self.max_drop}")


@dataclass
class StructuredConfig:
    """Remove ``ratio`` of the channels (physically); ``round_to=8`` keeps counts multiples of 8."""

    ratio: float = 0.3
    importance: str = "l2"
    round_to: int | None = None
    round_mode: str = "nearest"  # or "floor" (Torch-Pruning's rule: never keep more than 1 - ratio)
    global_pruning: bool = False
    version: int = 1

    def __post_init__(self) -> None:
        _ratio_ok(self.ratio, "structured")
        _importance_ok(self.importance, "structured")
        if self.round_to is not None and self.round_to < 1:
            raise CompactCLError(f"structured.round_to must be a positive integer (e.g. 8), got {self.round_to}")
        if self.round_mode not in ("nearest", "floor"):
            raise CompactCLError(f"structured.round_mode must be 'nearest' or 'floor', got {self.round_mode!r}")


PruneConfig = MagnitudeConfig | L1Config | SensitivityConfig | StructuredConfig


@dataclass
class PruneData:
    """What the methods may need: training data (L1, AGP, Taylor), validation data (sensitivity),
    input shape (C, H, W) (structural tracing), and how to train."""

    input_shape: tuple[int, int, int]
    train: TensorData | None = None
    val: TensorData | None = None
    train_cfg: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=1, lr=0.01))
    loss_fn: LossFn = cross_entropy

    def need(self, what: str, method: str) -> TensorData:
        data = getattr(self, what)
        if data is None or len(data) == 0:
            raise CompactCLError(f"{method} pruning needs {what} data; pass PruneData({what}=...)")
        return data


@dataclass
class PruneResult:
    method: str
    config: dict[str, Any]
    info: dict[str, Any] = field(default_factory=dict)


Handler = Callable[[nn.Module, Any, PruneData], dict[str, Any]]
PRUNERS: dict[type, tuple[str, Handler]] = {}


def register_pruner(config_type: type, name: str) -> Callable[[Handler], Handler]:
    def wrap(fn: Handler) -> Handler:
        PRUNERS[config_type] = (name, fn)
        return fn

    return wrap


def list_methods() -> list[str]:
    return sorted(name for name, _ in PRUNERS.values())


def config_for(method: str, ratio: float, **kwargs: Any) -> PruneConfig:
    """The config of method ``method`` (the CLI's --method) with ``ratio`` and options."""
    for cfg_type, (name, _) in PRUNERS.items():
        if name == method:
            unknown = sorted(set(kwargs) - {f.name for f in fields(cfg_type)})
            if unknown:
                raise CompactCLError(f"pruning method {method!r} does not take {', '.join(unknown)}; drop it or "
                                     f"pick a method that does")
            return cfg_type(ratio=ratio, **kwargs)
    raise CompactCLError(f"unknown pruning method {method!r}; choose one of {', '.join(list_methods())}")


def prune_(model: nn.Module, config: PruneConfig, data: PruneData) -> PruneResult:
    """Prune ``model`` in place by ``config``'s method; return what was done (ratios, masks kept)."""
    if type(config) not in PRUNERS:
        raise CompactCLError(f"no pruner for {type(config).__name__}; use one of "
                             f"{', '.join(t.__name__ for t in PRUNERS)}")
    name, handler = PRUNERS[type(config)]
    cfg_json = {k: v for k, v in asdict(config).items() if k != "sensitivity"}
    return PruneResult(name, cfg_json, handler(model, config, data))


def accumulate_grads(model: nn.Module, data: TensorData, loss_fn: LossFn = cross_entropy,
                     batches: int = 8, batch_size: int = 64) -> None:
    """Fill ``.grad`` with the loss gradient summed over a few batches (for Taylor scores)."""
    model.eval()  # batch norm in inference mode: the gradient of the deployed function
    model.zero_grad(set_to_none=True)
    device = next(model.parameters()).device
    for i in range(0, min(len(data), batches * batch_size), batch_size):
        loss_fn(model, data.batch(slice(i, i + batch_size), device), data.y[i: i + batch_size].to(device)).backward()


def _grads_if_needed(model: nn.Module, importance: str, data: PruneData, method: str) -> None:
    from .importance import NEEDS_GRAD

    if importance in NEEDS_GRAD:
        accumulate_grads(model, data.need("train", method), data.loss_fn)


@register_pruner(MagnitudeConfig, "magnitude")
def _magnitude(model: nn.Module, cfg: MagnitudeConfig, data: PruneData) -> dict[str, Any]:
    if cfg.schedule == "oneshot":
        _grads_if_needed(model, cfg.importance, data, "magnitude")
        magnitude_prune_(model, cfg.ratio, cfg.scope, cfg.importance, cfg.include_head)
        model.zero_grad(set_to_none=True)
        return {"schedule": [cfg.ratio]}
    train_data = data.need("train", "gradual (AGP)")
    steps_per_epoch = max(1, math.ceil(len(train_data) / data.train_cfg.batch_size))
    total = data.train_cfg.iterations or data.train_cfg.epochs * steps_per_epoch
    chunk = max(1, total // cfg.agp_steps)
    schedule = []
    for k in range(1, cfg.agp_steps + 1):
        s = agp_sparsity(k, cfg.agp_steps, cfg.ratio)
        schedule.append(s)
        _grads_if_needed(model, cfg.importance, data, "magnitude")
        magnitude_prune_(model, s, cfg.scope, cfg.importance, cfg.include_head)
        model.zero_grad(set_to_none=True)
        train(model, train_data, data.loss_fn, replace(data.train_cfg, iterations=chunk, seed=data.train_cfg.seed + k),
              desc=f"agp {k}/{cfg.agp_steps}")
    return {"schedule": schedule}


@register_pruner(L1Config, "l1")
def _l1(model: nn.Module, cfg: L1Config, data: PruneData) -> dict[str, Any]:
    train_data = data.need("train", "l1")
    history = train(model, train_data, with_l1(data.loss_fn, cfg.strength, cfg.include_head),
                    replace(data.train_cfg, epochs=cfg.epochs, iterations=None), desc="l1 train")
    magnitude_prune_(model, cfg.ratio, cfg.scope, "l1", cfg.include_head)
    return {"l1_loss": history}


@register_pruner(SensitivityConfig, "sensitivity")
def _sensitivity(model: nn.Module, cfg: SensitivityConfig, data: PruneData) -> dict[str, Any]:
    sens = cfg.sensitivity
    if sens is None:
        val = data.need("val", "sensitivity")
        sens = sensitivity_analysis(model, lambda m: accuracy(m, val), cfg.ratios, cfg.importance, cfg.include_head)
    else:
        check_layers(sens, {n: m.weight.numel() for n, m in prunable_layers(model, cfg.include_head).items()})
    ratios = ratios_for_target(sens, cfg.ratio) if cfg.max_drop is None else ratios_within_drop(sens, cfg.max_drop)
    scores = layer_scores(model, sens.importance, cfg.include_head, list(ratios))
    apply_masks_(model, select_masks(scores, ratios, "layer"))
    return {"layer_ratios": ratios, "sensitivity": sens.to_json()}


@register_pruner(StructuredConfig, "structured")
def _structured(model: nn.Module, cfg: StructuredConfig, data: PruneData) -> dict[str, Any]:
    _grads_if_needed(model, cfg.importance, data, "structured")
    device = next(model.parameters()).device
    prune_channels_(model, cfg.ratio, torch.zeros(1, *data.input_shape, device=device), cfg.importance,
                    cfg.round_to, cfg.global_pruning, round_mode=cfg.round_mode)
    model.zero_grad(set_to_none=True)
    return {}


def finetune_(model: nn.Module, train_data: TensorData, cfg: TrainConfig, loss_fn: LossFn = cross_entropy) -> list[float]:
    """Recover accuracy after pruning with the shared training loop; masks stay applied (the
    parametrization zeroes pruned weights on every forward, whatever the optimiser does)."""
    return train(model, train_data, loss_fn, cfg, desc="finetune")


def finalize_(model: nn.Module) -> nn.Module:
    """Bake masks into the weights and drop the parametrizations: a plain model with zeros."""
    return strip_masks_(model)
