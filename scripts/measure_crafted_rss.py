"""Time and peak RSS of each crafted hostile file (tests/crafted.py), each loaded in its own process.

Usage: PYTHONPATH=src python scripts/measure_crafted_rss.py [--gzip-mib 2048]
Prints one line per file: what it is, its size, the outcome (must be CompactCLError), seconds, peak RSS
(VmHWM, else ru_maxrss; it includes ~280 MB for importing torch) and the RSS the load itself added.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# (builder in tests/crafted.py, how to load it)
CASES = [
    ("checkpoint_many_branches", "load"),
    ("checkpoint_many_classes", "load"),
    ("checkpoint_padded_many_classes", "load"),
    ("checkpoint_long_hidden", "load"),
    ("artifact_huge_layer", "load"),
    ("artifact_huge_sparse_layer", "load"),
    ("idx_gzip_bomb", "read_idx"),
    ("idx_huge_claim", "read_idx"),
    ("idx_huge_label", "mnist"),
]

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[4])
import compactcl, crafted
name, how, folder = sys.argv[1], sys.argv[2], Path(sys.argv[3])
path = crafted.idx_gzip_bomb(folder, int(sys.argv[5])) if name == "idx_gzip_bomb" else getattr(crafted, name)(
    folder / "m" if name == "idx_huge_label" else folder)
size = sum(p.stat().st_size for p in ([path] if path.is_file() else path.iterdir()))
def hwm():  # VmHWM is this process's own peak; ru_maxrss may carry over a parent's peak through fork + exec
    try:
        return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1])
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
before = hwm()
start = time.perf_counter()
try:
    if how == "load":
        compactcl.load(path)
    elif how == "read_idx":
        compactcl.data.read_idx(path)
    else:
        compactcl.data.load_dataset("mnist", str(path))
    outcome = "LOADED"
except compactcl.CompactCLError as e:
    outcome = "CompactCLError: " + str(e).split(": ", 1)[-1][:90]
seconds = time.perf_counter() - start
peak = hwm()
print(json.dumps({"name": name, "bytes": size, "outcome": outcome, "seconds": seconds,
                  "peak_mb": peak / 1024, "added_mb": (peak - before) / 1024}))
"""


def measure(name: str, how: str, gzip_mib: int, timeout: float) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        try:
            out = subprocess.run([sys.executable, "-c", CHILD, name, how, folder, str(ROOT / "tests"), str(gzip_mib)],
                                 capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"name": name, "outcome": f"TIMEOUT after {timeout:g} s (killed)"}
    if out.returncode:
        return {"name": name, "outcome": "CRASH " + out.stderr[-300:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gzip-mib", type=int, default=2048, help="zeros after the gzip IDX header (the attack: 2048)")
    parser.add_argument("--timeout", type=float, default=120, help="seconds before a case is killed")
    args = parser.parse_args()
    for name, how in CASES:
        r = measure(name, how, args.gzip_mib, args.timeout)
        if "seconds" not in r:
            print(f"{name:32s} {r['outcome']}")
            continue
        print(f"{name:32s} {r['bytes']:>9,d} B  {r['seconds']:6.3f} s  peak {r['peak_mb']:5.0f} MB "
              f"(+{r['added_mb']:4.0f})  {r['outcome']}")


if __name__ == "__main__":
    main()
