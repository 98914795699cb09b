"""compactcl: class-incremental learning that stays small enough to ship.

>>> import compactcl
>>> model = compactcl.load("runs/demo")  # doctest: +SKIP
"""

from typing import Any

from .errors import CompactCLError

from .utils.version import __version__

__all__ = ["run", "load", "checkpoint_data", "CompactCLError", "__version__"]


def __getattr__(name: str) -> Any:
    # torch loads on first use, not on `import compactcl`: reading a recipe or a metrics.json,
    # `compactcl --help` and `compactcl list` stay light
    if name in ("run", "load", "checkpoint_data"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'compactcl' has no attribute {name!r}")
