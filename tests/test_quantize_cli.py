"""`compactcl quantize` on a real (tiny) trained checkpoint."""

import json

import pytest
import torch
import torch.nn.functional as F

import compactcl
from compactcl.cli.main import build_parser, main
from compactcl.data import class_incremental, load_dataset
from compactcl.engine import TrainConfig, accuracy, train
from compactcl.models import IncrementalNet, save_checkpoint




@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    stream = class_incremental(load_dataset("digits"), tasks=1, classes_per_task=10, seed=0, val_fraction=0.1)
    net = IncrementalNet("mlp", 1, 8, 10, backbone_kwargs={"hidden": [64]})
    train(net, stream.tasks[0].train, lambda m, x, y: F.cross_entropy(m(x), y), TrainConfig(epochs=5, lr=0.05))
    meta = {"stream": {"dataset": "digits", "root": None, "tasks": 1, "classes_per_task": 10,
                       "first_task_classes": None, "seed": 0, "val_fraction": 0.1, "class_order": stream.class_order,
                       "dataset_options": {}}, "task": 0}
    path = tmp_path_factory.mktemp("ckpt") / "working.safetensors"
    save_checkpoint(net, path, meta)
    return path, accuracy(net, stream.tasks[0].test)


def _run(argv, capsys):
    rc = main(argv)
    out = capsys.readouterr()
    return rc, out


def test_quantize_cli_json(checkpoint, tmp_path, capsys):
    path, acc = checkpoint
    out = tmp_path / "m.ccl"
    rc, o = _run(["quantize", str(path), "--method", "kmeans", "--bits", "4", "--out", str(out), "--json"], capsys)
    assert rc == 0, o.err
    fig = json.loads(o.out)
    assert fig["bytes"] == out.stat().st_size and fig["baseline_accuracy"] == pytest.approx(acc)
    assert fig["baseline_bytes"] == 4 * sum(p.numel() for p in compactcl.load(path).parameters())
    assert fig["bytes"] < 0.22 * fig["baseline_bytes"]  # 4-bit codes + ~1.4 KB header on a 4.8k-param model
    assert fig["baseline_accuracy"] - fig["accuracy"] <= 0.03
    # the artifact keeps the stream meta, so its data can be found again
    assert compactcl.checkpoint_data(out)["test"].x.shape[0] == len(compactcl.checkpoint_data(path)["test"])
    loaded = compactcl.load(out)
    assert accuracy(loaded, compactcl.checkpoint_data(out)["test"]) == pytest.approx(fig["accuracy"])


def test_quantize_cli_qat_and_table(checkpoint, tmp_path, capsys):
    path, _ = checkpoint
    rc, o = _run(["quantize", str(path), "--method", "linear", "--bits", "2", "--per-tensor", "--qat-epochs", "1",
                  "--out", str(tmp_path / "q.ccl")], capsys)
    assert rc == 0, o.err
    assert "linear 2-bit" in o.out and "fp32" in o.out
    # QAT has to help: 2-bit per-tensor post-training quantization breaks this model, fine-tuning on the grid
    # recovers much of it (measured on the test split: 0.35 without QAT, 0.48 after two QAT epochs)
    acc = {}
    for epochs in (0, 2):
        rc, o = _run(["quantize", str(path), "--method", "linear", "--bits", "2", "--per-tensor", "--qat-epochs",
                      str(epochs), "--out", str(tmp_path / f"q{epochs}.ccl"), "--json"], capsys)
        assert rc == 0, o.err
        fig = json.loads(o.out)
        assert fig["qat_epochs"] == epochs
        acc[epochs] = fig["accuracy"]
    assert acc[2] >= acc[0] + 0.05, acc


def test_quantize_cli_errors_name_the_fix(checkpoint, tmp_path, capsys):
    path, _ = checkpoint
    rc, o = _run(["quantize", str(path), "--method", "kmeans", "--bits", "4", "--per-tensor", "--out",
                  str(tmp_path / "x.ccl")], capsys)
    assert rc == 2 and "drop --per-tensor" in o.err
    rc, o = _run(["quantize", str(path), "--method", "linear", "--bits", "12", "--out", str(tmp_path / "x.ccl")],
                 capsys)
    assert rc == 2 and "bits" in o.err
    rc, o = _run(["quantize", str(tmp_path / "missing.safetensors"), "--out", str(tmp_path / "x.ccl")], capsys)
    assert rc == 2 and "no such file" in o.err
    args = build_parser().parse_args(["quantize", "x", "--out", "y"])
    assert args.method == "linear" and args.bits == 8 and args.qat_epochs == 0
