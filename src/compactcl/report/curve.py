"""Accuracy vs total bytes (model + exemplars), one line per learner: the plot of ``compactcl compare --budgets``."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from ..utils.atomic import atomic_write_bytes

__all__ = ["write_budget_plot"]


def write_budget_plot(doc: dict[str, Any], path: str | Path) -> Path:
    """Draw ``doc`` (from :func:`compactcl.pipeline.budget.run_budget_curve`) as a PNG at ``path``:
    average (solid) and last (dashed) accuracy, mean over seeds, vs total budget in bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.0), layout="constrained")  # bare Figure: no pyplot global state
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for name in doc["learners"]:
        pts = [p for p in doc["points"] if p["learner"] == name and p["fits"]]
        if not pts:
            continue
        x = [p["budget"] / 1000 for p in pts]
        auc = doc["auc"][name]["average_accuracy"]
        line, = ax.plot(x, [p["average_accuracy"]["mean"] for p in pts], marker="o", label=f"{name} (AUC {auc:.3f})")
        ax.plot(x, [p["last_accuracy"]["mean"] for p in pts], marker="x", ls="--", color=line.get_color())
    ax.set_xlabel("total bytes: model (fp32 working; compactcl: deployed .ccl) + uint8 exemplars (kB)")
    ax.set_ylabel("accuracy (solid: average, dashed: last)")
    ax.set_title(f"{doc['recipe']}: seeds {doc['seeds']}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    path = Path(path)
    atomic_write_bytes(path, buf.getvalue())  # a killed compare never leaves half a PNG
    return path
