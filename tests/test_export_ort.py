"""ORT format for mobile / minimal ONNX Runtime builds: both forms (decode folded, codes kept)
load in ONNX Runtime and predict as the codes ONNX; each names the operators a reduced build
needs; the CLI reports their bytes beside the run's budget."""

import json

import numpy as np
import pytest
import torch

from compactcl.cli.main import main
from compactcl.compress.quantize import config_for, quantize_
from compactcl.data import class_incremental, load_dataset
from compactcl.export.artifact import save_artifact
from compactcl.export.compressed import deploy_metadata
from compactcl.export.onnx import onnx_predict
from compactcl.export.ort import export_ort_checked, ort_paths
from deployable import quantized_cnn

ort = pytest.importorskip("onnxruntime")


def _meta(stream) -> dict:
    return {"stream": {"dataset": "digits", "root": None, "tasks": 1, "classes_per_task": 10,
                       "first_task_classes": None, "seed": 0, "val_fraction": 0.1, "class_order": stream.class_order,
                       "dataset_options": {}, "class_names": [str(c) for c in range(10)]},
            "task": 0, "classes": list(stream.class_order)}


def test_both_forms_load_and_predict_as_the_onnx(tmp_path):
    net = quantized_cnn(10)
    x = torch.randn(96, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    stream = class_incremental(load_dataset("digits"), tasks=1, classes_per_task=10, seed=0)
    props = deploy_metadata(_meta(stream), (1, 8, 8), None)
    rows = export_ort_checked(net, tmp_path / "deployed.ort", (1, 8, 8), x, props, latency=False)
    paths = ort_paths(tmp_path / "deployed.ort")
    assert paths["codes"]["model"].name == "deployed.codes.ort"
    with torch.no_grad():
        ref = net(x).numpy()
    for form in ("dense", "codes"):
        path = paths[form]["model"]
        assert rows[form]["bytes"] == path.stat().st_size
        assert rows[form]["agreement"] == 1.0 and rows[form]["max_abs_logit_diff"] < 1e-4
        got = onnx_predict(path, x)  # ONNX Runtime loads the .ort itself
        assert (got.argmax(1) == ref.argmax(1)).all() and np.abs(got - ref).max() < 1e-4
        meta = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_modelmeta()
        assert json.loads(meta.custom_metadata_map["class_names"]) == [str(c) for c in stream.class_order]
        config = paths[form]["config"].read_text()
        assert "ai.onnx;" in config and set(rows[form]["operators"]) >= {"Gemm", "MaxPool"}
    # the folded form holds dense fp32 weights and no decode op; the codes form keeps the packed codes
    weights = sum(m.weight.numel() for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))
    assert not {"BitShift", "BitwiseAnd", "Gather"} & set(rows["dense"]["operators"])
    assert {"BitShift", "BitwiseAnd", "Gather"} <= set(rows["codes"]["operators"])
    dense, codes = _initializer_bytes(paths["dense"]["model"]), _initializer_bytes(paths["codes"]["model"])
    assert dense >= 4 * weights and codes < weights * 3 / 8 + 1000, (dense, codes, weights)  # fp32 vs 3-bit codes


def test_codes_form_is_the_small_file_when_weights_dominate(tmp_path):
    """A 1024x128 layer at 4 bits: the folded .ort holds 512 KB of fp32, the codes .ort ~64 KB of codes.
    (On a tiny net the format's ~0.5 KB per node outweighs the codes: the folded file is smaller.)"""
    torch.manual_seed(0)
    net = quantize_(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(1024, 128)).eval(), config_for("kmeans", 4))
    x = torch.randn(8, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    rows = export_ort_checked(net, tmp_path / "g.ort", (1, 32, 32), x, latency=False)
    assert rows["dense"]["bytes"] > 4 * 1024 * 128 > 4 * rows["codes"]["bytes"], rows
    assert rows["codes"]["bytes"] < 1.2 * rows["onnx"]["bytes"]
    assert rows["dense"]["agreement"] == rows["codes"]["agreement"] == 1.0


def _initializer_bytes(path) -> int:
    """Bytes of tensor data in an ORT-format file (its flatbuffer's initializers)."""
    from onnxruntime.tools.ort_format_model.ort_flatbuffers_py import fbs

    buf = path.read_bytes()
    graph = fbs.InferenceSession.InferenceSession.GetRootAsInferenceSession(buf, 0).Model().Graph()
    return sum(graph.Initializers(i).RawDataLength() for i in range(graph.InitializersLength()))


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    """A run folder as `compactcl run` leaves it, as far as `export --ort` reads it."""
    out = tmp_path_factory.mktemp("run")
    stream = class_incremental(load_dataset("digits"), tasks=1, classes_per_task=10, seed=0, val_fraction=0.1)
    save_artifact(quantized_cnn(10), out / "final" / "deployed.ccl", _meta(stream))
    doc = {"tasks": [{"index": 0, "accuracy": {"working": [0.5], "deployed": [0.5]}, "deploy": {"budget_bytes": 40000}}]}
    (out / "metrics.json").write_text(json.dumps(doc))
    return out


def test_cli_writes_both_forms_beside_the_budget(run_folder, tmp_path, capsys):
    out = tmp_path / "m.ort"
    assert main(["export", str(run_folder), "--ort", "--out", str(out), "--json"]) == 0
    fig = json.loads(capsys.readouterr().out)
    assert fig["budget_bytes"] == 40000
    files = fig["files"]
    for form, name in (("dense", "m.ort"), ("codes", "m.codes.ort")):
        assert files[form]["bytes"] == (tmp_path / name).stat().st_size
        assert files[form]["within_budget"] == (files[form]["bytes"] <= 40000)
        assert files[form]["agreement"] == 1.0 and set(files[form]["latency_ms"]) == {"t1_b1", "t1_b64"}
    assert (tmp_path / "m.required_operators.config").is_file()
    assert (tmp_path / "m.codes.required_operators.config").is_file()
    assert files["onnx"]["bytes"] < min(files["codes"]["bytes"], files["dense"]["bytes"])  # the .ort's per-node overhead


@pytest.mark.parametrize("argv, message", [
    (["--ort", "--out", "m.onnx"], "ends in .ort"),
    (["--ort", "--int8", "--out", "m.ort"], "--int8 is a separate export"),
])
def test_cli_bad_ort_requests_exit_2(run_folder, tmp_path, capsys, argv, message):
    argv = [a if a not in ("m.onnx", "m.ort") else str(tmp_path / a) for a in argv]
    assert main(["export", str(run_folder), *argv, "--no-latency"]) == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing written


def test_ort_names_append_to_the_stem_and_never_collide(tmp_path):
    paths = ort_paths(tmp_path / "model.v1.ort")
    assert paths["dense"]["model"].name == "model.v1.ort" and paths["codes"]["model"].name == "model.v1.codes.ort"
    assert paths["codes"]["config"].name == "model.v1.codes.required_operators.config"
    from compactcl.errors import CompactCLError
    with pytest.raises(CompactCLError, match="name the dense file"):
        ort_paths(tmp_path / "a.codes.ort")  # its codes twin would be itself
