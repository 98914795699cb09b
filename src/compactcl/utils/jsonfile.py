"""A user's JSON file read with bounds and named errors (metrics.json, sensitivity.json)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import CompactCLError

__all__ = ["read_json"]


def read_json(path: Path, max_bytes: int, fix: str, prefix: str = "") -> Any:
    """The JSON document in ``path``: refused unread when over ``max_bytes``, and when it is not UTF-8
    JSON (or nests too deep), with a :class:`CompactCLError` that names the file, then ``fix``."""
    if path.stat().st_size > max_bytes:
        raise CompactCLError(f"{prefix}{path} is over {max_bytes >> 20} MiB: {fix}")
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise CompactCLError(f"{prefix}{path} is not JSON ({type(e).__name__}): {fix}") from None
