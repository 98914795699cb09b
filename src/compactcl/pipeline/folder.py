"""Run folders: compactcl writes, cleans and resumes only inside folders it marked as its own.

A run folder holds, before anything else is written to it:

    RUN/.compactcl-run        marker (JSON: format, run id) — the folder is compactcl's
    RUN/.compactcl-run.lock   locked (flock, exclusive) by the run writing the folder
    RUN/recipe.yaml           the recipe as started, recorded once; a resume is checked against it

``--out`` may be a new folder, an empty one, or a marked one; any other folder is refused with
its files untouched. Two runs into one folder: the second fails at once (the lock). On resume
the recipe must equal the recorded one except for keys under ``export.`` and ``log.`` (they
change what is written next, never a finished task); those changes are accepted and recorded in
metrics.json (``recipe_changes``) with the first task they apply to.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import yaml

from ..errors import CompactCLError
from ..utils.atomic import atomic_write_text

__all__ = ["MARKER", "LOCK", "RECIPE_FILE", "MUTABLE_PREFIXES", "RunFolder", "claim_run_folder", "check_out",
           "is_run_folder", "recorded_recipe", "recipe_diff", "record_changes", "clean_stale_temps"]

MARKER = ".compactcl-run"
LOCK = ".compactcl-run.lock"
RECIPE_FILE = "recipe.yaml"
MARKER_FORMAT = "compactcl.run/1"
# Keys a resume may change: they decide what is written from now on, not what a finished task was.
MUTABLE_PREFIXES = ("export.", "log.")
_RESULTS = ("metrics.json", "ladder.json", "tasks", "final")
# utils.atomic names its temp files ".<name>.<8 random chars>.tmp" (tempfile.mkstemp)
_TEMP = re.compile(r"^\..+\.[A-Za-z0-9_]{1,16}\.tmp$")


def is_run_folder(path: Path) -> bool:
    """True when ``path`` carries compactcl's marker (it made the folder's run files)."""
    return (path / MARKER).is_file()


def _foreign_entries(out: Path) -> list[str]:
    try:
        # the lock and a marker being written (another rank of this run, mid-claim) are not foreign
        return sorted(p.name for p in out.iterdir() if p.name != LOCK and not p.name.startswith(f".{MARKER}."))
    except OSError as e:
        raise CompactCLError(f"cannot read folder {out}: {e.strerror or e}") from None


def check_out(out: Path, resume: bool) -> None:
    """Refuse an ``--out`` compactcl must not write to: a file, or a non-empty folder it did not mark."""
    if out.exists() and not out.is_dir():
        raise CompactCLError(f"--out {out} is a file, not a folder; give a new or empty folder (compactcl never "
                             "writes over a file it did not make)")
    if out.is_dir() and not is_run_folder(out):
        entries = _foreign_entries(out)
        if entries:
            shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
            what = "cannot resume" if resume else "will not write into"
            raise CompactCLError(
                f"{what} {out}: it is not empty ({shown}) and is not a compactcl run folder (no {MARKER} marker). "
                "compactcl writes, cleans and resumes only inside folders it made, so your files stay untouched: "
                "choose a new or empty --out. (A run folder made by a compactcl older than the marker: "
                f"add the marker yourself, echo '{{}}' > {out / MARKER}, if you are sure it is one.)")


def recorded_recipe(out: Path) -> dict[str, Any] | None:
    """The recipe recorded in ``out`` (as a plain dict), or None when the folder has none."""
    path = out / RECIPE_FILE
    if not path.is_file():
        return None
    try:
        raw = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError, OSError) as e:
        raise CompactCLError(f"{path} is unreadable ({type(e).__name__}); the run cannot be resumed: "
                             "start a new --out") from None
    if not isinstance(raw, dict):
        raise CompactCLError(f"{path} is not a recipe (a mapping); the run cannot be resumed: start a new --out")
    return raw


def _flat(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict) and obj:
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: obj}


def recipe_diff(before: dict[str, Any], after: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{dotted.key: (before, after)}`` for every leaf that differs (a missing key reads as None)."""
    a, b = _flat(before), _flat(after)
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def _mutable(key: str) -> bool:
    return any(key.startswith(p) or key == p[:-1] for p in MUTABLE_PREFIXES)


def _check_same_run(out: Path, recorded: dict[str, Any], current: dict[str, Any]) -> None:
    fixed = {k: v for k, v in recipe_diff(recorded, current).items() if not _mutable(k)}
    if fixed:
        shown = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in list(fixed.items())[:8])
        raise CompactCLError(
            f"{out} was started with a different recipe ({shown}). A resumed run keeps its recorded recipe "
            f"({out / RECIPE_FILE}); only {', '.join(p + '*' for p in MUTABLE_PREFIXES)} may change. Resume with "
            f"`compactcl run --resume {out}` (no recipe), or start a new --out")


