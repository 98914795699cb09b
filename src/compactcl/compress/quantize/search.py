"""Choose bit widths on VALIDATION data (never the test split).

* :func:`search_model_bits` — one width for the whole model: the smallest whose validation
  accuracy drop stays within ``tolerance``.
* :func:`search_layer_bits` — mixed precision: measure each layer's sensitivity (validation
  drop when only that layer is quantized, per width), then greedily lower the layer whose
  next step costs the least accuracy per byte saved (its codes and the grid entries that go
  with them: a k-means codebook halves with each bit), until the model-wide drop would exceed
  ``tolerance`` or the packed artifact fits ``budget_bytes``.

Both return a :class:`SearchResult` whose ``rows`` say what was tried and why it was kept.
Bytes are real: ``size_of(model)`` is the size of the file the model ships as — pass
:func:`compactcl.export.artifact.artifact_nbytes` (the search sits below the file formats, so
the caller names the one it will write).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable

from torch import nn

from ...data.datasets import TensorData
from ...errors import CompactCLError
from ...engine.loop import accuracy
from .api import QuantConfig, config_for, quantize_, select_layers
from .methods import get_method

__all__ = ["SearchResult", "search_model_bits", "search_layer_bits", "DEFAULT_CHOICES"]

DEFAULT_CHOICES = (8, 6, 4, 3, 2)


@dataclass
class SearchResult:
    bits: dict[str, int]  # module name -> chosen bits
    config: QuantConfig  # the config that reproduces the choice (layer_bits filled in)
    val_accuracy: float
    baseline_val_accuracy: float
    bytes: int
    met: bool  # whether the tolerance / budget was met
    rows: list[dict[str, Any]] = field(default_factory=list)


SizeOf = Callable[[nn.Module], int]  # model -> bytes of the file it ships as


def _evaluate(model: nn.Module, cfg: QuantConfig, val: TensorData, size_of: SizeOf | None,
              ) -> tuple[float, int | None, nn.Module]:
    q = quantize_(copy.deepcopy(model), cfg)
    return accuracy(q, val), None if size_of is None else size_of(q), q


def search_model_bits(model: nn.Module, method: str, val: TensorData, tolerance: float = 0.01,
                      choices: tuple[int, ...] = DEFAULT_CHOICES, *, size_of: SizeOf,
                      **config_kwargs: Any) -> SearchResult:
    """Smallest uniform bit width whose validation accuracy drop is ``<= tolerance`` (a fraction)."""
    base = accuracy(model, val)
    rows, best = [], None
    for bits in sorted(choices, reverse=True):
        cfg = config_for(method, bits, **config_kwargs)
        acc, nbytes, _ = _evaluate(model, cfg, val, size_of)
        ok = base - acc <= tolerance
        rows.append({"bits": bits, "val_accuracy": acc, "drop": base - acc, "bytes": nbytes,
                     "decision": "ok" if ok else "too lossy",
                     "reason": f"drop {base - acc:.4f} {'<=' if ok else '>'} tolerance {tolerance:.4f}"})
        if ok:
            best = (bits, cfg, acc, nbytes)
    met = best is not None
    if best is None:  # nothing meets it: report the most precise width honestly
        r = rows[0]
        best = (r["bits"], config_for(method, r["bits"], **config_kwargs), r["val_accuracy"], r["bytes"])
    bits, cfg, acc, nbytes = best
    for r in rows:
        r["chosen"] = r["bits"] == bits
    names = select_layers(model, cfg)
    return SearchResult({n: bits for n in names}, cfg, acc, base, nbytes, met, rows)


def search_layer_bits(model: nn.Module, method: str, val: TensorData, tolerance: float | None = 0.01,
                      budget_bytes: int | None = None, choices: tuple[int, ...] = DEFAULT_CHOICES, *,
                      size_of: SizeOf, **config_kwargs: Any) -> SearchResult:
    """Greedy mixed precision from per-layer sensitivity, under a drop ``tolerance`` or a ``budget_bytes``.

    With a budget, layers are lowered in sensitivity-per-byte order until the artifact fits
    (accuracy is reported, not constrained); with only a tolerance, each lowering is kept
    only if the whole model's validation drop stays within it.
    """
    if tolerance is None and budget_bytes is None:
        raise CompactCLError("search_layer_bits needs a tolerance or a budget_bytes; give one")
    choices = tuple(sorted(set(choices), reverse=True))
    top = choices[0]
    names = select_layers(model, config_for(method, top, **config_kwargs))
    base = accuracy(model, val)
    numel = {n: model.get_submodule(n).weight.numel() for n in names}
    grid = get_method(method)

    def layer_bytes(n: str, bits: int) -> float:  # its codes + the part of its grid that grows with bits
        return numel[n] * bits / 8 + grid.grid_nbytes(numel[n], bits)
    rows: list[dict[str, Any]] = []

    # sensitivity[name][bits]: validation drop with only that layer quantized
    sens: dict[str, dict[int, float]] = {}
    for n in names:
        sens[n] = {}
        for b in choices:
            # accuracy only: a size_of may write a whole file (an ONNX export), and no size is used here
            acc, _, _ = _evaluate(model, config_for(method, b, include=(n,), **config_kwargs), val, None)
            sens[n][b] = base - acc
            rows.append({"phase": "sensitivity", "layer": n, "bits": b, "val_accuracy": acc, "drop": base - acc,
                         "decision": "", "reason": "only this layer quantized"})

    current = {n: top for n in names}
    frozen: set[str] = set()

    def cfg_of(bits: dict[str, int]) -> QuantConfig:
        return config_for(method, top, layer_bits=dict(bits), **config_kwargs)

    acc, nbytes, _ = _evaluate(model, cfg_of(current), val, size_of)
    rows.append({"phase": "greedy", "layer": "*", "bits": top, "val_accuracy": acc, "drop": base - acc,
                 "bytes": nbytes, "decision": "start", "reason": f"all layers at {top} bits"})
    while True:
        if budget_bytes is not None and nbytes <= budget_bytes:
            break
        cands = []
        for n in names:
            lower = [b for b in choices if b < current[n]]
            if n in frozen or not lower:
                continue
            b = lower[0]
            saved = layer_bytes(n, current[n]) - layer_bytes(n, b)
            cost = max(sens[n][b] - sens[n][current[n]], 0.0) / saved if saved > 0 else float("inf")
            cands.append((cost, sens[n][b], n, b))
        if not cands:
            break
        _, _, n, b = min(cands)
        trial = {**current, n: b}
        t_acc, t_bytes, _ = _evaluate(model, cfg_of(trial), val, size_of)
        within = tolerance is None or base - t_acc <= tolerance
        if budget_bytes is not None or within:
            current, acc, nbytes = trial, t_acc, t_bytes
            decision, reason = "lowered", (f"cheapest accuracy per byte saved (layer-alone drop {sens[n][b]:.4f}); "
                                           f"model drop {base - t_acc:.4f}")
        else:
            frozen.add(n)
            decision, reason = "kept", f"model drop would be {base - t_acc:.4f} > tolerance {tolerance:.4f}"
        rows.append({"phase": "greedy", "layer": n, "bits": b, "val_accuracy": t_acc, "drop": base - t_acc,
                     "bytes": t_bytes, "decision": decision, "reason": reason})
    met = (budget_bytes is None or nbytes <= budget_bytes) and (tolerance is None or base - acc <= tolerance)
    if not met:
        rows.append({"phase": "result", "layer": "*", "bits": min(current.values()), "val_accuracy": acc,
                     "drop": base - acc, "bytes": nbytes, "decision": "unmet",
                     "reason": (f"budget {budget_bytes} bytes not reachable with bits {choices}" if budget_bytes
                                and nbytes > budget_bytes else f"drop {base - acc:.4f} exceeds tolerance")})
    return SearchResult(dict(current), cfg_of(current), acc, base, nbytes, met, rows)
