import pytest

from compactcl import CompactCLError
from compactcl.data import ExemplarMemory, class_incremental
from compactcl.models import IncrementalNet
from compactcl.pipeline.compress import budget_bytes, deploy_data
from compactcl.pipeline.config import CompressConfig
from compactcl.pipeline.recipe import load_recipe


def test_deploy_data_is_class_balanced(digits):
    stream = class_incremental(digits, tasks=5, seed=0)
    model = IncrementalNet("mlp", 1, 8, 4, {"hidden": [16]})
    memory = ExemplarMemory(40, "random")
    memory.update(model, stream.tasks[0].train)
    memory.update(model, stream.tasks[1].train)  # 4 classes seen: 10 exemplars each
    data = deploy_data(stream.tasks[1], memory.data(), memory, balance=2.0, seed=0)
    counts = {int(c): int((data.y == c).sum()) for c in data.y.unique()}
    assert counts == {0: 10, 1: 10, 2: 20, 3: 20}  # old: their exemplars; new: capped at 2 x 10
    everything = deploy_data(stream.tasks[1], memory.data(), memory, balance=None, seed=0)
    assert len(everything) == len(stream.tasks[1].train) + 20  # the whole new task + the old classes' exemplars


def test_deploy_data_is_what_the_learner_keeps(digits):
    from compactcl.data import TensorData

    stream = class_incremental(digits, tasks=5, seed=0)
    t0, t1 = stream.tasks[0], stream.tasks[1]
    # a memory-less learner keeps nothing: the deployed model sees the new task only
    assert deploy_data(t1, None, ExemplarMemory(0), balance=2.0, seed=0) is t1.train
    # joint keeps everything: every old image, and each new class capped at 2 x an old class's count
    data = deploy_data(t1, TensorData.cat([t0.train, t1.train]), ExemplarMemory(0), balance=2.0, seed=0)
    counts = {int(c): int((data.y == c).sum()) for c in data.y.unique()}
    old = {c: int((t0.train.y == c).sum()) for c in t0.labels}
    assert {c: counts[c] for c in t0.labels} == old
    assert all(counts[c] == int((t1.train.y == c).sum()) for c in t1.labels)  # 2 x ~145 > what a class has
    # the first task of a joint learner: all of it
    assert len(deploy_data(t0, t0.train, ExemplarMemory(0), balance=2.0, seed=0)) == len(t0.train)


def test_budget_is_a_fraction_of_one_backbone_with_a_head():
    from compactcl.models import DERNet

    der = DERNet("mlp", 1, 8, backbone_kwargs={"hidden": [10]})
    der.grow(2)
    der.grow(2)
    one = (64 * 10 + 10) + 10 * 4 + 4  # one branch + a head over its features for the 4 classes
    assert budget_bytes(CompressConfig(budget={"fraction_of_backbone": 0.5}).budget, der) == int(4 * one * 0.5)
    assert budget_bytes(CompressConfig(budget={"bytes": 1234}).budget, der) == 1234


def test_steps_are_validated_with_the_key_named():
    with pytest.raises(CompactCLError, match="unknown step 'shrink'"):
        load_recipe(None, ["compress.steps=[{shrink: {}}]"])
    # a quantize step may come first: later steps end on its grid (tests/test_ladder.py)
    assert [k for k, _ in load_recipe(None, ["compress.steps=[{quantize: {}}, {prune: {}}]"]).compress.step_list()] \
        == ["quantize", "prune"]
    with pytest.raises(CompactCLError, match="ratio"):
        load_recipe(None, ["compress.steps=[{prune: {ratio: 1.5}}]"])


def test_a_budget_no_model_can_meet_says_by_how_much(tmp_path):
    from compactcl.pipeline.run import run_recipe

    recipe = load_recipe(None, ["data.tasks=1", "data.all_classes=false", "data.classes_per_task=2", "learner.name=icarl", "learner.epochs=1",
                                "model.options.width=4", "compress.budget.bytes=300", "export.onnx=false",
                                "compress.steps=[{quantize: {method: linear, bits: 8, qat_epochs: 0}}]"])
    with pytest.raises(CompactCLError, match=r"over the budget of 300 bytes"):
        run_recipe(recipe, tmp_path / "r", progress=False, log=lambda s: None)


def test_update_delta_rebuilds_the_new_artifact_exactly():
    import os

    from compactcl.export.update import apply_update, make_update

    old = os.urandom(3000)
    new = old[:2000] + b"changed" + old[2000:]
    kind, payload = make_update(old, new)
    assert kind == "delta" and len(payload) < 200  # far smaller than the 3,007-byte file
    assert apply_update(old, kind, payload) == new
    assert make_update(None, new) == ("full", new)
    unrelated = os.urandom(3000)
    assert make_update(old, unrelated)[0] == "full"  # incompressible: ship the whole file


