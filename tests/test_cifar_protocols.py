"""The published CIFAR protocols as built-in recipes, run end to end on synthetic CIFAR files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import cifar_files
from compactcl.pipeline.recipe import list_recipes, load_recipe

PROTOCOLS = ["cifar100-b0-inc10", "cifar100-b0-inc5", "cifar100-b50-inc10", "seq-cifar10"]


def test_protocol_recipes_are_built_in_with_pycil_and_mammoth_schedules() -> None:
    assert set(PROTOCOLS) <= set(list_recipes())
    sizes = {"cifar100-b0-inc10": [10] * 10, "cifar100-b0-inc5": [5] * 20, "cifar100-b50-inc10": [50] + [10] * 5}
    for name, want in sizes.items():
        r = load_recipe(name)
        d = r.data
        got = ([d.first_task_classes] if d.first_task_classes else []) + \
            [d.classes_per_task] * (d.tasks - (1 if d.first_task_classes else 0))
        assert got == want and r.model.backbone == "resnet32" and r.memory.size == 2000
        assert d.class_order[:5] == [68, 56, 78, 8, 23]  # np.random.seed(1993); permutation(100), as PyCIL
        cfg = r.learner.train_config()
        first, later = cfg.for_task(0), cfg.for_task(1)
        assert (first.epochs, first.lr, first.milestones, first.weight_decay) == (200, 0.1, (60, 120, 170), 5e-4)
        assert (later.epochs, later.milestones, later.weight_decay, later.batch_size) == (170, (80, 120), 2e-4, 128)
    seq = load_recipe("seq-cifar10")
    assert (seq.model.backbone, seq.data.tasks, seq.learner.epochs, seq.memory.size) == ("resnet18", 5, 50, 200)


@pytest.mark.slow
def test_cifar100_b0_inc10_runs_end_to_end_on_synthetic_binary_files(tmp_path: Path) -> None:
    """The built-in recipe with a tiny schedule: read, trained, compressed, exported, measured."""
    from compactcl.pipeline.run import run_recipe

    files = cifar_files.cifar100_binary(tmp_path / "data", per_class=3, test_per_class=1, tarball=True)
    recipe = load_recipe("cifar100-b0-inc10", [
        f"data.root={files['root']}", "data.tasks=2", "data.all_classes=false", "device=cpu", "learner.epochs=1", "learner.first_epochs=1",
        "learner.batch_size=32", "model.options.width=4", "memory.size=40",
        "compress.budget.fraction_of_backbone=1.0",  # width 4: headers are a large share of the bytes
        "compress.steps=[{quantize: {method: linear, bits: 8, qat_epochs: 0}}]"])
    doc = run_recipe(recipe, tmp_path / "run", progress=False, log=lambda s: None)
    assert [t["classes"] for t in doc["tasks"]] == [recipe.data.class_order[:10], recipe.data.class_order[10:20]]
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    last = saved["tasks"][-1]
    assert len(last["accuracy"]["deployed"]) == 2 and all(0 <= a <= 1 for a in last["accuracy"]["deployed"])
    onnx = sorted((tmp_path / "run").rglob("*.onnx"))
    assert onnx, "no ONNX file exported"
    assert last["bytes"]["deployed"] < last["bytes"]["fp32"] / 2  # 8-bit codes + per-layer headers at width 4
