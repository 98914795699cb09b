"""One measured row per compression step (a *rung*): real files, real runtimes.

Enabled by ``compress: {measure: true}`` (see :class:`compactcl.pipeline.compress.CompressDeployer`);
the rows land in ``tasks[i].deploy.rungs`` of metrics.json. Every figure is measured on a file:

* ``bytes``: the packed ``.ccl`` artifact of the step's model (float layers stored as float32);
* ``accuracy``: the PyTorch model rebuilt from that file, on the test split of the tasks seen;
  ``onnx_accuracy`` the timed ONNX graph's; ``agreement`` top-1 agreement with the first rung;
* ``latency_ms`` / ``latency_ms_b64``: ONNX Runtime, 1 thread, batch 1 / 64, of the graph the rung
  deploys: the int8 QDQ graph (:mod:`compactcl.export.int8`) when the model has quantized layers,
  else the fp32 graph; the fp32 graph's figures are kept beside the int8 ones to compare.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    import torch
    from torch import nn

    from ..data.datasets import TensorData

__all__ = ["RUNG_FILES", "Measurer"]


RUNG_FILES = ("rung[0-9]*-*.ccl", "rung[0-9]*-*.onnx")  # what :meth:`Measurer.row` writes (.int8.onnx too)


class Measurer:
    """Writes a rung's files (``rungNN-<stage>.ccl`` / ``.onnx`` / ``.int8.onnx`` in ``out``) and
    measures them; one row per :meth:`row` call, agreement taken against the first row."""

    def __init__(self, out: Path, input_shape: tuple[int, ...], test: "TensorData", val: "TensorData",
                 calib_x: "torch.Tensor", meta: dict[str, Any], log: Callable[[str], None] = print,
                 latency_repeats: int = 50, calib_samples: int = 512):
        self.out, self.input_shape, self.test, self.val = Path(out), tuple(input_shape), test, val
        self.calib_x, self.meta, self.log = calib_x, meta, log
        self.latency_repeats, self.calib_samples = latency_repeats, calib_samples
        self.first_logits = None
        self.int8_error: str | None = None

    def _latency(self, path: Path) -> tuple[float, float]:
        from ..metrics.latency import onnx_latency_ms

        return tuple(onnx_latency_ms(path, self.input_shape, batch=b, threads=1, repeats=self.latency_repeats)
                     for b in (1, 64))  # type: ignore[return-value]

    def _int8(self, fp32_path: Path, int8_path: Path) -> bool:
        try:
            from ..export.int8 import quantize_onnx_int8

            quantize_onnx_int8(fp32_path, int8_path, self.calib_x, max_samples=self.calib_samples)
            return True
        except Exception as e:  # exporter missing or failing: fall back to the fp32 graph, and say so
            self.int8_error = f"{type(e).__name__}: {e}"
            self.log(f"measure: int8 ONNX unavailable ({self.int8_error}); timing the fp32 graph instead")
            return False

    def row(self, index: int, stage: str, model: "nn.Module", int8: bool, seconds: float,
            description: str, note: str = "") -> dict[str, Any]:
        from ..engine.loop import accuracy
        from ..export.artifact import load_artifact, save_artifact
        from ..export.onnx import agreement, export_onnx, onnx_predict, torch_logits
        from ..metrics.model_stats import count_flops, count_params

        model = copy.deepcopy(model).cpu().eval()  # the caller's model stays where it is
        stem = f"rung{index:02d}-{stage}"
        ccl = self.out / f"{stem}.ccl"
        nbytes = save_artifact(model, ccl, {**self.meta, "rung": stage})
        deployed = load_artifact(ccl)  # what ships: score the model rebuilt from the file
        logits = torch_logits(deployed, self.test)
        if self.first_logits is None:
            self.first_logits = logits
        y = self.test.y.numpy()
        onnx_fp32 = self.out / f"{stem}.onnx"
        export_onnx(deployed, onnx_fp32, self.input_shape)
        fp32_b1, fp32_b64 = self._latency(onnx_fp32)
        row: dict[str, Any] = {
            "stage": stage, "description": description, "params": count_params(deployed),
            "flops": count_flops(deployed, self.input_shape), "bytes": nbytes, "file": ccl.name,
            "accuracy": float((logits.argmax(1) == y).mean()), "val_accuracy": accuracy(deployed, self.val),
            "agreement": agreement(logits, self.first_logits),
        }
        graph, notes = onnx_fp32, [note] if note else []
        if int8 and self._int8(onnx_fp32, self.out / f"{stem}.int8.onnx"):
            graph = self.out / f"{stem}.int8.onnx"
            b1, b64 = self._latency(graph)
            row.update(onnx="int8", onnx_file=graph.name, latency_ms=b1, latency_ms_b64=b64,
                       fp32_latency_ms=fp32_b1, fp32_latency_ms_b64=fp32_b64,
                       int8_speedup=fp32_b1 / b1, int8_speedup_b64=fp32_b64 / b64)
        else:
            row.update(onnx="fp32", onnx_file=graph.name, latency_ms=fp32_b1, latency_ms_b64=fp32_b64)
            if int8:
                notes.append(f"int8 ONNX failed ({self.int8_error}); latency of the fp32 graph of the "
                             "fake-quant model")
        onnx_logits = onnx_predict(graph, self.test)
        row["onnx_accuracy"] = float((onnx_logits.argmax(1) == y).mean())
        row["onnx_agreement"] = agreement(onnx_logits, logits)  # the timed graph vs the PyTorch model
        row["seconds"] = seconds
        row["note"] = "; ".join(notes)
        self.log(f"rung {index}: {stage:10s} bytes {nbytes:>8,}  acc {row['accuracy']:.4f}  "
                 f"{row['onnx']} {row['latency_ms']:.3f} ms")
        return row
