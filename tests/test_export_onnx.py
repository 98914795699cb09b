"""ONNX export checked against PyTorch: fp32 agreement, int8 QDQ accuracy, loud failures, CLI."""

import json

import onnx
import pytest
import torch
import torch.nn.functional as F

from compactcl.cli.main import main
from compactcl.compress.quantize import LinearQuantConfig, quantize_
from compactcl.data import class_incremental, load_dataset
from compactcl.errors import CompactCLError
from compactcl.export.int8 import quantize_onnx_int8
from compactcl.export.onnx import export_checked
from compactcl.engine import TrainConfig, train
from compactcl.models import IncrementalNet, save_checkpoint




@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    stream = class_incremental(load_dataset("digits"), tasks=1, classes_per_task=10, seed=0, val_fraction=0.1)
    task = stream.tasks[0]
    net = IncrementalNet("cnn", 1, 8, 10, backbone_kwargs={"width": 8})
    train(net, task.train, lambda m, x, y: F.cross_entropy(m(x), y), TrainConfig(epochs=4, lr=0.05))
    return net, task, stream


def test_fp32_export_agrees_with_pytorch(trained, tmp_path):
    net, task, _ = trained
    res = export_checked(net, tmp_path / "m.onnx", (1, 8, 8), task.test.x, task.test.y, latency=False)
    assert res["agreement"] >= 0.999 and res["accuracy"] == pytest.approx(res["torch_accuracy"], abs=0.002)
    assert res["torch_accuracy"] > 0.85 and res["bytes"] == (tmp_path / "m.onnx").stat().st_size


def test_int8_qdq_within_one_point_and_latencies(trained, tmp_path):
    net, task, _ = trained
    res = export_checked(net, tmp_path / "q.onnx", (1, 8, 8), task.test.x, task.test.y, int8=True,
                         calib_x=task.train.x, latency_repeats=5)
    assert res["torch_accuracy"] - res["accuracy"] <= 0.01 and res["agreement"] > 0.97
    graph = onnx.load(str(tmp_path / "q.onnx")).graph
    ops = {n.op_type for n in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    int8_weights = [t for t in graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) > 1]
    assert int8_weights  # weights really stored as int8
    assert set(res["latency_grid_ms"]) == {"t1_b1", "t1_b64", "t2_b1", "t2_b64"}
    assert all(v > 0 for v in res["latency_grid_ms"].values())
    assert set(res["speedup_vs_fp32"]) == set(res["latency_grid_ms"])


def test_checked_export_fails_loudly(trained, tmp_path):
    net, task, _ = trained
    with pytest.raises(CompactCLError, match="agreement"):
        export_checked(net, tmp_path / "m.onnx", (1, 8, 8), task.test.x, task.test.y, min_agreement=1.01,
                       latency=False)
    with pytest.raises(CompactCLError, match="int8 accuracy"):
        export_checked(net, tmp_path / "q.onnx", (1, 8, 8), task.test.x, task.test.y, int8=True,
                       calib_x=task.train.x, max_int8_drop=-1.0, latency=False)
    with pytest.raises(CompactCLError, match="calibration"):
        quantize_onnx_int8(tmp_path / "m.onnx", tmp_path / "z.onnx", None)


def test_quantized_model_exports(trained, tmp_path):
    net, task, _ = trained
    import copy

    q = quantize_(copy.deepcopy(net), LinearQuantConfig(bits=4))
    res = export_checked(q, tmp_path / "q4.onnx", (1, 8, 8), task.test.x, task.test.y, latency=False)
    assert res["agreement"] >= 0.999


def test_export_cli_json(trained, tmp_path, capsys):
    net, task, stream = trained
    meta = {"stream": {"dataset": "digits", "root": None, "tasks": 1, "classes_per_task": 10,
                       "first_task_classes": None, "seed": 0, "val_fraction": 0.1, "class_order": stream.class_order,
                       "dataset_options": {}}, "task": 0}
    ckpt = tmp_path / "working.safetensors"
    save_checkpoint(net, ckpt, meta)
    out = tmp_path / "m.int8.onnx"
    rc = main(["export", str(ckpt), "--onnx", "--int8", "--out", str(out), "--json", "--no-latency"])
    o = capsys.readouterr()
    assert rc == 0, o.err
    fig = json.loads(o.out)
    assert fig["bytes"] == out.stat().st_size and fig["format"] == "onnx-int8"
    assert fig["baseline_accuracy"] - fig["accuracy"] <= 0.01 and fig["fp32_agreement"] >= 0.999
    assert fig["baseline_bytes"] == 4 * sum(p.numel() for p in net.parameters())
    rc = main(["export", str(ckpt), "--out", str(tmp_path / "x.onnx"), "--no-latency"])  # ONNX by default
    assert rc == 0 and (tmp_path / "x.onnx").stat().st_size > 0
