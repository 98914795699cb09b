"""The recipe's ``data:`` section -> the class-incremental :class:`~compactcl.data.stream.Stream`, and
the description of it every saved file carries (enough to rebuild the exact stream)."""

from __future__ import annotations

from typing import Any

from ..data.datasets import DatasetSplits, load_dataset
from ..data.stream import Stream, class_incremental
from ..errors import CompactCLError
from .recipe import Recipe

__all__ = ["build_stream", "stream_meta", "IN_MEMORY"]

IN_MEMORY = "python"  # data.dataset of a run whose data was handed in from Python (compactcl.run(data=...))


def build_stream(recipe: Recipe, dataset: DatasetSplits | None = None) -> Stream:
    """The recipe's stream over its ``data.dataset``, or over ``dataset`` handed in from Python."""
    d = recipe.data
    if recipe.seed < 0:
        raise CompactCLError(f"seed: must be a non-negative integer, got {recipe.seed}")
    if dataset is not None:
        ds = dataset
    else:
        try:
            ds = load_dataset(d.dataset, d.root, **d.options)
        except TypeError as e:  # an option the loader does not take
            raise CompactCLError(f"data.options {d.options} are not options of dataset {d.dataset!r} ({e})") from e
    return class_incremental(ds, d.tasks, d.classes_per_task, d.first_task_classes, recipe.seed, d.val_fraction,
                             d.class_order, d.all_classes)


def stream_meta(recipe: Recipe, stream: Stream) -> dict[str, Any]:
    """What `checkpoint_data` needs to rebuild the exact stream a checkpoint was trained on."""
    d = recipe.data
    return {"dataset": d.dataset if d.dataset != IN_MEMORY else stream.dataset.name, "root": d.root, "dataset_options": d.options, "tasks": d.tasks,
            "classes_per_task": d.classes_per_task, "first_task_classes": d.first_task_classes,
            "seed": recipe.seed, "val_fraction": d.val_fraction, "class_order": stream.class_order,
            "normalization": stream.dataset.normalization, "class_names": list(stream.dataset.class_names)}
