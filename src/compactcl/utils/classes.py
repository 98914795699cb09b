"""Dataset classes by name, for tables and log lines (no torch: the report and the CLI tables use it)."""

from __future__ import annotations

__all__ = ["class_name", "class_names_text"]


def class_name(class_id: int, names: object) -> str:
    """The name of dataset class ``class_id`` (``names``: by class id, as metrics.json's ``class_names``
    and a dataset's ``class_names``); the id itself where there is no such name."""
    ok = isinstance(names, (list, tuple)) and isinstance(class_id, int) and 0 <= class_id < len(names)
    return str(names[class_id]) if ok else str(class_id)


def class_names_text(class_ids: list[int], names: object) -> str:
    """Dataset classes by name for a table cell or a log line: ``"Coat, Shirt"``."""
    return ", ".join(class_name(c, names) for c in class_ids)

