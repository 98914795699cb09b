"""Bring your own model: wrap, grow, train, save/load without pickle, prune, learn incrementally, export."""

import copy
import sys
import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import compactcl
from byo_models import TinyResNet, tiny_mobilenet, tiny_resnet
from compactcl.data import ExemplarMemory, TensorData, class_incremental
from compactcl.errors import CompactCLError
from compactcl.learners import LearnerState, create_learner, pretrained_state, shift_task
from compactcl.engine import TrainConfig, accuracy, train
from compactcl.models import ExternalNet, create_external, create_model, from_module, load_weights, save_checkpoint
from compactcl.models.external import hub_model, is_external_name

MODELS = [(tiny_resnet, "fc"), (tiny_mobilenet, "classifier.1")]




def _ce(model, x, y):
    return F.cross_entropy(model(x), y)


def _first(digits, n_classes: int, n: int = 256) -> TensorData:
    keep = (digits.train.y < n_classes).nonzero().flatten()[:n]
    return digits.train.subset(keep)


@pytest.mark.parametrize("factory,head", MODELS)
def test_wrap_grow_train_save_load_gives_identical_logits(tmp_path, digits, factory, head):
    net = from_module(factory(num_classes=2), head=head, factory=factory, factory_kwargs={"num_classes": 2},
                      in_channels=1, input_size=8).eval()
    x = digits.test.x[:16]
    feats = net.features(x)
    assert feats.shape == (16, net.head.in_features)
    assert torch.allclose(net.head(feats), net(x), atol=1e-6)  # features are exactly the head's input
    before, old_w, old_b = net(x), net.head.weight.detach().clone(), net.head.bias.detach().clone()
    net.grow(3)
    assert net.num_classes == 5 and net.module.get_submodule(head) is net.head  # set back on the user module
    # the old rows are copied exactly; the outputs only to float rounding, since a matmul of another
    # shape may sum in another order (AVX2 vs AVX-512 kernels)
    assert torch.equal(net.head.weight[:2], old_w) and torch.equal(net.head.bias[:2], old_b)
    torch.testing.assert_close(net(x)[:, :2], before, rtol=0, atol=1e-5)
    losses = train(net, _first(digits, 5), _ce, TrainConfig(iterations=3, batch_size=32, lr=0.05))
    assert len(losses) == 1 and losses[0] > 0

    path = tmp_path / "m.safetensors"
    save_checkpoint(net, path)
    loaded = compactcl.load(path)
    assert isinstance(loaded, ExternalNet)
    assert loaded.spec == {"kind": "external", "factory": f"byo_models:{factory.__name__}",
                           "factory_kwargs": {"num_classes": 2}, "head": head, "num_classes": 5,
                           "in_channels": 1, "input_size": 8}
    assert torch.equal(loaded(x), net.eval()(x))


def test_saving_without_factory_says_how_to_fix(tmp_path):
    net = from_module(TinyResNet(num_classes=3))
    assert net(torch.zeros(2, 1, 8, 8)).shape == (2, 3)  # usable without a factory...
    with pytest.raises(CompactCLError, match="factory="):  # ...but not saveable
        save_checkpoint(net, tmp_path / "m.safetensors")
    assert not (tmp_path / "m.safetensors").exists()


def test_only_marked_factories_are_called():
    with pytest.raises(CompactCLError, match="model_factory"):
        from_module(TinyResNet(), factory="byo_models:unmarked_factory")
    # A crafted file naming an installed function must not get it called.
    with pytest.raises(CompactCLError, match="not marked"):
        create_model({"kind": "external", "factory": "os:system", "factory_kwargs": {"command": "echo hi"},
                      "head": "fc", "num_classes": 1})
    with pytest.raises(CompactCLError, match="nn.Linear"):
        from_module(TinyResNet(), head="layer1", factory=tiny_resnet)
    with pytest.raises(CompactCLError, match="inside a function|__main__"):
        def local():  # not importable by name
            return TinyResNet()
        from_module(TinyResNet(), factory=local)


