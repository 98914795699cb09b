"""`compactcl run [RECIPE] [--out DIR] [--set key=value ...] [--resume [RUN]]`: run a class-incremental recipe."""

from __future__ import annotations

import sys
from pathlib import Path

from ..errors import CompactCLError
from ..pipeline.folder import MARKER, RECIPE_FILE, is_run_folder
from ..pipeline.recipe import load_recipe
from ..utils.classes import class_names_text
from .common import add_json_flag, emit, format_table


def add_parser(sub) -> None:
    p = sub.add_parser("run", help="run a recipe (default: the built-in digits recipe)")
    p.add_argument("recipe", nargs="?", default=None, help="YAML file or built-in name (compactcl list)")
    p.add_argument("--out", default=None, help="run folder (default: runs/<recipe name>)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe key, e.g. --set learner.epochs=3 (repeatable)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: the recipe's, auto)")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast in training (= --set learner.bf16=true)")
    p.add_argument("--channels-last", action="store_true",
                   help="channels_last memory format for conv models (default: on for CUDA)")
    p.add_argument("--compile", action="store_true", help="torch.compile the training step (= --set learner.compile=true)")
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="RUN",
                   help="continue run folder RUN (or --out) from its last finished task, with its recorded "
                        "recipe; a new or empty folder starts the run; a complete one says so")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (step lines still printed)")
    p.add_argument("--quiet", "-q", action="store_true",
                   help="no progress bars and no per-step lines; warnings, errors and the result still printed")
    add_json_flag(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..pipeline.run import run_recipe

    overrides = list(args.overrides) + ([f"device={args.device}"] if args.device else [])
    overrides += [f"learner.{k}=true" for k, on in (("bf16", args.bf16), ("channels_last", args.channels_last),
                                                     ("compile", args.compile)) if on]
    recipe, out = _recipe_and_out(args, overrides)
    log = _logger(args.json, args.quiet)
    doc = run_recipe(recipe, out, resume=bool(args.resume), progress=not (args.no_progress or args.json or args.quiet),
                     log=log)
    rungs = doc["tasks"][-1].get("deploy", {}).get("rungs") if doc["tasks"] else None
    if rungs:  # compress.measure: one measured row per step (the ladder recipe)
        emit(args, rungs, rungs_table(rungs) + f"\n\nrun folder: {out}  (metrics.json: tasks[{len(doc['tasks']) - 1}]"
             ".deploy.rungs)")
        return 0
    emit(args, doc["summary"], summary_table(doc) + f"\n\nrun folder: {out}  (metrics.json, final/)")
    return 0


def _logger(to_stderr: bool, quiet: bool):
    """The run's ``log``: step lines to stdout (stderr under --json, whose stdout is the JSON);
    --quiet keeps only warnings."""
    stream = sys.stderr if to_stderr else sys.stdout

    def log(line: str) -> None:
        if not quiet or line.startswith("warning"):
            print(line, file=stream, flush=True)
    return log


def _recipe_and_out(args, overrides: list[str]):
    """The recipe to run and its folder. ``--resume RUN`` without a recipe reads RUN's recorded
    recipe (``--set`` applies on top; the run loop refuses any change but export.*/log.*)."""
    run_dir = args.resume if isinstance(args.resume, str) else None
    if run_dir is not None and args.recipe is None and not Path(run_dir).is_dir() and _names_a_recipe(run_dir):
        args.recipe, run_dir = run_dir, None  # `run --out X --resume RECIPE`: argparse gave RECIPE to --resume
    if run_dir is not None and args.out is not None and Path(args.out) != Path(run_dir):
        raise CompactCLError(f"--resume {run_dir} and --out {args.out} name two folders; give one")
    if run_dir is not None and args.recipe is None:
        recorded = Path(run_dir) / RECIPE_FILE
        if not Path(run_dir).is_dir():
            raise CompactCLError(f"--resume {run_dir}: no such run folder; to start a run there, give the recipe "
                                 f"(compactcl run RECIPE --out {run_dir})")
        if not is_run_folder(Path(run_dir)) or not recorded.is_file():
            raise CompactCLError(f"--resume {run_dir}: not a compactcl run folder (no {MARKER} marker or no "
                                 f"{RECIPE_FILE}), so there is no recorded recipe to continue")
        recipe = load_recipe(str(recorded), overrides)
    else:
        recipe = load_recipe(args.recipe, overrides)
    out = Path(run_dir or args.out or Path("runs") / recipe.name)  # recipe names are plain (checked)
    return recipe, out


def _names_a_recipe(value: str) -> bool:
    from ..pipeline.recipe import list_recipes

    return (Path(value).suffix in (".yaml", ".yml") and Path(value).is_file()) or value in list_recipes()


def summary_table(doc: dict) -> str:
    rows = []
    for t in doc["tasks"]:
        w, d = t["accuracy"]["working"], t["accuracy"]["deployed"]
        rows.append({"task": t["index"], "classes": class_names_text(t["classes"], doc.get("class_names")),
                     "acc working": sum(w) / len(w), "acc deployed": sum(d) / len(d),
                     "params": t["params"], "flops": t["flops"], "fp32 bytes": t["bytes"]["fp32"],
                     "deployed bytes": t["bytes"]["deployed"], "seconds": t["seconds"]})
    s = doc["summary"]
    summary = [{"model": m, **{k: s[m][k] for k in ("average_incremental_accuracy", "final_accuracy", "forgetting", "bwt")}}
               for m in ("working", "deployed")]
    return format_table(rows) + "\n\n" + format_table(summary)


def rungs_table(rungs: list[dict]) -> str:
    """One line per measured rung (``compress.measure``; see compactcl.pipeline.measure)."""
    rows = [{"rung": i, "stage": r["stage"], "params": r["params"], "flops": r["flops"], "bytes": r["bytes"],
             "x smaller": r["size_ratio"], "ms b1": r["latency_ms"], "ms b64": r["latency_ms_b64"], "graph": r["onnx"],
             "accuracy": r["accuracy"], "agreement": r["agreement"]} for i, r in enumerate(rungs, 1)]
    last = rungs[-1]
    return (format_table(rows) + f"\n\nfinal: {last['size_ratio']:.1f}x smaller, accuracy {rungs[0]['accuracy']:.4f} -> "
            f"{last['accuracy']:.4f} ({100 * last['accuracy_drop']:+.2f} points drop)")
