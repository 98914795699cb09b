"""Latency measured in ONNX Runtime (the deployment runtime), never assumed from FLOPs."""

from __future__ import annotations

import os
import time
from typing import Mapping

import numpy as np

__all__ = ["onnx_latency_ms", "onnx_latency_grid", "torch_latency_ms"]


def _session(path: str | os.PathLike, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def onnx_latency_ms(path: str | os.PathLike, input_shape: tuple[int, ...], batch: int = 1, threads: int = 1,
                    repeats: int = 50, warmup: int = 10, seed: int = 0) -> float:
    """Median milliseconds of one ``batch``-sized inference of the ONNX model at ``path``."""
    sess = _session(path, threads)
    name = sess.get_inputs()[0].name
    x = np.random.default_rng(seed).standard_normal((batch, *input_shape[-3:])).astype(np.float32)
    for _ in range(warmup):
        sess.run(None, {name: x})
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        sess.run(None, {name: x})
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e3)


def onnx_latency_grid(paths: Mapping[str, str | os.PathLike], input_shape: tuple[int, ...],
                      threads: tuple[int, ...] = (1, 2), batches: tuple[int, ...] = (1, 64), repeats: int = 50,
                      rounds: int = 1) -> dict[str, dict[str, float]]:
    """Median milliseconds of each ONNX model in ``paths`` at every thread count and batch, keyed
    ``{name: {"t{threads}_b{batch}": ms}}``. With ``rounds > 1`` the models are measured in alternating
    rounds (a busy machine's drift then hits every model alike) and the median over rounds is kept."""
    per: dict[str, dict[str, list[float]]] = {name: {} for name in paths}
    for _ in range(rounds):
        for name, path in paths.items():
            for t in threads:
                for b in batches:
                    per[name].setdefault(f"t{t}_b{b}", []).append(
                        onnx_latency_ms(path, input_shape, batch=b, threads=t, repeats=repeats))
    return {name: {k: float(np.median(v)) for k, v in d.items()} for name, d in per.items()}


def torch_latency_ms(model, input_shape: tuple[int, ...], batch: int = 1, repeats: int = 50, warmup: int = 10) -> float:
    """Median milliseconds of one eager PyTorch forward pass (for comparison only)."""
    import torch

    x = torch.randn(batch, *input_shape[-3:])
    model.eval()
    with torch.inference_mode():
        for _ in range(warmup):
            model(x)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e3)
