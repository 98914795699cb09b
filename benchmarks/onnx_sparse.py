"""Sparse weight codes in the ONNX: bytes and ONNX Runtime latency of each form of a pruned model.

Per tensor the export keeps the smaller of the dense packed codes and the sparse form (gaps +
codes, rebuilt by CumSum/ScatterElements that ORT folds at load): ``auto``. ``never`` and
``always`` force one form, and ONNX's own ``sparse_initializer`` (fp32 values + int16/int32
indices, densified by ORT at load) is measured beside them. Latency should not depend on the
form: ORT folds every rebuild at load. Rounds alternate between files (drift hits all alike).

    python benchmarks/onnx_sparse.py                          # width-16 CNN, 4-bit k-means, pruned 0/50/80/95%
    python benchmarks/onnx_sparse.py RUN/final/deployed.ccl --input 1,8,8
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch


def _models(args: argparse.Namespace) -> list[tuple[str, torch.nn.Module, tuple[int, ...]]]:
    from compactcl.compress.prune import finalize_, magnitude_prune_
    from compactcl.compress.quantize import config_for, quantize_
    from compactcl.export.load import load
    from compactcl.models import IncrementalNet

    if args.model:
        return [(Path(args.model).name, load(args.model).eval(), tuple(int(v) for v in args.input.split(",")))]
    out = []
    for ratio in (0.0, 0.5, 0.8, 0.95):
        torch.manual_seed(0)
        net = IncrementalNet("cnn", 1, 28, 10, backbone_kwargs={"width": 16}).eval()
        if ratio:
            magnitude_prune_(net, ratio, scope="layer")
            finalize_(net)
        out.append((f"cnn w16 kmeans-4 pruned {ratio:.0%}", quantize_(net, config_for("kmeans", 4)), (1, 28, 28)))
    return out


def _sparse_initializer_bytes(dense_onnx: Path, out: Path) -> int:
    """The fp32 graph with every weight that has zeros as an ONNX sparse_initializer (smallest index type)."""
    import onnx
    from onnx import helper, numpy_helper

    mp = onnx.load(str(dense_onnx))
    kept = []
    for init in mp.graph.initializer:
        a = numpy_helper.to_array(init)
        pos = np.flatnonzero(a.reshape(-1))
        if a.ndim < 2 or len(pos) == a.size:
            kept.append(init)
            continue
        idx = pos.astype(np.int16 if a.size < 2 ** 15 else np.int32)
        mp.graph.sparse_initializer.append(helper.make_sparse_tensor(
            numpy_helper.from_array(a.reshape(-1)[pos], init.name), numpy_helper.from_array(idx, ""), list(a.shape)))
    del mp.graph.initializer[:]
    mp.graph.initializer.extend(kept)
    data = mp.SerializeToString()
    out.write_bytes(data)
    return len(data)


def main(argv: list[str] | None = None) -> None:
    from compactcl.export.compressed import export_compressed_onnx, export_dense_onnx
    from compactcl.export.onnx import onnx_predict
    from compactcl.metrics.latency import onnx_latency_grid

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", nargs="?", help="a .ccl / checkpoint (default: built-in examples)")
    p.add_argument("--input", default="1,8,8", help="C,H,W of the model's input (with MODEL)")
    p.add_argument("--repeats", type=int, default=200)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)
    forms = ("fp32", "sparse_init", "never", "always", "auto")
    print(f"{'model':32} {'form':12} {'bytes':>8} {'ms b1':>8} {'ms b64':>8}  max|dlogit| vs fp32")
    for name, model, shape in _models(args):
        with tempfile.TemporaryDirectory() as d:
            paths = {f: Path(d) / f"{f}.onnx" for f in forms}
            nbytes = {"fp32": export_dense_onnx(model, paths["fp32"], shape)}
            nbytes["sparse_init"] = _sparse_initializer_bytes(paths["fp32"], paths["sparse_init"])
            for mode in ("never", "always", "auto"):
                nbytes[mode] = export_compressed_onnx(model, paths[mode], shape, sparse=mode)
            x = torch.randn(64, *shape)
            ref = onnx_predict(paths["fp32"], x)
            diff = {f: float(np.abs(onnx_predict(paths[f], x) - ref).max()) for f in forms}
            grid = onnx_latency_grid(paths, shape, threads=(1,), repeats=args.repeats, rounds=args.rounds)
        for f in forms:
            print(f"{name:32} {f:12} {nbytes[f]:8d} {grid[f]['t1_b1']:8.4f} {grid[f]['t1_b64']:8.4f}  {diff[f]:.1e}")


if __name__ == "__main__":
    main()
