import copy

import numpy as np
import pytest
import torch

from compactcl.compress.prune import PruneData, StructuredConfig, channel_counts, finetune_, prune_, prune_channels_
from compactcl.compress.prune.api import cross_entropy
from compactcl.data import class_incremental
from compactcl.engine import TrainConfig, accuracy, train
from compactcl.metrics.model_stats import count_flops, count_params
from compactcl.models import DERNet, IncrementalNet, load_checkpoint, save_checkpoint

SHAPE = (1, 8, 8)
SMALL = {"cnn": {"width": 8}, "resnet20": {"width": 8}, "mobilenetv2": {"width_mult": 0.5, "last_channels": 64},
         "mlp": {"hidden": [32, 32]}}




def _randomize_bn(model):
    """Non-trivial batch-norm statistics, so a wrong channel mapping would change the logits."""
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            torch.nn.init.uniform_(m.weight, 0.5, 1.5)


def _check_shrinks_and_reloads(model, tmp_path, round_to=None):
    model.eval()
    flops, params, classes = count_flops(model, SHAPE), count_params(model), model.num_classes
    prune_channels_(model, 0.3, torch.zeros(1, *SHAPE), round_to=round_to)
    assert count_flops(model, SHAPE) < 0.75 * flops
    assert count_params(model) < 0.8 * params
    assert model.num_classes == classes
    path = tmp_path / "pruned.safetensors"
    save_checkpoint(model, path)
    again = load_checkpoint(path)
    x = torch.randn(6, *SHAPE)
    with torch.no_grad():
        assert torch.allclose(model.eval()(x), again(x), atol=1e-5)
    assert channel_counts(again) == channel_counts(model)
    return model


@pytest.mark.parametrize("backbone", ["cnn", "resnet20", "mobilenetv2", "mlp"])
def test_channel_pruning_shrinks_and_reloads(backbone, tmp_path):
    net = IncrementalNet(backbone, 1, 8, 10, SMALL[backbone])
    with torch.no_grad():
        _randomize_bn(net)
    _check_shrinks_and_reloads(net, tmp_path)
    assert net.backbone.out_dim == net.head.in_features


@pytest.mark.parametrize("branches", [1, 2])
def test_der_branches_are_pruned_and_the_head_keeps_its_classes(branches, tmp_path):
    net = DERNet("cnn", 1, 8, backbone_kwargs={"width": 8})
    for n_new in (4, 3)[:branches]:
        net.grow(n_new)
        net.end_task()
    with torch.no_grad():
        for b in net.branches:  # distinct branches: grow() copies the previous one
            for p in b.parameters():
                p.add_(0.1 * torch.randn_like(p))
        _randomize_bn(net)
    widths = [b.out_dim for b in net.branches]
    _check_shrinks_and_reloads(net, tmp_path)
    assert all(b.out_dim < w for b, w in zip(net.branches, widths))
    assert net.head.in_features == sum(b.out_dim for b in net.branches)
    assert net.num_classes == (4, 7)[branches - 1]
    assert not any(p.requires_grad for b in net.branches[:-1] for p in b.parameters())  # old ones stay frozen
    assert all(p.requires_grad for p in net.branches[-1].parameters())


def test_removed_channels_change_nothing_else():
    """Pruning = deleting channels: zero the same channels in the dense model and the logits match."""
    net = IncrementalNet("cnn", 1, 8, 5, {"width": 8}).eval()
    with torch.no_grad():
        _randomize_bn(net)
    dense = copy.deepcopy(net)
    prune_channels_(net, 0.25, torch.zeros(1, *SHAPE))
    first_dense, first = dense.backbone.body[0], net.backbone.body[0]
    # find which output channels of the first conv survived by matching rows
    kept = [int((first_dense[0].weight.flatten(1) == r.flatten()).all(1).nonzero()[0]) for r in first[0].weight]
    x = torch.randn(3, *SHAPE)
    with torch.no_grad():
        a = first(x)
        b = first_dense(x)[:, kept]
    assert torch.allclose(a, b, atol=1e-6)


