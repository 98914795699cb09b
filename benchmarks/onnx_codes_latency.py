"""Latency of the compressed ONNX (weight codes decoded in the graph) vs the dense fp32 graph of the same model.

ONNX Runtime folds the decode when it loads the model, so per-inference latency should be the
dense graph's (within noise); the file keeps the codes. Both files are measured in alternating
rounds in one process (a busy machine's drift hits both alike), 1 and 2 threads, batch 1 and 64.

    python benchmarks/onnx_codes_latency.py                       # a 4-bit k-means CNN (width 16) + a 512x1024 MLP
    python benchmarks/onnx_codes_latency.py RUN/final/deployed.ccl --input 1,8,8
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch


def _models(args: argparse.Namespace) -> list[tuple[str, torch.nn.Module, tuple[int, ...]]]:
    from compactcl.compress.quantize import config_for, quantize_
    from compactcl.export.load import load
    from compactcl.models import IncrementalNet

    if args.model:
        shape = tuple(int(v) for v in args.input.split(","))
        return [(Path(args.model).name, load(args.model).eval(), shape)]
    torch.manual_seed(0)
    cnn = IncrementalNet("cnn", 1, 28, 10, backbone_kwargs={"width": 16}).eval()
    quantize_(cnn, config_for("kmeans", 4))
    gemm = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(1024, 512)).eval()  # the 512x1024 Gemm
    quantize_(gemm, config_for("kmeans", 4))
    return [("cnn w16 kmeans-4 (28x28)", cnn, (1, 28, 28)), ("gemm 512x1024 kmeans-4", gemm, (1, 32, 32))]


def main(argv: list[str] | None = None) -> None:
    from compactcl.export.compressed import export_compressed_onnx, export_dense_onnx
    from compactcl.metrics.latency import onnx_latency_grid

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", nargs="?", help="a .ccl / checkpoint (default: built-in examples)")
    p.add_argument("--input", default="1,8,8", help="C,H,W of the model's input (with MODEL)")
    p.add_argument("--repeats", type=int, default=200)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)
    print(f"{'model':28} {'setting':8} {'dense ms':>9} {'codes ms':>9} {'ratio':>6}   dense B -> codes B")
    for name, model, shape in _models(args):
        with tempfile.TemporaryDirectory() as d:
            paths = {"dense": Path(d) / "dense.onnx", "codes": Path(d) / "codes.onnx"}
            nbytes = {"dense": export_dense_onnx(model, paths["dense"], shape),
                      "codes": export_compressed_onnx(model, paths["codes"], shape)}
            grid = onnx_latency_grid(paths, shape, repeats=args.repeats, rounds=args.rounds)
        for key in grid["dense"]:
            a, b = grid["dense"][key], grid["codes"][key]
            print(f"{name:28} {key:8} {a:9.4f} {b:9.4f} {b / a:6.3f}   {nbytes['dense']} -> {nbytes['codes']}")


if __name__ == "__main__":
    main()
