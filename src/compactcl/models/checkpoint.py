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
from ..utils.frame import MAGIC, is_frame, read_frame
from .protocol import MODEL_KINDS, ModelKind, create_model, list_model_kinds

__all__ = ["save_checkpoint", "load_checkpoint", "read_header", "conform_to", "tensor_digest", "file_digest",
           "verify_digest", "spec_layout", "FORMAT", "READABLE_FORMATS"]

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
    """The JSON header of a compactcl file: a safetensors checkpoint or artifact, or a compact artifact
    (``.ccl`` format /3, checksum verified here)."""
    path = Path(path)
    if not path.is_file():
        raise CompactCLError(f"no such file: {path}. Pass a checkpoint (.safetensors), an artifact (.ccl) or a run folder.")
    with open(path, "rb") as f:
        framed = is_frame(f.read(len(MAGIC)))
    if framed:
        return read_frame(path.read_bytes(), str(path))[0]
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


_BUILD_ERRORS = (ValueError, TypeError, KeyError, IndexError, AttributeError, RuntimeError, OverflowError)


def _count(value: Any, name: str, limit: int, source: str) -> int:
    """A spec count (branches, classes): a plain int in [0, limit], else the header is refused."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= limit:
        raise CompactCLError(f"{source}: its spec has {name}={value!r}, which its weights cannot back (at most "
                             f"{limit:,}); the header is corrupted or crafted. Refusing to build it.")
    return value


def _longest_list(value: Any) -> int:
    """Length of the longest list anywhere in ``value`` (spec lists such as MLP ``hidden`` become layers)."""
    if isinstance(value, dict):
        return max((_longest_list(v) for v in value.values()), default=0)
    if isinstance(value, (list, tuple)):
        return max(len(value), *(_longest_list(v) for v in value)) if value else 0
    return 0


def _check_lists(spec: dict[str, Any], n: int, source: str) -> None:
    """No list in the spec (MLP ``hidden``: one layer an entry) longer than the file's ``n`` tensors."""
    try:
        longest = _longest_list(spec)
    except RecursionError as e:
        raise CompactCLError(f"{source}: its spec is nested too deeply; the header is corrupted or crafted.") from e
    if longest > n:
        raise CompactCLError(f"{source}: its spec holds a list of {longest:,} entries but the file has only {n} "
                             "tensors; the header is corrupted or crafted. Refusing to build it.")


def _check_counts(spec: dict[str, Any], state: dict[str, torch.Tensor], source: str) -> None:
    """Spec values that set how many modules get built must be backed by tensors in the file.

    Even on the meta device, building costs time per module: ``branches: 10**9`` or a
    million-entry ``hidden`` list would hang before any shape could be compared.
    """
    n = len(state)
    _check_lists(spec, n, source)
    counts = MODEL_KINDS[spec["kind"]].saved_counts
    for field, saved in counts(spec, state) if counts else []:
        if _count(spec.get(field, 0), field, n, source) != saved:
            raise CompactCLError(f"{source}: its spec says {field}={spec.get(field)} but the file holds "
                                 f"weights of {saved} {field}; the header is corrupted or crafted.")
    # classes are never pruned, so the head's saved rows must be the spec's classes
    for key, field in (("head.weight", "num_classes"), ("aux_head.weight", "aux_classes")):
        if field in spec and key in state and state[key].ndim >= 1:
            rows = int(state[key].shape[0])
            if _count(spec[field], field, rows, source) != rows:
                raise CompactCLError(f"{source}: its spec says {field}={spec[field]} but {key} holds {rows} rows; "
                                     "the header is corrupted or crafted.")


def _kind_of(spec: Any, source: str) -> ModelKind:
    if not isinstance(spec, dict) or not isinstance(spec.get("kind"), str):
        raise CompactCLError(f"{source}: its header has no valid model spec; the file is corrupted.")
    kind = MODEL_KINDS.get(spec["kind"])
    if kind is None:
        raise CompactCLError(f"{source}: unknown model kind {spec['kind']!r}; this compactcl builds "
                             f"{', '.join(list_model_kinds())}")
    return kind


def spec_layout(spec: Any, n: int, source: str) -> list[tuple[str, tuple[int, ...]]] | None:
    """The state-dict keys and shapes, in order, of the model ``spec`` builds — what a compact artifact
    leaves out of its header — for a file holding ``n`` tensors. Built on the meta device (nothing
    allocated) after the bounds loading applies (no spec list, branch or block count above ``n``);
    None for kinds not safe to build there (external models: user factories)."""
    kind = _kind_of(spec, source)
    if not kind.meta_safe:
        return None
    _check_lists(spec, n, source)
    for field, _ in kind.saved_counts(spec, {}) if kind.saved_counts else []:
        _count(spec.get(field, 0), field, n, source)
    try:
        with torch.random.fork_rng(devices=[]), torch.device("meta"):
            model = create_model(spec)
    except CompactCLError:
        raise
    except _BUILD_ERRORS as e:
        raise CompactCLError(f"{source}: its model spec cannot be built ({type(e).__name__}: {str(e)[:300]}); the "
                             "header is corrupted or was written by another compactcl version.") from e
    return [(k, tuple(t.shape)) for k, t in model.state_dict().items()]


def _check_spec(spec: Any, state: dict[str, torch.Tensor], source: str) -> nn.Module | None:
    """The spec's model on the meta device, conformed to the saved shapes and checked tensor by tensor.

    Nothing is allocated here: a crafted header (``width: 10**9``, ``num_classes: 15e6``,
    ``branches: 10**9``) is refused before any memory or time is spent on it, and an accepted
    spec describes exactly the tensors in the file, so building it costs what the file holds.
    Returns None for kinds not safe to build on the meta device (external models: user factories).
    """
    kind = _kind_of(spec, source)
    if not kind.meta_safe:
        return None
    _check_counts(spec, state, source)
    try:
        with torch.device("meta"):
            probe = conform_to(create_model(spec), state)
    except CompactCLError:
        raise
    except _BUILD_ERRORS as e:
        raise CompactCLError(f"{source}: its model spec cannot be built ({type(e).__name__}: {str(e)[:300]}); the "
                             "header is corrupted or was written by another compactcl version.") from e
    want = probe.state_dict()
    missing, unexpected = sorted(set(want) - set(state)), sorted(set(state) - set(want))
    if missing or unexpected:
        raise CompactCLError(f"{source}: weights do not match the model spec (missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}); the file was written by another model.")
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(t.shape)}" for k, t in want.items()
             if tuple(state[k].shape) != tuple(t.shape)]
    if wrong:
        raise CompactCLError(f"{source}: weights do not fit the model spec ({'; '.join(wrong[:3])}); the file is "
                             "corrupted or was written by another model.")
    return probe


def model_from_state(spec: dict[str, Any], state: dict[str, torch.Tensor], source: str = "checkpoint") -> nn.Module:
    # Loading must not move the global RNG (layer init draws from it, then the saved weights
    # replace what was drawn): a resumed run draws exactly what an uninterrupted one does.
    with torch.random.fork_rng(devices=[]):
        return _model_from_state(spec, state, source)


def _model_from_state(spec: dict[str, Any], state: dict[str, torch.Tensor], source: str) -> nn.Module:
    probe = _check_spec(spec, state, source)
    try:
        if probe is not None:  # shapes already match the file: allocate exactly that, then copy the weights in
            model = probe.to_empty(device="cpu")
        else:
            model = conform_to(create_model(spec), state)
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
