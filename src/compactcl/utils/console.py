"""Where output goes: progress bars only on a terminal; logs and redirected output get plain lines."""

from __future__ import annotations

import sys

__all__ = ["on_terminal"]


def on_terminal() -> bool:
    """True when both stdout and stderr are terminals. Redirected to a file or a pipe, a tqdm bar
    (carriage returns, cursor-up escapes) turns into noise, so callers disable bars then."""
    return all(bool(getattr(s, "isatty", lambda: False)()) for s in (sys.stdout, sys.stderr))