def test_pruned_user_model_reloads(tmp_path, digits):
    from compactcl.compress.prune.structured import channel_counts, prune_channels_

    net = from_module(tiny_resnet(width=8, num_classes=4), factory=tiny_resnet, factory_kwargs={"width": 8,
                                                                                               "num_classes": 4}).eval()
    x = digits.test.x[:8]
    prune_channels_(net, 0.5, x[:2])
    assert channel_counts(net)["module.layer2.conv1"] == 8  # 16 -> 8: really smaller
    path = tmp_path / "pruned.safetensors"
    save_checkpoint(net, path)
    loaded = compactcl.load(path)
    assert channel_counts(loaded) == channel_counts(net)
    assert torch.equal(loaded(x), net(x))


def test_load_weights_from_state_dict_and_safetensors(tmp_path):
    from safetensors.torch import save_file

    src = tiny_mobilenet(num_classes=3).eval()
    x = torch.randn(4, 1, 8, 8)
    torch.save({"state_dict": src.state_dict()}, tmp_path / "w.pt")
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(tmp_path / "w.safetensors"))
    for name in ("w.pt", "w.safetensors"):
        dst = from_module(tiny_mobilenet(num_classes=3), head="classifier.1").eval()
        assert not torch.equal(dst(x), src(x))
        load_weights(dst, tmp_path / name)
        assert torch.equal(dst(x), src(x))
    # Pretrained features, own head: a 0-class head stays as it is.
    fresh = create_external("module:byo_models:tiny_mobilenet", num_classes=0, in_channels=1)
    load_weights(fresh, tmp_path / "w.pt", exclude_head=True)
    assert fresh.num_classes == 0
    assert torch.equal(fresh.module.stem[0].weight, src.stem[0].weight)
    with pytest.raises(CompactCLError, match="do not fit"):
        load_weights(create_external("module:byo_models:tiny_resnet", num_classes=0, in_channels=1), tmp_path / "w.pt")
    torch.save({"weights": src.state_dict(), "evil": ExemplarMemory(size=1)}, tmp_path / "obj.pt")
    with pytest.raises(CompactCLError, match="cannot read weights"):  # weights_only refuses objects
        load_weights(dst, tmp_path / "obj.pt")


def test_icarl_three_tasks_on_wrapped_residual_model(digits, tmp_path):
    stream = class_incremental(digits, tasks=3, classes_per_task=2, seed=0, all_classes=False)
    model = from_module(tiny_resnet(num_classes=0), factory=tiny_resnet, factory_kwargs={"num_classes": 0})
    state = LearnerState(model, ExemplarMemory(size=60), TrainConfig(epochs=8, batch_size=32, lr=0.05))
    learner = create_learner("icarl")
    for task in stream:
        state = learner.fit_task(state, task)
    assert state.model.num_classes == 6 and sorted(state.memory.x) == list(range(6))
    assert len(state.memory) == 60
    seen = TensorData.cat([t.test for t in stream])
    assert accuracy(state.model, seen) > 0.6  # chance is 1/6
    assert accuracy(state.model, stream.tasks[0].test) > 0.5  # exemplars + distillation keep task 0
    save_checkpoint(state.model, tmp_path / "cl.safetensors")
    assert torch.equal(compactcl.load(tmp_path / "cl.safetensors")(seen.x), state.model.eval()(seen.x))


def test_onnx_export_of_wrapped_model_agrees(tmp_path, digits):
    from compactcl.export.onnx import agreement, export_onnx, onnx_predict

    net = from_module(tiny_mobilenet(num_classes=10), head="classifier.1").eval()
    train(net, _first(digits, 10), _ce, TrainConfig(iterations=5, batch_size=64))
    x = digits.test.x[:128]
    export_onnx(net, tmp_path / "m.onnx", (1, 8, 8))
    ort_logits = onnx_predict(tmp_path / "m.onnx", x)
    with torch.no_grad():
        torch_logits = net(x).numpy()
    assert ort_logits.shape == (128, 10)
    assert agreement(ort_logits, torch_logits) >= 0.999
    assert abs(ort_logits - torch_logits).max() < 1e-3


