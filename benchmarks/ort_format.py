"""ORT format (mobile / minimal builds): bytes and ONNX Runtime latency of both forms vs the codes ONNX.

``NAME.ort`` has the decode folded at conversion (dense fp32 weights), ``NAME.codes.ort`` keeps the
codes and decodes them at every inference (what a minimal build does: it runs no optimizer).
Rounds alternate between files (a busy machine's drift hits all alike).

    python benchmarks/ort_format.py                           # a 4-bit k-means CNN (width 16, 28x28) + a 512x1024 Gemm
    python benchmarks/ort_format.py RUN/final/deployed.ccl --input 1,8,8
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> None:
    from compactcl.export.ort import export_ort_checked
    from onnx_codes_latency import _models  # the same built-in examples as the codes-ONNX benchmark

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", nargs="?", help="a .ccl / checkpoint (default: built-in examples)")
    p.add_argument("--input", default="1,8,8", help="C,H,W of the model's input (with MODEL)")
    p.add_argument("--repeats", type=int, default=100)
    args = p.parse_args(argv)
    print(f"{'model':28} {'form':6} {'bytes':>9} {'ms b1':>8} {'ms b64':>8} {'agree':>6}")
    for name, model, shape in _models(args):
        with tempfile.TemporaryDirectory() as d:
            x = torch.randn(256, *shape[-3:], generator=torch.Generator().manual_seed(0))
            rows = export_ort_checked(model, Path(d) / "m.ort", shape, x, repeats=args.repeats)
        for form, r in rows.items():
            ms = r["latency_ms"]
            print(f"{name:28} {form:6} {r['bytes']:9d} {ms['t1_b1']:8.4f} {ms['t1_b64']:8.4f} {r.get('agreement', 1.0):6.3f}")


if __name__ == "__main__":
    main()
