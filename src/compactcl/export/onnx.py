"""ONNX export (fp32) with a check of the exported graph against PyTorch."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..data.datasets import EVAL_BATCH, TensorData, image_batches
from ..engine.loop import model_logits
from ..errors import CompactCLError
from ..utils.atomic import atomic_path

__all__ = ["export_onnx", "onnx_predict", "agreement", "export_checked"]


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


def onnx_predict(path: str | os.PathLike, x: torch.Tensor | TensorData, batch_size: int = EVAL_BATCH) -> np.ndarray:
    """Logits (N, K) of the ONNX model at ``path`` on images ``x`` (float (N, C, H, W), or a data set
    read batch by batch)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: xb.cpu().numpy().astype(np.float32, copy=False)})[0]
                           for xb in image_batches(x, batch_size, "cpu")])


def agreement(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> float:
    """Fraction of rows whose top-1 class is the same in two logit arrays."""
    a, b = np.asarray(a), np.asarray(b)
    return float((a.argmax(1) == b.argmax(1)).mean())


def torch_logits(model: nn.Module, x: torch.Tensor | TensorData, batch_size: int = EVAL_BATCH) -> np.ndarray:
    """Logits (N, K) of ``model`` (left in eval mode, on its device) on images ``x``, batch by batch."""
    model.eval()
    return model_logits(model, x, batch_size).numpy()


def _latencies(path: str | os.PathLike, input_shape: tuple[int, ...], repeats: int) -> dict[str, float]:
    """ONNX Runtime milliseconds keyed ``t{threads}_b{batch}`` (the one key scheme: metrics.latency)."""
    from ..metrics.latency import onnx_latency_grid

    return onnx_latency_grid({"model": path}, input_shape, repeats=repeats)["model"]


def export_checked(model: nn.Module, path: str | os.PathLike, input_shape: tuple[int, ...],
                   test_x: torch.Tensor | TensorData,
                   test_y: torch.Tensor, int8: bool = False, calib_x: torch.Tensor | None = None,
                   min_agreement: float = 0.999, max_int8_drop: float = 0.01, latency: bool = True,
                   latency_repeats: int = 50) -> dict:
    """Export to ONNX (fp32, or int8 QDQ with ``int8=True``) and check it against PyTorch on the test split.

    Raises :class:`CompactCLError` if the fp32 graph's top-1 agreement with PyTorch is below
    ``min_agreement`` or the int8 accuracy is more than ``max_int8_drop`` below PyTorch's.
    Returns agreement, accuracy, torch_accuracy, bytes and ONNX Runtime latencies (ms,
    batch 1 and 64, 1 and 2 threads; for int8 also the fp32 graph's, to compare).
    """
    import tempfile

    y = test_y.cpu().numpy()
    ref = torch_logits(model, test_x)
    torch_acc = float((ref.argmax(1) == y).mean())
    with tempfile.TemporaryDirectory() as tmp:
        fp32_path = Path(tmp) / "fp32.onnx" if int8 else Path(path)
        fp32_bytes = export_onnx(model, fp32_path, input_shape)
        fp32_logits = onnx_predict(fp32_path, test_x)
        fp32_agree = agreement(fp32_logits, ref)
        if fp32_agree < min_agreement:
            raise CompactCLError(f"ONNX fp32 export disagrees with PyTorch on {1 - fp32_agree:.2%} of the test images "
                                 f"(agreement {fp32_agree:.4f} < {min_agreement}); an operator exports wrongly — "
                                 "report it with the model spec, and use the PyTorch model meanwhile")
        out: dict = {"format": "onnx-int8" if int8 else "onnx-fp32", "path": str(path), "torch_accuracy": torch_acc,
                     "fp32_agreement": fp32_agree, "fp32_bytes": fp32_bytes}
        if int8:
            from .int8 import quantize_onnx_int8

            nbytes = quantize_onnx_int8(fp32_path, path, calib_x)
            logits = onnx_predict(path, test_x)
            acc = float((logits.argmax(1) == y).mean())
            out.update(agreement=agreement(logits, ref), accuracy=acc, bytes=nbytes)
            if torch_acc - acc > max_int8_drop:
                raise CompactCLError(f"ONNX int8 accuracy {acc:.4f} is {torch_acc - acc:.4f} below PyTorch fp32 "
                                     f"({torch_acc:.4f}), more than the allowed {max_int8_drop}; calibrate on more "
                                     "training images, or ship the fp32 ONNX (omit --int8)")
            if latency:
                out["fp32_latency_grid_ms"] = _latencies(fp32_path, input_shape, latency_repeats)
        else:
            acc = float((fp32_logits.argmax(1) == y).mean())
            out.update(agreement=fp32_agree, accuracy=acc, bytes=fp32_bytes)
        if latency:
            out["latency_grid_ms"] = _latencies(path, input_shape, latency_repeats)
            if int8:
                out["speedup_vs_fp32"] = {k: out["fp32_latency_grid_ms"][k] / v
                                          for k, v in out["latency_grid_ms"].items()}
    return out
