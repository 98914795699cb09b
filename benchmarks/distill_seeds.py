"""Does distillation beat hard labels? Fashion-MNIST, one teacher, a small student, several seeds.

Protocol (plain 10-class classification, no incremental stream):
  * fixed split of Fashion-MNIST's 60k training images (seed 0): ``--train-size`` for training
    (teacher, student, transfer set), the next ``--val-size`` for validation; the 10k test split
    is only ever reported, never used to choose anything;
  * one teacher (seed 0), a well-trained one and a weak one (``--weak-teacher-epochs``);
  * per seed the student starts from the same initial weights for every variant (paired runs);
  * temperature and alpha chosen on the validation mean over seeds.

Prints a markdown table; writes nothing unless ``--json PATH`` is given.

    nice -n 10 .venv/bin/python benchmarks/distill_seeds.py --json /tmp/distill.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from compactcl.compress.distill import DistillConfig, create_student, distill
from compactcl.data import TensorData, load_dataset
from compactcl.engine.loop import TrainConfig, accuracy, train
from compactcl.models import IncrementalNet


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--train-size", type=int, default=20000)
    p.add_argument("--val-size", type=int, default=5000)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--teacher", default="cnn")
    p.add_argument("--teacher-kw", type=json.loads, default={"width": 16})
    p.add_argument("--teacher-epochs", type=int, default=12)
    p.add_argument("--weak-teacher-epochs", type=int, default=2)
    p.add_argument("--student", default="mlp")
    p.add_argument("--student-kw", type=json.loads, default={"hidden": [32]})
    p.add_argument("--epochs", type=int, default=30, help="student epochs (long schedule)")
    p.add_argument("--short-epochs", type=int, default=3, help="student epochs (short schedule ablation)")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--temperatures", type=float, nargs="+", default=[1.0, 4.0, 8.0])
    p.add_argument("--alphas", type=float, nargs="+", default=[0.5, 0.9])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None, help="also write every run's numbers to this path")
    return p.parse_args(argv)


def ce(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(x), y)


def split(data: TensorData, n_train: int, n_val: int) -> tuple[TensorData, TensorData]:
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))  # fixed across seeds
    if n_train + n_val > len(data):
        raise SystemExit(f"--train-size + --val-size = {n_train + n_val} > {len(data)} training images")
    return data.subset(order[:n_train]), data.subset(order[n_train: n_train + n_val])


def mean_std(values: list[float]) -> str:
    pct = [100 * v for v in values]
    sd = statistics.stdev(pct) if len(pct) > 1 else 0.0
    return f"{statistics.mean(pct):.2f} ± {sd:.2f}"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.time()
    ds = load_dataset("fashion-mnist")
    tr, va = split(ds.train, args.train_size, args.val_size)
    te = ds.test
    shape = (ds.in_channels, ds.input_size)

    def fit(net: nn.Module, epochs: int, seed: int) -> nn.Module:
        train(net, tr, ce, TrainConfig(epochs=epochs, lr=args.lr, batch_size=args.batch_size, seed=seed))
        return net

    teachers: dict[str, nn.Module] = {}
    result: dict[str, Any] = {"args": vars(args), "teachers": {}, "runs": []}
    for label, epochs in (("strong", args.teacher_epochs), ("weak", args.weak_teacher_epochs)):
        t0 = time.time()
        torch.manual_seed(0)
        teachers[label] = fit(IncrementalNet(args.teacher, *shape, ds.num_classes, args.teacher_kw), epochs, 0).eval()
        result["teachers"][label] = {"epochs": epochs, "val": accuracy(teachers[label], va),
                                     "test": accuracy(teachers[label], te), "seconds": time.time() - t0}
        print(f"teacher {label}: {result['teachers'][label]}", flush=True)

    def student(seed: int) -> nn.Module:
        torch.manual_seed(seed)  # the same initial weights for every variant of one seed
        return create_student(args.student, teachers["strong"], **args.student_kw)

    def record(variant: str, net: nn.Module, seed: int, seconds: float, **extra: Any) -> None:
        row = {"variant": variant, "seed": seed, "val": accuracy(net, va), "test": accuracy(net, te),
               "seconds": seconds, **extra}
        result["runs"].append(row)
        print(f"  {variant:28s} seed {seed}  val {100 * row['val']:.2f}  test {100 * row['test']:.2f}  "
              f"({seconds:.0f}s)", flush=True)

    def run_distill(variant: str, seed: int, teacher: str = "strong", epochs: int | None = None,
                    **cfg: Any) -> None:
        t0 = time.time()
        config = DistillConfig(epochs=epochs or args.epochs, lr=args.lr, batch_size=args.batch_size, seed=seed, **cfg)
        record(variant, distill(teachers[teacher], student(seed), tr, config), seed, time.time() - t0,
               teacher=teacher, **{k: v for k, v in config.to_dict().items() if k in ("temperature", "alpha", "epochs")})

    def run_hard(variant: str, seed: int, epochs: int) -> None:
        t0 = time.time()
        record(variant, fit(student(seed), epochs, seed), seed, time.time() - t0, epochs=epochs)

    # 1. hard labels and the temperature x alpha grid, long schedule, strong teacher
    for seed in args.seeds:
        run_hard("hard labels", seed, args.epochs)
        for t, a in itertools.product(args.temperatures, args.alphas):
            run_distill(f"KD T={t:g} alpha={a:g}", seed, temperature=t, alpha=a)

    def by_variant(variant: str, key: str) -> list[float]:
        return [r[key] for r in result["runs"] if r["variant"] == variant]

    grid = [f"KD T={t:g} alpha={a:g}" for t, a in itertools.product(args.temperatures, args.alphas)]
    best = max(grid, key=lambda v: statistics.mean(by_variant(v, "val")))  # chosen on validation only
    best_run = next(r for r in result["runs"] if r["variant"] == best)
    best_t, best_a = best_run["temperature"], best_run["alpha"]
    result["chosen"] = {"variant": best, "temperature": best_t, "alpha": best_a}
    print(f"chosen on validation: {best}", flush=True)

    # 2. ablations at the chosen (T, alpha): weak teacher, short schedule, + FitNets feature hint
    for seed in args.seeds:
        run_distill("KD chosen, weak teacher", seed, teacher="weak", temperature=best_t, alpha=best_a)
        run_hard("hard labels, short schedule", seed, args.short_epochs)
        run_distill("KD chosen, short schedule", seed, epochs=args.short_epochs, temperature=best_t, alpha=best_a)
        run_distill("KD chosen + feature hint", seed, temperature=best_t, alpha=best_a, hints=["features"])

    # table: mean ± std over seeds, and the paired gain over hard labels of the same schedule
    variants = list(dict.fromkeys(r["variant"] for r in result["runs"]))
    lines = ["| student variant | val % | test % | test gain vs hard (paired) |", "|---|---|---|---|"]
    for v in variants:
        base = "hard labels, short schedule" if "short" in v else "hard labels"
        gains = [a - b for a, b in zip(by_variant(v, "test"), by_variant(base, "test"))]
        mark = " **(chosen)**" if v == best else ""
        lines.append(f"| {v}{mark} | {mean_std(by_variant(v, 'val'))} | {mean_std(by_variant(v, 'test'))} | "
                     f"{'—' if v == base else ('+' if statistics.mean(gains) >= 0 else '') + mean_std(gains)} |")
    for label, t in result["teachers"].items():
        lines.append(f"| teacher ({label}, {args.teacher} {args.teacher_kw}, {t['epochs']} ep, seed 0) | "
                     f"{100 * t['val']:.2f} | {100 * t['test']:.2f} | |")
    result["table"] = "\n".join(lines)
    result["seconds"] = time.time() - start
    n_params = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    print(f"\nstudent {args.student} {args.student_kw}: {n_params(student(0))} params; teacher "
          f"{args.teacher} {args.teacher_kw}: {n_params(teachers['strong'])} params; "
          f"train {len(tr)} / val {len(va)} / test {len(te)}; {len(args.seeds)} seeds; {result['seconds']:.0f}s\n")
    print(result["table"])
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
