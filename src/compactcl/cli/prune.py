"""`compactcl prune`: prune a saved model (magnitude, L1, sensitivity-guided or structural), fine-tune, save."""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

from .common import (add_json_flag, add_model_choice, baseline, baseline_line, dequantize_, emit, format_table,
                     model_path, say)

METHODS = ("magnitude", "l1", "sensitivity", "structured")


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("prune", help="prune a checkpoint or run folder and fine-tune it",
                              description="Prune a saved model, fine-tune it on the data it was trained on, "
                                          "save it and print before/after figures.")
    p.add_argument("model", help="checkpoint (.safetensors), artifact (.ccl; dequantized first) or run folder (its final deployed model; --model working for the working one)")
    add_model_choice(p)
    p.add_argument("--method", choices=METHODS, default=None,
                   help="magnitude/l1/sensitivity zero weights (smaller packed .ccl); structured removes channels "
                        "(default: magnitude; sensitivity with --ratios)")
    p.add_argument("--ratio", type=float, default=None,
                   help="fraction of weights (unstructured) or of channels (structured) to remove, in [0, 1); "
                        "with --ratios: the overall sparsity the per-layer ratios reach")
    p.add_argument("--ratios", default=None, metavar="FILE",
                   help="per-layer ratios from `compactcl sensitivity` (its sensitivity.json, its --out folder or "
                        "its --json output): the ratios it recommended (--target), or --ratio R / --max-drop D")
    p.add_argument("--max-drop", type=float, default=None,
                   help="with --ratios: prune each layer as far as its curve stays within this accuracy drop "
                        "(0.01 = one point)")
    p.add_argument("--finetune-epochs", type=int, default=2, help="epochs of fine-tuning after pruning (0: none)")
    p.add_argument("--round-to", type=int, default=None, help="structured: keep channel counts multiples of N")
    p.add_argument("--importance", default=None, help="importance score (l1, l2, taylor); default per method")
    p.add_argument("--scope", choices=("global", "layer"), default="global", help="magnitude/l1: one threshold or per layer")
    p.add_argument("--schedule", choices=("oneshot", "agp"), default="oneshot",
                   help="magnitude: prune at once, or gradually (cubic AGP) during the fine-tuning epochs")
    p.add_argument("--l1-strength", type=float, default=1e-4, help="l1: weight of sum|w| in the loss")
    p.add_argument("--l1-epochs", type=int, default=2, help="l1: epochs of L1-regularised training before pruning")
    p.add_argument("--lr", type=float, default=0.01, help="fine-tuning learning rate (SGD, cosine)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--latency", action="store_true", help="also measure ONNX Runtime latency (1, 2 threads; batch 1, 64)")
    p.add_argument("--out", required=True, help="output file: .safetensors checkpoint, or .ccl packed artifact")
    add_json_flag(p)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from ..api import checkpoint_data, load
    from ..compress.prune import PruneData, finalize_, finetune_, prune_
    from ..export.measure import model_figures, onnx_latencies, save_model
    from ..errors import CompactCLError
    from ..engine.loop import TrainConfig
    from ..metrics.model_stats import fp32_bytes
    from ..models.checkpoint import read_header

    out = Path(args.out)
    if out.suffix not in (".safetensors", ".ccl"):
        raise CompactCLError(f"--out {out}: use a .safetensors (checkpoint) or .ccl (packed artifact) file name")
    if args.round_to is not None and args.method != "structured":
        raise CompactCLError("--round-to applies to --method structured only (channel counts); drop it")
    cfg = _config(args)
    src = model_path(args)
    dense = dequantize_(args, load(src), src)
    data = checkpoint_data(src)
    shape = tuple(data["input_shape"])

    train_cfg = TrainConfig(epochs=max(args.finetune_epochs, 1), lr=args.lr, batch_size=args.batch_size, seed=args.seed)
    model = copy.deepcopy(dense)
    say(args, f"pruning ({args.method}{'' if args.ratio is None else f', ratio {args.ratio}'}) and fine-tuning "
              f"{args.finetune_epochs} epochs ...")
    result = prune_(model, cfg, PruneData(shape, data["train"], data["val"], train_cfg))
    agp = getattr(cfg, "schedule", "oneshot") == "agp"  # AGP already trained between its steps
    if args.finetune_epochs > 0 and not agp:
        finetune_(model, data["train"], train_cfg)
    finalize_(model)
    meta = read_header(src).get("meta", {})
    nbytes = save_model(model, out, meta)

    # the dense model saved as --out is (same format, same header): the file pruning is measured against
    before = model_figures(dense, shape, data["test"], out.suffix, meta)
    after = {**model_figures(model, shape, data["test"]), "bytes": nbytes}
    figures = {"model_file": str(src), "method": result.method, "ratio": args.ratio, "out": str(out),
               **after, "fp32_bytes": fp32_bytes(model), **baseline(dense),
               **{f"baseline_{k}": v for k, v in before.items() if k != "bytes"},
               "baseline_file_bytes": before["bytes"], "config": result.config}
    if "layer_ratios" in result.info:
        figures["layer_ratios"] = result.info["layer_ratios"]
        if args.ratio is None:  # --max-drop: the overall sparsity the per-layer ratios reached
            weights = result.info["sensitivity"]["params"]
            figures["ratio"] = sum(r * weights[n] for n, r in figures["layer_ratios"].items()) / sum(
                weights[n] for n in figures["layer_ratios"])
    if args.latency:
        figures["latency_ms"] = onnx_latencies(model, shape)
        figures["baseline_latency_ms"] = onnx_latencies(dense, shape)
    rows = [{"model": name, "accuracy": figures[f"{p}accuracy"], "params": figures[f"{p}params"],
             "nonzeros": figures[f"{p}nonzeros"], "flops": figures[f"{p}flops"], "fp32 bytes": figures[fp32],
             f"{out.suffix} bytes": figures[file]}
            for name, p, fp32, file in (("dense", "baseline_", "baseline_bytes", "baseline_file_bytes"),
                                        (f"pruned ({result.method})", "", "fp32_bytes", "bytes"))]
    table = format_table(rows) + "\n\n" + baseline_line(figures)
    if "layer_ratios" in figures:
        table += "\nper-layer ratios: " + ", ".join(f"{n} {r:.2f}" for n, r in figures["layer_ratios"].items())
    if args.latency:
        lat = [{"model": n, **figures[k]} for n, k in (("dense", "baseline_latency_ms"), ("pruned", "latency_ms"))]
        table += "\n\nONNX Runtime median ms (t=threads, b=batch)\n" + format_table(lat)
    emit(args, figures, table + f"\n\nsaved {out}")
    return 0


