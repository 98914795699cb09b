"""CIFAR-shaped training on a GPU: compactcl's loop vs a bare PyTorch loop, and a protocol-shaped run.

Prepared for a GPU machine (issue 18, item 5); ``--smoke`` runs the same code on the CPU with
tiny sizes (figures then mean nothing, except the CPU ratio on ResNet-32 it prints).

1. Loop overhead: synthetic CIFAR-shaped uint8 images (N, 3, 32, 32), standardised once on the
   device; ResNet-32 (100 classes) and ResNet-18 (CIFAR stem, 10 classes) at batch 128 and 256;
   fp32, then bf16 autocast + channels_last + torch.compile, for both loops (helpers shared with
   ``train_overhead.py``). Target: ours / bare <= 1.10. Anchor: a bare loop on an H100 trained
   ResNet-18 at ~18.6k img/s fp32, ~27k img/s bf16 + channels_last + compile.
2. ``cifar100-b0-inc10`` end to end on synthetic CIFAR-100 binary files (500/100 per class
   unless ``--per-class``), a short schedule, on the run's device: per-task training and deploy
   seconds from metrics.json.

    python benchmarks/cifar_gpu.py                 # on a CUDA machine (about 10 minutes on an H100)
    python benchmarks/cifar_gpu.py --smoke         # CPU smoke run
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_overhead import bare_epoch, ours_epoch, side_by_side, sync  # noqa: E402

from compactcl.data.datasets import TensorData  # noqa: E402
from compactcl.models import IncrementalNet  # noqa: E402


def synthetic(n: int, classes: int, device: str) -> TensorData:
    """uint8 CIFAR-shaped images, standardised on the device (what a uint8 store feeds the loop)."""
    g = torch.Generator().manual_seed(0)
    u8 = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8).to(device)
    x = u8.float().div_(255).sub_(0.47).div_(0.25)
    return TensorData(x, torch.randint(0, classes, (n,), generator=g).to(device))


def fast_case(name: str, make, data: TensorData, batch: int, repeats: int, dev: str) -> dict:
    """bf16 + channels_last + compile, both loops; compile time excluded by two warm-up rounds."""
    model = make().to(dev, memory_format=torch.channels_last)
    x_cl = data.x.contiguous(memory_format=torch.channels_last)
    cl = TensorData(x_cl, data.y)
    step = torch.compile(lambda xb, yb: F.cross_entropy(model(xb), yb))
    steps = len(data) // batch
    t_bare, t_ours = [], []
    for r in range(2 + repeats):
        for which in ("bare", "ours"):
            model.to(memory_format=torch.channels_last)
            sync(dev)
            t0 = time.perf_counter()
            if which == "bare":
                bare_epoch(model, x_cl, cl.y, batch, steps, r, bf16=True, step_fn=step)
            else:
                ours_epoch(model, cl, batch, steps, r, dev, bf16=True, channels_last=True, compile=True)
            sync(dev)
            if r >= 2:
                (t_bare if which == "bare" else t_ours).append(time.perf_counter() - t0)
    mb, mo = statistics.median(t_bare), statistics.median(t_ours)
    print(f"{name:<44} steps {steps:5d}  bare {mb:8.3f}s  ours {mo:8.3f}s  ratio {mo / mb:5.3f}  "
          f"({steps * batch / mo:,.0f} img/s ours, {steps * batch / mb:,.0f} bare)", flush=True)
    return {"case": name, "ratio": mo / mb, "ours_img_s": steps * batch / mo, "bare_img_s": steps * batch / mb}


def loop_section(args) -> list[dict]:
    rows = []
    for backbone, classes in (("resnet32", 100), ("resnet18", 10)):
        data = synthetic(args.images, classes, args.device)
        make = lambda b=backbone, c=classes: IncrementalNet(b, 3, 32, c)  # noqa: E731
        for batch in args.batches:
            rows.append(side_by_side(f"{backbone} b{batch} fp32", make, data, batch, args.repeats, args.device,
                                     ours_kwargs={"channels_last": False}))
            if not args.no_fast:
                rows.append(fast_case(f"{backbone} b{batch} bf16+cl+compile", make, data, batch, args.repeats,
                                      args.device))
    return rows


def write_cifar100(folder: Path, per_class: int, test_per_class: int) -> Path:
    """cifar-100-binary/ with random pixels: records of coarse, fine label bytes + 3,072 pixels."""
    d = folder / "cifar-100-binary"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, k in (("train.bin", per_class), ("test.bin", test_per_class)):
        y = np.repeat(np.arange(100, dtype=np.uint8), k)
        rec = np.concatenate([(y // 5)[:, None], y[:, None], rng.integers(0, 256, (len(y), 3072), dtype=np.uint8)], 1)
        (d / name).write_bytes(rec.tobytes())
    return d


def protocol_section(args) -> None:
    from compactcl.pipeline.recipe import load_recipe
    from compactcl.pipeline.run import run_recipe

    with tempfile.TemporaryDirectory() as tmp:
        root = write_cifar100(Path(tmp), args.per_class, max(1, args.per_class // 5))
        sets = [f"data.root={root}", f"device={args.device}", f"learner.epochs={args.epochs}",
                f"learner.first_epochs={args.epochs}", f"data.tasks={args.tasks}"]
        if args.smoke:
            sets += ["model.options.width=4", "memory.size=40", "compress.budget.fraction_of_backbone=1.0",
                     "compress.steps=[{quantize: {method: linear, bits: 8, qat_epochs: 0}}]"]
        t0 = time.perf_counter()
        doc = run_recipe(load_recipe("cifar100-b0-inc10", sets), Path(tmp) / "run", progress=False,
                         log=lambda s: None)
        print(f"cifar100-b0-inc10 on synthetic data ({args.tasks} tasks, {args.epochs} epochs, {args.device}): "
              f"{time.perf_counter() - t0:.1f} s", flush=True)
        for t in doc["tasks"]:
            print(f"  task {t['index'] if 'index' in t else '?'}: seconds {json.dumps(t.get('seconds'))}, "
                  f"bytes {t['bytes']}, deployed accuracy {t['accuracy']['deployed']}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--images", type=int, default=256 * 40)
    p.add_argument("--batches", type=int, nargs="+", default=[128, 256])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-fast", action="store_true", help="skip bf16 + channels_last + compile")
    p.add_argument("--tasks", type=int, default=10)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--per-class", type=int, default=500)
    p.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU: checks the script, not the speed")
    args = p.parse_args()
    if args.smoke:
        args.device, args.images, args.batches, args.repeats, args.no_fast = "cpu", 320, [32], 3, True
        args.tasks, args.epochs, args.per_class = 2, 1, 3
        torch.set_num_threads(1)
    if args.device.startswith("cuda"):
        if not torch.cuda.is_available():
            sys.exit("no CUDA device visible; run with --smoke for the CPU check")
        torch.backends.cudnn.benchmark = True
        print(f"GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}", flush=True)
    rows = loop_section(args)
    print(f"worst ratio ours/bare: {max(r['ratio'] for r in rows):.3f} (target <= 1.10)", flush=True)
    protocol_section(args)


if __name__ == "__main__":
    main()
