"""ONNX Runtime latency: fp32 vs int8 QDQ (with and without ORT pre-processing), measured, not assumed.

Prints median milliseconds per inference (batch 1 and 64, 1 and 2 threads) and the ratio
fp32 / int8 (> 1 means int8 is faster). Whether int8 wins depends on the CPU (VNNI) and on
the model: small convolutions are dominated by quantize/dequantize overhead.

    .venv/bin/python benchmarks/onnx_latency.py                      # trains the digits CNN (width 32)
    .venv/bin/python benchmarks/onnx_latency.py --checkpoint runs/demo --repeats 200
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F


def cpu_flags() -> str:
    try:
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return "unknown"
    return ",".join(f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", default=None, help="model file or run folder (default: train a digits CNN)")
    ap.add_argument("--backbone", default="cnn")
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=100)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)  # training a tiny model: one thread avoids oversubscription

    from compactcl.export.int8 import quantize_onnx_int8
    from compactcl.export.onnx import agreement, export_onnx, onnx_predict
    from compactcl.metrics.latency import onnx_latency_ms, torch_latency_ms

    if args.checkpoint:
        import compactcl

        model = compactcl.load(args.checkpoint)
        data = compactcl.checkpoint_data(args.checkpoint)
        train_x, test_x, test_y, shape = data["train"].x, data["test"].x, data["test"].y, data["input_shape"]
    else:
        from compactcl.data import class_incremental, load_dataset
        from compactcl.engine import TrainConfig, train
        from compactcl.models import IncrementalNet

        torch.manual_seed(0)
        task = class_incremental(load_dataset("digits"), 1, 10, seed=0).tasks[0]
        kw = {"width": args.width} if args.backbone == "cnn" else {}
        model = IncrementalNet(args.backbone, 1, 8, 10, backbone_kwargs=kw)
        train(model, task.train, lambda m, x, y: F.cross_entropy(m(x), y), TrainConfig(epochs=args.epochs))
        train_x, test_x, test_y, shape = task.train.x, task.test.x, task.test.y, (1, 8, 8)
    model.eval()
    y = test_y.numpy()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        paths = {"fp32": tmp / "fp32.onnx"}
        export_onnx(model, paths["fp32"], shape)
        for name, pre, act in (("int8 u8s8 + preprocess", True, "QUInt8"), ("int8 u8s8, no preprocess", False, "QUInt8"),
                               ("int8 s8s8 + preprocess", True, "QInt8")):
            paths[name] = tmp / f"{len(paths)}.onnx"
            quantize_onnx_int8(paths["fp32"], paths[name], train_x, preprocess=pre, activation_type=act)
        ref = onnx_predict(paths["fp32"], test_x)
        rows = []
        for name, path in paths.items():
            logits = onnx_predict(path, test_x)
            row = {"graph": name, "bytes": path.stat().st_size, "accuracy": float((logits.argmax(1) == y).mean()),
                   "agreement_vs_fp32": agreement(logits, ref)}
            for b in (1, 64):
                for t in (1, 2):
                    row[f"b{b}_t{t}_ms"] = onnx_latency_ms(path, shape, batch=b, threads=t, repeats=args.repeats)
            rows.append(row)
        eager = {f"b{b}_t1_ms": torch_latency_ms(model, shape, batch=b, repeats=args.repeats) for b in (1, 64)}
    print(f"CPU flags: {cpu_flags()}; torch {torch.__version__}")
    keys = [k for k in rows[0] if k.endswith("_ms")]
    print("| graph | bytes | test acc | agree vs fp32 | " + " | ".join(keys) + " |")
    print("|---" * (4 + len(keys)) + "|")
    for r in rows:
        print(f"| {r['graph']} | {r['bytes']:,} | {r['accuracy']:.4f} | {r['agreement_vs_fp32']:.4f} | "
              + " | ".join(f"{r[k]:.3f}" for k in keys) + " |")
    print("\nratio fp32/int8 (>1 = int8 faster):")
    for r in rows[1:]:
        print(f"  {r['graph']}: " + ", ".join(f"{k[:-3]} {rows[0][k] / r[k]:.2f}x" for k in keys))
    print("PyTorch eager (1 thread): " + ", ".join(f"{k} {v:.3f}" for k, v in eager.items()))
    if args.json:
        Path(args.json).write_text(json.dumps({"cpu_flags": cpu_flags(), "rows": rows, "torch_eager": eager}, indent=2))


if __name__ == "__main__":
    main()
