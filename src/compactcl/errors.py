"""The one error type users see: a message that names the problem and the fix."""

__all__ = ["CompactCLError", "BudgetNotMet"]


class CompactCLError(Exception):
    """Bad input or an unusable file. The message says what is wrong and how to fix it."""


class BudgetNotMet(CompactCLError):
    """The deployed model could not be compressed into ``compress.budget`` (bytes or latency)."""
