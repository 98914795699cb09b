"""`compactcl export MODEL [--int8] --out FILE`: ONNX, checked against PyTorch on the test split.

Fails (exit 2) when the fp32 graph's top-1 agreement with PyTorch is below 99.9% or the
int8 graph loses more than 1 point of accuracy; int8 calibrates on training images.
"""

from __future__ import annotations

from .common import add_json_flag, add_model_choice, baseline, baseline_line, emit, format_table, model_path, say


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="export a model to ONNX (fp32 or int8 QDQ), checked against PyTorch")
    p.add_argument("model", help="checkpoint (.safetensors), artifact (.ccl) or run folder (its final deployed model; --model working for the working one)")
    add_model_choice(p)
    p.add_argument("--onnx", action="store_true", help="accepted, not needed: ONNX is the format written (packed .ccl "
                                                      "files come from `compactcl quantize`)")
    p.add_argument("--int8", action="store_true", help="static int8 QDQ, calibrated on training images")
    p.add_argument("--no-latency", action="store_true", help="skip the ONNX Runtime latency measurement")
    p.add_argument("--out", required=True, help="output file, e.g. model.onnx")
    add_json_flag(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..api import checkpoint_data, load
    from ..export.onnx import export_checked

    path = model_path(args)
    model = load(path)
    data = checkpoint_data(path)
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
