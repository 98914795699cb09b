"""The one error type users see: a message that names the problem and the fix."""

__all__ = ["CompactCLError"]


class CompactCLError(Exception):
    """Bad input or an unusable file. The message says what is wrong and how to fix it."""
