"""`compactcl compare [RECIPE] --learners a,b --seeds 0,1,2 [--budgets B1,B2,...]`: the same stream, several
learners, one table; with ``--budgets``, each learner at each total byte budget (model + exemplars, MEMO's
rule; see :mod:`compactcl.pipeline.budget`) and the area under each accuracy-vs-bytes curve."""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

from ..errors import CompactCLError
from ..pipeline.folder import is_run_folder
from ..utils.atomic import atomic_write_json
from .common import add_json_flag, emit, format_table


def add_parser(sub) -> None:
    p = sub.add_parser("compare", help="run several learners on the same stream and seeds; one table")
    p.add_argument("recipe", nargs="?", default=None, help="YAML file or built-in name")
    p.add_argument("--learners", default="finetune,joint,icarl,der", help="comma-separated learner names")
    p.add_argument("--seeds", default="0", help="comma-separated seeds, e.g. 0,1,2")
    p.add_argument("--out", default=None, help="folder for the runs and compare.json (default runs/compare-<recipe>)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--budgets", default=None,
                   help="comma-separated TOTAL byte budgets (model + exemplars), e.g. 60000,90000 or 60k,1.5M: "
                        "each buys the learner's fp32 model after the last task first, the rest in exemplars")
    p.add_argument("--model-fractions", default=None,
                   help="with --budgets and the learner entry 'compactcl' (or compactcl:LEARNER, its compressed, "
                        "deployed model): the model's shares of each total budget to try, chosen on validation "
                        "(default 0.15,0.3,0.5)")
    p.add_argument("--resume", action="store_true", help="reuse finished runs in --out")
    add_json_flag(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..pipeline.recipe import load_recipe
    from ..pipeline.run import run_recipe

    base = load_recipe(args.recipe, args.overrides)
    out = Path(args.out or Path("runs") / f"compare-{base.name}")
    learners = [s.strip() for s in args.learners.split(",") if s.strip()]
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise CompactCLError(f"--seeds {args.seeds!r}: expected comma-separated integers, e.g. 0,1,2") from None
    if not learners or not seeds:
        raise CompactCLError("--learners and --seeds each need at least one value, e.g. --learners icarl --seeds 0")
    _check_compare_out(out)
    if args.budgets is not None:
        return _run_budgets(args, base.name, out, learners, seeds)
    rows = []
    for name in learners:
        per_seed = []
        for seed in seeds:
            recipe = load_recipe(args.recipe, [*args.overrides, f"learner.name={name}", f"seed={seed}"])
            doc = run_recipe(recipe, out / f"{name}-seed{seed}", resume=args.resume, progress=False,
                             log=lambda s: None)
            per_seed.append(doc)
        finals = [d["summary"]["working"]["final_accuracy"] for d in per_seed]
        dep = [d["summary"]["deployed"]["final_accuracy"] for d in per_seed]
        rows.append({
            "learner": name,
            "final_accuracy": statistics.mean(finals),
            "final_std": statistics.pstdev(finals),
            "average_incremental_accuracy": statistics.mean(d["summary"]["working"]["average_incremental_accuracy"]
                                                            for d in per_seed),
            "forgetting": statistics.mean(d["summary"]["working"]["forgetting"] for d in per_seed),
            "deployed_final_accuracy": statistics.mean(dep),
            "params_per_task": [t["params"] for t in per_seed[0]["tasks"]],
            "fp32_bytes": per_seed[0]["tasks"][-1]["bytes"]["fp32"],
            "deployed_bytes": per_seed[0]["tasks"][-1]["bytes"]["deployed"],
        })
    result = {"recipe": base.name, "seeds": seeds, "rows": rows}
    atomic_write_json(out / "compare.json", result)
    table_rows = [{k: (v if not isinstance(v, list) else "/".join(f"{x // 1000}k" for x in v)) for k, v in r.items()}
                  for r in rows]
    emit(args, result, format_table(table_rows) + f"\n\nseeds {seeds}; runs and compare.json in {out}")
    return 0


def _check_compare_out(out: Path) -> None:
    """compare writes compare.json and one run folder per learner and seed into ``out``: a new or
    empty folder, or one an earlier compare wrote (it holds compare.json or run folders)."""
    if out.exists() and not out.is_dir():
        raise CompactCLError(f"--out {out} is a file; give a new or empty folder")
    if out.is_dir():
        entries = list(out.iterdir())
        if entries and not (out / "compare.json").is_file() and not any(is_run_folder(p) for p in entries if p.is_dir()):
            raise CompactCLError(f"--out {out} is not empty and holds no compare.json or compactcl run folders; "
                                 "compactcl leaves your files untouched: choose a new or empty folder")


def parse_budgets(text: str) -> list[int]:
    """``"60000,90k,1.5M"`` -> ``[60000, 90000, 1500000]`` (k = 1000, M = 1000000)."""
    out = []
    for item in (s.strip() for s in text.split(",")):
        if not item:
            continue
        scale = {"k": 1_000, "K": 1_000, "M": 1_000_000}.get(item[-1], 1)
        try:
            value = float(item[:-1] if scale > 1 else item) * scale
        except ValueError:
            value = float("nan")
        if not value > 0 or value != value or value > 1e15:
            raise CompactCLError(f"--budgets {text!r}: {item!r} is not a positive byte count; "
                                 "give e.g. --budgets 60000,90k,1.5M")
        out.append(int(value))
    if not out:
        raise CompactCLError("--budgets needs at least one total byte budget, e.g. --budgets 60k,90k")
    return out


def parse_fractions(text: str) -> list[float]:
    """``"0.1,0.25"`` -> ``[0.1, 0.25]``, each in (0, 1)."""
    try:
        out = [float(s) for s in text.split(",") if s.strip()]
    except ValueError:
        out = []
    if not out or any(not 0 < f < 1 for f in out):
        raise CompactCLError(f"--model-fractions {text!r}: give the model's shares of a budget, each in (0, 1), "
                             "e.g. 0.15,0.3,0.5")
    return out


def _run_budgets(args, name: str, out: Path, learners: list[str], seeds: list[int]) -> int:
    from ..pipeline.budget import run_budget_curve
    from ..report.curve import write_budget_plot

    budgets = parse_budgets(args.budgets)
    fractions = parse_fractions(args.model_fractions) if args.model_fractions else None
    log = (lambda s: print(s, file=sys.stderr)) if not args.json else (lambda s: None)
    doc = run_budget_curve(args.recipe, list(args.overrides), learners, budgets, seeds, out, resume=args.resume,
                           log=log, model_fractions=fractions)
    doc["plot"] = str(write_budget_plot(doc, out / "compare.png")) if any(p["fits"] for p in doc["points"]) else None
    atomic_write_json(out / "compare.json", doc)
    emit(args, doc, budget_table(doc) + f"\n\nseeds {seeds}; runs, compare.json and compare.png in {out}")
    return 0


def budget_table(doc: dict) -> str:
    """One row per (learner, budget); then one row per learner with its AUC."""
    def pm(d: dict | None) -> str:
        return f"{d['mean']:.4f} ± {d['std']:.4f}" if d else "-"

    def model(p: dict) -> str:
        if p["scored"] == "working":
            return str(p["model_bytes"])
        return f"{p['measured_model_bytes']} .ccl <= {p['model_bytes']} ({p['model_fraction']:g})" if p["fits"] else "-"

    rows = [{"learner": p["learner"], "total bytes": p["budget"], "model bytes": model(p),
             "exemplar bytes": p["exemplar_bytes"] if p["fits"] else "-", "exemplars": p.get("exemplars", "-"),
             "average acc": pm(p.get("average_accuracy")) if p["fits"] else "model does not fit",
             "last acc": pm(p.get("last_accuracy")), "scored": p["scored"]} for p in doc["points"]]
    aucs = [{"learner": n, "AUC average": a["average_accuracy"] if a["average_accuracy"] is not None else "-",
             "AUC last": a["last_accuracy"] if a["last_accuracy"] is not None else "-",
             "over budgets": ",".join(map(str, a["budgets"])) + ("" if a["all_budgets"] else " (not all fit)")}
            for n, a in doc["auc"].items()]
    return (format_table(rows) + "\n\n" + format_table(aucs)
            + "\n\nAUC: trapezoid over the budgets, divided by the budget range (a mean accuracy); "
              "peers: accuracy of the fp32 working model"
            + ("; compactcl: the deployed model, model bytes = largest deployed .ccl <= its budget share "
               "(the share chosen on validation)" if "compact_rule" in doc else ""))
