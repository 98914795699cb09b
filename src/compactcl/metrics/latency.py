"""Latency measured in ONNX Runtime (the deployment runtime), never assumed from FLOPs."""

from __future__ import annotations

import os
import time

import numpy as np

__all__ = ["onnx_latency_ms", "torch_latency_ms"]


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
