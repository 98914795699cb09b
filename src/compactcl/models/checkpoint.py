"""Full-precision checkpoints: safetensors weights + a JSON spec in the header. No pickle.

A pruned model keeps its spec; its smaller layer shapes are read back from the weights, so
a structurally pruned checkpoint reloads into a plain smaller model (:func:`conform_to`).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save as st_save
from safetensors import safe_open
from torch import nn

from ..errors import CompactCLError
from ..utils.atomic import atomic_write_bytes
from .protocol import create_model

__all__ = ["save_checkpoint", "load_checkpoint", "read_header", "conform_to", "tensor_digest", "file_digest",
           "verify_digest", "FORMAT", "READABLE_FORMATS"]

# /2: the sha256 covers the header too (a damaged spec or meta is caught, not just damaged weights);
# /1 files (tensor-only digest) are still read.
FORMAT = "compactcl.checkpoint/2"
READABLE_FORMATS = ("compactcl.checkpoint/1", FORMAT)


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and bytes: detects silent corruption on load."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def file_digest(tensors: dict[str, torch.Tensor], header: dict[str, Any]) -> str:
    """sha256 over the tensors and the header's canonical JSON (every key but ``sha256`` itself)."""
    # through JSON first: the digest must be of what a reader parses back (int keys become strings)
    rest = json.loads(json.dumps({k: v for k, v in header.items() if k != "sha256"}))
    h = hashlib.sha256(tensor_digest(tensors).encode())
    h.update(json.dumps(rest, sort_keys=True, separators=(",", ":")).encode())
    return h.hexdigest()


def _format_1(header: dict[str, Any]) -> bool:
    """Files of format /1 digested their tensors only, and checkpoints could omit the digest."""
    return str(header.get("format", "")).endswith("/1")


def verify_digest(header: dict[str, Any], tensors: dict[str, torch.Tensor], path: str | os.PathLike,
                  fix: str) -> None:
    """Raise unless the header's sha256 matches (format /1: the tensors; later formats: header + tensors)."""
    if (tensor_digest(tensors) if _format_1(header) else file_digest(tensors, header)) != header.get("sha256"):
        raise CompactCLError(f"{path}: checksum mismatch, the file was changed or corrupted after saving. {fix}")


def save_checkpoint(model: nn.Module, path: str | os.PathLike, meta: dict[str, Any] | None = None) -> int:
    """Write ``model`` (spec + fp32 weights) atomically; return the file's size in bytes."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    header = {"format": FORMAT, "spec": model.spec, "meta": meta or {}}
    header["sha256"] = file_digest(tensors, header)
    atomic_write_bytes(path, st_save(tensors, metadata={"compactcl": json.dumps(header)}))
    return Path(path).stat().st_size


def read_header(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON header of a compactcl safetensors file (checkpoint or packed artifact)."""
    path = Path(path)
    if not path.is_file():
        raise CompactCLError(f"no such file: {path}. Pass a checkpoint (.safetensors), an artifact (.ccl) or a run folder.")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise CompactCLError(f"{path} is not a readable safetensors file ({e}); it may be truncated or not a "
                             "compactcl checkpoint. Re-export it, or point at the run folder's final/ files.") from e
    if "compactcl" not in meta:
        raise CompactCLError(f"{path} is a safetensors file without a compactcl header; "
                             "wrap your model with compactcl.models.from_module() and load the file with "
                             "compactcl.models.load_weights().")
    try:
        header = json.loads(meta["compactcl"])
    except (json.JSONDecodeError, RecursionError) as e:
        raise CompactCLError(f"{path}: its compactcl header is not valid JSON ({e}); the file is corrupted.") from e
    if not isinstance(header, dict):
        raise CompactCLError(f"{path}: its compactcl header is not a JSON object; the file is corrupted.")
    return header


def load_tensors_checked(path: str | os.PathLike, header: dict[str, Any]) -> dict[str, torch.Tensor]:
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CompactCLError(f"{path}: cannot read its tensors ({e}); the file is truncated or corrupted.") from e
    if header.get("sha256") or not _format_1(header):
        verify_digest(header, tensors, path, "Use an intact copy (a run folder keeps one per task).")
    return tensors


