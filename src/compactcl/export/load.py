"""Open any compactcl model file: a checkpoint (.safetensors), a packed artifact (.ccl) or a run
folder's final model; check that a batch is what a model was built for."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn

from .. import learners as _learners  # noqa: F401 - learner files register the model kinds they grow (MEMO)
from ..errors import CompactCLError
from ..models.checkpoint import READABLE_FORMATS as CHECKPOINT_FORMATS
from ..models.checkpoint import load_checkpoint, read_header
from .artifact import READABLE_FORMATS as ARTIFACT_FORMATS
from .artifact import load_artifact

__all__ = ["load", "resolve_model_path", "check_input", "RUN_MODELS"]


RUN_MODELS = ("deployed", "working")  # what a run folder's final/ holds, the default first


def resolve_model_path(path: str | os.PathLike, model: str = "deployed") -> Path:
    """A file stays itself; a run folder means its ``final/<model>`` model: ``"deployed"`` (the
    default, as on the command line: ``final/deployed.ccl``, or ``final/deployed.safetensors`` for a
    run without a ``compress:`` section) or ``"working"`` (``final/working.safetensors``, the
    learner's fp32 model)."""
    if model not in RUN_MODELS:
        raise CompactCLError(f"model={model!r}: choose 'deployed' (the run's shipped model) or 'working' "
                             "(the learner's fp32 model)")
    path = Path(path)
    if path.is_dir():
        final = path / "final"
        for candidate in (final / f"{model}.safetensors", final / f"{model}.ccl"):
            if candidate.is_file():
                return candidate
        raise CompactCLError(f"{path} is a folder without final/{model}.safetensors or final/{model}.ccl; "
                             "pass a run folder written by `compactcl run` or a model file")
    if not path.exists():
        raise CompactCLError(f"no such file or folder: {path}")
    return path


def load(path: str | os.PathLike, model: str = "deployed") -> nn.Module:
    """Load a checkpoint (.safetensors), a packed artifact (.ccl) or a run folder's final model.

    A run folder means its deployed model, as on the command line; ``model="working"`` picks the
    learner's fp32 working model (``--model working``). ``model`` is not used for a file.
    Nothing is unpickled: weights come from safetensors, the architecture from a JSON header.

    >>> compactcl.load("runs/demo")                   # runs/demo/final/deployed.ccl  # doctest: +SKIP
    >>> compactcl.load("runs/demo", model="working")  # runs/demo/final/working.safetensors  # doctest: +SKIP
    """
    path = resolve_model_path(path, model)
    header = read_header(path)
    fmt = header.get("format")
    if fmt in CHECKPOINT_FORMATS:
        return load_checkpoint(path)
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
