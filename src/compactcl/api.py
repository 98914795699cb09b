"""Top-level helpers: load any compactcl file, resolve run folders, get a checkpoint's data."""

from __future__ import annotations

import os
from typing import Any


from .data.datasets import TensorData, load_dataset
from .data.stream import class_incremental
from .errors import CompactCLError
from .export.load import check_input, load, resolve_model_path
from .models.checkpoint import read_header

__all__ = ["load", "resolve_model_path", "checkpoint_data", "check_input"]


def checkpoint_data(path: str | os.PathLike) -> dict[str, Any]:
    """The data a saved model was trained for, restricted to the classes it knows.

    Returns ``{"train", "val", "test": TensorData, "input_shape": (C, H, W), "meta": ...}``,
    rebuilt from the stream recorded in the checkpoint's header (dataset, root, class order).
    """
    path = resolve_model_path(path)
    meta = read_header(path).get("meta", {})
    stream_meta = meta.get("stream") if isinstance(meta, dict) else None
    if not stream_meta:
        raise CompactCLError(f"{path} does not record the data it was trained on; "
                             "pass the data explicitly through the Python API")
    _check_stream_meta(path, meta)
    ds = load_dataset(stream_meta["dataset"], stream_meta.get("root"), **stream_meta.get("dataset_options", {}))
    stream = class_incremental(ds, stream_meta["tasks"], stream_meta.get("classes_per_task"),
                               stream_meta.get("first_task_classes"), stream_meta["seed"],
                               stream_meta["val_fraction"], stream_meta["class_order"])
    spec = read_header(path).get("spec") or {}
    check_input(spec, ds.train.x[:1], f"{path}: its recorded data {stream_meta['dataset']!r}")
    n_tasks = meta["task"] + 1
    parts = {split: TensorData.cat([getattr(t, split) for t in stream.tasks[:n_tasks]])
             for split in ("train", "val", "test")}
    return {**parts, "input_shape": (ds.in_channels, ds.input_size, ds.input_size), "meta": meta,
            "tasks": stream.tasks[:n_tasks]}


# header fields checkpoint_data reads, and the types they must have (a crafted header can hold anything)
_STREAM_FIELDS: dict[str, tuple[type, ...]] = {
    "dataset": (str,), "root": (str, type(None)), "dataset_options": (dict,), "tasks": (int,),
    "classes_per_task": (int, type(None)), "first_task_classes": (int, type(None)), "seed": (int,),
    "val_fraction": (int, float), "class_order": (list, type(None))}


def _check_stream_meta(path: Any, meta: dict[str, Any]) -> None:
    stream = meta["stream"]
    bad = [] if isinstance(stream, dict) else ["meta.stream"]
    if not bad:
        required = ("dataset", "tasks", "seed", "val_fraction", "class_order")
        bad = [f"meta.stream.{k}" for k, types in _STREAM_FIELDS.items() if (k in stream or k in required)
               and (not isinstance(stream.get(k), types) or isinstance(stream.get(k), bool))]
        order = stream.get("class_order")
        if isinstance(order, list) and not all(isinstance(c, int) and not isinstance(c, bool) for c in order):
            bad.append("meta.stream.class_order")
    task = meta.get("task")
    if not isinstance(task, int) or isinstance(task, bool) or task < 0:
        bad.append("meta.task")
    if bad:
        raise CompactCLError(f"{path}: its header's {', '.join(bad)} missing or of the wrong type, so the data it was "
                             "trained on cannot be rebuilt; pass the data explicitly through the Python API")
