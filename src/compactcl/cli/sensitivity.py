"""`compactcl sensitivity`: prune each layer alone at 0..90% and save the accuracy curves."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_json_flag, add_model_choice, baseline, baseline_line, emit, format_table, model_path, say


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("sensitivity", help="per-layer pruning sensitivity curves (JSON + PNG)",
                              description="For each conv/linear layer, magnitude-prune it alone at each ratio "
                                          "and record validation accuracy (Distiller's sensitivity analysis).")
    p.add_argument("model", help="checkpoint (.safetensors / .ccl) or run folder (its final deployed model; --model working for the working one)")
    add_model_choice(p)
    p.add_argument("--out", required=True, help="folder for sensitivity.json and sensitivity.png")
    p.add_argument("--ratios", default="0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9",
                   help="comma-separated ratios to try per layer")
    p.add_argument("--importance", default="l1", help="importance score used to pick the weights (l1, l2)")
    p.add_argument("--target", type=float, default=None,
                   help="also derive per-layer ratios reaching this overall sparsity (e.g. 0.8); "
                        "`compactcl prune MODEL --ratios OUT` applies them")
    add_json_flag(p)
    p.set_defaults(func=run)
    return p


def _ratios(text: str) -> tuple[float, ...]:
    from ..errors import CompactCLError

    try:
        rs = tuple(sorted(float(r) for r in text.split(",") if r.strip()))
    except ValueError as e:
        raise CompactCLError(f"--ratios {text!r}: expected numbers separated by commas, e.g. 0,0.5,0.9") from e
    if not rs or rs[0] < 0 or rs[-1] >= 1:
        raise CompactCLError(f"--ratios {text!r}: each ratio must be in [0, 1)")
    return rs


def run(args: argparse.Namespace) -> int:
    from ..api import checkpoint_data, load
    from ..compress.prune import ratios_for_target, save_sensitivity, sensitivity_analysis
    from ..compress.prune.importance import NEEDS_GRAD, get_importance
    from ..errors import CompactCLError
    from ..engine.loop import accuracy

    ratios = _ratios(args.ratios)
    get_importance(args.importance)
    if args.importance in NEEDS_GRAD:
        raise CompactCLError(f"--importance {args.importance} needs gradients; sensitivity uses weight scores (l1, l2)")
    src = model_path(args)
    model = load(src)
    data = checkpoint_data(src)
    val = data["val"] if len(data["val"]) else data["test"]
    say(args, f"pruning each layer alone at {len(ratios)} ratios, scored on {len(val)} validation images ...")
    sens = sensitivity_analysis(model, lambda m: accuracy(m, val), ratios, args.importance)
    layer_ratios = ratios_for_target(sens, args.target) if args.target is not None else None
    if layer_ratios is not None:
        sens.extra = {"target": args.target, "layer_ratios": layer_ratios}
    paths = save_sensitivity(sens, Path(args.out))
    base = baseline(model)
    figures = {"model_file": str(src), **sens.to_json(), **base, "files": {k: str(v) for k, v in paths.items()}}
    rows = [{"layer": n, "params": sens.params[n], **{f"{r:.0%}": a for r, a in zip(sens.ratios, c)},
             **({"ratio": layer_ratios[n]} if layer_ratios else {})} for n, c in sens.curves.items()]
    which = " --model working" if args.which == "working" and Path(args.model).is_dir() else ""
    prune = f"{args.model}{which} --ratios {paths['json']}" + ("" if layer_ratios else " --ratio R (or --max-drop D)")
    table = (f"dense validation accuracy {sens.baseline:.4f}\n" + format_table(rows)
             + f"\n\n{baseline_line(base)}\nwrote {paths['json']} and {paths['png']}"
             + f"\nprune by these curves: compactcl prune {prune} --out FILE")
    emit(args, figures, table)
    return 0
