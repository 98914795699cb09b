"""`compactcl quantize MODEL --method {linear,log,kmeans} --bits N --out FILE`: a packed, quantized artifact.

Accuracy is measured on the test split of the data the model was trained on (recorded in
its header); QAT fine-tunes on the training split. ``baseline_bytes`` is the fp32 size,
4 bytes a parameter.
"""

from __future__ import annotations

from .common import add_json_flag, emit, format_table


def add_parser(sub) -> None:
    p = sub.add_parser("quantize", help="quantize a checkpoint or run folder's model into a packed .ccl artifact")
    p.add_argument("model", help="checkpoint (.safetensors), artifact (.ccl) or run folder (uses final/working)")
    p.add_argument("--method", choices=["linear", "log", "kmeans"], default="linear")
    p.add_argument("--bits", type=int, default=8, help="bits per weight (linear/log 2..8, kmeans 1..8)")
    p.add_argument("--per-tensor", action="store_true", help="one scale per tensor instead of per output channel "
                                                             "(linear; log is per tensor unless --per-channel)")
    p.add_argument("--per-channel", action="store_true", help="log only: one exponent range per output channel")
    p.add_argument("--affine", action="store_true", help="linear only: affine grid with a zero point")
    p.add_argument("--qat-epochs", type=int, default=0, help="quantization-aware fine-tuning epochs (0 = none)")
    p.add_argument("--qat-lr", type=float, default=1e-3)
    p.add_argument("--out", required=True, help="output file, e.g. model.ccl")
    add_json_flag(p)
    p.set_defaults(func=run)


def build_config(args):
    """Command-line flags -> a quantization config (validated there)."""
    from ..compress.quantize import config_for
    from ..errors import CompactCLError

    if args.method != "linear" and args.affine:
        raise CompactCLError("--affine applies to --method linear only; drop it")
    if args.method == "kmeans" and (args.per_tensor or args.per_channel):
        raise CompactCLError("k-means keeps one codebook per layer; drop --per-tensor/--per-channel")
    if args.method == "linear":
        return config_for("linear", args.bits, per_channel=not args.per_tensor, symmetric=not args.affine)
    if args.method == "log":
        return config_for("log", args.bits, per_channel=args.per_channel and not args.per_tensor)
    return config_for("kmeans", args.bits)


def run(args) -> int:
    from ..api import checkpoint_data, load, resolve_model_path
    from ..compress.quantize import QATConfig, qat_, quantize_
    from ..errors import CompactCLError
    from ..export.artifact import save_artifact
    from ..engine.loop import accuracy
    from ..metrics.model_stats import fp32_bytes
    from ..models.checkpoint import read_header

    if args.qat_epochs < 0:
        raise CompactCLError(f"--qat-epochs must be >= 0, got {args.qat_epochs}")
    cfg = build_config(args)
    path = resolve_model_path(args.model)
    model = load(path)
    data = checkpoint_data(path)
    baseline_acc = accuracy(model, data["test"])
    baseline_bytes = fp32_bytes(model)
    if args.qat_epochs:
        qat_(model, cfg, data["train"], QATConfig(epochs=args.qat_epochs, lr=args.qat_lr))
    else:
        quantize_(model, cfg)
    meta = {**read_header(path).get("meta", {}), "quantization": {**cfg.to_dict(), "qat_epochs": args.qat_epochs}}
    nbytes = save_artifact(model, args.out, meta)
    acc = accuracy(model, data["test"])
    figures = {"out": str(args.out), "method": args.method, "bits": args.bits, "qat_epochs": args.qat_epochs,
               "accuracy": acc, "baseline_accuracy": baseline_acc, "bytes": nbytes, "baseline_bytes": baseline_bytes,
               "baseline_bytes_kind": "fp32, 4 bytes per parameter", "size_ratio": nbytes / baseline_bytes}
    table = format_table([{"model": "fp32", "test_accuracy": baseline_acc, "bytes": baseline_bytes},
                          {"model": f"{args.method} {args.bits}-bit", "test_accuracy": acc, "bytes": nbytes}])
    emit(args, figures, table + f"\n\nwrote {args.out} ({nbytes / baseline_bytes:.3f}x the fp32 size)")
    return 0
