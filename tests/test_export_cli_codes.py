"""`compactcl export` of a quantized model writes the weight-codes ONNX a run ships (small, checked),
`--dense` its fp32 graph; every file it writes carries compactcl's metadata, so `compactcl predict`
and the edge example can read it."""

import json

import numpy as np
import pytest

from compactcl.cli.main import main
from compactcl.data import class_incremental, load_dataset
from compactcl.export.artifact import save_artifact
from compactcl.export.compressed import read_metadata
from compactcl.export.predict import Predictor
from compactcl.models.checkpoint import save_checkpoint
from deployable import quantized_cnn

pytest.importorskip("onnxruntime")
Image = pytest.importorskip("PIL.Image")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A .ccl and the same net as a float .safetensors, both with the stream meta export reads."""
    d = tmp_path_factory.mktemp("export")
    stream = class_incremental(load_dataset("digits"), tasks=1, classes_per_task=10, seed=0, val_fraction=0.1)
    meta = {"stream": {"dataset": "digits", "root": None, "tasks": 1, "classes_per_task": 10,
                       "first_task_classes": None, "seed": 0, "val_fraction": 0.1, "class_order": stream.class_order,
                       "dataset_options": {}, "class_names": [f"digit {c}" for c in range(10)]},
            "task": 0, "classes": list(stream.class_order)}
    net = quantized_cnn(10)
    save_artifact(net, d / "m.ccl", meta)
    save_checkpoint(net, d / "m.safetensors", meta)
    return d, stream


def _export(src, out, capsys, *flags):
    assert main(["export", str(src), "--no-latency", "--out", str(out), "--json", *flags]) == 0
    return json.loads(capsys.readouterr().out)


def test_ccl_exports_as_codes_smaller_than_dense_and_agrees(models, tmp_path, capsys):
    d, stream = models
    codes = _export(d / "m.ccl", tmp_path / "codes.onnx", capsys)
    dense = _export(d / "m.ccl", tmp_path / "dense.onnx", capsys, "--dense")
    assert codes["format"] == "onnx-codes" and dense["format"] == "onnx-fp32"
    assert codes["bytes"] == (tmp_path / "codes.onnx").stat().st_size
    assert codes["bytes"] < dense["bytes"] / 2, (codes["bytes"], dense["bytes"])  # 3-bit codes vs fp32
    assert codes["agreement"] == 1.0 and codes["max_abs_logit_diff"] < 1e-4
    assert codes["accuracy"] == codes["torch_accuracy"] == dense["accuracy"]


@pytest.mark.parametrize("src, flags", [("m.ccl", []), ("m.ccl", ["--dense"]), ("m.safetensors", []),
                                        ("m.safetensors", ["--int8"])])
def test_every_export_is_self_describing(models, tmp_path, capsys, src, flags):
    d, stream = models
    out = tmp_path / "m.onnx"
    fig = _export(d / src, out, capsys, *flags)
    assert fig["bytes"] == out.stat().st_size  # the size reported is the file's, metadata included
    meta = read_metadata(out)
    assert meta["class_names"] == [f"digit {c}" for c in stream.class_order]
    assert meta["input_channels"] == 1 and meta["input_size"] == 8
    Image.fromarray(np.full((8, 8), 200, np.uint8)).save(tmp_path / "x.png")
    (pred,) = Predictor.open(out).predict([tmp_path / "x.png"])
    assert pred.top[0][0] in meta["class_names"]


def test_int8_and_dense_together_exit_2(models, tmp_path, capsys):
    d, _ = models
    assert main(["export", str(d / "m.ccl"), "--int8", "--dense", "--out", str(tmp_path / "m.onnx")]) == 2
    assert "choose one" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()
