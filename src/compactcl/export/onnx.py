"""ONNX export (fp32) with a check of the exported graph against PyTorch."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import CompactCLError
from ..utils.atomic import atomic_path

__all__ = ["export_onnx", "onnx_predict", "agreement"]


def export_onnx(model: nn.Module, path: str | os.PathLike, input_shape: tuple[int, ...], opset: int = 17) -> int:
    """Export ``model`` for inputs (batch, *input_shape) with a dynamic batch axis; return bytes written.

    Uses the TorchScript-based exporter, which needs no extra packages and handles every
    backbone here; the file is written atomically.
    """
    model = model.eval()
    device = next(model.parameters()).device
    dummy = torch.zeros(2, *input_shape[-3:], device=device)
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(model, (dummy,), str(tmp), dynamo=False, opset_version=opset,
                              input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
        except Exception as e:  # the exporter raises many types; name the model and keep the cause
            raise CompactCLError(f"ONNX export of {type(model).__name__} failed: {e}") from e
    return Path(path).stat().st_size


def onnx_predict(path: str | os.PathLike, x: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """Logits (N, K) of the ONNX model at ``path`` on images ``x`` (N, C, H, W)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    xs = x.cpu().numpy().astype(np.float32)
    return np.concatenate([sess.run(None, {name: xs[i: i + batch_size]})[0] for i in range(0, len(xs), batch_size)])


def agreement(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> float:
    """Fraction of rows whose top-1 class is the same in two logit arrays."""
    a, b = np.asarray(a), np.asarray(b)
    return float((a.argmax(1) == b.argmax(1)).mean())
