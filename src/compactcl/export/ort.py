"""ORT format (``.ort``) for ONNX Runtime's mobile and minimal builds, with the required-operators
config a reduced build is compiled from.

A minimal build loads only ``.ort`` files and runs no graph optimizer, so the in-graph weight
decode of ``deployed.onnx`` is either folded when converting or runs at every inference. Both
are written, from the same codes ONNX:

- ``NAME.ort`` — converted as ``onnxruntime.tools.convert_onnx_models_to_ort`` does (level
  ``all``, NCHWc layout left out: it is x86-specific): the decode is folded, the file holds
  dense fp32 weights (about 4 bytes a weight) and runs as fast as the dense graph;
- ``NAME.codes.ort`` — converted with every optimization off: the file keeps the packed codes
  and decodes them at every inference. The format costs ~0.5 KB per node, and the decode has
  dozens of nodes: on a tiny net (the default run's 4.2k weights) this file is the *larger* one;
  once weights dominate it is the ``.onnx``'s size plus that overhead, 1/8 of the folded file at 4 bits.

Each comes with ``NAME[.codes].required_operators.config`` (``--include_ops_by_config`` of ORT's
``build.py --minimal_build``); the two differ: the folded graph needs ``Conv``/``FusedConv``/``Gemm``
..., the codes graph the decode ops (``BitShift``, ``BitwiseAnd``, ``Gather`` ...) too.
``metadata_props`` (classes, normalization ...) are kept. ONNX Runtime is imported only here.

>>> paths = export_ort("deployed.onnx", "deployed.ort")  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from ..data.datasets import TensorData
from ..errors import CompactCLError
from ..utils.atomic import atomic_path

__all__ = ["ORT_FORMS", "ort_paths", "convert_to_ort", "required_operators_config", "export_ort", "export_ort_checked"]

# form -> (optimization level, what the file holds)
ORT_FORMS = {"dense": ("all", "decode folded at conversion: dense fp32 weights"),
             "codes": ("disable", "weight codes kept: decoded at every inference")}


def ort_paths(out: str | os.PathLike) -> dict[str, dict[str, Path]]:
    """Where each form and its config go, from ``out`` (``deployed.ort``): ``{form: {"model", "config"}}``."""
    out = Path(out)
    if out.suffix != ".ort":
        raise CompactCLError(f"{out}: an ORT-format model file ends in .ort; pass e.g. --out deployed.ort")
    if any(out.name.endswith(f".{form}.ort") for form in ORT_FORMS if form != "dense"):
        raise CompactCLError(f"{out}: name the dense file (e.g. --out deployed.ort); its codes twin is written beside "
                             "it as deployed.codes.ort")
    stem = out.with_name(out.name[: -len(".ort")])  # a.v1.ort -> a.v1 (with_suffix would drop the .v1)
    return {form: {"model": out if form == "dense" else Path(f"{stem}.{form}.ort"),
                   "config": Path(f"{stem}{'' if form == 'dense' else '.' + form}.required_operators.config")}
            for form in ORT_FORMS}


def convert_to_ort(onnx_path: str | os.PathLike, ort_path: str | os.PathLike, form: str = "dense") -> int:
    """Write ``onnx_path`` as an ORT-format model (``form``: a key of :data:`ORT_FORMS`); return its bytes.

    The folded form is optimized to an ONNX first and that saved as ORT with nothing more to do:
    saved in one step, the file also lists every value the optimizer removed (35,272 instead of
    25,976 bytes for the default run's model, same graph)."""
    import tempfile

    import onnxruntime as ort

    def session(src: str | os.PathLike, dst: Path, level: str, fmt: str) -> None:
        so = ort.SessionOptions()
        so.graph_optimization_level = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
                                       "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}[level]
        so.log_severity_level = 3  # errors only: the converter's notes are not the user's business
        so.add_session_config_entry("session.save_model_format", fmt)
        so.optimized_model_filepath = str(dst)
        try:
            ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"],
                                 disabled_optimizers=["NchwcTransformer"])
        except Exception as e:  # ORT raises its own exception types; keep the cause
            raise CompactCLError(f"ONNX Runtime could not convert {onnx_path} to ORT format: {e}") from e

    level = ORT_FORMS[form][0]
    with atomic_path(ort_path) as tmp, tempfile.TemporaryDirectory() as d:
        src: str | os.PathLike = onnx_path
        if level != "disable":
            src = Path(d) / "optimized.onnx"
            session(onnx_path, src, level, "ONNX")
        session(src, tmp, "disable", "ORT")
    return Path(ort_path).stat().st_size


