"""Overhead of compactcl's training loop against a bare PyTorch loop, measured side by side.

CPU section: one epoch (same steps, same batch, same model, same in-memory tensors, same
optimizer: SGD momentum 0.9, wd 5e-4) of ``compactcl.engine.loop.train`` with the
fine-tuning loss vs a hand-written loop (randperm, index, forward, cross-entropy, zero_grad,
backward, step). Models: the MLP 784-400-400 and the small CNN (width 32) on Fashion-MNIST
(falls back to the built-in digits when the IDX files are absent). The two loops alternate,
``--repeats`` times each; the medians and their ratio are printed. Ours reads the data as a run
does (uint8 pixels, normalised per batch); the bare loop indexes the ready float32 tensor.

ResNet-32 case (CPU): PyCIL's CIFAR ResNet-32 at 32x32x3 on seeded synthetic uint8 images
(``--resnet-steps`` batches of ``--resnet-batch``), same alternation and medians.

GPU section (only when CUDA is available): a ResNet-18 (CIFAR stem) at 32x32, batch 256,
images/s of the bare loop vs ours, fp32 and bf16 autocast + channels_last + torch.compile.

    python benchmarks/train_overhead.py                 # CPU (+ GPU when present)
    python benchmarks/train_overhead.py --limit 20000   # a shorter epoch
    python benchmarks/train_overhead.py --only-resnet32 --repeats 7   # the ResNet-32 ratio alone
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from compactcl.data import load_dataset
from compactcl.data.datasets import PixelScale, TensorData
from compactcl.engine.loop import TrainConfig, train
from compactcl.models import IncrementalNet


def ce(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(x), y)


def bare_epoch(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int, steps: int, seed: int,
               bf16: bool = False, step_fn=None) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed)).to(x.device)
    fwd = step_fn or (lambda xb, yb: F.cross_entropy(model(xb), yb))
    model.train()
    for s in range(steps):
        idx = order[s * batch: (s + 1) * batch]
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = fwd(x[idx], y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def ours_epoch(model: nn.Module, data: TensorData, batch: int, steps: int, seed: int, device: str,
               **speed) -> None:
    train(model, data, ce, TrainConfig(iterations=steps, batch_size=batch, lr=0.01, schedule="constant",
                                       device=device, seed=seed, **speed))


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def side_by_side(name: str, make, data: TensorData, batch: int, repeats: int, device: str,
                 bare_kwargs=None, ours_kwargs=None, warmup: int = 1) -> dict:
    steps = len(data) // batch
    x, y = data.x.to(device), data.y.to(device)
    model = make().to(device)
    bare_kwargs, ours_kwargs = bare_kwargs or {}, ours_kwargs or {}
    t_bare, t_ours = [], []
    for r in range(warmup + repeats):
        for which in ("bare", "ours"):
            sync(device)
            t0 = time.perf_counter()
            if which == "bare":
                bare_epoch(model, x, y, batch, steps, r, **bare_kwargs)
            else:
                ours_epoch(model, data, batch, steps, r, device, **ours_kwargs)
            sync(device)
            dt = time.perf_counter() - t0
            if r >= warmup:
                (t_bare if which == "bare" else t_ours).append(dt)
    mb, mo = statistics.median(t_bare), statistics.median(t_ours)
    row = {"case": name, "steps": steps, "batch": batch, "bare_s": mb, "ours_s": mo, "ratio": mo / mb,
           "bare_img_s": steps * batch / mb, "ours_img_s": steps * batch / mo}
    print(f"{name:<44} steps {steps:5d}  bare {mb:8.3f}s  ours {mo:8.3f}s  ratio {mo / mb:5.3f}  "
          f"({row['ours_img_s']:,.0f} img/s ours)", flush=True)
    return row


# ---- a ResNet-18 with the CIFAR stem (3x3 conv, no max-pool), for the GPU throughput check ----
class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.c2, self.b2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.short = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                      if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x):
        return F.relu(self.b2(self.c2(F.relu(self.b1(self.c1(x))))) + self.short(x))


class ResNet18(nn.Module):
    def __init__(self, classes: int = 10):
        super().__init__()
        layers, cin = [nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU()], 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [Block(cin, cout, stride), Block(cout, cout, 1)]
            cin = cout
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(512, classes)

    def forward(self, x):
        return self.head(self.body(x))


def cpu_section(args) -> list[dict]:
    try:
        ds = load_dataset("fashion-mnist")
        source = "fashion-mnist"
    except Exception as e:  # noqa: BLE001 - the fallback is the point
        print(f"(fashion-mnist unavailable: {e}; using digits)")
        ds, source = load_dataset("digits"), "digits"
    data = ds.train
    if args.limit and len(data) > args.limit:
        data = data.subset(torch.arange(args.limit))
    size = data.shape[-1]
    print(f"CPU: {source} train {data.shape} {data.images.dtype}, torch threads {torch.get_num_threads()}, "
          f"repeats {args.repeats} (median)", flush=True)
    rows = []
    for name, make, batch in (
            ("mlp 784-400-400, batch 64", lambda: IncrementalNet("mlp", 1, size, 10, {"hidden": [400, 400]}), 64),
            ("mlp 784-400-400, batch 256", lambda: IncrementalNet("mlp", 1, size, 10, {"hidden": [400, 400]}), 256),
            ("small cnn (width 32), batch 64", lambda: IncrementalNet("cnn", 1, size, 10, {"width": 32}), 64)):
        torch.manual_seed(0)
        rows.append(side_by_side(name, make, data, batch, args.repeats, "cpu"))
    return rows


def resnet32_section(args) -> list[dict]:
    """ResNet-32 (CIFAR, 0.46M parameters) at 32x32x3: ours on uint8 pixels vs the bare loop on floats."""
    n, b = args.resnet_steps * args.resnet_batch, args.resnet_batch
    g = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    scale = PixelScale(255, (0.507, 0.487, 0.441), (0.267, 0.256, 0.276))
    data = TensorData(pixels, torch.randint(0, 10, (n,), generator=g), scale)
    print(f"CPU: ResNet-32, synthetic uint8 {data.shape}, batch {b}, torch threads {torch.get_num_threads()}, "
          f"repeats {args.repeats} (median)", flush=True)
    torch.manual_seed(0)
    return [side_by_side(f"resnet32 32x32, batch {b}", lambda: IncrementalNet("resnet32", 3, 32, 10), data, b,
                         args.repeats, "cpu")]


def gpu_section(args) -> list[dict]:
    dev, b = args.gpu_device, args.gpu_batch
    name = torch.cuda.get_device_name(0) if dev.startswith("cuda") else f"{dev} (smoke run of the GPU section)"
    print(f"GPU: {name}, ResNet-18 (CIFAR stem) 32x32, batch {b}")
    n = args.gpu_images
    g = torch.Generator().manual_seed(0)
    # Both loops read the same device-resident tensors: the comparison is the loop, not a copy.
    data = TensorData(torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g))
    data = TensorData(data.x.to(dev), data.y.to(dev))
    torch.backends.cudnn.benchmark = True
    rows = [side_by_side("resnet18 fp32", ResNet18, data, b, args.repeats, dev,
                         ours_kwargs={"channels_last": False}, warmup=1)]

    def fast():
        return ResNet18().to(dev, memory_format=torch.channels_last)

    compiled = {}

    def bare_fast_step(model):
        if model not in compiled:
            compiled[model] = torch.compile(lambda xb, yb: F.cross_entropy(model(xb), yb))
        return compiled[model]

    x_cl = data.x.contiguous(memory_format=torch.channels_last)
    data = TensorData(x_cl, data.y)
    model = fast()
    # the bare fast loop: channels_last input, bf16 autocast, compiled forward + loss
    t_bare, t_ours = [], []
    steps = n // b
    for r in range(2 + args.repeats):
        for which in ("bare", "ours"):
            if which == "bare":  # ours hands the model back contiguous (safetensors needs it); untimed here
                model.to(memory_format=torch.channels_last)
            sync(dev)
            t0 = time.perf_counter()
            if which == "bare":
                bare_epoch(model, x_cl, data.y, b, steps, r, bf16=True, step_fn=bare_fast_step(model))
            else:
                ours_epoch(model, data, b, steps, r, dev, bf16=True, channels_last=True, compile=True)
            sync(dev)
            if r >= 2:
                (t_bare if which == "bare" else t_ours).append(time.perf_counter() - t0)
    mb, mo = statistics.median(t_bare), statistics.median(t_ours)
    print(f"{'resnet18 bf16+channels_last+compile':<44} steps {steps:5d}  bare {mb:8.3f}s  ours {mo:8.3f}s  "
          f"ratio {mo / mb:5.3f}  ({steps * b / mo:,.0f} img/s ours, {steps * b / mb:,.0f} bare)")
    rows.append({"case": "resnet18 bf16+cl+compile", "ratio": mo / mb, "ours_img_s": steps * b / mo,
                 "bare_img_s": steps * b / mb})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--limit", type=int, default=0, help="use the first N training images (0: all)")
    p.add_argument("--gpu-images", type=int, default=256 * 40)
    p.add_argument("--gpu-batch", type=int, default=256)
    p.add_argument("--no-cpu", action="store_true")
    p.add_argument("--resnet-steps", type=int, default=8, help="batches of the ResNet-32 case")
    p.add_argument("--resnet-batch", type=int, default=64)
    p.add_argument("--only-resnet32", action="store_true", help="the ResNet-32 case alone (no GPU section)")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: PyTorch's default)")
    p.add_argument("--gpu-device", default="cuda",
                   help="device of the GPU section; 'cpu' smoke-runs it without a GPU (figures meaningless)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, python {platform.python_version()}, {platform.processor() or platform.machine()}",
          flush=True)
    if args.only_resnet32:
        rows = resnet32_section(args)
        print(f"ratio ours/bare: {rows[0]['ratio']:.3f} (target <= 1.10)")
        return
    rows = [] if args.no_cpu else cpu_section(args) + resnet32_section(args)
    if torch.cuda.is_available() or not args.gpu_device.startswith("cuda"):
        rows += gpu_section(args)
    else:
        print("GPU: none visible, GPU section skipped")
    worst = max(r["ratio"] for r in rows) if rows else float("nan")
    print(f"worst ratio ours/bare: {worst:.3f} (target <= 1.10)")


if __name__ == "__main__":
    main()
