"""Small helpers every subcommand shares: --json output and readable tables."""

from __future__ import annotations

import json
import math
from typing import Any, Sequence

__all__ = ["add_json_flag", "emit", "format_table"]


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