def conform_to(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """Replace layers whose saved weights are smaller (structural pruning) with layers of that shape."""
    for name, module in list(model.named_modules()):
        key = f"{name}.weight" if name else "weight"
        if key not in state:
            continue
        shape = tuple(state[key].shape)
        if tuple(module.weight.shape) == shape:
            continue
        if isinstance(module, nn.Conv2d):
            depthwise = module.groups > 1 and module.groups == module.in_channels == module.out_channels
            groups = shape[0] if depthwise else module.groups
            new: nn.Module = nn.Conv2d(shape[1] * groups, shape[0], module.kernel_size, module.stride,
                                       module.padding, module.dilation, groups, module.bias is not None)
        elif isinstance(module, nn.Linear):
            new = nn.Linear(shape[1], shape[0], bias=module.bias is not None)
        elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            new = type(module)(shape[0], module.eps, module.momentum, module.affine, module.track_running_stats)
        else:
            raise CompactCLError(f"saved weights for layer {name!r} have shape {shape}, which a "
                                 f"{type(module).__name__} cannot take; the checkpoint does not match its spec.")
        parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
        setattr(parent, name.rpartition(".")[2], new)
    return model


_MAX_SPEC_GROWTH = 1000  # a spec may build a model this much larger than its saved weights (pruned models)
_BUILD_ERRORS = (ValueError, TypeError, KeyError, IndexError, AttributeError, RuntimeError, OverflowError)


def _check_spec(spec: Any, state: dict[str, torch.Tensor], source: str) -> None:
    """Refuse a header whose spec cannot be built, or would build a model far larger than the file's weights.

    Built-in specs are first built on the meta device (no memory), so a crafted header such as
    ``width: 10**9`` is refused before anything is allocated.
    """
    if not isinstance(spec, dict) or not isinstance(spec.get("kind"), str):
        raise CompactCLError(f"{source}: its header has no valid model spec; the file is corrupted.")
    if spec["kind"] not in ("single", "der"):
        return
    try:
        with torch.device("meta"):
            probe = create_model(spec)
        need = sum(t.numel() for t in probe.state_dict().values())
    except _BUILD_ERRORS as e:
        raise CompactCLError(f"{source}: its model spec cannot be built ({type(e).__name__}: {e}); the header is "
                             "corrupted or was written by another compactcl version.") from e
    have = sum(t.numel() for t in state.values())
    if need > 2 ** 24 and need > _MAX_SPEC_GROWTH * max(have, 1):
        raise CompactCLError(f"{source}: its spec describes a model of {need:,} values but the file holds {have:,}; "
                             "the header is corrupted or crafted. Refusing to build it.")


def model_from_state(spec: dict[str, Any], state: dict[str, torch.Tensor], source: str = "checkpoint") -> nn.Module:
    _check_spec(spec, state, source)
    try:
        # Loading must not move the global RNG (layer init draws from it, then the saved weights
        # replace what was drawn): a resumed run draws exactly what an uninterrupted one does.
        with torch.random.fork_rng(devices=[]):
            built = create_model(spec)
        model = conform_to(built, state)
        missing, unexpected = model.load_state_dict(state, strict=False)
    except CompactCLError:
        raise
    except _BUILD_ERRORS as e:  # shapes or spec values that the architecture cannot take
        raise CompactCLError(f"{source}: weights do not fit the model spec ({type(e).__name__}: {str(e)[:300]}); "
                             "the file is corrupted or was written by another model.") from e
    if missing or unexpected:
        raise CompactCLError(f"{source}: weights do not match the model spec (missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}); the file was written by another model.")
    return model.eval()


def load_checkpoint(path: str | os.PathLike) -> nn.Module:
    """Rebuild a model saved by :func:`save_checkpoint` (no Python object is unpickled)."""
    header = read_header(path)
    if header.get("format") not in READABLE_FORMATS:
        raise CompactCLError(f"{path} has format {header.get('format')!r}, not a checkpoint; use compactcl.load().")
    return model_from_state(header.get("spec"), load_tensors_checked(path, header), str(path))