def test_round_to_8_gives_multiples_of_8(tmp_path):
    net = IncrementalNet("cnn", 1, 8, 10, {"width": 32})
    _check_shrinks_and_reloads(net, tmp_path, round_to=8)
    counts = channel_counts(net)
    # 30% of 32 and 64 channels: 22.4 and 44.8 kept -> nearest multiples 24 and 48
    assert sorted(c for n, c in counts.items() if n != "head") == [24, 24, 48, 48]


@pytest.mark.parametrize("backbone", ["resnet20", "mobilenetv2"])
def test_round_to_8_on_coupled_layers(backbone, tmp_path):
    net = IncrementalNet(backbone, 1, 8, 10)
    _check_shrinks_and_reloads(net, tmp_path, round_to=8)
    assert all(c % 8 == 0 for n, c in channel_counts(net).items() if n != "head")


def test_floor_rounding_is_torch_prunings_rule():
    net = IncrementalNet("cnn", 1, 8, 10, {"width": 32})
    prune_channels_(net, 0.3, torch.zeros(1, *SHAPE), round_to=8, round_mode="floor")
    assert sorted(c for n, c in channel_counts(net).items() if n != "head") == [16, 16, 40, 40]


@pytest.mark.parametrize("backbone", ["resnet20", "mobilenetv2"])
def test_pruned_model_exports_to_onnx_and_agrees(backbone, tmp_path, digits):
    from compactcl.export.onnx import agreement, export_onnx, onnx_predict

    net = IncrementalNet(backbone, 1, 8, 10, SMALL[backbone]).eval()
    with torch.no_grad():
        _randomize_bn(net)
    prune_channels_(net, 0.3, torch.zeros(1, *SHAPE))
    path = tmp_path / "m.onnx"
    export_onnx(net, path, SHAPE)
    x = digits.test.x  # all 360 real test images
    ort = onnx_predict(path, x)
    with torch.no_grad():
        ref = net(x).numpy()
    assert ort.shape == ref.shape == (360, 10)
    # measured max |dlogit| 1.2e-7 (one float32 ulp at these logits, |logit| < 0.5); 2e-6 leaves room for
    # other CPUs' kernels (benchmarks/prune_latency.py onnx: 6e-6 on trained Fashion-MNIST models)
    assert np.abs(ort - ref).max() <= 2e-6
    assert agreement(ort, ref) == 1.0


def test_structured_prune_and_finetune_bounds_the_accuracy_drop(digits):
    task = class_incremental(digits, tasks=1, seed=0).tasks[0]
    net = IncrementalNet("cnn", 1, 8, 10, {"width": 16})
    train(net, task.train, cross_entropy, TrainConfig(epochs=4, lr=0.05))
    base = accuracy(net, task.test)
    assert base > 0.9
    pruned = copy.deepcopy(net)
    prune_(pruned, StructuredConfig(ratio=0.3), PruneData(SHAPE, task.train, task.val))
    finetune_(pruned, task.train, TrainConfig(epochs=2, lr=0.01))
    assert count_flops(pruned, SHAPE) <= 0.6 * count_flops(net, SHAPE)
    assert accuracy(pruned, task.test) >= base - 0.03


def test_taylor_structured_pruning_keeps_the_units_the_gradients_favour(digits):
    from compactcl.compress.prune import accumulate_grads

    task = class_incremental(digits, tasks=1, seed=0).tasks[0]
    net = IncrementalNet("mlp", 1, 8, 10, {"hidden": [32]})
    train(net, task.train, cross_entropy, TrainConfig(epochs=2, lr=0.05))
    accumulate_grads(net, task.train)
    fc, head = net.backbone.body[1], net.head
    naive = ((fc.weight * fc.weight.grad).abs().sum(1) + (head.weight * head.weight.grad).abs().sum(0)) / 2
    keep = naive.argsort(descending=True)[:16]
    expected = {tuple(r.tolist()) for r in fc.weight.detach()[keep]}
    net.zero_grad(set_to_none=True)
    prune_(net, StructuredConfig(ratio=0.5, importance="taylor"), PruneData(SHAPE, task.train))
    assert {tuple(r.tolist()) for r in net.backbone.body[1].weight.detach()} == expected
    assert all(p.grad is None for p in net.parameters())  # gradients used for scoring are cleared
