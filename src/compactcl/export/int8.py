"""ONNX int8: static QDQ quantization with ONNX Runtime, calibrated on real training images.

Weights int8 per output channel, activations uint8 per tensor (min-max ranges observed on
the calibration images); the graph is first pre-processed (shape inference + ORT graph
optimisation, which folds batch norm into the convolutions) so the quantizer sees fused
Conv/Gemm nodes. ``benchmarks/onnx_latency.py`` measures the graph with and without it.

>>> quantize_onnx_int8("model.onnx", "model.int8.onnx", calib_x)  # doctest: +SKIP
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import CompactCLError
from ..utils.atomic import atomic_path

__all__ = ["quantize_onnx_int8", "preprocess_onnx", "calibration_batch"]


def _reader(x: np.ndarray, input_name: str, batch_size: int):
    from onnxruntime.quantization import CalibrationDataReader

    class ImageReader(CalibrationDataReader):
        """Feeds calibration images batch by batch (ORT's calibrator protocol)."""

        def __init__(self) -> None:
            self.batches = iter([{input_name: x[i: i + batch_size]} for i in range(0, len(x), batch_size)])

        def get_next(self):
            return next(self.batches, None)

    return ImageReader()


def preprocess_onnx(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """ORT's recommended pre-quantization step (symbolic shapes + graph optimisation)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(str(src), str(dst), skip_symbolic_shape=False)


def _calibration_rows(n: int, max_samples: int, seed: int) -> np.ndarray:
    """Which of ``n`` images calibrate: all, or ``max_samples`` of them drawn with ``seed``, in order."""
    if n <= max_samples:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, max_samples, replace=False))


def calibration_batch(data: Any, max_samples: int = 512, seed: int = 0) -> torch.Tensor:
    """The images :func:`quantize_onnx_int8` would draw from ``data`` (a ``TensorData``; same seed, same
    order), normalised from its store: no float copy of the whole set."""
    return data.batch(torch.as_tensor(_calibration_rows(len(data), max_samples, seed), dtype=torch.long))


def quantize_onnx_int8(fp32_path: str | os.PathLike, out_path: str | os.PathLike, calib_x: torch.Tensor | np.ndarray,
                       per_channel: bool = True, preprocess: bool = True, activation_type: str = "QUInt8",
                       max_samples: int = 512, batch_size: int = 64, seed: int = 0) -> int:
    """Static QDQ int8 copy of the fp32 ONNX model at ``fp32_path``; return bytes written.

    ``calib_x`` (N, C, H, W) are training images (never test images); at most ``max_samples``
    of them, drawn with ``seed``, calibrate the activation ranges.
    """
    import onnxruntime as ort
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    if calib_x is None or len(calib_x) == 0:
        raise CompactCLError("int8 export needs calibration images (calib_x): pass training images, "
                             "e.g. calibration_batch(checkpoint_data(path)['train'])")
    x = calib_x.cpu().numpy() if isinstance(calib_x, torch.Tensor) else np.asarray(calib_x)
    x = x.astype(np.float32)[_calibration_rows(len(x), max_samples, seed)]
    input_name = ort.InferenceSession(str(fp32_path), providers=["CPUExecutionProvider"]).get_inputs()[0].name
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(fp32_path)
        if preprocess:
            pre = Path(tmp) / "pre.onnx"
            try:
                preprocess_onnx(src, pre)
                src = pre
            except Exception as e:  # pre-processing is an optimisation; the plain graph still quantizes
                import warnings

                warnings.warn(f"ONNX pre-processing failed ({e}); quantizing the unprocessed graph")
        with atomic_path(out_path) as out:
            quantize_static(str(src), str(out), _reader(x, input_name, batch_size), quant_format=QuantFormat.QDQ,
                            per_channel=per_channel, activation_type=getattr(QuantType, activation_type),
                            weight_type=QuantType.QInt8)
    return Path(out_path).stat().st_size
