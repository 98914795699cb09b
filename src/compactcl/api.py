"""The user facade: run a recipe from Python, load any compactcl file, get a checkpoint's data."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from torch import nn

from .data.datasets import DatasetSplits, TensorData, from_arrays, load_dataset
from .data.stream import class_incremental
from .errors import CompactCLError
from .export.load import check_input, load, resolve_model_path
from .models.checkpoint import read_header

__all__ = ["run", "load", "resolve_model_path", "checkpoint_data", "check_input"]


def run(recipe: Any = None, *, data: Any = None, model: nn.Module | None = None, out: str | os.PathLike | None = None,
        overrides: Sequence[str] = (), resume: bool = False, progress: bool = False,
        log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run a recipe — with compression, export and report, exactly as ``compactcl run`` — and return
    its metrics document (what ``RUN/metrics.json`` holds).

    ``recipe``: a built-in name, a YAML path, a dict or a :class:`~compactcl.pipeline.recipe.Recipe`
    (None: the default); ``overrides``: ``"key=value"`` strings as ``--set`` takes them
    (``"compress.steps[0].distill.epochs=5"``). ``data``: :func:`compactcl.data.from_arrays` splits, a
    folder of class sub-folders, a torch ``Dataset`` of ``(image, label)`` (split 80/20, stratified)
    or a ``(train, test)`` pair of them; None: the recipe's ``data:``. ``model``: a model from
    :func:`compactcl.models.from_module` (give it a ``factory`` so checkpoints can be saved) or a
    built-in one; None: the recipe's ``model:``. ``out``: the run folder (default ``runs/<name>``).

    >>> doc = compactcl.run("default", overrides=["learner.epochs=1"], out="runs/quick")  # doctest: +SKIP
    """
    from .pipeline.recipe import Recipe, apply_overrides, load_recipe, validate_recipe
    from .pipeline.run import run_recipe
    from .pipeline.stream import IN_MEMORY

    if recipe is None or isinstance(recipe, (str, os.PathLike)):
        spec = load_recipe(None if recipe is None else str(recipe), list(overrides))
    elif isinstance(recipe, (dict, Recipe)):
        raw = recipe.model_dump(mode="json") if isinstance(recipe, Recipe) else recipe
        spec = validate_recipe(apply_overrides(raw, list(overrides)), "(from Python)")
    else:
        raise CompactCLError(f"recipe must be a name, a path, a dict or a Recipe, got {type(recipe).__name__}")
    dataset = None
    if isinstance(data, (str, os.PathLike)):
        spec = spec.set("data.dataset", "folder").set("data.root", str(data))
    elif data is not None:
        dataset = data if isinstance(data, DatasetSplits) else _from_torch(data)
        spec = spec.set("data.dataset", IN_MEMORY)
    folder = Path(out) if out is not None else Path("runs") / spec.name
    return run_recipe(spec, folder, resume=resume, progress=progress, log=log, dataset=dataset, model=model)


def _from_torch(data: Any) -> DatasetSplits:
    """A torch Dataset of (image, label) — or a (train, test) pair — as in-memory splits. Images are
    tensors, arrays or PIL images, (C, H, W) or (H, W), in [0, 1] or 0..255."""
    def arrays(ds: Any) -> tuple[np.ndarray, np.ndarray]:
        if not (hasattr(ds, "__len__") and hasattr(ds, "__getitem__")):
            raise CompactCLError(f"data: expected from_arrays(...) splits, a folder, a Dataset of (image, label) or "
                                 f"a (train, test) pair of them; got {type(ds).__name__}")
        items = [ds[i] for i in range(len(ds))]
        if not items:
            raise CompactCLError("data: the Dataset is empty")
        x = np.stack([np.asarray(img, dtype=np.float32) for img, _ in items])
        y = np.asarray([int(label) for _, label in items], dtype=np.int64)
        return x, y

    if isinstance(data, (tuple, list)) and len(data) == 2:
        (xtr, ytr), (xte, yte) = arrays(data[0]), arrays(data[1])
    else:
        from sklearn.model_selection import train_test_split

        x, y = arrays(data)
        tr, te = train_test_split(np.arange(len(y)), test_size=0.2, stratify=y, random_state=0)
        xtr, ytr, xte, yte = x[tr], y[tr], x[te], y[te]
    if max(xtr.max(), xte.max()) > 1.0:  # 0..255 pixels (decided once for both splits)
        xtr, xte = xtr / 255.0, xte / 255.0
    return from_arrays(xtr, ytr, xte, yte, name="dataset")


def checkpoint_data(path: str | os.PathLike, model: str = "deployed") -> dict[str, Any]:
    """The data a saved model was trained for, restricted to the classes it knows (a run folder:
    its final ``model``, deployed or working, as :func:`load` reads it).

    Returns ``{"train", "val", "test": TensorData, "input_shape": (C, H, W), "meta": ...}``,
    rebuilt from the stream recorded in the checkpoint's header (dataset, root, class order).
    """
    path = resolve_model_path(path, model)
    meta = read_header(path).get("meta", {})
    stream_meta = meta.get("stream") if isinstance(meta, dict) else None
    if not stream_meta:
        raise CompactCLError(f"{path} does not record the data it was trained on; "
                             "pass the data explicitly through the Python API")
    _check_stream_meta(path, meta)
    ds = load_dataset(stream_meta["dataset"], stream_meta.get("root"), **stream_meta.get("dataset_options", {}))
    stream = class_incremental(ds, stream_meta["tasks"], stream_meta.get("classes_per_task"),
                               stream_meta.get("first_task_classes"), stream_meta["seed"],
                               stream_meta["val_fraction"], stream_meta["class_order"],
                               all_classes=False)  # the file's stream was accepted when it was trained
    spec = read_header(path).get("spec") or {}
    check_input(spec, ds.train.batch(slice(0, 1)), f"{path}: its recorded data {stream_meta['dataset']!r}")
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
