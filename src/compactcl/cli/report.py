"""`compactcl report RUN_DIR`: rebuild the self-contained report.html of a run."""

from __future__ import annotations

from .common import add_json_flag


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="rebuild RUN_DIR/report.html (self-contained, opens offline)")
    p.add_argument("run_dir", help="a run folder written by `compactcl run`")
    p.add_argument("--baseline", action="append", default=[], metavar="NAME=RUN_DIR",
                   help="another run whose working accuracy per task is drawn as a dashed line")
    add_json_flag(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..errors import CompactCLError
    from ..report.html import write_report
    from .common import MALFORMED, baseline, baseline_line, emit, read_metrics

    baselines = {}
    for item in args.baseline:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise CompactCLError(f"--baseline {item!r}: expected NAME=RUN_DIR")
        doc = read_metrics(path, f"--baseline {name}")
        baselines[name] = [sum(t["accuracy"]["working"]) / len(t["accuracy"]["working"]) for t in doc["tasks"]]
    doc = read_metrics(args.run_dir, "RUN_DIR")
    try:
        path = write_report(args.run_dir, baselines)
    except MALFORMED as e:  # valid rows, but another field the report draws is missing or mistyped
        raise CompactCLError(f"report: {args.run_dir}/metrics.json is not a complete compactcl metrics file "
                             f"({type(e).__name__}: {str(e)[:100]})") from None
    figures = {"report": str(path), "run_dir": str(args.run_dir), "baselines": sorted(baselines)}
    sizes = doc["tasks"][-1].get("bytes")
    fp32 = sizes.get("fp32") if isinstance(sizes, dict) else None
    line = ""
    if isinstance(fp32, int) and not isinstance(fp32, bool):  # bytes.fp32: the final working model's baseline
        figures.update(baseline(fp32), baseline_model="final/working.safetensors")
        line = f"\n{baseline_line(figures)} of final/working.safetensors"
    emit(args, figures, str(path) + line)
    return 0
