"""Write files so a reader (or a resumed run) never sees half of one: temp file + rename."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_text", "atomic_write_json"]

from ..errors import CompactCLError

_NO_SPACE = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# mkstemp creates 0600 files; published files get the usual 0666 & ~umask (readable by the team).
_FILE_MODE = 0o666 & ~_umask()


def _disk_full(path: Path, e: OSError) -> CompactCLError:
    return CompactCLError(
        f"disk full while writing {path} ({e.strerror or e}). Nothing was replaced: the previous {path.name}, "
        f"if any, is intact and no partial file is left. Free space on the disk that holds {path.parent} "
        "(or write to another folder, e.g. --out), then run again; a run continues with --resume.")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success it replaces ``path`` in one rename."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as e:
        if e.errno in _NO_SPACE:
            raise _disk_full(path, e) from e
        raise
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, _FILE_MODE)
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except OSError as e:  # ENOSPC surfaces in write, fsync or close; the target is untouched either way
        if e.errno in _NO_SPACE:
            raise _disk_full(path, e) from e
        raise
    finally:
        tmp_path.unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")
