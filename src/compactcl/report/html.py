"""A self-contained HTML report of a run: plots embedded as base64 PNG, no network, opens offline."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ..utils.classes import class_name, class_names_text
from ..errors import CompactCLError
from ..utils.atomic import atomic_write_text

__all__ = ["build_report", "write_report"]


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def _matrix(rows: list[dict[str, Any]], which: str) -> np.ndarray:
    T = len(rows)
    m = np.full((T, T), np.nan)
    for t, r in enumerate(rows):
        m[t, : len(r["accuracy"][which])] = r["accuracy"][which]
    return m


def _heatmaps(rows: list[dict[str, Any]]) -> str:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4.2), layout="constrained")  # titles and colour bars never overlap
    for k, which in enumerate(("working", "deployed")):
        ax = fig.add_subplot(1, 2, k + 1)
        m = _matrix(rows, which)
        im = ax.imshow(m, vmin=0, vmax=1, cmap="viridis")
        for (i, j), v in np.ndenumerate(m):
            if not np.isnan(v):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8, color="w" if v < 0.6 else "k")
        ax.set_title(f"{which} model")
        ax.set_xticks(range(len(rows)))
        ax.set_yticks(range(len(rows)))
        ax.set_xlabel("evaluated task j")
        ax.set_ylabel("after training task i")
        fig.colorbar(im, ax=ax, fraction=0.046)
    return _png(fig)


def _curves(rows: list[dict[str, Any]], baselines: dict[str, list[float]]) -> str:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.6))
    ax = fig.add_subplot(1, 2, 1)
    x = [r["index"] for r in rows]
    for which, style in (("working", "o-"), ("deployed", "s-")):
        ax.plot(x, [float(np.mean(r["accuracy"][which])) for r in rows], style, label=which)
    for name, ys in baselines.items():
        ax.plot(x[: len(ys)], ys, "--", label=name)
    ax.set_xticks(x)
    ax.set_xlabel("task")
    ax.set_ylabel("mean accuracy on tasks seen")
    shown = [float(np.mean(r["accuracy"][w])) for r in rows for w in ("working", "deployed")]
    shown += [v for ys in baselines.values() for v in ys]
    low = min(shown) if shown else 0.0
    ax.set_ylim(max(0.0, low - 0.05 * max(1.0 - low, 0.1)), 1.005)  # zoomed to the data: 0.96 vs 0.99 shows
    ax.legend(fontsize=8)
    ax.set_title("accuracy per task")
    ax = fig.add_subplot(1, 2, 2)
    ax.plot(x, [r["bytes"]["fp32"] for r in rows], "o-", label="working (fp32)")
    ax.plot(x, [r["bytes"]["deployed"] for r in rows], "s-", label="deployed artifact")
    budgets = [r.get("deploy", {}).get("budget_bytes") for r in rows]
    if any(b is not None for b in budgets):
        ax.plot(x, budgets, "k:", label="budget")
    ax.set_yscale("log")
    ax.set_xticks(x)
    ax.set_xlabel("task")
    ax.set_ylabel("bytes")
    ax.legend(fontsize=8)
    ax.set_title("size per task")
    return _png(fig)


def _class_name(doc: dict[str, Any], class_id: int) -> str:
    return class_name(class_id, doc.get("class_names"))


def _confusion(doc: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """The final deployed model's confusion matrix and per-class accuracy, classes by name."""
    conf = rows[-1].get("confusion_deployed")
    if not conf:
        return ""
    from matplotlib.figure import Figure

    m = np.asarray(conf["matrix"], dtype=float)
    names = [_class_name(doc, c) for c in conf["classes"]]
    per_class = np.divide(np.diag(m), m.sum(1), out=np.full(len(m), np.nan), where=m.sum(1) > 0)
    size = min(12.0, 3.0 + 0.45 * len(m))
    fig = Figure(figsize=(size, size * 0.85), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(m / np.maximum(m.sum(1, keepdims=True), 1), vmin=0, vmax=1, cmap="Blues")
    if len(m) <= 20:
        for (i, j), v in np.ndenumerate(m):
            if v:
                ax.text(j, i, f"{int(v)}", ha="center", va="center", fontsize=7,
                        color="w" if v > 0.6 * m[i].sum() else "k")
    ax.set_xticks(range(len(m)), names, rotation=90, fontsize=7)
    ax.set_yticks(range(len(m)), names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.colorbar(im, ax=ax, fraction=0.046, label="share of the true class")
    cells = "".join(f"<tr><td>{html.escape(n)}</td><td>{a:.4f}</td><td>{int(m[i].sum())}</td></tr>"
                    for i, (n, a) in enumerate(zip(names, per_class)))
    return (f'<h2>Final deployed model, per class</h2><img alt="confusion matrix" '
            f'src="data:image/png;base64,{_png(fig)}"><table><tr><th>class</th><th>accuracy</th>'
            f"<th>test images</th></tr>{cells}</table>")


def _bits(deploy: dict[str, Any]) -> str:
    """The quantize step's bits: one width, or the range of a per-layer choice."""
    for step in deploy.get("steps", []):
        bits = step.get("quantize", {}).get("bits")
        if isinstance(bits, dict) and bits:
            lo, hi = min(bits.values()), max(bits.values())
            return f"{lo}" if lo == hi else f"{lo}-{hi} ({len(bits)} layers)"
        if bits is not None:
            return str(bits)
    return "-"


def _table(rows: list[dict[str, Any]], class_names: Any) -> str:
    """The per-task table; ``class_names``: metrics.json's, by dataset class id."""
    head = ["task", "classes", "acc working", "acc deployed", "params", "FLOPs", "fp32 bytes", "deployed bytes",
            "budget", "bits", "update bytes", "ONNX bytes", "ONNX agreement", "ONNX ms", "seconds", "deploy s",
            "warnings"]
    body = []
    for r in rows:
        deploy = r.get("deploy", {})
        budget, onnx = deploy.get("budget_bytes"), deploy.get("onnx", {})
        cells = [r["index"], class_names_text(r["classes"], class_names), f"{np.mean(r['accuracy']['working']):.4f}",
                 f"{np.mean(r['accuracy']['deployed']):.4f}", f"{r['params']:,}", f"{r['flops']:,}",
                 f"{r['bytes']['fp32']:,}", f"{r['bytes']['deployed']:,}", f"{budget:,}" if budget else "-",
                 _bits(deploy), f"{r['bytes'].get('update', 0):,}",
                 f"{onnx['bytes']:,}" if "bytes" in onnx else "-",
                 f"{onnx['agreement']:.4f}" if "agreement" in onnx else "-",
                 f"{onnx['latency_ms']:.3f}" if isinstance(onnx.get("latency_ms"), float) else "-",
                 f"{r['seconds']:.1f}", f"{r.get('deploy_seconds', 0.0):.1f}", len(deploy.get("warnings", []))]
        body.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    return ("<table><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>" + "".join(body) + "</table>")


def _warnings(rows: list[dict[str, Any]]) -> str:
    """The deploy step's quality warnings, first thing a reader sees when there are any."""
    items = [f"<li>task {r['index']}: {html.escape(w)}</li>"
             for r in rows for w in r.get("deploy", {}).get("warnings", [])]
    return f'<h2 class="warn">Warnings</h2><ul class="warn">{"".join(items)}</ul>' if items else ""


def build_report(doc: dict[str, Any], baselines: dict[str, list[float]] | None = None) -> str:
    """HTML text for a metrics.json document (``baselines``: name -> mean accuracy per task)."""
    rows = doc.get("tasks") or []
    if not rows:
        raise CompactCLError("metrics.json has no finished task yet; nothing to report")
    s = doc["summary"]
    summary = "".join(
        f"<tr><td>{m}</td>" + "".join(f"<td>{s[m][k]:.4f}</td>" for k in
                                      ("average_incremental_accuracy", "final_accuracy", "forgetting", "bwt"))
        + "</tr>" for m in ("working", "deployed"))
    last = rows[-1]
    ratio = last["bytes"]["deployed"] / last["bytes"]["fp32"]
    title = html.escape(f"compactcl run: {doc['recipe'].get('name', '')}")
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;max-width:1200px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;margin:1em 0;font-size:13px}}td,th{{border:1px solid #ccc;padding:3px 6px;text-align:right}}
th{{background:#f3f3f3}}img{{max-width:100%}}.note{{color:#555}}.warn{{color:#a40000}}</style></head><body>
<h1>{title}</h1>
<p class="note">schema {html.escape(doc.get('schema', ''))}; status {html.escape(doc.get('status', ''))};
{html.escape(doc.get('deployed_note', ''))}</p>
{_warnings(rows)}
<h2>At a glance</h2>
<p>After {len(rows)} tasks the deployed model scores <b>{s['deployed']['final_accuracy']:.4f}</b>
(working model {s['working']['final_accuracy']:.4f}) in <b>{last['bytes']['deployed']:,}</b> bytes —
{ratio:.1%} of the working model's fp32 weights ({last['bytes']['fp32']:,} bytes).</p>
<table><tr><th>model</th><th>average incremental accuracy</th><th>final accuracy</th><th>forgetting</th>
<th>BWT</th></tr>{summary}</table>
<h2>Accuracy and size per task</h2><img alt="accuracy and bytes per task" src="data:image/png;base64,{_curves(rows, baselines or {})}">
<h2>Accuracy matrices</h2><p class="note">row i: after training task i; column j: accuracy on task j's test split</p><img alt="accuracy matrices" src="data:image/png;base64,{_heatmaps(rows)}">
<h2>Per task</h2>{_table(rows, doc.get("class_names"))}
{_confusion(doc, rows)}
<details><summary>Recipe</summary><pre>{html.escape(yaml.safe_dump(doc['recipe'], sort_keys=False))}</pre></details>
</body></html>
"""


def write_report(run_dir: str | Path, baselines: dict[str, list[float]] | None = None) -> Path:
    """(Re)build RUN/report.html from RUN/metrics.json."""
    run_dir = Path(run_dir)
    metrics = run_dir / "metrics.json"
    if not metrics.is_file():
        raise CompactCLError(f"{run_dir} has no metrics.json; pass a run folder written by `compactcl run`")
    try:
        doc = json.loads(metrics.read_text())
    except json.JSONDecodeError as e:
        raise CompactCLError(f"{metrics} is not valid JSON ({e}); rerun with --resume to rewrite it") from e
    out = run_dir / "report.html"
    atomic_write_text(out, build_report(doc, baselines))
    return out