def required_operators_config(ort_files: list[Path], config_path: str | os.PathLike) -> str:
    """Write the operators (per domain and opset) the ``ort_files`` use, the config of a reduced
    ORT build; return its text."""
    root = logging.getLogger()
    before = list(root.handlers)
    from onnxruntime.tools.ort_format_model.utils import create_config_from_models

    for h in root.handlers[len(before):]:  # the tool's import adds a root log handler: not ours to add
        root.removeHandler(h)
    with atomic_path(config_path) as tmp:
        create_config_from_models([Path(p) for p in ort_files], tmp, enable_type_reduction=False)
        text = tmp.read_text()
    return text


def export_ort(onnx_path: str | os.PathLike, out: str | os.PathLike) -> dict[str, dict[str, object]]:
    """Both forms of ``onnx_path`` (:data:`ORT_FORMS`) and their configs beside ``out``:
    ``{form: {"model": path, "config": path, "bytes": int, "operators": [...]}}``."""
    result: dict[str, dict[str, object]] = {}
    for form, paths in ort_paths(out).items():
        nbytes = convert_to_ort(onnx_path, paths["model"], form)
        text = required_operators_config([paths["model"]], paths["config"])
        ops = [op for line in text.splitlines() if line and not line.startswith("#")
               for op in line.rsplit(";", 1)[1].split(",")]
        result[form] = {"model": paths["model"], "config": paths["config"], "bytes": nbytes, "operators": sorted(ops)}
    return result


def export_ort_checked(model: nn.Module, out: str | os.PathLike, input_shape: tuple[int, ...],
                       test_x: torch.Tensor | TensorData,
                       metadata: Mapping[str, str] | None = None, latency: bool = True, repeats: int = 50,
                       min_agreement: float = 0.999) -> dict[str, Any]:
    """``model``'s codes ONNX (:func:`~compactcl.export.compressed.export_compressed_onnx`, with
    ``metadata``) converted to both ORT forms beside ``out``, each checked against that ONNX on
    ``test_x`` (top-1 agreement, max |Δlogit|) and timed in ONNX Runtime (ms, 1 thread, batch 1 and
    64). Raises :class:`CompactCLError` when a form agrees with the ONNX on less than ``min_agreement``.

    Returns ``{"onnx": {...}, "dense": {...}, "codes": {...}}`` — the ONNX row is the source (a full
    ORT build folds its decode at load), kept in a temporary folder."""
    import tempfile

    from ..metrics.latency import onnx_latency_grid
    from .compressed import export_compressed_onnx
    from .onnx import agreement, onnx_predict

    ort_paths(out)  # a bad name fails before any work
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp) / "deployed.onnx"
        rows: dict[str, dict[str, Any]] = {"onnx": {"file": "(codes ONNX, source)", "bytes": export_compressed_onnx(
            copy.deepcopy(model).cpu().eval(), onnx_path, input_shape, metadata),
            "holds": "weight codes; a full ONNX Runtime folds the decode at load"}}
        ref = onnx_predict(onnx_path, test_x)
        files = {"onnx": onnx_path}
        for form, res in export_ort(onnx_path, out).items():
            got = onnx_predict(res["model"], test_x)
            rows[form] = {"file": str(res["model"]), "bytes": res["bytes"], "holds": ORT_FORMS[form][1],
                          "config": str(res["config"]), "operators": res["operators"],
                          "agreement": agreement(got, ref), "max_abs_logit_diff": float(abs(got - ref).max())}
            files[form] = res["model"]
            if rows[form]["agreement"] < min_agreement:
                raise CompactCLError(f"{res['model']} agrees with the ONNX it was converted from on "
                                     f"{rows[form]['agreement']:.2%} of the test images (< {min_agreement:.1%}); "
                                     "ship deployed.onnx and report the model spec")
        if latency:
            grid = onnx_latency_grid(files, input_shape, threads=(1,), repeats=repeats, rounds=3)
            for form, ms in grid.items():
                rows[form]["latency_ms"] = ms
    return rows
