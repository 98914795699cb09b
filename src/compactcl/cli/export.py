"""`compactcl export MODEL [--int8 | --dense] --out FILE`: ONNX, checked, self-describing.

A quantized model (a ``.ccl``, or a run folder's deployed model) is written as the weight-codes
ONNX the run ships (``deployed.onnx``: the bytes the budget counts), checked against the model
(top-1 agreement, max |dlogit|); ``--dense`` writes its dequantized fp32 graph instead. A float
model is written as fp32, or int8 QDQ with ``--int8``. Every file carries the compactcl metadata
(class names, input, normalization) that ``compactcl predict`` and examples/edge_predict.py read.
Fails (exit 2) when the fp32 graph's top-1 agreement with PyTorch is below 99.9% or the int8
graph loses more than 1 point of accuracy; int8 calibrates on training images.

`compactcl export MODEL --ort --out NAME.ort`: ONNX Runtime's mobile format, both forms
(``NAME.ort`` decode folded, ``NAME.codes.ort`` codes kept) with their required-operators
configs, each checked against the codes ONNX and timed, sizes beside the run's byte budget.
"""

from __future__ import annotations

import copy
from pathlib import Path

from ..errors import CompactCLError
from .common import (add_json_flag, add_model_choice, baseline, baseline_line, dequantize_, emit, format_table,
                     model_path, read_metrics, say)


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="export a model to ONNX (weight codes, fp32 or int8 QDQ), checked against PyTorch")
    p.add_argument("model", help="checkpoint (.safetensors), artifact (.ccl) or run folder (its final deployed model; --model working for the working one)")
    add_model_choice(p)
    p.add_argument("--onnx", action="store_true", help="accepted, not needed: ONNX is the format written (packed .ccl "
                                                      "files come from `compactcl quantize`)")
    p.add_argument("--int8", action="store_true", help="static int8 QDQ, calibrated on training images")
    p.add_argument("--dense", action="store_true", help="a quantized model as its dequantized fp32 graph instead of "
                                                       "the weight-codes ONNX (larger; for runtimes without opset 18)")
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
    from ..export.int8 import calibration_batch
    from ..export.onnx import export_checked

    if args.ort and (args.int8 or args.dense):
        raise CompactCLError("--ort converts the weight-codes ONNX; --int8 is a separate export (so is --dense): run one "
                             "at a time")
    if args.int8 and args.dense:
        raise CompactCLError("--int8 and --dense are two different files: choose one")
    path = model_path(args)
    model = load(path)
    data = checkpoint_data(path)
    if args.ort:
        return _run_ort(args, path, model, data)
    from ..compress.quantize.state import quantized_layers
    from ..export.compressed import add_metadata, deploy_metadata

    meta = deploy_metadata(data["meta"], data["input_shape"], path if path.suffix == ".ccl" else None)
    if quantized_layers(model) and not args.int8 and not args.dense:
        res = _export_codes(args, model, data, meta)
    else:
        if args.int8 or args.dense:
            model = dequantize_(args, model, path)
        say(args, f"writing {args.out} (ONNX{', int8 QDQ' if args.int8 else ', fp32'}), checking it against PyTorch"
                  f"{'' if args.no_latency else ', measuring latency'} ...")
        res = export_checked(model, args.out, data["input_shape"], data["test"], data["test"].y, int8=args.int8,
                             calib_x=calibration_batch(data["train"]), latency=not args.no_latency)
        res["bytes"] = add_metadata(args.out, meta)
    base = baseline(model)
    figures = {"model_file": str(path), **res, "baseline_accuracy": res["torch_accuracy"], **base}
    rows = [{"model": "pytorch", "test_accuracy": res["torch_accuracy"], "agreement": 1.0, "bytes": base["baseline_bytes"]},
            {"model": res["format"], "test_accuracy": res["accuracy"], "agreement": res["agreement"],
             "bytes": res["bytes"]}]
    table = format_table(rows) + "\n\n" + baseline_line(base)
    if "latency_grid_ms" in res:
        table += "\n\nONNX Runtime latency (ms, median; t threads, b batch): " + ", ".join(
            f"{k} {v:.3f}" for k, v in res["latency_grid_ms"].items())
    emit(args, figures, table + f"\n\nwrote {args.out} (with compactcl metadata: class names, input, normalization)")
    return 0


def _export_codes(args, model, data, meta: dict[str, str]) -> dict:
    """The weight-codes ONNX of a quantized model (what a run ships as deployed.onnx), checked against it."""
    from ..export.compressed import check_against, export_compressed_onnx
    from ..metrics.latency import onnx_latency_grid

    say(args, f"writing {args.out} (weight-codes ONNX, decoded in the graph), checking it against PyTorch"
              f"{'' if args.no_latency else ', measuring latency'} ...")
    nbytes = export_compressed_onnx(copy.deepcopy(model), args.out, data["input_shape"], meta)
    check = check_against(args.out, model, data["test"], data["test"].y)
    if check["agreement"] < 0.999:
        raise CompactCLError(f"{args.out}: the weight-codes ONNX agrees with PyTorch on only {check['agreement']:.2%} "
                             f"of the test images (max |dlogit| {check['max_abs_logit_diff']:.2e}); an operator "
                             "decodes wrongly — report it with the model spec; --dense writes the fp32 graph meanwhile")
    res = {"format": "onnx-codes", "path": str(args.out), "bytes": nbytes, "agreement": check["agreement"],
           "max_abs_logit_diff": check["max_abs_logit_diff"], "accuracy": check["accuracy"],
           "torch_accuracy": check["reference_accuracy"]}
    if not args.no_latency:
        res["latency_grid_ms"] = onnx_latency_grid({"model": args.out}, data["input_shape"], repeats=50)["model"]
    return res


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
    rows = export_ort_checked(model, args.out, data["input_shape"], data["test"], meta,
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
