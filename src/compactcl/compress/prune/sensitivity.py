"""Sensitivity analysis (Distiller's pattern): prune one layer at a time, watch accuracy.

For each prunable layer, magnitude-prune it alone at 0..90% and record validation accuracy;
layers whose curve falls early are kept dense, flat ones are pruned hard.
:func:`ratios_for_target` turns the curves into per-layer ratios that reach a global
sparsity and :func:`ratios_within_drop` into per-layer ratios that each stay within an accuracy
drop (pure math on the curves, tested without a model); :func:`read_sensitivity` reads a saved
analysis back (``sensitivity.json`` or ``compactcl sensitivity --json``'s output) for
``compactcl prune --ratios FILE``.
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
from ...utils.jsonfile import read_json
from .importance import get_importance
from .unstructured import prunable_layers, select_masks

__all__ = ["Sensitivity", "sensitivity_analysis", "ratios_for_target", "ratios_within_drop", "allowed_ratio",
           "check_layers", "plot_sensitivity", "save_sensitivity", "read_sensitivity", "DEFAULT_RATIOS"]

DEFAULT_RATIOS = tuple(round(0.1 * i, 2) for i in range(10))  # 0.0 .. 0.9
MAX_SENSITIVITY_BYTES = 16 * 2**20  # a sensitivity.json is kilobytes; refuse to parse anything huge


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


def ratios_within_drop(sens: Sensitivity, max_drop: float) -> dict[str, float]:
    """Per-layer ratios: each layer pruned as far as its own curve stays within ``max_drop`` of the
    dense accuracy (``0.01``: one point), never beyond the largest measured ratio."""
    return {n: allowed_ratio(sens.ratios, c, sens.baseline, max_drop) for n, c in sens.curves.items()}


def check_layers(sens: Sensitivity, weights: Mapping[str, int], source: str = "the sensitivity analysis") -> None:
    """Raise unless ``sens`` was measured on a model with these prunable layers (name -> weights)."""
    missing = sorted(set(sens.curves) - set(weights))
    other = sorted(n for n in sens.curves if n in weights and sens.params.get(n) != weights[n])
    if missing or other:
        what = (f"layers {', '.join(missing[:5])} are not in the model" if missing
                else f"layers {', '.join(other[:5])} have another number of weights than the model's")
        raise CompactCLError(f"{source} was measured on another model: {what}; run `compactcl sensitivity` on "
                             "this model and pass its sensitivity.json")


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


def read_sensitivity(path: str | os.PathLike) -> Sensitivity:
    """A saved analysis: ``sensitivity.json`` (or the folder holding it, ``compactcl sensitivity
    --out DIR``) or the JSON ``compactcl sensitivity --json`` prints. Checked field by field: a
    malformed file raises :class:`CompactCLError` naming what is wrong."""
    path = Path(path)
    if path.is_dir():
        path = path / "sensitivity.json"
    fix = "pass the sensitivity.json `compactcl sensitivity MODEL --out DIR` writes (or its --json output)"
    if not path.is_file():
        raise CompactCLError(f"{path}: no such file; {fix}")
    doc = read_json(path, MAX_SENSITIVITY_BYTES, f"not a sensitivity analysis; {fix}")

    def number(v: object) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v

    problem = None
    if not isinstance(doc, dict) or not all(k in doc for k in ("baseline", "ratios", "curves", "params")):
        problem = "it lacks baseline, ratios, curves or params"
    elif not number(doc["baseline"]):
        problem = "its baseline is not a number"
    elif not (isinstance(doc["ratios"], list) and doc["ratios"] and all(number(r) and 0 <= r < 1 for r in doc["ratios"])
              and doc["ratios"] == sorted(doc["ratios"])):
        problem = "its ratios are not increasing numbers in [0, 1)"
    elif not (isinstance(doc["curves"], dict) and doc["curves"] and all(
            isinstance(c, list) and len(c) == len(doc["ratios"]) and all(map(number, c)) for c in doc["curves"].values())):
        problem = "its curves are not one accuracy per ratio for each layer"
    elif not (isinstance(doc["params"], dict) and set(doc["params"]) >= set(doc["curves"]) and all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in doc["params"].values())):
        problem = "its params do not give a positive weight count for each layer"
    elif not isinstance(doc.get("extra", {}), dict) or not isinstance(doc.get("importance", "l1"), str):
        problem = "its extra or importance field has the wrong type"
    if problem:
        raise CompactCLError(f"{path} is not a sensitivity analysis: {problem}; {fix}")
    sens = Sensitivity.from_json(doc)
    target = sens.extra.get("target")
    if target is not None and not (number(target) and 0 <= target < 1):
        raise CompactCLError(f"{path} is not a sensitivity analysis: its extra.target is not in [0, 1); {fix}")
    return sens


def save_sensitivity(sens: Sensitivity, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write ``sensitivity.json`` and ``sensitivity.png`` into ``out_dir``; return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "sensitivity.json", "png": out / "sensitivity.png"}
    atomic_write_bytes(paths["json"], json.dumps(sens.to_json(), indent=2).encode())
    plot_sensitivity(sens, paths["png"])
    return paths
