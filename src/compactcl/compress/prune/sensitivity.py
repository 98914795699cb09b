"""Sensitivity analysis (Distiller's pattern): prune one layer at a time, watch accuracy.

For each prunable layer, magnitude-prune it alone at 0..90% and record validation accuracy;
layers whose curve falls early are kept dense, flat ones are pruned hard.
:func:`ratios_for_target` turns the curves into per-layer ratios that reach a global
sparsity (pure math on the curves, tested without a model).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import torch
from torch import nn

from ...errors import CompactCLError
from ...utils.atomic import atomic_path, atomic_write_bytes
from .importance import get_importance
from .unstructured import prunable_layers, select_masks

__all__ = ["Sensitivity", "sensitivity_analysis", "ratios_for_target", "allowed_ratio", "plot_sensitivity",
           "save_sensitivity", "DEFAULT_RATIOS"]

DEFAULT_RATIOS = tuple(round(0.1 * i, 2) for i in range(10))  # 0.0 .. 0.9


@dataclass
class Sensitivity:
    """Accuracy of the model with one layer pruned at each ratio; ``baseline`` is the dense accuracy."""

    baseline: float
    ratios: list[float]
    curves: dict[str, list[float]]  # layer -> accuracy at each ratio
    params: dict[str, int]  # layer -> weights in it
    importance: str = "l1"
    version: int = 1
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: Mapping) -> "Sensitivity":
        return cls(**{k: d[k] for k in ("baseline", "ratios", "curves", "params") },
                   importance=d.get("importance", "l1"), version=d.get("version", 1), extra=d.get("extra", {}))


@torch.no_grad()
def sensitivity_analysis(model: nn.Module, evaluate: Callable[[nn.Module], float],
                         ratios: tuple[float, ...] = DEFAULT_RATIOS, importance: str = "l1",
                         include_head: bool = True) -> Sensitivity:
    """Prune each layer alone at each ratio (by ``importance``), score with ``evaluate(model)``.

    The model is restored exactly after every trial (weights are copied back, not re-trained).
    """
    fn = get_importance(importance)
    layers = prunable_layers(model, include_head)
    baseline = float(evaluate(model))
    curves: dict[str, list[float]] = {}
    for name, m in layers.items():
        original = m.weight.detach().clone()
        scores = {name: fn(original, None, None)}
        accs = []
        for r in ratios:
            if r == 0:
                accs.append(baseline)
                continue
            keep = select_masks(scores, {name: r}, "layer")[name]
            m.weight.mul_(keep.to(m.weight.dtype))
            accs.append(float(evaluate(model)))
            m.weight.copy_(original)
        curves[name] = accs
    return Sensitivity(baseline, [float(r) for r in ratios], curves,
                       {n: m.weight.numel() for n, m in layers.items()}, importance)


def allowed_ratio(ratios: list[float], accs: list[float], baseline: float, tolerance: float) -> float:
    """The largest ratio at which the accuracy drop stays within ``tolerance``, interpolating
    linearly between measured points. The curve is made monotone first (a drop seen at a lower
    ratio counts for every higher one), so noise cannot make a layer look safer deeper in."""
    drops, worst = [], 0.0
    for a in accs:
        worst = max(worst, baseline - a)
        drops.append(worst)
    best = 0.0
    for i, (r, d) in enumerate(zip(ratios, drops)):
        if d <= tolerance:
            best = r
            continue
        if i > 0 and drops[i - 1] <= tolerance:  # crosses between the previous point and this one
            r0, d0 = ratios[i - 1], drops[i - 1]
            best = r0 + (r - r0) * (tolerance - d0) / max(d - d0, 1e-12)
        break
    return best


def ratios_for_target(sens: Sensitivity, target: float, max_ratio: float | None = None,
                      iters: int = 60) -> dict[str, float]:
    """Per-layer ratios whose weighted mean is ``target`` (fraction of all prunable weights).

    One accuracy-drop tolerance is shared by all layers: each layer is pruned as far as that
    tolerance allows, and the tolerance is bisected until the total reaches ``target``; so
    sensitive layers stay dense while tolerant ones go further. Ratios never exceed the largest
    measured one (``max_ratio``): beyond it the curves say nothing.
    """
    cap = max(sens.ratios) if max_ratio is None else max_ratio
    total = sum(sens.params.values())

    def ratios_at(tol: float) -> dict[str, float]:
        return {n: min(cap, allowed_ratio(sens.ratios, c, sens.baseline, tol)) for n, c in sens.curves.items()}

    def overall(rs: dict[str, float]) -> float:
        return sum(rs[n] * sens.params[n] for n in rs) / max(total, 1)

    lo, hi = 0.0, 1.0 + max(0.0, sens.baseline)  # drops lie within [-1, 1]
    if overall(ratios_at(hi)) < target - 1e-9:
        best = overall(ratios_at(hi))
        raise CompactCLError(f"target sparsity {target:.2f} is out of reach: with every layer at its largest "
                             f"measured ratio the model is {best:.2f} sparse; measure larger ratios "
                             f"(up to 0.99) or lower the target")
    for _ in range(iters):
        mid = (lo + hi) / 2
        if overall(ratios_at(mid)) >= target:
            hi = mid
        else:
            lo = mid
    rs = ratios_at(hi)
    # The bisection lands at or just above target (a layer may jump at a measured point); scale
    # every ratio down by the same factor so the total is the target instead of overshooting.
    excess = overall(rs) - target
    if excess > 1e-6:
        scale = (target * total) / max(sum(rs[n] * sens.params[n] for n in rs), 1e-12)
        rs = {n: r * scale for n, r in rs.items()}
    return rs


def plot_sensitivity(sens: Sensitivity, path: str | os.PathLike) -> None:
    """Accuracy vs ratio, one line per layer (PNG, Agg backend: works without a display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, accs in sens.curves.items():
        ax.plot(sens.ratios, accs, marker="o", markersize=3, label=name)
    ax.axhline(sens.baseline, color="k", lw=0.8, ls="--", label="dense")
    ax.set_xlabel("fraction of the layer's weights pruned")
    ax.set_ylabel("validation accuracy")
    ax.set_title(f"Sensitivity ({sens.importance} magnitude, one layer at a time)")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def save_sensitivity(sens: Sensitivity, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write ``sensitivity.json`` and ``sensitivity.png`` into ``out_dir``; return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "sensitivity.json", "png": out / "sensitivity.png"}
    atomic_write_bytes(paths["json"], json.dumps(sens.to_json(), indent=2).encode())
    plot_sensitivity(sens, paths["png"])
    return paths