def _config(args: argparse.Namespace):
    """The pruning config the flags name; ``--ratios FILE`` means sensitivity pruning from a saved analysis."""
    from ..compress.prune import config_for, read_sensitivity
    from ..errors import CompactCLError

    if args.ratios is None:
        if args.max_drop is not None:
            raise CompactCLError("--max-drop reads the curves of a sensitivity analysis: give --ratios FILE too")
        if args.ratio is None:
            raise CompactCLError("give --ratio R (fraction to remove, e.g. 0.5) or --ratios FILE (per-layer ratios "
                                 "from `compactcl sensitivity`)")
        args.method = args.method or "magnitude"
        return config_for(args.method, args.ratio, **_options(args))
    if args.method not in (None, "sensitivity"):
        raise CompactCLError(f"--ratios gives per-layer ratios, which --method sensitivity applies; drop --method "
                             f"{args.method} (or drop --ratios)")
    if args.ratio is not None and args.max_drop is not None:
        raise CompactCLError("give --ratio (overall sparsity) or --max-drop (accuracy drop per layer), not both")
    args.method = "sensitivity"
    sens = read_sensitivity(args.ratios)
    ratio = args.ratio
    if ratio is None and args.max_drop is None:
        ratio = sens.extra.get("target")
        if ratio is None:
            raise CompactCLError(f"--ratios {args.ratios} holds curves but no recommended ratios (sensitivity ran "
                                 "without --target); give --ratio R (overall sparsity) or --max-drop D (e.g. 0.01)")
        args.ratio = ratio
    # with --max-drop the overall ratio is not used (0 keeps the config valid)
    return config_for("sensitivity", ratio or 0.0, sensitivity=sens, max_drop=args.max_drop, **_options(args))


def _options(args: argparse.Namespace) -> dict:
    """The method's options among the flags."""
    options: dict = {}
    if args.method in ("magnitude", "l1"):
        options["scope"] = args.scope
    if args.method == "magnitude":
        options["schedule"] = args.schedule
    if args.method == "l1":
        options.update(strength=args.l1_strength, epochs=args.l1_epochs)
    if args.method == "structured" and args.round_to:
        options["round_to"] = args.round_to
    if args.importance and args.method != "l1":
        options["importance"] = args.importance
    return options
