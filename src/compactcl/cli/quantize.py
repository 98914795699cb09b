"""`compactcl quantize MODEL --method METHOD --bits N --out FILE`: a packed, quantized artifact.

``--method`` is any registered quantization method (``linear``, ``log``, ``kmeans``, ...); the
flags ``--per-tensor``/``--per-channel``/``--affine`` set the config options ``per_channel``/
``symmetric`` and are refused for a method that does not take them.

Accuracy is measured on the test split of the data the model was trained on (recorded in
its header); QAT fine-tunes on the training split. ``baseline_bytes`` is the one baseline of every
model verb: the fp32 size, 4 bytes a parameter (:func:`compactcl.metrics.fp32_bytes`).
"""

from __future__ import annotations

from .common import (add_json_flag, add_model_choice, baseline, baseline_line, dequantize_, emit, format_table,
                     model_path, say)


# flag -> (config option it sets, value); a method accepts the flag when the option is in its ``options``
FLAG_OPTIONS = {"per_tensor": ("per_channel", False), "per_channel": ("per_channel", True),
                "affine": ("symmetric", False)}


def add_parser(sub) -> None:
    from ..compress.quantize import get_method, list_methods

    p = sub.add_parser("quantize", help="quantize a checkpoint or run folder's model into a packed .ccl artifact")
    p.add_argument("model", help="checkpoint (.safetensors), artifact (.ccl; dequantized first) or run folder (its final deployed model; --model working for the working one)")
    add_model_choice(p)
    p.add_argument("--method", choices=list_methods(), default="linear")
    p.add_argument("--bits", type=int, default=8, help="bits per weight (" + ", ".join(
        f"{m} {get_method(m).min_bits}..8" for m in list_methods()) + ")")
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
    from ..compress.quantize import get_method, list_methods
    from ..errors import CompactCLError

    method = get_method(args.method)
    options: dict[str, bool] = {}
    for flag in ("per_channel", "per_tensor", "affine"):  # in this order --per-tensor wins over --per-channel
        if not getattr(args, flag):
            continue
        option, value = FLAG_OPTIONS[flag]
        if option not in method.options:
            dashed = "--" + flag.replace("_", "-")
            takers = [m for m in list_methods() if option in get_method(m).options]
            raise CompactCLError(f"--method {args.method} takes no {dashed} (it applies to --method "
                                 f"{'/'.join(takers)}); drop {dashed}")
        options[option] = value
    return method.make_config(args.bits, **options)


def run(args) -> int:
    from ..api import checkpoint_data, load
    from ..compress.quantize import QATConfig, qat_, quantize_
    from ..errors import CompactCLError
    from ..export.artifact import save_artifact
    from ..engine.loop import accuracy
    from ..models.checkpoint import read_header

    if args.qat_epochs < 0:
        raise CompactCLError(f"--qat-epochs must be >= 0, got {args.qat_epochs}")
    cfg = build_config(args)
    path = model_path(args)
    model = dequantize_(args, load(path), path)
    say(args, f"{'QAT ' + str(args.qat_epochs) + ' epochs' if args.qat_epochs else 'quantizing'} "
              f"({args.method} {args.bits}-bit) and measuring test accuracy ...")
    data = checkpoint_data(path)
    baseline_acc = accuracy(model, data["test"])
    base = baseline(model)
    if args.qat_epochs:
        qat_(model, cfg, data["train"], QATConfig(epochs=args.qat_epochs, lr=args.qat_lr))
    else:
        quantize_(model, cfg)
    meta = {**read_header(path).get("meta", {}), "quantization": {**cfg.to_dict(), "qat_epochs": args.qat_epochs}}
    nbytes = save_artifact(model, args.out, meta)
    acc = accuracy(model, data["test"])
    figures = {"model_file": str(path), "out": str(args.out), "method": args.method, "bits": args.bits, "qat_epochs": args.qat_epochs,
               "accuracy": acc, "baseline_accuracy": baseline_acc, "bytes": nbytes, **base,
               "size_ratio": nbytes / base["baseline_bytes"]}
    table = format_table([{"model": "fp32", "test_accuracy": baseline_acc, "bytes": base["baseline_bytes"]},
                          {"model": f"{args.method} {args.bits}-bit", "test_accuracy": acc, "bytes": nbytes}])
    emit(args, figures, table + f"\n\n{baseline_line(base)}\nwrote {args.out} "
                                f"({nbytes / base['baseline_bytes']:.3f}x the baseline)")
    return 0
