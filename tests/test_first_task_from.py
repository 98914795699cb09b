"""`model.first_task_from`: a model that already knows the first task stands for task 0 of a run."""

import pytest
import torch

from compactcl import CompactCLError
from compactcl.models import load_checkpoint
from compactcl.pipeline.recipe import load_recipe
from compactcl.pipeline.run import run_recipe

BASE = ["data.tasks=2", "data.all_classes=false", "data.classes_per_task=2", "learner.epochs=3", "model.options.width=4", "memory.size=40",
        "export.onnx=false", "compress=null"]


def _run(path, sets):
    return run_recipe(load_recipe(None, BASE + sets), path, progress=False, log=lambda s: None)


@pytest.fixture(scope="module")
def first(tmp_path_factory):
    """An iCaRL run and a DER run whose task-0 models later runs start from."""
    root = tmp_path_factory.mktemp("first")
    return {name: (root / name, _run(root / name, [f"learner.name={name}"])) for name in ("icarl", "der")}


@pytest.mark.parametrize("learner", ["icarl", "der"])
def test_task_0_is_the_given_model_untrained(tmp_path, first, learner):
    src_dir, src = first[learner]
    given = src_dir / "tasks" / "00" / "working.safetensors"
    doc = _run(tmp_path / "r", [f"learner.name={learner}", f"model.first_task_from={given}"])
    # task 0: the very model given, scored the same, no training time spent
    assert doc["tasks"][0]["accuracy"]["working"] == src["tasks"][0]["accuracy"]["working"]
    adopted = load_checkpoint(tmp_path / "r" / "tasks" / "00" / "working.safetensors").state_dict()
    for name, value in load_checkpoint(given).state_dict().items():
        assert torch.equal(adopted[name], value), name
    assert doc["tasks"][0]["seconds"] < 1.0
    # then it learns on as if it had trained task 0 itself (other random draws: not bit-equal)
    after, ref = doc["tasks"][1]["accuracy"]["working"], src["tasks"][1]["accuracy"]["working"]
    assert after[1] > 0.8
    assert abs(sum(after) / 2 - sum(ref) / 2) < 0.1


def test_a_model_of_other_classes_or_kind_is_refused(tmp_path, first):
    der_task0 = first["der"][0] / "tasks" / "00" / "working.safetensors"
    with pytest.raises(CompactCLError, match="single-backbone"):
        _run(tmp_path / "a", ["learner.name=icarl", f"model.first_task_from={der_task0}"])
    with pytest.raises(CompactCLError, match="data.class_order"):  # another seed: other classes first
        _run(tmp_path / "b", ["learner.name=der", "seed=3", f"model.first_task_from={der_task0}"])
    two_tasks = first["der"][0] / "tasks" / "01" / "working.safetensors"  # knows 4 classes
    with pytest.raises(CompactCLError, match="first_task_classes"):
        _run(tmp_path / "c", ["learner.name=der", f"model.first_task_from={two_tasks}"])


def test_a_deployed_artifact_is_refused(tmp_path, first):
    from compactcl.compress.quantize import KMeansQuantConfig, quantize_
    from compactcl.export.artifact import save_artifact

    model = quantize_(load_checkpoint(first["icarl"][0] / "tasks" / "00" / "working.safetensors"),
                      KMeansQuantConfig(bits=4))
    save_artifact(model, tmp_path / "m.ccl")
    with pytest.raises(CompactCLError, match="packed .ccl artifact"):
        _run(tmp_path / "r", ["learner.name=icarl", f"model.first_task_from={tmp_path / 'm.ccl'}"])


def test_a_refused_model_leaves_no_run_folder_behind(tmp_path):
    # your own model saved without run metadata, with 3 outputs for a first task of 2 classes
    from compactcl.models import IncrementalNet, save_checkpoint

    save_checkpoint(IncrementalNet("cnn", 1, 8, 3, {"width": 4}), tmp_path / "mine.safetensors")
    with pytest.raises(CompactCLError, match="first_task_classes: 3"):
        _run(tmp_path / "r", ["learner.name=icarl", f"model.first_task_from={tmp_path / 'mine.safetensors'}"])
    assert not (tmp_path / "r" / "recipe.yaml").exists()


def test_a_run_folder_means_its_first_task_and_the_recipe_must_describe_the_model(tmp_path, first):
    src_dir, src = first["der"]
    doc = _run(tmp_path / "r", ["learner.name=der", f"model.first_task_from={src_dir}"])
    assert doc["tasks"][0]["accuracy"]["working"] == src["tasks"][0]["accuracy"]["working"]
    with pytest.raises(CompactCLError, match="make them agree"):
        _run(tmp_path / "w", ["learner.name=der", "model.options.width=8", f"model.first_task_from={src_dir}"])