def test_compressing_does_not_change_the_working_model(tmp_path):
    # The deployer draws random numbers (student init, calibration picks); the working model's
    # next tasks must not see them, or adding a compress section would change the learner's results.
    from compactcl.pipeline.run import run_recipe

    base = ["data.tasks=3", "data.all_classes=false", "data.classes_per_task=2", "learner.name=icarl", "learner.epochs=1",
            "model.options.width=4", "memory.size=40", "export.onnx=false"]
    plain = run_recipe(load_recipe(None, base + ["compress=null"]), tmp_path / "plain", progress=False,
                       log=lambda s: None)
    steps = "compress.steps=[{distill: {student: cnn, options: {width: 4}, epochs: 1}}, " \
            "{quantize: {method: linear, bits: 8, qat_epochs: 0}}]"
    packed = run_recipe(load_recipe(None, base + ["compress.budget.bytes=100000", steps]), tmp_path / "packed",
                        progress=False, log=lambda s: None)
    assert [r["accuracy"]["working"] for r in packed["tasks"]] == [r["accuracy"]["working"] for r in plain["tasks"]]


def test_pruning_in_the_deployer_recovers_with_the_default_finetune(tmp_path):
    # The deployer's data are exemplars + a capped share of the new task: a few hundred images on
    # digits. Half the channels off must still leave a working student after the default fine-tune
    # (2 epochs left it at 0.71 validation accuracy after the second task, 0.70 deployed).
    from compactcl.pipeline.run import run_recipe

    steps = "compress.steps=[{distill: {student: cnn, options: {width: 16}, epochs: 10}}, " \
            "{prune: {method: structured, ratio: 0.5}}, {quantize: {method: linear, bits: 8, qat_epochs: 0}}]"
    doc = run_recipe(load_recipe(None, ["data.tasks=2", "data.all_classes=false", "learner.epochs=5", "export.onnx=false", steps,
                                        "compress.budget.fraction_of_backbone=1"]),
                     tmp_path / "r", progress=False, log=lambda s: None)
    for task in doc["tasks"]:
        distilled, pruned = (task["deploy"]["steps"][i][k]["val_accuracy"] for i, k in ((0, "distill"), (1, "prune")))
        assert pruned >= distilled - 0.05
    assert doc["summary"]["deployed"]["final_accuracy"] >= 0.95


def test_quality_warnings_name_the_drop_chance_and_a_learner_without_data(digits, tmp_path):
    from compactcl.pipeline.compress import quality_warnings
    from compactcl.pipeline.deploy import DeployContext

    stream = class_incremental(digits, tasks=5, seed=0)
    ctx = DeployContext(task=stream.tasks[1], seen=stream.tasks[:2], memory=ExemplarMemory(0), kept=digits.train,
                        meta={}, input_shape=(1, 8, 8), task_dir=tmp_path, device="cpu", seed=0, learner="icarl")
    assert quality_warnings(ctx, 0.90, 0.95, 4, 0.10) == []
    (drop,) = quality_warnings(ctx, 0.80, 0.95, 4, 0.10)
    assert "15.0% below the working model" in drop and "distill epochs" in drop
    assert len(quality_warnings(ctx, 0.30, 0.95, 4, 0.10)) == 2  # a drop and near chance (< 1.5 / 4)
    memoryless = DeployContext(**{**ctx.__dict__, "kept": None, "learner": "lwf"})
    assert "learner 'lwf' keeps no data of earlier tasks" in quality_warnings(memoryless, 0.9, 0.9, 4, 0.1)[0]


def test_an_undertrained_deploy_warns_on_the_console_and_in_metrics(tmp_path, capsys):
    from pathlib import Path

    from compactcl.cli.main import main

    recipe = Path(__file__).parent / "data" / "tiny-compressed.yaml"
    args = ["run", str(recipe), "--no-progress", "--out", str(tmp_path / "run"), "--set", "data.tasks=2", "--set", "data.all_classes=false",
            "--set", "learner.name=finetune", "--set", "export.int8=false"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "warning: task 1: learner 'finetune' keeps no data of earlier tasks" in out
    import json

    rows = json.loads((tmp_path / "run" / "metrics.json").read_text())["tasks"]
    assert any("keeps no data" in w for w in rows[1]["deploy"]["warnings"])
