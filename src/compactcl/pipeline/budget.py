"""Learners compared at equal *total* memory (MEMO, Zhou et al., ICLR 2023, "A Model or 603 Exemplars").

A total byte budget buys the model first and the rest in exemplars (``memory.bytes``):

- the model's bytes are its fp32 working model after the LAST task — for a growing learner (DER,
  MEMO) every branch it will have by then, for a fixed one (iCaRL, WA, FOSTER after its
  compression stage) one backbone and the full head; counted by building the model and growing it
  once per task of the stream, so the figure is the one ``metrics.json`` records as ``bytes.fp32``;
- what is left is the exemplar budget (uint8 images, see :mod:`compactcl.data.memory`); a learner
  with no memory (finetune, LwF) leaves it unused;
- a budget smaller than the model's bytes is reported as ``fits: false`` and not run.

The curve's summary is the area under accuracy vs total bytes (trapezoid rule over the budgets
given, divided by the budget range, so it is a mean accuracy in [0, 1]; one budget: its accuracy).

>>> curve_auc([100, 200, 300], [0.5, 0.7, 0.9])
0.7
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from ..errors import CompactCLError
from .recipe import load_recipe

__all__ = ["BudgetSplit", "split_budget", "final_model_bytes", "curve_auc", "run_budget_curve"]


@dataclass(frozen=True)
class BudgetSplit:
    """How one learner spends one total budget."""

    learner: str
    budget: int  # total bytes: model + exemplars
    model_bytes: int  # fp32 working model after the last task
    exemplar_bytes: int  # budget - model_bytes (0 when it does not fit)
    fits: bool


def final_model_bytes(source: str | None, overrides: list[str], learner: str) -> int:
    """fp32 bytes of ``learner``'s working model after the last task of the recipe's stream
    (auxiliary heads, dropped after each task, not counted)."""
    from ..metrics.model_stats import fp32_bytes
    from .run import new_model
    from .stream import build_stream

    recipe = load_recipe(source, [*overrides, f"learner.name={learner}"])
    stream = build_stream(recipe)
    model = new_model(recipe, stream)
    for task in stream.tasks:
        model.grow(len(task.labels))
    aux = getattr(model, "aux_head", None)
    return fp32_bytes(model) - (fp32_bytes(aux) if aux is not None else 0)


def split_budget(learner: str, budget: int, model_bytes: int) -> BudgetSplit:
    """MEMO's rule: the model first, the rest in exemplars."""
    fits = budget >= model_bytes
    return BudgetSplit(learner, budget, model_bytes, budget - model_bytes if fits else 0, fits)


def curve_auc(budgets: list[int], accuracies: list[float]) -> float:
    """Area under accuracy vs total bytes, trapezoid rule, divided by (max budget - min budget)."""
    if len(budgets) != len(accuracies) or not budgets:
        raise ValueError("curve_auc needs one accuracy per budget, at least one")
    pts = sorted(zip(budgets, accuracies))
    if len(pts) == 1 or pts[-1][0] == pts[0][0]:
        return float(pts[0][1])
    area = sum((b1 - b0) * (a0 + a1) / 2 for (b0, a0), (b1, a1) in zip(pts, pts[1:]))
    return area / (pts[-1][0] - pts[0][0])


def _mean_std(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.mean(values), "std": statistics.pstdev(values)}


def run_budget_curve(source: str | None, overrides: list[str], learners: list[str], budgets: list[int],
                     seeds: list[int], out: Path, resume: bool = False,
                     log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Run every learner at every total budget it fits, for every seed, into ``out/<learner>-<budget>B-seed<s>``;
    return the compare document (``points`` per learner and budget, ``auc`` per learner)."""
    from .run import run_recipe

    if not learners or not budgets or not seeds:
        raise CompactCLError("--learners, --budgets and --seeds each need at least one value")
    if any(b <= 0 for b in budgets):
        raise CompactCLError(f"--budgets {budgets}: total budgets are positive byte counts, e.g. 40000,80000")
    budgets = sorted(set(budgets))
    points: list[dict[str, Any]] = []
    auc: dict[str, Any] = {}
    for name in learners:
        model_bytes = final_model_bytes(source, overrides, name)
        curve: list[tuple[int, float, float]] = []
        for budget in budgets:
            split = split_budget(name, budget, model_bytes)
            point: dict[str, Any] = asdict(split)
            if not split.fits:
                log(f"{name} at {budget} B: its model alone takes {model_bytes} B; not run")
                points.append(point)
                continue
            docs = []
            for seed in seeds:
                recipe = load_recipe(source, [*overrides, f"learner.name={name}", f"seed={seed}",
                                              f"memory.bytes={split.exemplar_bytes}"])
                log(f"{name} at {budget} B ({model_bytes} model + {split.exemplar_bytes} exemplars), seed {seed}")
                docs.append(run_recipe(recipe, out / f"{name}-{budget}B-seed{seed}", resume=resume, progress=False,
                                       log=lambda s: None))
            avg = [d["summary"]["working"]["average_incremental_accuracy"] for d in docs]
            last = [d["summary"]["working"]["final_accuracy"] for d in docs]
            final = docs[0]["tasks"][-1]
            point.update({
                "average_accuracy": _mean_std(avg), "last_accuracy": _mean_std(last),
                # measured by the runs: what the learner held after the last task
                "measured_model_bytes": final["bytes"]["fp32"],
                "measured_exemplar_bytes": final["bytes"].get("exemplars"),
                "measured_total_bytes": final["bytes"].get("learner_total"),
                "exemplars": final.get("exemplars"),
            })
            points.append(point)
            curve.append((budget, point["average_accuracy"]["mean"], point["last_accuracy"]["mean"]))
        auc[name] = {"average_accuracy": curve_auc([c[0] for c in curve], [c[1] for c in curve]) if curve else None,
                     "last_accuracy": curve_auc([c[0] for c in curve], [c[2] for c in curve]) if curve else None,
                     "budgets": [c[0] for c in curve], "all_budgets": len(curve) == len(budgets)}
    base = load_recipe(source, overrides)
    return {"kind": "budget_curve", "recipe": base.name, "seeds": seeds, "budgets": budgets, "learners": learners,
            "rule": "total budget = fp32 working model after the last task + exemplar bytes (uint8 images)",
            "auc_note": "trapezoid over the budgets each learner fits, divided by that budget range "
                        "(a mean accuracy in [0, 1]); one budget: its accuracy",
            "points": points, "auc": auc}
