"""The ONNX a device runs: the deployed model's weight *codes*, decoded in the graph, self-describing.

Every quantized layer's weight is stored as the bit-packed codes the deployer chose plus its
grid, and decoded by ops that ONNX Runtime constant-folds at load (each quantization method
owns its decode: :meth:`~compactcl.compress.quantize.methods.QuantMethod.onnx_decode`). So the
file is about the size of the ``.ccl`` (the budget is kept on the device) and runs as fast as
the dense fp32 graph after load. Biases and batch-norm tensors, already fp16 values, are stored
as fp16 + ``Cast``; value names are shortened (names are bytes too).

``metadata_props`` say how to use it (:func:`deploy_metadata`): class names in output order,
dataset class ids, input layout/channels/size, per-channel normalization
(``x = (pixel / 255 - mean) / std``), task index, recipe, compactcl version and the sha256 of
the ``.ccl`` it was made from — enough for ``examples/edge_predict.py`` with numpy +
onnxruntime alone.

>>> nbytes = export_compressed_onnx(model, "deployed.onnx", (1, 8, 8), metadata)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import os
import warnings
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from ..compress.quantize.onnx_graph import OPSET
from ..compress.quantize.state import quantized_layers
from ..data.datasets import TensorData, per_channel
from ..errors import CompactCLError
from ..utils.atomic import atomic_write_bytes
from .onnx_sparse import SparseCodesGraph

__all__ = ["export_compressed_onnx", "export_dense_onnx", "describe", "deploy_metadata", "add_metadata", "read_metadata",
           "check_against", "METADATA_KEYS"]

METADATA_KEYS = ("class_names", "class_ids", "input_layout", "input_channels", "input_size", "normalization",
                 "task", "recipe", "compactcl_version", "source_sha256")


def _torch_onnx(model: nn.Module, input_shape: tuple[int, ...]) -> Any:
    """The model as an ONNX ModelProto, batch-norm kept as its own op (not folded into the conv
    weights, which would no longer be the codes' values: ORT fuses them again at load)."""
    import onnx

    model = model.eval()
    dummy = torch.zeros(2, *input_shape[-3:], device=next(model.parameters()).device)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(model, (dummy,), buf, dynamo=False, opset_version=OPSET,
                              training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False,
                              input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
        except Exception as e:  # the exporter raises many types; name the model and keep the cause
            raise CompactCLError(f"ONNX export of {type(model).__name__} failed: {e}") from e
    return onnx.load_from_string(buf.getvalue())


def _rewrite(mp: Any, model: nn.Module, compress: bool, sparse: str = "auto") -> None:
    """Swap quantized weights for their in-graph decode (``compress``; codes dense or ``sparse``, see
    :class:`~compactcl.export.onnx_sparse.SparseCodesGraph`) and lossless fp32 -> fp16 tensors."""
    from onnx import numpy_helper

    g = SparseCodesGraph(sparse=sparse)
    replace: dict[str, str] = {}
    inits = {i.name: i for i in mp.graph.initializer}
    if compress:
        for name, wq in quantized_layers(model).items():
            key = f"{name}.weight"
            if key in inits:  # a weight the exporter renamed or folded stays dense (still correct)
                replace[key] = wq.quant_method.onnx_weight_decode(wq, model.get_submodule(name).weight, g)
        for init in inits.values():
            if init.name not in replace and init.data_type == 1:  # FLOAT
                half = g.half(numpy_helper.to_array(init))  # biases, batch norm: fp16 values after quantize_
                if half is not None:
                    replace[init.name] = half
    for node in mp.graph.node:
        for i, name in enumerate(node.input):
            if name in replace:
                node.input[i] = replace[name]
    kept = [i for i in mp.graph.initializer if i.name not in replace]
    decode_nodes, decode_inits = g.finish()
    del mp.graph.initializer[:]
    mp.graph.initializer.extend(kept + decode_inits)
    nodes = list(decode_nodes) + list(mp.graph.node)  # decode first: topological order
    del mp.graph.node[:]
    mp.graph.node.extend(nodes)


# attributes equal to the operator's default (ONNX spec): omitted, they mean the same and cost nothing
_DEFAULTS: dict[str, dict[str, Any]] = {
    "Conv": {"group": 1, "dilations": 1, "strides": 1, "pads": 0},
    "MaxPool": {"ceil_mode": 0, "dilations": 1, "strides": 1, "pads": 0},
    "AveragePool": {"ceil_mode": 0, "strides": 1, "pads": 0},
    "BatchNormalization": {"training_mode": 0, "momentum": None,  # momentum is unused in inference
                           "epsilon": float(np.float32(1e-5))},
    "Gemm": {"alpha": 1.0, "beta": 1.0, "transA": 0, "transB": 0},
    "Flatten": {"axis": 1},
}
# attributes the spec infers from an input when absent (Conv's kernel from its weight's shape)
_INFERRED: dict[str, set[str]] = {"Conv": {"kernel_shape"}}
_NAME_CHARS = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def _drop_defaults(node: Any) -> None:
    from onnx import helper

    defaults, inferred = _DEFAULTS.get(node.op_type, {}), _INFERRED.get(node.op_type, set())
    keep = []
    for a in node.attribute:
        value = helper.get_attribute_value(a)
        d = defaults.get(a.name, ...)
        same = d is None or (isinstance(value, list) and value and all(v == d for v in value)) or value == d
        if (a.name in defaults and same) or a.name in inferred:
            continue
        keep.append(a)
    if len(keep) != len(node.attribute):
        del node.attribute[:]
        node.attribute.extend(keep)


def _short_names(count: int, taken: set[str]) -> list[str]:
    """``count`` distinct names, shortest first (1 character, then 2, ...), none in ``taken``."""
    out: list[str] = []
    for length in itertools.count(1):
        for chars in itertools.product(_NAME_CHARS, repeat=length):
            if len(out) == count:
                return out
            if "".join(chars) not in taken:
                out.append("".join(chars))
    raise AssertionError("unreachable")


def _shorten(mp: Any) -> None:
    """Short value names (the most used get one character), no node names, producer, doc strings,
    default or inferable attributes or value_info: bytes a budget counts."""
    from collections import Counter

    keep = {v.name for v in mp.graph.input} | {v.name for v in mp.graph.output}
    uses: Counter[str] = Counter()
    for init in mp.graph.initializer:
        uses[init.name] += 1
    for node in mp.graph.node:
        uses.update(node.input)
        uses.update(node.output)
    order = [n for n, _ in sorted(uses.items(), key=lambda kv: -kv[1]) if n and n not in keep]  # stable: ties by first use
    names = dict(zip(order, _short_names(len(order), keep)))
    names.update({n: n for n in keep} | {"": ""})

    for init in mp.graph.initializer:
        init.name = names[init.name]
        init.doc_string = ""
    for node in mp.graph.node:
        node.name, node.doc_string = "", ""
        _drop_defaults(node)
        for i, name in enumerate(node.input):
            node.input[i] = names[name]
        for i, name in enumerate(node.output):
            node.output[i] = names[name]
    del mp.graph.value_info[:]
    mp.graph.name, mp.graph.doc_string, mp.doc_string = "g", "", ""
    mp.producer_name, mp.producer_version = "", ""


def _write(mp: Any, path: str | os.PathLike, metadata: Mapping[str, str] | None) -> int:
    import onnx

    del mp.metadata_props[:]
    for k, v in (metadata or {}).items():
        mp.metadata_props.add(key=k, value=v)
    onnx.checker.check_model(mp)
    data = mp.SerializeToString()
    atomic_write_bytes(path, data)
    return len(data)


def export_compressed_onnx(model: nn.Module, path: str | os.PathLike, input_shape: tuple[int, ...],
                           metadata: Mapping[str, str] | None = None, sparse: str = "auto") -> int:
    """Write ``model`` (quantized by ``quantize_``/``qat_``) as an ONNX holding its weight codes,
    decoded in the graph (opset 18); return the bytes written. Each codes tensor is stored dense or
    sparse (pruned zeros), whichever is smaller; ``sparse="never"``/``"always"`` forces one form."""
    model = model.cpu().eval()
    mp = _torch_onnx(model, input_shape)
    _rewrite(mp, model, compress=True, sparse=sparse)
    _shorten(mp)
    return _write(mp, path, metadata)


def export_dense_onnx(model: nn.Module, path: str | os.PathLike, input_shape: tuple[int, ...]) -> int:
    """The same graph as :func:`export_compressed_onnx` with plain fp32 weights (the reference the
    compressed file's latency is measured against)."""
    model = model.cpu().eval()
    mp = _torch_onnx(model, input_shape)
    _shorten(mp)
    return _write(mp, path, None)


# ------------------------------------------------------------------------------------- metadata
def describe(meta: Mapping[str, Any], input_shape: tuple[int, ...]) -> dict[str, Any]:
    """How to use a deployed model, from its task's file meta (stream, task, classes, recipe): class
    names in output order, dataset class ids, input layout/channels/size, per-channel normalization
    (``x = (pixel / 255 - mean) / std`` on pixels 0..255; ``resize``/``interpolation`` too for image
    folders), task, recipe and compactcl version. The ``.ccl`` header carries it as is; the ONNX as
    ``metadata_props`` (:func:`deploy_metadata`)."""
    from ..utils.version import __version__

    stream = meta.get("stream") or {}
    ids = [int(c) for c in meta.get("classes") or []]
    names = list(stream.get("class_names") or [])
    norm = dict(stream.get("normalization") or {})
    channels, size = int(input_shape[-3]), int(input_shape[-1])
    normalization = {"mean": per_channel(norm.get("mean", 0.0), channels),
                     "std": per_channel(norm.get("std", 1.0), channels)}
    for k in ("resize", "interpolation"):
        if k in norm:
            normalization[k] = norm[k]
    return {"class_names": [str(names[c]) if c < len(names) else str(c) for c in ids], "class_ids": ids,
            "input": {"layout": "NCHW", "channels": channels, "size": size}, "normalization": normalization,
            "task": meta.get("task"), "recipe": meta.get("recipe"), "compactcl_version": __version__}


def deploy_metadata(meta: Mapping[str, Any], input_shape: tuple[int, int, int], source: str | os.PathLike | None,
                    ) -> dict[str, str]:
    """``metadata_props`` of a deployed ONNX: :func:`describe` as strings, plus the sha256 of ``source``
    (the ``.ccl`` it was made from)."""
    d = describe(meta, input_shape)
    compact = (",", ":")  # JSON without spaces: the file's bytes count against the budget
    props = {"class_names": json.dumps(d["class_names"], separators=compact),
             "class_ids": json.dumps(d["class_ids"], separators=compact),
             "input_layout": d["input"]["layout"], "input_channels": str(d["input"]["channels"]),
             "input_size": str(d["input"]["size"]),
             "normalization": json.dumps(d["normalization"], separators=compact),
             "task": "" if d["task"] is None else str(d["task"]), "recipe": str(d["recipe"] or ""),
             "compactcl_version": d["compactcl_version"]}
    if source is not None:
        props["source_sha256"] = hashlib.sha256(Path(source).read_bytes()).hexdigest()
    return props


def add_metadata(path: str | os.PathLike, metadata: Mapping[str, str]) -> int:
    """Stamp compactcl's ``metadata_props`` (:func:`deploy_metadata`) into an ONNX file written by another
    exporter (fp32, int8 QDQ); return its new size."""
    import onnx

    mp = onnx.load(str(path))
    return _write(mp, path, metadata)


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The compactcl ``metadata_props`` of an ONNX file, decoded (lists and numbers as such)."""
    import onnx

    try:
        mp = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf raises DecodeError and friends
        raise CompactCLError(f"{path}: not an ONNX model ({e}); pass a .onnx written by compactcl") from e
    props = {p.key: p.value for p in mp.metadata_props}
    missing = [k for k in ("class_names", "input_channels", "input_size", "normalization") if k not in props]
    if missing:
        raise CompactCLError(f"{path}: ONNX without compactcl metadata (missing {', '.join(missing)}); it cannot say "
                             "how to preprocess images or name classes. Export it with `compactcl run` "
                             "(export: {onnx: true}) or `compactcl export RUN`")
    out: dict[str, Any] = dict(props)
    for k in ("class_names", "class_ids", "normalization"):
        if k in out:
            out[k] = json.loads(out[k])
    for k in ("input_channels", "input_size"):
        out[k] = int(out[k])
    return out


# ---------------------------------------------------------------------------------------- check
def check_against(path: str | os.PathLike, reference: nn.Module, x: torch.Tensor | TensorData,
                  y: torch.Tensor) -> dict[str, Any]:
    """ONNX Runtime logits of ``path`` vs ``reference`` (e.g. ``compactcl.load(deployed.ccl)``) on ``x``:
    top-1 agreement, max |Δlogit|, and both accuracies on labels ``y``."""
    from .onnx import onnx_predict, torch_logits

    ref = torch_logits(reference.cpu(), x)
    got = onnx_predict(path, x)
    yy = y.cpu().numpy()
    return {"agreement": float((got.argmax(1) == ref.argmax(1)).mean()),
            "max_abs_logit_diff": float(np.abs(got - ref).max()) if len(ref) else 0.0,
            "accuracy": float((got.argmax(1) == yy).mean()), "reference_accuracy": float((ref.argmax(1) == yy).mean()),
            "images": int(len(yy))}
