"""Top-level helpers: load any compactcl file, resolve run folders, get a checkpoint's data."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn

from .data.datasets import TensorData, load_dataset
from .data.stream import class_incremental
from .errors import CompactCLError
from .models.checkpoint import READABLE_FORMATS as CHECKPOINT_FORMATS
from .models.checkpoint import load_checkpoint, read_header

__all__ = ["load", "resolve_model_path", "checkpoint_data", "check_input"]


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
    if fmt in CHECKPOINT_FORMATS:
        return load_checkpoint(path)
    from .export.artifact import READABLE_FORMATS as ARTIFACT_FORMATS, load_artifact

    if fmt in ARTIFACT_FORMATS:
        return load_artifact(path)
    raise CompactCLError(f"{path}: unknown compactcl format {fmt!r}; this version reads "
                         f"{', '.join(CHECKPOINT_FORMATS + ARTIFACT_FORMATS)}")


def check_input(model: nn.Module | dict[str, Any], x: Any, source: str = "input") -> None:
    """Raise :class:`CompactCLError` unless ``x`` is a batch (N, C, H, W) of the images ``model`` was built for.

    ``model`` is a compactcl model (its ``spec`` names ``in_channels`` and ``input_size``) or
    such a spec. A CNN with global pooling would silently accept 28x28 images into a model
    trained on 8x8 ones and answer nonsense; this says what is wrong instead.
    """
    spec = model if isinstance(model, dict) else getattr(model, "spec", None) or {}
    channels, size = spec.get("in_channels"), spec.get("input_size")
    shape = tuple(getattr(x, "shape", ()))
    if channels is None or size is None:
        return  # the model does not record its input: nothing to check against
    want = (int(channels), int(size), int(size))
    if len(shape) == 3 and shape == want:
        raise CompactCLError(f"{source}: got one image {shape}; pass a batch (N, C, H, W), e.g. x[None]")
    if len(shape) != 4 or shape[1:] != want:
        got = "x".join(map(str, shape[1:])) if len(shape) == 4 else f"shape {shape}"
        raise CompactCLError(f"{source}: images are {got} but the model takes {want[0]}x{want[1]}x{want[2]} "
                             f"(channels x height x width) batches (N, {want[0]}, {want[1]}, {want[2]}). Resize "
                             "or convert them the way its training data was prepared (data.options.image_size / "
                             "channels for folder datasets), or use a model trained at this size.")


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
    spec = read_header(path).get("spec") or {}
    check_input(spec, ds.train.x[:1], f"{path}: its recorded data {stream_meta['dataset']!r}")
    n_tasks = meta["task"] + 1
    parts = {split: TensorData.cat([getattr(t, split) for t in stream.tasks[:n_tasks]])
             for split in ("train", "val", "test")}
    return {**parts, "input_shape": (ds.in_channels, ds.input_size, ds.input_size), "meta": meta,
            "tasks": stream.tasks[:n_tasks]}
