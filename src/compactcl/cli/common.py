"""Small helpers every subcommand shares: --json output and readable tables."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any, Sequence

from ..errors import CompactCLError
from ..utils.jsonfile import read_json

# what reading a malformed (but valid JSON) metrics document raises deep in a consumer
MALFORMED = (KeyError, TypeError, ValueError, IndexError, AttributeError, ZeroDivisionError)
MAX_METRICS_BYTES = 64 * 2**20  # a run's metrics.json is kilobytes

__all__ = ["CLIParser", "add_json_flag", "add_model_choice", "baseline", "baseline_line", "dequantize_", "emit",
           "format_table", "model_path", "read_metrics", "say", "MALFORMED"]


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` shows each option's default; not where there is none to show (a flag that is off,
    no value, an empty list) nor where the help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False, [], argparse.SUPPRESS) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


class CLIParser(argparse.ArgumentParser):
    """The parser class of every subcommand (``add_subparsers(parser_class=CLIParser)``): defaults in --help."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        # argparse prints no help line, so no default, for an option without help text
        if "help" not in kwargs and kwargs.get("default") not in (None, False, [], argparse.SUPPRESS):
            kwargs["help"] = "default: %(default)s"
        return super().add_argument(*args, **kwargs)


def say(args, line: str) -> None:
    """One line about what a verb does, on stderr: stdout stays the table or the --json document."""
    print(f"{getattr(args, 'command', None) or 'compactcl'}: {line}", file=sys.stderr, flush=True)


def add_model_choice(parser) -> None:
    # the choices of compactcl.load(RUN, model=...) (export.load.RUN_MODELS; not imported: --help stays light)
    parser.add_argument("--model", dest="which", choices=("deployed", "working"), default="deployed",
                        help="for a run folder: its final deployed model (final/deployed.ccl or .safetensors) or "
                             "its working model (final/working.safetensors, the learner's fp32 model)")


def model_path(args) -> Path:
    """The file ``args.model`` names (a run folder: its final ``--model`` model), said in one line."""
    from ..export.load import resolve_model_path

    path = resolve_model_path(args.model, getattr(args, "which", "deployed"))
    how = f"the run's {args.which} model; --model working|deployed picks" if Path(args.model).is_dir() else "as given"
    say(args, f"using {path} ({how})")
    return path


def dequantize_(args, model, path: Path):
    """A packed (quantized) model as plain float weights: its grids dropped, the weights keep the
    decoded values. Says so when there was a grid to drop."""
    from ..compress.quantize.state import quantized_layers, set_weight_quant

    layers = quantized_layers(model)
    if layers:
        modules = dict(model.named_modules())
        for name in layers:
            set_weight_quant(modules[name], None)
        say(args, f"{path.name} is quantized ({len(layers)} layers): dequantized to float weights first")
    return model


def baseline(model_or_bytes) -> dict[str, Any]:
    """The baseline size every model verb prints (JSON keys ``baseline_bytes``, ``baseline_bytes_kind``):
    :func:`~compactcl.metrics.fp32_bytes` of the model (or that figure, as metrics.json records it)."""
    from ..metrics.model_stats import FP32_BYTES_KIND, fp32_bytes

    nbytes = model_or_bytes if isinstance(model_or_bytes, int) else fp32_bytes(model_or_bytes)
    return {"baseline_bytes": nbytes, "baseline_bytes_kind": FP32_BYTES_KIND}


def baseline_line(figures: dict[str, Any]) -> str:
    """The table's line for :func:`baseline`'s figures."""
    return f"baseline: {figures['baseline_bytes']:,} B ({figures['baseline_bytes_kind']})"


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
    doc = read_json(path, MAX_METRICS_BYTES, "not a compactcl metrics file", prefix=f"{what}: ")
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
