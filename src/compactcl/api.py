"""Top-level helpers: load any compactcl file, resolve run folders, get a checkpoint's data."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn

from .data.datasets import TensorData, load_dataset
from .data.stream import class_incremental
from .errors import CompactCLError
from .models.checkpoint import FORMAT as CHECKPOINT_FORMAT
from .models.checkpoint import load_checkpoint, read_header

__all__ = ["load", "resolve_model_path", "checkpoint_data", "ARTIFACT_FORMAT"]

ARTIFACT_FORMAT = "compactcl.artifact/1"


def resolve_model_path(path: str | os.PathLike, which: str = "working") -> Path:
    """A file stays itself; a run folder means its ``final/<which>`` model."""
    path = Path(path)
    if path.is_dir():
        final = path / "final"
        for candidate in (final / f"{which}.safetensors", final / f"{which}.ccl"):
            if candidate.is_file():
                return candidate
        raise CompactCLError(f"{path} is a folder without final/{which}.safetensors or final/{which}.ccl; "
                             "pass a run folder written by `compactcl run` or a model file")
    if not path.exists():
        raise CompactCLError(f"no such file or folder: {path}")
    return path


def load(path: str | os.PathLike) -> nn.Module:
    """Load a checkpoint (.safetensors), a packed artifact (.ccl) or a run folder's final working model.

    Nothing is unpickled: weights come from safetensors, the architecture from a JSON header.
    """
    path = resolve_model_path(path)
    header = read_header(path)
    fmt = header.get("format")
    if fmt == CHECKPOINT_FORMAT:
        return load_checkpoint(path)
    if fmt == ARTIFACT_FORMAT:
        from .export.artifact import load_artifact

        return load_artifact(path)
    raise CompactCLError(f"{path}: unknown compactcl format {fmt!r}; this version reads "
                         f"{CHECKPOINT_FORMAT} and {ARTIFACT_FORMAT}")


def checkpoint_data(path: str | os.PathLike) -> dict[str, Any]:
    """The data a saved model was trained for, restricted to the classes it knows.

    Returns ``{"train", "val", "test": TensorData, "input_shape": (C, H, W), "meta": ...}``,
    rebuilt from the stream recorded in the checkpoint's header (dataset, root, class order).
    """
    path = resolve_model_path(path)
    meta = read_header(path).get("meta", {})
    stream_meta = meta.get("stream")
    if not stream_meta:
        raise CompactCLError(f"{path} does not record the data it was trained on; "
                             "pass the data explicitly through the Python API")
    ds = load_dataset(stream_meta["dataset"], stream_meta.get("root"), **stream_meta.get("dataset_options", {}))
    stream = class_incremental(ds, stream_meta["tasks"], stream_meta.get("classes_per_task"),
                               stream_meta.get("first_task_classes"), stream_meta["seed"],
                               stream_meta["val_fraction"], stream_meta["class_order"])
    n_tasks = meta["task"] + 1
    parts = {split: TensorData.cat([getattr(t, split) for t in stream.tasks[:n_tasks]])
             for split in ("train", "val", "test")}
    return {**parts, "input_shape": (ds.in_channels, ds.input_size, ds.input_size), "meta": meta,
            "tasks": stream.tasks[:n_tasks]}
