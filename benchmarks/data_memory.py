"""Peak memory (RSS) of a whole run over a CIFAR-100-sized data set, against the data's uint8 bytes.

Writes synthetic CIFAR-100 *binary* files (``train.bin``: 50,000 records, ``test.bin``: 10,000;
each record 2 label bytes + 3,072 pixel bytes, 100 classes, seeded random pixels) into a
temporary folder, then runs two child processes with the same interpreter:

- **run**: ``compactcl run`` (the CLI's ``main``) over those files, 10 tasks x 10 classes,
  iCaRL (herding, 2,000 exemplars), a small CNN, one epoch a task, no compression (tiny model,
  so the data dominates), then prints its peak RSS (``resource.getrusage(RUSAGE_SELF).ru_maxrss``)
  and writes the names of every module it had imported;
- **baseline**: imports exactly those modules (torch, compactcl, and what a run pulls in lazily:
  matplotlib for the report, sympy through torch, PIL, ...), does nothing else, and prints its
  peak RSS the same way.

The figure is ``(run peak - baseline peak) / uint8 bytes``, where the uint8 bytes are those of
the 50,000 training images (153.6 MB; the 10,000 test images add 30.7 MB and are *not* counted in
the denominator, so the ratio is the conservative one; both are printed). What is subtracted is
exactly the baseline process's peak RSS: the interpreter and every module the run had imported.

That difference still holds what a run costs whatever its data: one training step's activations
(batch 128), evaluation batches, torch's kernel caches, the allocator's free blocks. A third child,
**small**, is the same run over a tenth of the images; ``(run peak - small peak) /
(image bytes - small image bytes)`` is what each byte of data costs: the slope, printed too.

    python benchmarks/data_memory.py                    # prints the figures
    python benchmarks/data_memory.py --train 5000 --test 1000 --epochs 1   # a quick check
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

PIXELS = 3 * 32 * 32
BASELINE = """
import importlib, json, resource, sys
for name in json.load(open(sys.argv[1])):
    try:
        importlib.import_module(name)
    except Exception:  # noqa: BLE001 - a module that only imports inside its package's own import order
        pass
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""
RUN = """
import json, resource, sys
from compactcl.cli.main import main
code = main(sys.argv[2:])
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
json.dump(sorted(n for n, m in sys.modules.items() if m is not None and n != "__main__"), open(sys.argv[1], "w"))
print(peak)
sys.exit(code or 0)
"""


def write_cifar100(folder: Path, n: int, name: str, seed: int, chunk: int = 5000) -> None:
    """``n`` CIFAR-100 binary records (coarse, fine, 3,072 pixels), every class present, in chunks."""
    rng = np.random.default_rng(seed)
    with open(folder / name, "wb") as f:
        for start in range(0, n, chunk):
            m = min(chunk, n - start)
            rec = np.empty((m, 2 + PIXELS), dtype=np.uint8)
            fine = (np.arange(start, start + m) % 100).astype(np.uint8)
            rec[:, 0], rec[:, 1] = fine // 5, fine
            rec[:, 2:] = rng.integers(0, 256, (m, PIXELS), dtype=np.uint8)
            f.write(rec.tobytes())


def child(code: str, *args: str) -> int:
    """Run ``code`` in a fresh interpreter; its last stdout line is its peak RSS in KiB."""
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"child failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return int(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=50_000)
    ap.add_argument("--test", type=int, default=10_000)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--limit", type=float, default=1.5, help="the ratio to meet (exit status 1 above it)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="compactcl-mem-") as tmp:
        data = Path(tmp) / "cifar-100-binary"
        data.mkdir()
        write_cifar100(data, args.train, "train.bin", seed=1)
        write_cifar100(data, args.test, "test.bin", seed=2)
        small = Path(tmp) / "cifar-100-small"
        small.mkdir()
        write_cifar100(small, args.train // 10, "train.bin", seed=1)
        write_cifar100(small, args.test // 10, "test.bin", seed=2)
        modules = str(Path(tmp) / "modules.json")
        run_kib = child(RUN, modules, *run_args(data, Path(tmp) / "run", args.epochs))
        small_kib = child(RUN, str(Path(tmp) / "small-modules.json"), *run_args(small, Path(tmp) / "small", args.epochs))
        baseline_kib = child(BASELINE, modules)
        metrics = json.loads((Path(tmp) / "run" / "metrics.json").read_text())
    train_bytes, all_bytes = args.train * PIXELS, (args.train + args.test) * PIXELS
    small_bytes = (args.train // 10 + args.test // 10) * PIXELS
    extra = (run_kib - baseline_kib) * 1024
    ratio = extra / train_bytes
    print(f"images: {args.train:,} train + {args.test:,} test, 32x32x3 uint8: {train_bytes / 1e6:.1f} MB "
          f"(+ {(all_bytes - train_bytes) / 1e6:.1f} MB test)")
    print(f"peak RSS: run {run_kib / 1024:.1f} MiB, import-only baseline {baseline_kib / 1024:.1f} MiB, "
          f"run - baseline {extra / 1e6:.1f} MB")
    print(f"ratio (run - baseline) / train uint8 bytes: {ratio:.2f}  (/ train+test uint8 bytes: "
          f"{extra / all_bytes:.2f}); tasks run: {len(metrics['tasks'])}")
    slope = (run_kib - small_kib) * 1024 / (all_bytes - small_bytes)
    print(f"the same run over a tenth of the images peaks at {small_kib / 1024:.1f} MiB: each byte of images "
          f"(train + test) costs {slope:.2f} bytes; what does not grow with the data: "
          f"{(small_kib - baseline_kib) * 1024 / 1e6 - slope * small_bytes / 1e6:.1f} MB over the baseline")
    sys.exit(0 if ratio <= args.limit else 1)


def run_args(data: Path, out: Path, epochs: int) -> list[str]:
    """The CLI arguments of the measured run: iCaRL 10 x 10, width-8 CNN, batch 128, no compression."""
    sets = ["data.dataset=cifar100", f"data.root={data}", "data.tasks=10", "data.classes_per_task=10",
            "model.backbone=cnn", "model.options.width=8", "learner.name=icarl", f"learner.epochs={epochs}",
            "learner.batch_size=128", "memory.size=2000", "compress=null", "export.onnx=false"]
    return ["run", "--out", str(out), "--quiet", *[arg for s in sets for arg in ("--set", s)]]


if __name__ == "__main__":
    main()
