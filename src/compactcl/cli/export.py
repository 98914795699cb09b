"""`compactcl export MODEL [--int8] --out FILE`: ONNX, checked against PyTorch on the test split.

Fails (exit 2) when the fp32 graph's top-1 agreement with PyTorch is below 99.9% or the
int8 graph loses more than 1 point of accuracy; int8 calibrates on training images.

`compactcl export MODEL --ort --out NAME.ort`: ONNX Runtime's mobile format, both forms
(``NAME.ort`` decode folded, ``NAME.codes.ort`` codes kept) with their required-operators
configs, each checked against the codes ONNX and timed, sizes beside the run's byte budget.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import CompactCLError
from .common import (add_json_flag, add_model_choice, baseline, baseline_line, emit, format_table, model_path,
                     read_metrics, say)


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="export a model to ONNX (fp32 or int8 QDQ), checked against PyTorch")
    p.add_argument("model", help="checkpoint (.safetensors), artifact (.ccl) or run folder (its final deployed model; --model working for the working one)")
    add_model_choice(p)
    p.add_argument("--onnx", action="store_true", help="accepted, not needed: ONNX is the format written (packed .ccl "
                                                      "files come from `compactcl quantize`)")
    p.add_argument("--int8", action="store_true", help="static int8 QDQ, calibrated on training images")
    p.add_argument("--ort", action="store_true",
                   help="ORT format for mobile/minimal ONNX Runtime builds, from the weight-codes ONNX: --out NAME.ort "
                        "(decode folded: dense fp32, fast) and NAME.codes.ort (codes kept, decoded every inference), "
                        "each with NAME[.codes].required_operators.config for a reduced build")
    p.add_argument("--no-latency", action="store_true", help="skip the ONNX Runtime latency measurement")
    p.add_argument("--out", required=True, help="output file, e.g. model.onnx")
    add_json_flag(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..api import checkpoint_data, load
    from ..export.onnx import export_checked

    if args.ort and args.int8:
        raise CompactCLError("--ort converts the weight-codes ONNX; --int8 is a separate export: run one at a time")
    path = model_path(args)
    model = load(path)
    data = checkpoint_data(path)
    if args.ort:
        return _run_ort(args, path, model, data)
    say(args, f"writing {args.out} (ONNX{', int8 QDQ' if args.int8 else ''}), checking it against PyTorch"
              f"{'' if args.no_latency else ', measuring latency'} ...")
    res = export_checked(model, args.out, data["input_shape"], data["test"].x, data["test"].y, int8=args.int8,
                         calib_x=data["train"].x, latency=not args.no_latency)
    base = baseline(model)
    figures = {"model_file": str(path), **res, "baseline_accuracy": res["torch_accuracy"], **base}
    rows = [{"model": "pytorch", "test_accuracy": res["torch_accuracy"], "agreement": 1.0, "bytes": base["baseline_bytes"]},
            {"model": res["format"], "test_accuracy": res["accuracy"], "agreement": res["agreement"],
             "bytes": res["bytes"]}]
    table = format_table(rows) + "\n\n" + baseline_line(base)
    if "latency_grid_ms" in res:
        table += "\n\nONNX Runtime latency (ms, median; t threads, b batch): " + ", ".join(
            f"{k} {v:.3f}" for k, v in res["latency_grid_ms"].items())
    emit(args, figures, table + f"\n\nwrote {args.out}")
    return 0


def _run_ort(args, path: Path, model, data) -> int:
    from ..export.compressed import deploy_metadata
    from ..export.ort import export_ort_checked

    budget = None  # the byte budget the run compressed its last task to, when MODEL is a run folder
    if Path(args.model).is_dir() and args.which == "deployed" and (Path(args.model) / "metrics.json").is_file():
        deploy = read_metrics(args.model, "MODEL")["tasks"][-1].get("deploy")
        b = deploy.get("budget_bytes") if isinstance(deploy, dict) else None
        budget = b if isinstance(b, int) and not isinstance(b, bool) else None
    say(args, f"writing {args.out} and its .codes.ort twin with their required-operators configs, checking them "
              f"against the codes ONNX{'' if args.no_latency else ', measuring latency'} ...")
    meta = deploy_metadata(data["meta"], data["input_shape"], path if path.suffix == ".ccl" else None)
    rows = export_ort_checked(model, args.out, data["input_shape"], data["test"].x, meta,
                              latency=not args.no_latency)
    for row in rows.values():
        row["within_budget"] = None if budget is None else row["bytes"] <= budget
    figures = {"model_file": str(path), "budget_bytes": budget, "files": rows}
    table = format_table([{"form": form, "file": r["file"], "bytes": r["bytes"], "budget": budget,
                           "agreement": r.get("agreement", 1.0), "max_dlogit": f"{r.get('max_abs_logit_diff', 0.0):.1e}",
                           **{f"ms_{k.split('_')[1]}": v for k, v in r.get("latency_ms", {}).items()}}
                          for form, r in rows.items()])
    notes = "\n".join(f"{form}: {r['holds']}" + (f"; build config {r['config']}" if "config" in r else "")
                      for form, r in rows.items())
    emit(args, figures, f"{table}\n\n{notes}\n\nONNX Runtime latency: ms, median, 1 thread, b1/b64 = batch; "
                        "agreement and max |dlogit| against the codes ONNX on the test split")
    return 0
