"""Quantization figures: linear vs log vs k-means at 2/3/4/6/8 bits, with and without QAT.

Trains (seeded) a small CNN on digits and LeNet-300-100 on Fashion-MNIST (all 10 classes),
then for every scheme reports test accuracy and the real size of the packed .ccl file
against the fp32 size (4 bytes a parameter). Bit widths here are fixed by the table; the
search on validation data is shown last (per-layer, byte budget).

    .venv/bin/python benchmarks/quantize_table.py --json /tmp/quantize_table.json
    .venv/bin/python benchmarks/quantize_table.py --models cnn --quick    # a minute or two
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from compactcl.compress.quantize import QATConfig, config_for, qat_, quantize_, search_layer_bits
from compactcl.data import class_incremental, load_dataset
from compactcl.export.artifact import artifact_nbytes, save_artifact
from compactcl.engine import TrainConfig, accuracy, train
from compactcl.metrics.model_stats import fp32_bytes
from compactcl.models import IncrementalNet

SETUPS = {
    "cnn": {"dataset": "digits", "backbone": "cnn", "kw": {"width": 32},
            "train": TrainConfig(epochs=20, lr=0.05, batch_size=64), "qat_epochs": 3},
    "lenet300": {"dataset": "fashion-mnist", "backbone": "lenet300", "kw": {},
                 "train": TrainConfig(epochs=10, lr=0.05, batch_size=128), "qat_epochs": 2},
}
QAT = {("kmeans", 4), ("kmeans", 3), ("kmeans", 2), ("log", 4), ("log", 3), ("log", 2), ("linear", 3), ("linear", 2)}


def ce(model, x, y):
    return F.cross_entropy(model(x), y)


def run_setup(name: str, quick: bool, tmp: Path) -> dict:
    s = SETUPS[name]
    ds = load_dataset(s["dataset"])
    task = class_incremental(ds, tasks=1, classes_per_task=10, seed=0).tasks[0]
    torch.manual_seed(0)
    net = IncrementalNet(s["backbone"], ds.in_channels, ds.input_size, 10, backbone_kwargs=s["kw"])
    cfg = dataclasses.replace(s["train"], epochs=3) if quick else s["train"]
    t0 = time.time()
    train(net, task.train, ce, cfg)
    base = accuracy(net, task.test)
    fp32 = fp32_bytes(net)
    print(f"[{name}] trained in {time.time() - t0:.0f}s: test accuracy {base:.4f}, fp32 {fp32} bytes", flush=True)
    rows = []

    def record(method: str, bits: int, model, qat_epochs: int, seconds: float) -> None:
        nbytes = save_artifact(model, tmp / f"{name}-{method}{bits}-{qat_epochs}.ccl")
        acc = accuracy(model, task.test)
        rows.append({"model": name, "method": method, "bits": bits, "qat_epochs": qat_epochs, "accuracy": acc,
                     "drop_points": 100 * (base - acc), "bytes": nbytes, "ratio": nbytes / fp32,
                     "seconds": round(seconds, 1)})
        r = rows[-1]
        print(f"  {method:6s} {bits}b qat={qat_epochs}: acc {acc:.4f} (drop {r['drop_points']:+.2f} pt) "
              f"{nbytes} B = {r['ratio']:.4f}x  [{seconds:.0f}s]", flush=True)

    fp_art = save_artifact(net, tmp / f"{name}-fp32.ccl")
    rows.append({"model": name, "method": "fp32", "bits": 32, "qat_epochs": 0, "accuracy": base, "drop_points": 0.0,
                 "bytes": fp_art, "ratio": fp_art / fp32, "seconds": 0})
    qat_epochs = 1 if quick else s["qat_epochs"]
    for method in ("linear", "log", "kmeans"):
        for bits in (8, 6, 4, 3, 2):
            qcfg = config_for(method, bits)
            t0 = time.time()
            m = quantize_(copy.deepcopy(net), qcfg)
            record(method, bits, m, 0, time.time() - t0)
            if (method, bits) in QAT:
                t0 = time.time()
                m = copy.deepcopy(net)
                qat_(m, qcfg, task.train, QATConfig(epochs=qat_epochs, lr=1e-3 if method != "kmeans" else 1e-3))
                record(method, bits, m, qat_epochs, time.time() - t0)
    # mixed precision under a byte budget, chosen on the validation split
    budget = int(0.09 * fp32)
    t0 = time.time()
    res = search_layer_bits(net, "kmeans", task.val, tolerance=None, budget_bytes=budget, choices=(8, 6, 4, 3, 2),
                            size_of=artifact_nbytes)
    m = quantize_(copy.deepcopy(net), res.config)
    search = {"budget_bytes": budget, "bits": res.bits, "met": res.met, "val_accuracy": res.val_accuracy,
              "test_accuracy": accuracy(m, task.test), "bytes": save_artifact(m, tmp / f"{name}-mixed.ccl"),
              "seconds": round(time.time() - t0, 1)}
    print(f"  search kmeans budget {budget} B -> {res.bits}, {search['bytes']} B, test acc {search['test_accuracy']:.4f}",
          flush=True)
    return {"model": name, "dataset": s["dataset"], "backbone": s["backbone"], "params": fp32 // 4,
            "fp32_bytes": fp32, "baseline_accuracy": base, "rows": rows, "search": search, "net": net, "task": task}


def markdown(results: list[dict]) -> str:
    out = []
    for r in results:
        out.append(f"\n### {r['backbone']} on {r['dataset']} — fp32 test accuracy {r['baseline_accuracy']:.4f}, "
                   f"fp32 {r['fp32_bytes']:,} bytes ({r['params']:,} params)\n")
        out.append("| method | bits | QAT epochs | test acc | drop (pt) | .ccl bytes | x fp32 |")
        out.append("|---|---|---|---|---|---|---|")
        for row in r["rows"]:
            out.append(f"| {row['method']} | {row['bits']} | {row['qat_epochs']} | {row['accuracy']:.4f} | "
                       f"{row['drop_points']:+.2f} | {row['bytes']:,} | {row['ratio']:.4f} |")
    return "\n".join(out)


def onnx_figures(r: dict, tmp: Path) -> dict:
    from compactcl.export.onnx import export_checked

    net, task = r["net"], r["task"]
    shape = tuple(task.train.x.shape[1:])
    fp = export_checked(net, tmp / f"{r['model']}.onnx", shape, task.test.x, task.test.y)
    i8 = export_checked(net, tmp / f"{r['model']}.int8.onnx", shape, task.test.x, task.test.y, int8=True,
                        calib_x=task.train.x)
    print(f"  onnx fp32 agreement {fp['agreement']:.4f} acc {fp['accuracy']:.4f}; int8 acc {i8['accuracy']:.4f} "
          f"(torch {i8['torch_accuracy']:.4f}) {i8['bytes']} B; speedup int8/fp32 {i8['speedup_vs_fp32']}", flush=True)
    return {"fp32": fp, "int8": i8}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="cnn,lenet300")
    ap.add_argument("--quick", action="store_true", help="3 training epochs, 1 QAT epoch (smoke run)")
    ap.add_argument("--no-onnx", action="store_true")
    ap.add_argument("--json", default=None, help="write all figures here")
    args = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for name in args.models.split(","):
            r = run_setup(name, args.quick, tmp)
            if not args.no_onnx:
                r["onnx"] = onnx_figures(r, tmp)
            results.append(r)
    print(markdown(results))
    if args.json:
        clean = [{k: v for k, v in r.items() if k not in ("net", "task")} for r in results]
        Path(args.json).write_text(json.dumps(clean, indent=2, default=float))


if __name__ == "__main__":
    main()
