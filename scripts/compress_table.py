"""Print the README's compress-after-every-task table from run folders (no figure typed by hand).

    .venv/bin/python scripts/compress_table.py runs/cf-der --baseline iCaRL=runs/cf-icarl
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def table(main: dict, name: str, baselines: dict[str, dict]) -> str:
    head = [f"{name} working", f"{name} deployed"]
    for b in baselines:
        head += [f"{b} working", f"{b} deployed"]
    head += [f"{name} fp32 bytes", f"deployed bytes ({name})", "budget", "update (delta)"]
    lines = ["| after task | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
    for i, row in enumerate(main["tasks"]):
        cells = [f"{_mean(row['accuracy']['working']):.3f}", f"{_mean(row['accuracy']['deployed']):.3f}"]
        for doc in baselines.values():
            acc = doc["tasks"][i]["accuracy"]
            cells += [f"{_mean(acc['working']):.3f}", f"{_mean(acc['deployed']):.3f}"]
        b = row["bytes"]
        update = ("—" if "update" not in b else  # runs older than the update figure
                  f"{b['update']:,}" + (" (full)" if row.get("update_kind") == "full" else ""))
        cells += [f"{b['fp32']:,}", f"{b['deployed']:,}", f"{row.get('deploy', {}).get('budget_bytes', 0):,}", update]
        lines.append(f"| {row['index']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("--name", default="DER")
    ap.add_argument("--baseline", action="append", default=[], help="NAME=RUN_DIR (repeatable)")
    args = ap.parse_args(argv)
    load = lambda p: json.loads((Path(p) / "metrics.json").read_text())  # noqa: E731
    baselines = dict(b.split("=", 1) for b in args.baseline)
    docs = {k: load(v) for k, v in baselines.items()}
    main_doc = load(args.run)
    print(table(main_doc, args.name, docs))
    for label, doc in {args.name: main_doc, **docs}.items():
        s = doc["summary"]
        print(f"{label}: final working {s['working']['final_accuracy']:.3f} deployed {s['deployed']['final_accuracy']:.3f}"
              f" | AIA working {s['working']['average_incremental_accuracy']:.3f}"
              f" deployed {s['deployed']['average_incremental_accuracy']:.3f} | bytes {s['bytes']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