@pytest.mark.parametrize("hub", ["timm", "torchvision"])
def test_missing_hub_library_says_what_to_install(monkeypatch, hub):
    monkeypatch.setitem(sys.modules, hub, None)  # makes `import hub` fail whether or not it is installed
    with pytest.raises(CompactCLError, match=f"pip install {hub}"):
        create_external(f"{hub}:resnet18", num_classes=10)


def test_timm_model_through_a_fake_timm(monkeypatch, tmp_path):
    calls = []

    class TimmLike(TinyResNet):
        def get_classifier(self) -> nn.Module:
            return self.fc

    def create_model(name, pretrained=False, num_classes=1000, in_chans=3):
        calls.append((name, pretrained, num_classes, in_chans))
        return TimmLike(in_channels=in_chans, num_classes=num_classes)

    monkeypatch.setitem(sys.modules, "timm", types.SimpleNamespace(create_model=create_model))
    net = create_external("timm:resnet18", num_classes=4, in_channels=1).eval()
    assert calls == [("resnet18", False, 4, 1)] and net.head_name == "fc"
    net.grow(2)
    save_checkpoint(net, tmp_path / "t.safetensors")
    loaded = compactcl.load(tmp_path / "t.safetensors")
    x = torch.randn(3, 1, 8, 8)
    assert loaded.num_classes == 6 and torch.equal(loaded(x), net(x))
    empty = create_external("timm:resnet18", num_classes=0, in_channels=1)  # the run loop starts with no classes
    assert empty.num_classes == 0 and empty.head.in_features == 16
    with pytest.raises(CompactCLError, match="timm:<name>"):
        hub_model("resnet18", num_classes=4)


def test_module_factory_by_name_starts_empty_and_grows(tmp_path):
    net = create_external("module:byo_models:tiny_mobilenet", num_classes=0, in_channels=1, options={"width": 4})
    assert net.head_name == "classifier.1" and net.num_classes == 0  # found as the last nn.Linear
    assert net.spec["factory_kwargs"] == {"width": 4, "num_classes": 1, "in_channels": 1}  # input_size not taken
    net.grow(3)
    net.eval()
    save_checkpoint(net, tmp_path / "m.safetensors")
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(compactcl.load(tmp_path / "m.safetensors")(x), net(x))
    assert is_external_name("module:byo_models:tiny_mobilenet") and not is_external_name("cnn")
    with pytest.raises(CompactCLError, match="not marked"):
        create_external("module:byo_models:unmarked_factory", num_classes=2)


def test_pretrained_model_is_task_zero(digits):
    # "Pretrained": a user model that already knows digits 0-4.
    known = 5
    user = tiny_resnet(num_classes=known)
    train(user, _first(digits, known, 600), _ce, TrainConfig(epochs=4, batch_size=32, lr=0.05))
    given_w, given_b = user.fc.weight.detach().clone(), user.fc.bias.detach().clone()
    state = pretrained_state(copy.deepcopy(user), known_classes=known)  # learners train the model in place
    assert state.seen_labels == list(range(known)) and state.task_index == 0

    # New classes 5-9 arrive as their own dataset numbered from 0; shift them past the known ones.
    new = digits.train.subset((digits.train.y >= known).nonzero().flatten())
    new_test = digits.test.subset((digits.test.y >= known).nonzero().flatten())
    from compactcl.data import DatasetSplits
    ds = DatasetSplits("new", TensorData(new.x, new.y - known), TensorData(new_test.x, new_test.y - known), 5)
    task = shift_task(class_incremental(ds, tasks=1, class_order=list(range(5))).tasks[0], known)
    assert task.index == 1 and task.labels == list(range(5, 10)) and int(task.train.y.min()) == known

    grown, teacher = create_learner("icarl").begin(state, task)  # what a distilling fit_task does first
    assert torch.equal(grown.model.head.weight[:known], given_w) and torch.equal(grown.model.head.bias[:known], given_b)
    assert torch.equal(teacher.head.weight, given_w)
    old_test = digits.test.subset((digits.test.y < known).nonzero().flatten())
    old_acc_before = accuracy(teacher, old_test)

    # Some old-class images (here 100) seed the exemplar memory, so iCaRL can replay them.
    state = pretrained_state(user, known_classes=known, memory=ExemplarMemory(size=50),
                             train=TrainConfig(epochs=8, batch_size=32, lr=0.05), old_data=_first(digits, known, 100))
    assert sorted(state.memory.x) == list(range(known)) and len(state.memory) == 50
    state = create_learner("icarl").fit_task(state, task)
    assert state.model.num_classes == known + 5 and state.seen_labels == list(range(10))
    assert accuracy(state.model, task.test) > 0.7
    assert old_acc_before > 0.8 and accuracy(state.model, old_test) > 0.5  # chance over 10 outputs is 0.1
    with pytest.raises(CompactCLError, match="known_classes"):
        pretrained_state(user, known_classes=3)