def record_changes(recorded: dict[str, Any], current: dict[str, Any], prior: list[dict[str, Any]],
                   from_task: int) -> list[dict[str, Any]]:
    """``prior`` plus one entry for the ``export.*``/``log.*`` values that differ from those in effect
    (the recorded recipe with ``prior`` applied): ``{"from_task": N, "set": {key: value}}``."""
    effective = _flat(recorded)
    for entry in prior:
        effective.update(entry.get("set", {}) if isinstance(entry, dict) else {})
    now = _flat(current)
    changed = {k: v for k, v in now.items() if _mutable(k) and effective.get(k) != v}
    return [*prior, {"from_task": from_task, "set": changed}] if changed else list(prior)


def clean_stale_temps(out: Path) -> int:
    """Delete temp files a killed writer left (named as utils.atomic names them), only inside a
    marked folder; return how many."""
    if not is_run_folder(out):
        return 0
    n = 0
    for stale in out.glob("**/.*.tmp"):
        if _TEMP.match(stale.name) and stale.is_file() and not stale.is_symlink():
            stale.unlink(missing_ok=True)
            n += 1
    return n


@dataclass
class RunFolder:
    """A claimed run folder: marked, locked for this process, its recipe recorded."""

    path: Path
    run_id: str
    recorded: dict[str, Any] = field(default_factory=dict)
    fresh: bool = True  # no finished work in it when claimed


def _lock(out: Path) -> int:
    try:
        import fcntl
    except ImportError:  # Windows: no flock; the marker checks still hold
        return -1
    fd = os.open(out / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise CompactCLError(f"another compactcl run (pid {holder}) is writing {out}; wait for it to end, "
                             "or choose another --out") from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd


def _unlock(fd: int) -> None:
    if fd >= 0:
        os.close(fd)  # closing the descriptor releases the flock


def _has_results(out: Path) -> bool:
    return any((out / name).exists() for name in _RESULTS)


@contextmanager
def claim_run_folder(out: Path, recipe_doc: dict[str, Any], resume: bool,
                     log: Callable[[str], None] = print) -> Iterator[RunFolder]:
    """Check, mark, lock and record the recipe of run folder ``out`` for the duration of the block.

    Refuses (CompactCLError, nothing written): a file; a non-empty folder without the marker; a
    folder another run holds; a resume whose recipe differs in a key that is not ``export.*`` or
    ``log.*``; a marked folder with results but no recorded recipe (not resumable).
    """
    check_out(out, resume)
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CompactCLError(f"cannot create run folder {out}: {e.strerror or e}") from None
    fd = _lock(out)
    try:
        check_out(out, resume)  # again under the lock: the folder may have changed meanwhile
        marker = out / MARKER
        if marker.is_file():
            try:
                run_id = str(json.loads(marker.read_text() or "{}").get("run_id", "unknown"))
            except (ValueError, UnicodeDecodeError, AttributeError):
                run_id = "unknown"
        else:
            run_id = uuid.uuid4().hex
            atomic_write_text(marker, json.dumps({"format": MARKER_FORMAT, "run_id": run_id}) + "\n")
        recorded = recorded_recipe(out)
        has_results = _has_results(out)
        if recorded is None and has_results:
            raise CompactCLError(f"{out} has results but no {RECIPE_FILE}: it is not a resumable run (its recipe, "
                                 "seed and learner are unknown, so a resume could silently mix two runs); "
                                 "start a new --out")
        if recorded is not None and (resume or has_results):
            _check_same_run(out, recorded, recipe_doc)
        else:  # a new run (or one that never finished anything): record its recipe now
            recorded = recipe_doc
            atomic_write_text(out / RECIPE_FILE, yaml.safe_dump(recipe_doc, sort_keys=False))
        wrote = not has_results
        yield RunFolder(out, run_id, recorded, fresh=not has_results)
    except BaseException:
        if "wrote" in locals() and wrote:
            _undo_claim(out, created)  # refused before any result: leave no run folder behind
        raise
    finally:
        _unlock(fd)


def _undo_claim(out: Path, created: bool) -> None:
    """Remove the marker, recipe and lock this claim wrote, when the folder holds nothing else."""
    ours = {MARKER, LOCK, RECIPE_FILE}
    try:
        if {p.name for p in out.iterdir()} <= ours:
            for name in ours:
                (out / name).unlink(missing_ok=True)
            if created:
                out.rmdir()
    except OSError:
        pass  # best effort: a leftover marker only makes the folder resumable
