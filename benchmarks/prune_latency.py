"""Pruning figures: FLOPs, accuracy, bytes and ONNX Runtime latency, dense vs pruned.

  channels   (a) 30% of channels removed from the small CNN on Fashion-MNIST, with and without
                 rounding channel counts to multiples of 8; fine-tuned; latency in ONNX Runtime.
  onnx       (b) ResNet-20 and MobileNetV2 pruned structurally, exported to ONNX, compared to PyTorch.
  latency    ONNX Runtime latency of dense vs 30%-pruned layouts (no rounding, multiples of 8 / 16).
  deep-compression  (c) LeNet-300-100: ~90% magnitude pruning + fine-tune + k-means + packed artifact.

Usage: python benchmarks/prune_latency.py channels --out notes/bench_channels.json
Training is kept short (CPU minutes); every figure printed is measured, nothing is assumed.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from compactcl.compress.prune import (MagnitudeConfig, PruneData, SensitivityConfig, StructuredConfig, channel_counts,
                                      finalize_, finetune_, prune_)
from compactcl.compress.prune.api import cross_entropy
from compactcl.export.measure import onnx_latencies, save_model
from compactcl.compress.prune.unstructured import layer_sparsity
from compactcl.data import TensorData, class_incremental, load_dataset
from compactcl.engine import TrainConfig, accuracy, train
from compactcl.metrics.model_stats import count_flops, count_nonzero, count_params
from compactcl.models import IncrementalNet


def _data(name: str, train_limit: int | None, seed: int = 0):
    ds = load_dataset(name)
    task = class_incremental(ds, tasks=1, seed=seed).tasks[0]
    tr = task.train
    if train_limit and len(tr) > train_limit:
        tr = tr.subset(torch.randperm(len(tr), generator=torch.Generator().manual_seed(seed))[:train_limit])
    return task, tr, (ds.in_channels, ds.input_size, ds.input_size)


def _figures(model, shape, test: TensorData, latency: bool) -> dict:
    with tempfile.TemporaryDirectory() as d:
        nbytes = save_model(model, Path(d) / "m.safetensors")
    out = {"accuracy": accuracy(model, test), "params": count_params(model), "nonzeros": count_nonzero(model),
           "flops": count_flops(model, shape), "checkpoint_bytes": nbytes}
    if latency:
        out["onnx_ms"] = onnx_latencies(model, shape, repeats=100)
    return out


def _train(model, data, epochs, lr, seed=0):
    t0 = time.time()
    train(model, data, cross_entropy, TrainConfig(epochs=epochs, lr=lr, seed=seed))
    return time.time() - t0


def _dense(backbone: str, shape, tr, epochs: int, cache: str | None, tag: str):
    """Train (or reload from ``cache``) the dense baseline: benchmarks rerun without retraining."""
    from compactcl.models import load_checkpoint, save_checkpoint

    path = Path(cache) / f"{tag}_{backbone}_{len(tr)}_{epochs}.safetensors" if cache else None
    if path is not None and path.is_file():
        return load_checkpoint(path), 0.0
    torch.manual_seed(0)
    model = IncrementalNet(backbone, shape[0], shape[1], 10)
    secs = _train(model, tr, epochs, 0.05)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_checkpoint(model, path)
    return model, secs


def _interleaved_latency(models: dict, shape, rounds: int = 3, repeats: int = 60) -> dict:
    """ONNX Runtime latency of several models, measured in alternating rounds (a busy machine's
    drift then hits every model alike); the median over rounds is reported."""
    from compactcl.export.onnx import export_onnx
    from compactcl.metrics.latency import onnx_latency_grid

    with tempfile.TemporaryDirectory() as d:
        paths = {name: Path(d) / f"{i}.onnx" for i, name in enumerate(models)}
        for name, m in models.items():
            export_onnx(m, paths[name], shape)  # once: the graphs do not change between rounds
        return onnx_latency_grid(paths, shape, repeats=repeats, rounds=rounds)


def channels(args) -> dict:
    task, tr, shape = _data(args.dataset, args.train_limit)
    dense, secs = _dense("cnn", shape, tr, args.epochs, args.cache, args.dataset)
    res = {"setup": {"dataset": args.dataset, "train_images": len(tr), "test_images": len(task.test),
                     "epochs": args.epochs, "finetune_epochs": args.finetune_epochs, "train_seconds": secs,
                     "torch_threads": torch.get_num_threads()},
           "dense": _figures(dense, shape, task.test, False)}
    res["dense"]["channels"] = {k: v for k, v in channel_counts(dense).items() if k != "head"}
    models = {"dense": dense}
    variants = {"pruned30": {}, "pruned30_round8": {"round_to": 8},
                "pruned30_round8_floor": {"round_to": 8, "round_mode": "floor"}}
    for name, opts in variants.items():
        m = copy.deepcopy(dense)
        prune_(m, StructuredConfig(ratio=args.ratio, **opts), PruneData(shape, tr))
        before_ft = accuracy(m, task.test)
        finetune_(m, tr, TrainConfig(epochs=args.finetune_epochs, lr=0.01))
        f = _figures(m, shape, task.test, False)
        f.update(options=opts, accuracy_before_finetune=before_ft,
                 channels={k: v for k, v in channel_counts(m).items() if k != "head"},
                 flops_reduction=1 - f["flops"] / res["dense"]["flops"],
                 accuracy_drop_points=100 * (res["dense"]["accuracy"] - f["accuracy"]))
        res[name] = f
        models[name] = m
    import os

    res["setup"]["load_average_before_latency"] = os.getloadavg()
    for name, lat in _interleaved_latency(models, shape).items():
        res[name]["onnx_ms"] = lat
    res["setup"]["load_average_after_latency"] = os.getloadavg()
    return res


def onnx_agreement(args) -> dict:
    from compactcl.export.onnx import agreement, export_onnx, onnx_predict

    task, tr, shape = _data(args.dataset, args.train_limit)
    res = {"setup": {"dataset": args.dataset, "train_images": len(tr), "epochs": args.epochs,
                     "finetune_epochs": args.finetune_epochs}}
    x = task.test.x[: args.check_images]
    for backbone in ("resnet20", "mobilenetv2"):
        dense, _ = _dense(backbone, shape, tr, args.epochs, args.cache, args.dataset)
        m = copy.deepcopy(dense)
        prune_(m, StructuredConfig(ratio=args.ratio), PruneData(shape, tr))
        finetune_(m, tr, TrainConfig(epochs=args.finetune_epochs, lr=0.01))
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "m.onnx"
            onnx_bytes = export_onnx(m, path, shape)
            ort = onnx_predict(path, x)
        with torch.no_grad():
            ref = m.eval()(x).numpy()
        res[backbone] = {"dense": _figures(dense, shape, task.test, True), "pruned": _figures(m, shape, task.test, True),
                         "onnx_bytes": onnx_bytes, "onnx_vs_torch_agreement": agreement(ort, ref),
                         "onnx_vs_torch_max_abs_diff": float(np.abs(ort - ref).max()), "checked_images": len(x)}
    return res


def latency(args) -> dict:
    """Structure-only timing: speed depends on layer shapes, not on weight values, so the pruned
    variants are timed without fine-tuning, in interleaved rounds, beside the dense model."""
    import os

    shape = (1, 28, 28)
    res = {"setup": {"rounds": args.rounds, "ratio": args.ratio, "load_average_before": os.getloadavg()}}
    for backbone in ("cnn", "mobilenetv2", "resnet20"):
        torch.manual_seed(0)
        dense = IncrementalNet(backbone, shape[0], shape[1], 10).eval()
        models = {"dense": dense}
        for name, opts in (("no_rounding", {}), ("round8", {"round_to": 8}), ("round16", {"round_to": 16}),
                           ("round8_floor", {"round_to": 8, "round_mode": "floor"})):
            m = copy.deepcopy(dense)
            prune_(m, StructuredConfig(ratio=args.ratio, **opts), PruneData(shape))
            models[name] = m
        lat = _interleaved_latency(models, shape, rounds=args.rounds)
        res[backbone] = {n: {"flops": count_flops(m, shape), "params": count_params(m), "onnx_ms": lat[n],
                             "channels": sorted(set(v for k, v in channel_counts(m).items() if k != "head"))}
                         for n, m in models.items()}
    res["setup"]["load_average_after"] = os.getloadavg()
    return res


DEEP_COMPRESSION_KEPT = {"backbone.body.1": 0.08, "backbone.body.3": 0.09, "head": 0.26}


def deep_compression(args) -> dict:
    task, tr, shape = _data(args.dataset, args.train_limit)
    dense, secs = _dense("lenet300", shape, tr, args.epochs, args.cache, args.dataset)
    with tempfile.TemporaryDirectory() as d:
        fp32_bytes = save_model(dense, Path(d) / "dense.safetensors")
    res = {"setup": {"dataset": args.dataset, "train_images": len(tr), "epochs": args.epochs, "train_seconds": secs,
                     "finetune_epochs": args.finetune_epochs, "ratio": args.ratio},
           "dense": {"accuracy": accuracy(dense, task.test), "params": count_params(dense),
                     "checkpoint_bytes": fp32_bytes}}
    variants = {"global": MagnitudeConfig(ratio=args.ratio, scope="global"),
                "global_agp": MagnitudeConfig(ratio=args.ratio, scope="global", schedule="agp", agp_steps=4),
                "sensitivity": SensitivityConfig(ratio=args.ratio, ratios=tuple(round(0.05 * i, 2) for i in range(20)))}
    best = None
    for name, cfg in variants.items():
        m = copy.deepcopy(dense)
        pd = PruneData(shape, tr, task.val, TrainConfig(epochs=args.finetune_epochs, lr=0.01))
        prune_(m, cfg, pd)
        if name != "global_agp":  # AGP fine-tunes between its steps
            finetune_(m, tr, pd.train_cfg)
        finalize_(m)
        kept = {k: 1 - v for k, v in layer_sparsity(m).items()}
        f = {"accuracy": accuracy(m, task.test), "nonzeros": count_nonzero(m),
             "kept_fraction": kept, "deep_compression_kept": DEEP_COMPRESSION_KEPT,
             "accuracy_drop_points": 100 * (res["dense"]["accuracy"] - accuracy(m, task.test))}
        res[name] = f
        if best is None or f["accuracy"] > res[best[0]]["accuracy"]:
            best = (name, m)
    res["packed"] = _pack(best[1], res, tr, task.test, args)
    res["packed"]["from_variant"] = best[0]
    return res


def _pack(model, res, tr, test, args) -> dict:
    """k-means quantize (shared codebook per layer) and write the packed artifact."""
    from compactcl.compress.quantize import KMeansQuantConfig, quantize_

    out = {"from_variant": None}
    m = copy.deepcopy(model)
    quantize_(m, KMeansQuantConfig(bits=args.bits))
    with tempfile.TemporaryDirectory() as d:
        nbytes = save_model(m, Path(d) / "m.ccl")
        from compactcl.api import load

        reloaded = load(Path(d) / "m.ccl")
    acc = accuracy(reloaded, test)
    out.update(bits=args.bits, artifact_bytes=nbytes, accuracy=acc,
               ratio_vs_fp32=res["dense"]["checkpoint_bytes"] / nbytes,
               accuracy_drop_points=100 * (res["dense"]["accuracy"] - acc))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("figure", choices=("channels", "onnx", "deep-compression", "latency"))
    p.add_argument("--rounds", type=int, default=5, help="latency: interleaved measurement rounds")
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--train-limit", type=int, default=None, help="train on the first N shuffled images only")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--finetune-epochs", type=int, default=1)
    p.add_argument("--ratio", type=float, default=None)
    p.add_argument("--bits", type=int, default=5, help="deep-compression: k-means bits (Deep Compression: 5 for fc)")
    p.add_argument("--check-images", type=int, default=2000)
    p.add_argument("--threads", type=int, default=None, help="torch threads for training (ONNX latency uses 1 and 2)")
    p.add_argument("--cache", default="/tmp/compactcl_bench", help="folder for trained dense baselines ('' = none)")
    p.add_argument("--out", default=None, help="write the figures as JSON here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.ratio is None:
        args.ratio = 0.9 if args.figure == "deep-compression" else 0.3
    fn = {"channels": channels, "onnx": onnx_agreement, "deep-compression": deep_compression,
          "latency": latency}[args.figure]
    t0 = time.time()
    res = fn(args)
    res.setdefault("setup", {})["total_seconds"] = time.time() - t0
    text = json.dumps(res, indent=2, default=float)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
