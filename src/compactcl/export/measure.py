"""Before/after figures of a pruned model: params, non-zeros, FLOPs, real file bytes, ONNX latency."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from torch import nn

from ..data.datasets import TensorData
from ..engine.loop import accuracy
from ..metrics.model_stats import count_flops, count_nonzero, count_params

__all__ = ["save_model", "model_figures", "onnx_latencies"]


def save_model(model: nn.Module, path: str | os.PathLike, meta: dict[str, Any] | None = None) -> int:
    """Save ``model`` as a packed artifact (``.ccl``) or a checkpoint (anything else); return bytes."""
    from ..models.checkpoint import save_checkpoint

    path = Path(path)
    if path.suffix == ".ccl":
        from .artifact import save_artifact

        save_artifact(model, path, meta)
        return path.stat().st_size
    return save_checkpoint(model, path, meta)


def model_figures(model: nn.Module, input_shape: tuple[int, ...], test: TensorData | None = None,
                  fmt: str = ".safetensors", meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """accuracy (on ``test``), params, nonzeros, flops, and bytes of the model saved as ``fmt`` with
    header ``meta`` (give the meta of the file it is compared with: the header is part of the bytes)."""
    with tempfile.TemporaryDirectory() as d:
        nbytes = save_model(model, Path(d) / f"model{fmt}", meta)
    return {"accuracy": accuracy(model, test) if test is not None else float("nan"),
            "params": count_params(model), "nonzeros": count_nonzero(model),
            "flops": count_flops(model, input_shape), "bytes": nbytes}


def onnx_latencies(model: nn.Module, input_shape: tuple[int, ...], threads: tuple[int, ...] = (1, 2),
                   batches: tuple[int, ...] = (1, 64), repeats: int = 50) -> dict[str, float]:
    """Median ONNX Runtime milliseconds, keyed ``"t{threads}_b{batch}"``."""
    from .onnx import export_onnx
    from ..metrics.latency import onnx_latency_grid

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "model.onnx"
        export_onnx(model, path, input_shape)
        return onnx_latency_grid({"model": path}, input_shape, threads, batches, repeats)["model"]
