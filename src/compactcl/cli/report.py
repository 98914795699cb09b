"""`compactcl report RUN_DIR`: rebuild the self-contained report.html of a run."""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="rebuild RUN_DIR/report.html (self-contained, opens offline)")
    p.add_argument("run_dir", help="a run folder written by `compactcl run`")
    p.add_argument("--baseline", action="append", default=[], metavar="NAME=RUN_DIR",
                   help="another run whose working accuracy per task is drawn as a dashed line")
    p.set_defaults(func=run)


def run(args) -> int:
    import json
    from pathlib import Path

    from ..errors import CompactCLError
    from ..report.html import write_report

    baselines = {}
    for item in args.baseline:
        name, sep, path = item.partition("=")
        if not sep:
            raise CompactCLError(f"--baseline {item!r}: expected NAME=RUN_DIR")
        doc = json.loads((Path(path) / "metrics.json").read_text())
        baselines[name] = [sum(t["accuracy"]["working"]) / len(t["accuracy"]["working"]) for t in doc["tasks"]]
    print(write_report(args.run_dir, baselines))
    return 0