def test_quantized_user_model_packs_and_reloads(tmp_path):
    from compactcl.compress.quantize.api import config_for, quantize_
    from compactcl.export.artifact import save_artifact
    from compactcl.models.checkpoint import read_header

    net = from_module(tiny_resnet(num_classes=4), factory=tiny_resnet, factory_kwargs={"num_classes": 4}).eval()
    x = torch.randn(5, 1, 8, 8)
    quantize_(net, config_for("linear", 4))
    save_artifact(net, tmp_path / "m.ccl")
    save_checkpoint(net, tmp_path / "m.safetensors")
    # 4-bit codes; batch norm, scales and the header cost the rest on a model this small
    assert (tmp_path / "m.ccl").stat().st_size < (tmp_path / "m.safetensors").stat().st_size / 3
    assert torch.equal(compactcl.load(tmp_path / "m.ccl")(x), net(x))
    # a user's factory is not run on the meta device to name tensors: the .ccl header names them
    header = read_header(tmp_path / "m.ccl")
    assert header["keys"] == list(net.state_dict()) and all("shape" in e for e in header["layers"])


def test_user_residual_model_through_a_compressed_recipe_run(tmp_path, monkeypatch):
    """A residual CNN from outside our registry: 3 class-incremental tasks from a recipe, pruned,
    quantized and packed after every task, exported to ONNX (checked against PyTorch)."""
    import json
    import sys
    from pathlib import Path

    from compactcl import load
    from compactcl.cli.main import main

    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    sys.modules.pop("byo_models", None)
    recipe = tmp_path / "byo.yaml"
    recipe.write_text("""
version: 1
name: byo
data: {dataset: digits, tasks: 3, classes_per_task: 2, all_classes: false}
model: {backbone: "module:byo_models:tiny_resnet", options: {width: 8}}
learner: {name: icarl, epochs: 10}
memory: {size: 100}
compress:
  steps:
    - prune: {method: structured, ratio: 0.25, finetune_epochs: 4}
    - quantize: {method: linear, bits: 8, qat_epochs: 0}
export: {onnx: true}
""")
    out = tmp_path / "run"
    assert main(["run", str(recipe), "--out", str(out), "--no-progress"]) == 0
    doc = json.loads((out / "metrics.json").read_text())
    last = doc["tasks"][-1]
    assert len(last["accuracy"]["deployed"]) == 3
    assert last["deployed_params"] < last["params"]  # channels really removed
    assert last["bytes"]["deployed"] < 0.5 * last["bytes"]["fp32"]  # int8 codes + pruning (+ header)
    assert last["deploy"]["onnx"]["agreement"] >= 0.999
    assert doc["summary"]["deployed"]["final_accuracy"] > 0.5
    assert load(out / "final" / "deployed.ccl").num_classes == 6
