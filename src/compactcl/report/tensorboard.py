"""TensorBoard event files for a run: training loss per epoch, per-task metrics, accuracy heat maps.

Why a logger apart from ``metrics.json``: metrics.json is the contract (complete, versioned);
TensorBoard is for watching a long run live and comparing runs side by side. The logger only
reads what the run already computed, so turning it on changes no result.

>>> log = TensorBoardLogger("runs/demo")          # doctest: +SKIP
>>> log.log_epoch(task=0, epoch=0, loss=1.7)      # doctest: +SKIP
>>> log.log_task(0, metrics["tasks"][0], accuracy_matrix(metrics["tasks"], "working"))  # doctest: +SKIP
>>> log.close()                                   # doctest: +SKIP

Then ``tensorboard --logdir runs/``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import CompactCLError

__all__ = ["TensorBoardLogger", "accuracy_matrix", "heatmap_image", "SUBDIR"]

SUBDIR = "tensorboard"
Matrix = Sequence[Sequence[float]] | np.ndarray


def accuracy_matrix(rows: Sequence[Mapping[str, Any]], which: str = "working") -> np.ndarray:
    """(T, T) matrix from metrics.json task rows: ``[i, j]`` = accuracy on task j after task i, NaN above."""
    t = len(rows)
    out = np.full((t, t), np.nan)
    for i, row in enumerate(rows):
        accs = row["accuracy"][which]
        out[i, : len(accs)] = accs
    return out


def _as_matrix(m: Matrix) -> np.ndarray:
    """Ragged rows (row i holds i+1 figures) or a square array -> (T, T) float array, NaN where unknown."""
    if isinstance(m, np.ndarray):
        return m.astype(float)
    rows = [list(r) for r in m]
    width = max((len(r) for r in rows), default=0)
    out = np.full((len(rows), width), np.nan)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def heatmap_image(matrix: Matrix, title: str = "accuracy") -> np.ndarray:
    """Render an accuracy matrix as an annotated heat map, RGB uint8 (H, W, 3), with matplotlib's Agg.

    Uses a bare ``Figure`` + Agg canvas (no pyplot), so it changes no global matplotlib state.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    m = _as_matrix(matrix)
    t = max(m.shape[0], 1)
    fig = Figure(figsize=(1.2 + 0.6 * t, 1.0 + 0.6 * t), dpi=80)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(np.ma.masked_invalid(m), vmin=0.0, vmax=1.0, cmap="viridis")
    for (i, j), v in np.ndenumerate(m):
        if not math.isnan(v):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="white" if v < 0.6 else "black")
    ax.set_xlabel("evaluated on task")
    ax.set_ylabel("after task")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()  # (H, W, 3)


class TensorBoardLogger:
    """Writes event files under ``RUN/tensorboard/`` (``torch.utils.tensorboard``; needs the tensorboard package).

    Tags: ``train/loss`` (step = epochs so far), ``train/loss/task_NN`` (step = epoch),
    ``accuracy/<model>/average`` and ``accuracy/<model>/task_NN`` (step = task index),
    ``bytes/*``, ``params``, ``flops``, ``seconds``, and the image ``accuracy_matrix/<model>``.
    """

    def __init__(self, run_dir: str | os.PathLike, flush_secs: int = 30):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise CompactCLError("TensorBoard logs need the tensorboard package: pip install tensorboard "
                                 "(or pip install 'compactcl[tensorboard]')") from e
        self.log_dir = Path(run_dir) / SUBDIR
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._writer = SummaryWriter(log_dir=str(self.log_dir), flush_secs=flush_secs)
        self._epochs = 0

    def log_epoch(self, task: int, epoch: int, loss: float) -> None:
        """Mean training loss of one epoch of one task."""
        self._writer.add_scalar(f"train/loss/task_{task:02d}", float(loss), epoch)
        self._writer.add_scalar("train/loss", float(loss), self._epochs)
        self._epochs += 1

    def log_task(self, task_index: int, row: Mapping[str, Any], acc_matrix: Matrix | Mapping[str, Matrix]) -> None:
        """One metrics.json task row as scalars, and the accuracy matrix so far as a heat map.

        ``acc_matrix``: one matrix (logged as the working model's) or ``{"working": ..., "deployed": ...}``.
        """
        w, step = self._writer, task_index
        for which, accs in row.get("accuracy", {}).items():
            accs = [float(a) for a in accs]
            for j, a in enumerate(accs):
                w.add_scalar(f"accuracy/{which}/task_{j:02d}", a, step)
            if accs:
                w.add_scalar(f"accuracy/{which}/average", sum(accs) / len(accs), step)
        for key, value in row.get("bytes", {}).items():
            w.add_scalar(f"bytes/{key}", float(value), step)
        for key in ("params", "flops", "deployed_params", "deployed_flops", "seconds"):
            if isinstance(row.get(key), (int, float)):
                w.add_scalar(key, float(row[key]), step)
        matrices = acc_matrix if isinstance(acc_matrix, Mapping) else {"working": acc_matrix}
        for which, m in matrices.items():
            image = heatmap_image(m, title=f"{which} accuracy after task {task_index}")
            w.add_image(f"accuracy_matrix/{which}", image, step, dataformats="HWC")
        w.flush()

    def close(self) -> None:
        self._writer.close()

    def __enter__(self) -> "TensorBoardLogger":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
