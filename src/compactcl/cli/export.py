"""`compactcl export MODEL --onnx [--int8] --out FILE`: ONNX, checked against PyTorch on the test split.

Fails (exit 2) when the fp32 graph's top-1 agreement with PyTorch is below 99.9% or the
int8 graph loses more than 1 point of accuracy; int8 calibrates on training images.
"""

from __future__ import annotations

from .common import add_json_flag, emit, format_table


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="export a model to ONNX (fp32 or int8 QDQ), checked against PyTorch")
    p.add_argument("model", help="checkpoint (.safetensors), artifact (.ccl) or run folder (uses final/working)")
    p.add_argument("--onnx", action="store_true", help="write ONNX (the only export format here; .ccl comes from "
                                                      "`compactcl quantize`)")
    p.add_argument("--int8", action="store_true", help="static int8 QDQ, calibrated on training images")
    p.add_argument("--no-latency", action="store_true", help="skip the ONNX Runtime latency measurement")
    p.add_argument("--out", required=True, help="output file, e.g. model.onnx")
    add_json_flag(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..api import checkpoint_data, load, resolve_model_path
    from ..errors import CompactCLError
    from ..export.onnx import export_checked
    from ..metrics.model_stats import fp32_bytes

    if not args.onnx:
        raise CompactCLError("choose an export format: add --onnx (packed .ccl artifacts come from `compactcl quantize`)")
    path = resolve_model_path(args.model)
    model = load(path)
    data = checkpoint_data(path)
    res = export_checked(model, args.out, data["input_shape"], data["test"].x, data["test"].y, int8=args.int8,
                         calib_x=data["train"].x, latency=not args.no_latency)
    figures = {**res, "baseline_accuracy": res["torch_accuracy"], "baseline_bytes": fp32_bytes(model),
               "baseline_bytes_kind": "fp32, 4 bytes per parameter"}
    rows = [{"model": "pytorch", "test_accuracy": res["torch_accuracy"], "agreement": 1.0, "bytes": fp32_bytes(model)},
            {"model": res["format"], "test_accuracy": res["accuracy"], "agreement": res["agreement"],
             "bytes": res["bytes"]}]
    table = format_table(rows)
    if "latency_grid_ms" in res:
        table += "\n\nONNX Runtime latency (ms, median; t threads, b batch): " + ", ".join(
            f"{k} {v:.3f}" for k, v in res["latency_grid_ms"].items())
    emit(args, figures, table + f"\n\nwrote {args.out}")
    return 0
