"""Learners compared at equal *total* memory (MEMO, Zhou et al., ICLR 2023, "A Model or 603 Exemplars").

A total byte budget buys the model first and the rest in exemplars (``memory.bytes``):

- the model's bytes are its fp32 working model after the LAST task — for a growing learner (DER,
  MEMO) every branch it will have by then, for a fixed one (iCaRL, WA, FOSTER after its
  compression stage) one backbone and the full head; counted by building the model and growing it
  once per task of the stream, so the figure is the one ``metrics.json`` records as ``bytes.fp32``;
- what is left is the exemplar budget (uint8 images, see :mod:`compactcl.data.memory`); a learner
  with no memory (finetune, LwF) leaves it unused;
- a budget smaller than the model's bytes is reported as ``fits: false`` and not run;
- these peers are scored by their fp32 working model (it is what they store and run), so their
  runs leave out the recipe's ``compress:`` section and the ONNX export.

compactcl's own point, the entry ``compactcl`` (the recipe's learner) or ``compactcl:LEARNER``, is
what no peer has: the model that counts is the *deployed* one, the recipe's ``compress:`` steps
run with ``compress.budget.bytes`` = a share of the total budget, and the rest buys uint8
exemplars. Counted: the largest deployed ``.ccl`` of any task (real file bytes) + the exemplars
stored; scored: the deployed model's accuracy. The fp32 working model that trains the deployed one
(the teacher, on the training host) is not counted; it is reported as ``working_fp32_bytes``. The
model's share is chosen on validation, never test: each of ``model_fractions`` is run with the
first seed, the one whose deployed model has the best validation accuracy averaged over the tasks
(:func:`validation_score`) is kept and run with the other seeds; a share the compression cannot
reach (:class:`~compactcl.errors.BudgetNotMet`) does not fit.

The curve's summary is the area under accuracy vs total bytes (trapezoid rule over the budgets
given, divided by the budget range, so it is a mean accuracy in [0, 1]; one budget: its accuracy).

>>> curve_auc([100, 200, 300], [0.5, 0.7, 0.9])
0.7
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from ..errors import BudgetNotMet, CompactCLError
from .recipe import load_recipe

__all__ = ["BudgetSplit", "split_budget", "final_model_bytes", "curve_auc", "run_budget_curve", "COMPACT",
           "compact_entry", "compact_split", "validation_score", "choose_split"]

COMPACT = "compactcl"  # the --learners entry of compactcl's own point
DEFAULT_MODEL_FRACTIONS = (0.15, 0.3, 0.5)
# Peers are scored by their fp32 working model: their runs need no compression or export.
PEER_OVERRIDES = ("compress=null", "export.onnx=false")
COMPACT_RULE = ("compactcl: total budget = the deployed .ccl (compress.budget.bytes = model fraction x budget; "
                "the largest .ccl of any task counted) + exemplar bytes (uint8 images); scored: the deployed model; "
                "the model fraction is chosen on validation with the first seed; the fp32 working model that "
                "trains it is not counted (working_fp32_bytes)")


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


def compact_entry(entry: str, recipe_learner: str) -> str | None:
    """The working learner of a ``compactcl`` / ``compactcl:NAME`` entry (``compactcl`` alone: the
    recipe's own learner); None for a peer learner's name."""
    if entry == COMPACT:
        return recipe_learner
    if entry.startswith(COMPACT + ":"):
        return entry.split(":", 1)[1]
    return None


def compact_split(budget: int, model_fraction: float) -> tuple[int, int]:
    """(the deployed model's byte budget, the exemplars' bytes) of one way to spend ``budget``.

    >>> compact_split(24000, 0.25)
    (6000, 18000)
    """
    model = int(budget * model_fraction)
    return model, budget - model


def validation_score(doc: dict[str, Any]) -> float:
    """The deployed model's validation accuracy on the tasks seen, averaged over the tasks: the
    validation twin of average incremental accuracy, what a model fraction is chosen by."""
    return statistics.mean(t["deploy"]["val_accuracy"] for t in doc["tasks"])


def choose_split(tried: list[dict[str, Any]]) -> int | None:
    """Index of the fraction with the best ``val_score`` among those that fit (the first on a tie:
    fractions are tried smallest first); None when none fits."""
    fitting = [i for i, t in enumerate(tried) if t["fits"]]
    return max(fitting, key=lambda i: (tried[i]["val_score"], -i)) if fitting else None


def _mean_std(values: list[float]) -> dict[str, Any]:
    """Over the seeds: the mean, the population std, and each seed's value (in ``seeds`` order)."""
    return {"mean": statistics.mean(values), "std": statistics.pstdev(values), "per_seed": values}


def _accuracies(docs: list[dict[str, Any]], which: str) -> dict[str, Any]:
    return {"average_accuracy": _mean_std([d["summary"][which]["average_incremental_accuracy"] for d in docs]),
            "last_accuracy": _mean_std([d["summary"][which]["final_accuracy"] for d in docs])}


def run_budget_curve(source: str | None, overrides: list[str], learners: list[str], budgets: list[int],
                     seeds: list[int], out: Path, resume: bool = False,
                     log: Callable[[str], None] = lambda s: None,
                     model_fractions: list[float] | None = None) -> dict[str, Any]:
    """Run every learner at every total budget it fits, for every seed, into ``out/<learner>-<budget>B-seed<s>``;
    return the compare document (``points`` per learner and budget, ``auc`` per learner).

    Peer learners are scored by their fp32 working model, so their runs leave out ``compress:`` and the
    ONNX export. A ``compactcl[:LEARNER]`` entry is compactcl's own point (:func:`_compact_point`)."""
    from ..learners import list_learners

    if not learners or not budgets or not seeds:
        raise CompactCLError("--learners, --budgets and --seeds each need at least one value")
    if any(b <= 0 for b in budgets):
        raise CompactCLError(f"--budgets {budgets}: total budgets are positive byte counts, e.g. 40000,80000")
    fractions = sorted(set(model_fractions or DEFAULT_MODEL_FRACTIONS))
    if any(not 0 < f < 1 for f in fractions):
        raise CompactCLError(f"--model-fractions {fractions}: each is the model's share of a total budget, in (0, 1)")
    base = load_recipe(source, overrides)
    for name in learners:
        learner = compact_entry(name, base.learner.name) or name
        if learner not in list_learners():
            raise CompactCLError(f"--learners: unknown learner {learner!r}; choose from {', '.join(list_learners())}, "
                                 f"or {COMPACT} / {COMPACT}:LEARNER for compactcl's compressed point")
    if any(compact_entry(n, "") is not None for n in learners) and not (base.compress and base.compress.steps):
        raise CompactCLError(f"--learners {COMPACT}: its point is the compressed, deployed model, and the recipe "
                             f"{base.name!r} has no compress: steps; use a recipe with a compress: section "
                             "(e.g. the built-in default) and do not --set compress=null")
    budgets = sorted(set(budgets))
    points: list[dict[str, Any]] = []
    auc: dict[str, Any] = {}
    for name in learners:
        compact = compact_entry(name, base.learner.name)
        if compact is not None:
            pts = [_compact_point(source, overrides, name, compact, b, fractions, seeds, out, resume, log)
                   for b in budgets]
        else:
            pts = _peer_points(source, overrides, name, budgets, seeds, out, resume, log)
        points += pts
        curve = [(p["budget"], p["average_accuracy"]["mean"], p["last_accuracy"]["mean"]) for p in pts if p["fits"]]
        auc[name] = {"average_accuracy": curve_auc([c[0] for c in curve], [c[1] for c in curve]) if curve else None,
                     "last_accuracy": curve_auc([c[0] for c in curve], [c[2] for c in curve]) if curve else None,
                     "budgets": [c[0] for c in curve], "all_budgets": len(curve) == len(budgets)}
    doc = {"kind": "budget_curve", "recipe": base.name, "seeds": seeds, "budgets": budgets, "learners": learners,
           "rule": "total budget = fp32 working model after the last task + exemplar bytes (uint8 images)",
           "auc_note": "trapezoid over the budgets each learner fits, divided by that budget range "
                       "(a mean accuracy in [0, 1]); one budget: its accuracy",
           "points": points, "auc": auc}
    if any(compact_entry(n, "") is not None for n in learners):
        doc["model_fractions"] = fractions
        doc["compact_rule"] = COMPACT_RULE
    return doc


def _peer_points(source: str | None, overrides: list[str], name: str, budgets: list[int], seeds: list[int],
                 out: Path, resume: bool, log: Callable[[str], None]) -> list[dict[str, Any]]:
    from .run import run_recipe

    model_bytes = final_model_bytes(source, overrides, name)
    points = []
    for budget in budgets:
        split = split_budget(name, budget, model_bytes)
        point: dict[str, Any] = {**asdict(split), "scored": "working"}
        points.append(point)
        if not split.fits:
            log(f"{name} at {budget} B: its model alone takes {model_bytes} B; not run")
            continue
        docs = []
        for seed in seeds:
            recipe = load_recipe(source, [*overrides, *PEER_OVERRIDES, f"learner.name={name}", f"seed={seed}",
                                          f"memory.bytes={split.exemplar_bytes}"])
            log(f"{name} at {budget} B ({model_bytes} model + {split.exemplar_bytes} exemplars), seed {seed}")
            docs.append(run_recipe(recipe, out / f"{name}-{budget}B-seed{seed}", resume=resume, progress=False,
                                   log=lambda s: None))
        final = docs[0]["tasks"][-1]
        point.update({
            **_accuracies(docs, "working"),
            # measured by the runs: what the learner held after the last task
            "measured_model_bytes": final["bytes"]["fp32"],
            "measured_exemplar_bytes": final["bytes"].get("exemplars"),
            "measured_total_bytes": final["bytes"].get("learner_total"),
            "exemplars": final.get("exemplars"),
        })
    return points


def _compact_point(source: str | None, overrides: list[str], name: str, learner: str, budget: int,
                   fractions: list[float], seeds: list[int], out: Path, resume: bool,
                   log: Callable[[str], None]) -> dict[str, Any]:
    """compactcl at one total budget: for each model fraction f, ``compress.budget.bytes = f x budget``
    and the rest in exemplars, run with the first seed; the fraction with the best validation score
    (:func:`validation_score`) is then run with the other seeds. Scored: the deployed model."""
    from .run import run_recipe

    tag = name.replace(":", "-")

    def run(fraction: float, seed: int) -> dict[str, Any]:
        model, exemplars = compact_split(budget, fraction)
        recipe = load_recipe(source, [*overrides, f"learner.name={learner}", f"seed={seed}",
                                      f"memory.bytes={exemplars}", f"compress.budget.bytes={model}",
                                      "compress.budget.fraction_of_backbone=null"])
        log(f"{name} at {budget} B ({model} deployed model + {exemplars} exemplars, fraction {fraction:g}), seed {seed}")
        return run_recipe(recipe, out / f"{tag}-{budget}B-m{fraction:g}-seed{seed}", resume=resume, progress=False,
                          log=lambda s: None)

    tried: list[dict[str, Any]] = []
    first: dict[float, dict[str, Any]] = {}
    for fraction in fractions:
        model, exemplars = compact_split(budget, fraction)
        entry: dict[str, Any] = {"model_fraction": fraction, "model_bytes": model, "exemplar_bytes": exemplars}
        try:
            first[fraction] = run(fraction, seeds[0])
            score = validation_score(first[fraction])
            if math.isnan(score):  # no validation data: nothing to choose the split by
                raise CompactCLError(f"{name}: the model/exemplar split is chosen on validation data, and the run has "
                                     "none (data.val_fraction=0); set data.val_fraction > 0 (e.g. 0.1)")
            entry.update(fits=True, val_score=score)
        except BudgetNotMet as e:
            log(f"{name} at {budget} B, fraction {fraction:g}: {e}")
            entry.update(fits=False, reason=str(e))
        tried.append(entry)
    point: dict[str, Any] = {"learner": name, "budget": budget, "scored": "deployed", "working_learner": learner,
                             "split_selection": {"by": "mean over tasks of the deployed model's validation accuracy, "
                                                       f"seed {seeds[0]}", "tried": tried}}
    # the chosen fraction runs with the other seeds; one that misses the budget there (the bit search fills
    # it to the byte) no longer fits, and the next best is taken
    while (best := choose_split(tried)) is not None:
        fraction = tried[best]["model_fraction"]
        docs = [first[fraction]]
        try:
            for seed in seeds[1:]:
                docs.append(run(fraction, seed))
            break
        except BudgetNotMet as e:
            log(f"{name} at {budget} B, fraction {fraction:g}, seed {seed}: {e}")
            tried[best].update(fits=False, reason=f"seed {seed}: {e}")
    if best is None:
        return {**point, "model_bytes": 0, "exemplar_bytes": 0, "fits": False}
    deployed = [max(t["bytes"]["deployed"] for t in d["tasks"]) for d in docs]  # the largest the device held
    stored = [d["tasks"][-1]["bytes"].get("exemplars") or 0 for d in docs]
    return {**point, "model_fraction": fraction, "model_bytes": tried[best]["model_bytes"],
            "exemplar_bytes": tried[best]["exemplar_bytes"], "fits": True, **_accuracies(docs, "deployed"),
            "measured_model_bytes": max(deployed), "measured_exemplar_bytes": max(stored),
            "measured_total_bytes": max(a + b for a, b in zip(deployed, stored)),
            "working_fp32_bytes": docs[0]["tasks"][-1]["bytes"]["fp32"],
            "exemplars": docs[0]["tasks"][-1].get("exemplars")}
