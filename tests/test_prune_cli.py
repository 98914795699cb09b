import json

import pytest
import torch

from compactcl.cli.main import build_parser, main
from compactcl.compress.prune.api import cross_entropy
from compactcl.data import class_incremental, load_dataset
from compactcl.engine import TrainConfig, train
from compactcl.models import IncrementalNet, load_checkpoint, save_checkpoint




@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A small CNN trained on digits, saved with the stream meta `compactcl run` records."""
    stream = class_incremental(load_dataset("digits"), tasks=1, seed=0)
    torch.manual_seed(0)
    net = IncrementalNet("cnn", 1, 8, 10, {"width": 16})
    train(net, stream.tasks[0].train, cross_entropy, TrainConfig(epochs=4, lr=0.05))
    meta = {"stream": {"dataset": "digits", "root": None, "tasks": 1, "classes_per_task": 10,
                       "first_task_classes": None, "seed": 0, "val_fraction": 0.1,
                       "class_order": stream.class_order, "dataset_options": {}}, "task": 0}
    path = tmp_path_factory.mktemp("ckpt") / "working.safetensors"
    save_checkpoint(net, path, meta)
    return path


def _run_json(capsys, argv):
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_structured_prune_cli_shrinks_and_keeps_accuracy(checkpoint, tmp_path, capsys):
    out = tmp_path / "pruned.safetensors"
    fig = _run_json(capsys, ["prune", str(checkpoint), "--method", "structured", "--ratio", "0.3",
                             "--finetune-epochs", "2", "--out", str(out), "--json"])
    for key in ("accuracy", "baseline_accuracy", "params", "baseline_params", "flops", "baseline_flops",
                "bytes", "baseline_file_bytes", "fp32_bytes", "baseline_bytes"):
        assert key in fig
    assert fig["flops"] <= 0.6 * fig["baseline_flops"]
    assert fig["bytes"] < 0.7 * fig["baseline_file_bytes"] and fig["bytes"] == out.stat().st_size
    assert fig["fp32_bytes"] == 4 * fig["params"] < 0.7 * fig["baseline_bytes"] == 0.7 * 4 * fig["baseline_params"]
    assert fig["accuracy"] >= fig["baseline_accuracy"] - 0.03
    assert load_checkpoint(out).num_classes == 10
    # the pruned file keeps the stream meta, so it can be pruned or measured again
    fig2 = _run_json(capsys, ["prune", str(out), "--method", "magnitude", "--ratio", "0.5",
                              "--finetune-epochs", "0", "--out", str(tmp_path / "again.safetensors"), "--json"])
    assert fig2["baseline_params"] == fig["params"]


@pytest.mark.parametrize("method", ["magnitude", "l1", "sensitivity"])
def test_unstructured_methods_zero_the_weights(method, checkpoint, tmp_path, capsys):
    out = tmp_path / f"{method}.safetensors"
    fig = _run_json(capsys, ["prune", str(checkpoint), "--method", method, "--ratio", "0.6",
                             "--finetune-epochs", "1", "--out", str(out), "--json"])
    model = load_checkpoint(out)
    conv_linear = [m.weight for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    zeros = sum(int((w == 0).sum()) for w in conv_linear) / sum(w.numel() for w in conv_linear)
    assert zeros == pytest.approx(0.6, abs=0.01)
    assert fig["params"] == fig["baseline_params"] and fig["nonzeros"] < 0.5 * fig["baseline_nonzeros"]
    assert fig["accuracy"] >= fig["baseline_accuracy"] - 0.05


def test_sensitivity_cli_writes_curves(checkpoint, tmp_path, capsys):
    fig = _run_json(capsys, ["sensitivity", str(checkpoint), "--out", str(tmp_path / "sens"),
                             "--ratios", "0,0.5,0.9", "--target", "0.5", "--json"])
    assert (tmp_path / "sens" / "sensitivity.png").is_file()
    saved = json.loads((tmp_path / "sens" / "sensitivity.json").read_text())
    assert saved["ratios"] == [0.0, 0.5, 0.9] and len(saved["curves"]) == 5  # 4 convs + head
    assert set(saved["extra"]["layer_ratios"]) == set(saved["curves"])
    assert fig["baseline"] == saved["baseline"]


def test_parser_contract_and_errors(checkpoint, tmp_path, capsys):
    args = build_parser().parse_args(["prune", str(checkpoint), "--method", "structured", "--ratio", "0.3",
                                      "--round-to", "8", "--out", "x.safetensors"])
    assert args.round_to == 8 and callable(args.func)
    assert main(["prune", str(checkpoint), "--ratio", "0.3", "--out", str(tmp_path / "x.onnx")]) == 2
    assert "safetensors" in capsys.readouterr().err
    assert main(["prune", str(checkpoint), "--ratio", "1.5", "--out", str(tmp_path / "x.safetensors")]) == 2
    assert "[0, 1)" in capsys.readouterr().err
    assert main(["prune", str(tmp_path / "missing"), "--ratio", "0.3", "--out", str(tmp_path / "x.safetensors")]) == 2


def test_ccl_output_is_a_packed_sparse_artifact(checkpoint, tmp_path, capsys):
    out = tmp_path / "p.ccl"
    code = main(["prune", str(checkpoint), "--ratio", "0.9", "--finetune-epochs", "0", "--out", str(out), "--json"])
    assert code == 0
    fig = json.loads(capsys.readouterr().out)
    assert fig["bytes"] == out.stat().st_size < 0.5 * fig["baseline_file_bytes"]


def test_run_is_importable_without_heavy_modules():
    import subprocess
    import sys

    code = ("import sys, compactcl.cli.prune, compactcl.cli.sensitivity, compactcl.compress.prune; "
            "print(any(m in sys.modules for m in ('torch_pruning', 'matplotlib', 'onnxruntime')))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
