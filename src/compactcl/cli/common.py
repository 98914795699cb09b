"""Small helpers every subcommand shares: --json output and readable tables."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

from ..errors import CompactCLError

# what reading a malformed (but valid JSON) metrics document raises deep in a consumer
MALFORMED = (KeyError, TypeError, ValueError, IndexError, AttributeError, ZeroDivisionError)
MAX_METRICS_BYTES = 64 * 2**20  # a run's metrics.json is kilobytes

__all__ = ["add_json_flag", "emit", "format_table", "read_metrics", "MALFORMED"]


def add_json_flag(parser) -> None:
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object on stdout")


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        return f"{v:.4f}" if abs(v) < 10 else f"{v:,.1f}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return str(v)


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """Plain-text table with aligned columns."""
    if not rows:
        return "(no rows)"
    columns = list(columns or rows[0].keys())
    cells = [[_fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    line = lambda vals: "  ".join(v.rjust(w) for v, w in zip(vals, widths))  # noqa: E731
    return "\n".join([line(columns), line(["-" * w for w in widths]), *(line(r) for r in cells)])


def emit(args, figures: dict[str, Any] | list, table: str) -> None:
    """Print ``figures`` as JSON with --json, else the readable ``table``."""
    if getattr(args, "json", False):
        print(json.dumps(figures, indent=2, default=float))
    else:
        print(table)


def read_metrics(run_dir: str | Path, what: str) -> dict[str, Any]:
    """RUN_DIR/metrics.json, checked to be a metrics document: a mapping whose ``tasks`` is a list of
    rows with per-task ``accuracy.working``/``accuracy.deployed`` lists of numbers. ``what`` names
    the argument in errors (e.g. ``--baseline x``)."""
    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        raise CompactCLError(f"{what}: {run_dir} has no metrics.json; pass a run folder written by `compactcl run`")
    if path.stat().st_size > MAX_METRICS_BYTES:
        raise CompactCLError(f"{what}: {path} is over {MAX_METRICS_BYTES >> 20} MiB: not a compactcl metrics file")
    try:
        doc = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise CompactCLError(f"{what}: {path} is not JSON ({type(e).__name__}): not a compactcl metrics file") from None
    rows = doc.get("tasks") if isinstance(doc, dict) else None
    def numbers(v: Any) -> bool:
        return isinstance(v, list) and bool(v) and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                       for x in v)
    if not isinstance(rows, list) or not rows or not all(
            isinstance(r, dict) and isinstance(r.get("accuracy"), dict)
            and all(numbers(r["accuracy"].get(k)) for k in ("working", "deployed")) for r in rows):
        raise CompactCLError(f"{what}: {path} is not a compactcl metrics file with finished tasks (its 'tasks' must "
                             "be a non-empty list of rows with accuracy.working and accuracy.deployed)")
    return doc
