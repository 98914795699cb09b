"""Peers side by side on the same trained model, in one run.

  prune     Torch-Pruning's own pruner (MetaPruner with its GroupMagnitudeImportance / GroupTaylorImportance,
            its floor rounding) vs compactcl's structural pruning (the same DependencyGraph, our
            importance registry, nearest rounding). Same ratio, same one-epoch fine-tune, same seed.
  quantize  ONNX Runtime's own quantizer at its defaults (quantize_dynamic; quantize_static: per-tensor,
            QInt8 activations, no pre-processing) vs compactcl's int8 export (quantize_static per-channel,
            pre-processed graph, uint8 activations) and compactcl's packed weight artifacts (.ccl:
            linear 8-bit, k-means 4-bit, k-means 4-bit + 1 epoch QAT).

Reported: test accuracy, bytes on disk, MACs, ONNX Runtime median latency at batch 1 and 64 with 1 and
2 threads (models measured in alternating rounds so a busy machine's drift hits all alike).
The .ccl artifacts store weights only: they are unpacked to fp32 at load time, so they run at the fp32
graph's speed — their point is bytes on disk and over the air, not latency.

    .venv/bin/python benchmarks/peers.py prune --out notes/bench/peers_prune.json
    .venv/bin/python benchmarks/peers.py quantize --out notes/bench/peers_quantize.json
    .venv/bin/python benchmarks/peers.py quantize --backbone lenet300 --epochs 10 --train-limit 0

The dense model is trained once and cached (``--cache``) by ``prune_latency.py``'s helper.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # reuse prune_latency's data/baseline helpers
from prune_latency import _data, _dense  # noqa: E402

from compactcl.compress.prune import PruneData, StructuredConfig, finetune_, prune_  # noqa: E402
from compactcl.compress.prune.api import accumulate_grads  # noqa: E402
from compactcl.compress.prune.structured import refresh_out_dims_  # noqa: E402
from compactcl.engine import TrainConfig, accuracy  # noqa: E402
from compactcl.metrics.latency import onnx_latency_grid  # noqa: E402
from compactcl.metrics.model_stats import count_flops, count_params  # noqa: E402

LATENCY_KEYS = [(t, b) for t in (1, 2) for b in (1, 64)]


def _onnx_accuracy(path: Path, test) -> float:
    from compactcl.export.onnx import onnx_predict

    return float((onnx_predict(path, test.x).argmax(1) == test.y.numpy()).mean())


# --------------------------------------------------------------------------------------------- prune

def _tp_prune(model, shape, ratio: float, importance: str, round_to: int | None, train) -> None:
    """Torch-Pruning used the way its README shows: MetaPruner, its own group importance, head ignored."""
    import torch_pruning as tp

    imp = {"magnitude": tp.importance.GroupMagnitudeImportance(p=2),
           "taylor": tp.importance.GroupTaylorImportance()}[importance]
    example = torch.zeros(1, *shape)
    model.eval()
    if importance == "taylor":
        accumulate_grads(model, train)
    pruner = tp.pruner.MetaPruner(model, example, importance=imp, pruning_ratio=ratio, ignored_layers=[model.head],
                                  round_to=round_to)
    pruner.step()
    refresh_out_dims_(model, example)  # our bookkeeping (feature_dim), not a pruning decision


def prune(args) -> dict:
    task, tr, shape = _data(args.dataset, args.train_limit or None)
    dense, _ = _dense(args.backbone, shape, tr, args.epochs, args.cache, args.dataset)
    dense.eval()
    variants = {
        "compactcl l2": ("ours", {"importance": "l2"}),
        "torch-pruning magnitude (l2)": ("tp", {"importance": "magnitude"}),
        "compactcl taylor": ("ours", {"importance": "taylor"}),
        "torch-pruning taylor": ("tp", {"importance": "taylor"}),
        "compactcl l2, round_to 8 (nearest)": ("ours", {"importance": "l2", "round_to": 8}),
        "torch-pruning magnitude, round_to 8 (floor)": ("tp", {"importance": "magnitude", "round_to": 8}),
        "compactcl l2, round_to 8 (floor, as Torch-Pruning)": ("ours", {"importance": "l2", "round_to": 8,
                                                                         "round_mode": "floor"}),
    }
    rows = {"dense": {"accuracy": accuracy(dense, task.test), "params": count_params(dense),
                      "macs": count_flops(dense, shape), "prune_seconds": 0.0}}
    models = {"dense": dense}
    for name, (who, opts) in variants.items():
        m = copy.deepcopy(dense)
        torch.manual_seed(args.seed)
        t0 = time.perf_counter()
        if who == "ours":
            prune_(m, StructuredConfig(ratio=args.ratio, **opts), PruneData(shape, tr))
        else:
            _tp_prune(m, shape, args.ratio, opts["importance"], opts.get("round_to"), tr)
        secs = time.perf_counter() - t0
        before = accuracy(m, task.test)
        finetune_(m, tr, TrainConfig(epochs=args.finetune_epochs, lr=0.01, seed=args.seed))
        m.eval()
        rows[name] = {"accuracy_before_finetune": before, "accuracy": accuracy(m, task.test),
                      "params": count_params(m), "macs": count_flops(m, shape), "prune_seconds": secs}
        models[name] = m
        print(f"{name}: {rows[name]}", flush=True)
    from compactcl.export.onnx import export_onnx

    with tempfile.TemporaryDirectory() as d:
        paths = {name: Path(d) / f"{i}.onnx" for i, name in enumerate(models)}
        for name, m in models.items():
            export_onnx(m, paths[name], shape)
        lat = onnx_latency_grid(paths, shape, repeats=args.repeats, rounds=args.rounds)
    for name in rows:
        rows[name]["onnx_ms"] = lat[name]
    return {"figure": "prune", "setup": _setup(args, tr, task), "rows": rows}


# ------------------------------------------------------------------------------------------ quantize

def quantize(args) -> dict:
    import onnxruntime
    from onnxruntime.quantization import QuantType, quantize_dynamic, quantize_static

    from compactcl.compress.quantize import QATConfig, config_for, qat_, quantize_
    from compactcl.export.artifact import load_artifact, save_artifact
    from compactcl.export.int8 import _reader, quantize_onnx_int8
    from compactcl.export.onnx import export_onnx

    task, tr, shape = _data(args.dataset, args.train_limit or None)
    dense, _ = _dense(args.backbone, shape, tr, args.epochs, args.cache, args.dataset)
    dense.eval()
    calib = tr.x[torch.randperm(len(tr), generator=torch.Generator().manual_seed(0))[:512]]
    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        fp32 = tmp / "fp32.onnx"
        export_onnx(dense, fp32, shape)
        graphs = {"fp32 ONNX": fp32, "onnxruntime quantize_dynamic (defaults)": tmp / "dyn.onnx",
                  "onnxruntime quantize_static (defaults)": tmp / "static.onnx",
                  "compactcl int8 ONNX (per-channel, pre-processed)": tmp / "ours.onnx"}
        t0 = time.perf_counter()
        quantize_dynamic(str(fp32), str(graphs["onnxruntime quantize_dynamic (defaults)"]), weight_type=QuantType.QInt8)
        secs = {"onnxruntime quantize_dynamic (defaults)": time.perf_counter() - t0}
        t0 = time.perf_counter()
        quantize_static(str(fp32), str(graphs["onnxruntime quantize_static (defaults)"]),
                        _reader(calib.numpy(), "input", 64))
        secs["onnxruntime quantize_static (defaults)"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        quantize_onnx_int8(fp32, graphs["compactcl int8 ONNX (per-channel, pre-processed)"], calib)
        secs["compactcl int8 ONNX (per-channel, pre-processed)"] = time.perf_counter() - t0
        for name, path in graphs.items():
            rows[name] = {"accuracy": _onnx_accuracy(path, task.test), "bytes": path.stat().st_size,
                          "quantize_seconds": secs.get(name, 0.0)}
        artifacts = {"compactcl .ccl linear 8-bit": (config_for("linear", 8), 0),
                     "compactcl .ccl k-means 4-bit": (config_for("kmeans", 4), 0),
                     "compactcl .ccl k-means 4-bit + QAT": (config_for("kmeans", 4), args.qat_epochs)}
        for name, (cfg, qat_epochs) in artifacts.items():
            m = copy.deepcopy(dense)
            t0 = time.perf_counter()
            if qat_epochs:
                qat_(m, cfg, tr, QATConfig(epochs=qat_epochs, seed=args.seed))
            else:
                quantize_(m, cfg)
            secs_q = time.perf_counter() - t0
            path = tmp / f"{len(rows)}.ccl"
            nbytes = save_artifact(m, path)
            rows[name] = {"accuracy": accuracy(load_artifact(path), task.test), "bytes": nbytes,  # the file, reloaded
                          "quantize_seconds": secs_q, "runs_as": "fp32 ONNX (weights unpacked at load)"}
            print(f"{name}: {rows[name]}", flush=True)
        lat = onnx_latency_grid(graphs, shape, repeats=args.repeats, rounds=args.rounds)
    for name in graphs:
        rows[name]["onnx_ms"] = lat[name]
    setup = _setup(args, tr, task)
    setup.update(onnxruntime=onnxruntime.__version__, fp32_parameters=count_params(dense), calibration_images=len(calib))
    return {"figure": "quantize", "setup": setup, "rows": rows}


# ---------------------------------------------------------------------------------------------- main

def _setup(args, tr, task) -> dict:
    import torch_pruning

    from onnx_latency import cpu_flags

    return {"dataset": args.dataset, "backbone": args.backbone, "train_images": len(tr), "test_images": len(task.test),
            "epochs": args.epochs, "ratio": args.ratio, "finetune_epochs": args.finetune_epochs, "seed": args.seed,
            "torch": torch.__version__, "torch_pruning": torch_pruning.__version__, "cpu_flags": cpu_flags(),
            "cpus": os.cpu_count(), "load_average": os.getloadavg(), "torch_threads": torch.get_num_threads()}


def markdown(res: dict) -> str:
    rows = res["rows"]
    dense = rows.get("dense") or rows["fp32 ONNX"]
    lat_head = " | ".join(f"ms t{t} b{b}" for t, b in LATENCY_KEYS)
    if res["figure"] == "prune":
        out = [f"| method | acc before FT | acc | MACs | params | {lat_head} |", "|---" * (5 + len(LATENCY_KEYS)) + "|"]
        for name, r in rows.items():
            lat = " | ".join(f"{r['onnx_ms'][f't{t}_b{b}']:.3f}" for t, b in LATENCY_KEYS)
            before = f"{r['accuracy_before_finetune']:.4f}" if "accuracy_before_finetune" in r else "—"
            out.append(f"| {name} | {before} | {r['accuracy']:.4f} | {r['macs']:,} | {r['params']:,} | {lat} |")
    else:
        out = [f"| method | acc | drop vs fp32 (pt) | bytes | {lat_head} |", "|---" * (4 + len(LATENCY_KEYS)) + "|"]
        for name, r in rows.items():
            lat = (" | ".join(f"{r['onnx_ms'][f't{t}_b{b}']:.3f}" for t, b in LATENCY_KEYS) if "onnx_ms" in r
                   else " | ".join(["(fp32)"] * len(LATENCY_KEYS)))
            drop = round(100 * (dense["accuracy"] - r["accuracy"]), 2) + 0.0  # no "-0.00"
            out.append(f"| {name} | {r['accuracy']:.4f} | {drop:+.2f} | {r['bytes']:,} | {lat} |")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("figure", choices=("prune", "quantize"))
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--backbone", default="cnn")
    p.add_argument("--train-limit", type=int, default=20000, help="train on the first N shuffled images (0 = all)")
    p.add_argument("--epochs", type=int, default=3, help="dense model's training epochs")
    p.add_argument("--ratio", type=float, default=0.3, help="prune: fraction of channels removed")
    p.add_argument("--finetune-epochs", type=int, default=1)
    p.add_argument("--qat-epochs", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rounds", type=int, default=3, help="alternating latency rounds (median reported)")
    p.add_argument("--repeats", type=int, default=60)
    p.add_argument("--threads", type=int, default=1, help="torch threads for training/fine-tuning")
    p.add_argument("--cache", default="/tmp/compactcl_bench", help="folder for trained dense baselines ('' = none)")
    p.add_argument("--out", default=None, help="write the figures as JSON here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    res = prune(args) if args.figure == "prune" else quantize(args)
    print(json.dumps(res["setup"]))
    print(markdown(res))
    if args.out:
        from compactcl.utils.atomic import atomic_write_json

        atomic_write_json(args.out, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
