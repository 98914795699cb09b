import copy

import pytest
import torch

from compactcl.compress.prune import (MagnitudeConfig, PruneData, agp_sparsity, apply_masks_, finalize_, finetune_,
                                      l1_penalty, magnitude_prune_, prune_, select_masks, sparsity_of, with_l1)
from compactcl.compress.prune.api import L1Config, cross_entropy
from compactcl.compress.prune.unstructured import is_masked, layer_sparsity
from compactcl.data import class_incremental
from compactcl.errors import CompactCLError
from compactcl.engine import TrainConfig, accuracy, train
from compactcl.models import IncrementalNet




@pytest.fixture(scope="module")
def task(digits):
    return class_incremental(digits, tasks=1, seed=0).tasks[0]


@pytest.fixture(scope="module")
def trained_mlp(task):
    torch.manual_seed(0)
    net = IncrementalNet("mlp", 1, 8, 10, {"hidden": [64, 64]})
    train(net, task.train, cross_entropy, TrainConfig(epochs=8, lr=0.05))
    return net


def test_global_masks_drop_exactly_the_lowest_scores():
    scores = {"a": torch.rand(10, 10), "b": torch.rand(7, 3) * 2}
    masks = select_masks(scores, 0.6, "global")
    dropped = torch.cat([scores[n][~masks[n]] for n in scores])
    kept = torch.cat([scores[n][masks[n]] for n in scores])
    assert dropped.numel() == round(0.6 * 121)
    assert dropped.max() <= kept.min()


def test_layer_masks_drop_the_ratio_of_each_layer():
    scores = {"a": torch.rand(10, 10), "b": torch.rand(8)}
    masks = select_masks(scores, {"a": 0.5, "b": 0.25}, "layer")
    assert int((~masks["a"]).sum()) == 50 and int((~masks["b"]).sum()) == 2
    for n in scores:
        assert scores[n][~masks[n]].max() <= scores[n][masks[n]].min()
    with pytest.raises(CompactCLError, match=r"must be in \[0, 1\), got 1.0"):
        select_masks(scores, 1.0, "layer")


def test_agp_is_the_cubic_schedule():
    final, n = 0.9, 10
    values = [agp_sparsity(t, n, final, 0.1) for t in range(n + 1)]
    assert values[0] == pytest.approx(0.1) and values[-1] == pytest.approx(final)
    assert all(a < b for a, b in zip(values, values[1:]))
    for t, v in enumerate(values):
        assert v == pytest.approx(final + (0.1 - final) * (1 - t / n) ** 3)
    # front-loaded: half the steps reach 7/8 of the way
    assert agp_sparsity(5, 10, 1.0) == pytest.approx(0.875)


def test_l1_penalty_and_its_gradient():
    w = [torch.randn(3, 4, requires_grad=True), torch.randn(5, requires_grad=True)]
    p = l1_penalty(w)
    assert float(p.detach()) == pytest.approx(sum(float(t.detach().abs().sum()) for t in w), rel=1e-6)
    p.backward()
    assert torch.equal(w[0].grad, torch.sign(w[0].detach()))


def test_with_l1_adds_the_scaled_norm():
    net = IncrementalNet("mlp", 1, 8, 3, {"hidden": [5]})
    x, y = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 0])
    norm = sum(float(m.weight.detach().abs().sum()) for m in (net.backbone.body[1], net.head))
    with torch.no_grad():
        got = float(with_l1(cross_entropy, 0.01)(net, x, y)) - float(cross_entropy(net, x, y))
    assert got == pytest.approx(0.01 * norm, rel=1e-4)


def test_masks_survive_deepcopy_training_and_strip(task):
    net = IncrementalNet("cnn", 1, 8, 10, {"width": 8})
    masks = magnitude_prune_(net, 0.7)
    twin = copy.deepcopy(net)
    assert all(is_masked(twin.get_submodule(n)) for n in masks)
    # momentum and weight decay would revive zeroed weights without the parametrization
    train(twin, task.train, cross_entropy, TrainConfig(epochs=1, lr=0.1, weight_decay=1e-3))
    for n, m in masks.items():
        assert torch.all(twin.get_submodule(n).weight[~m] == 0)
    keys = set(IncrementalNet("cnn", 1, 8, 10, {"width": 8}).state_dict())
    finalize_(twin)
    assert set(twin.state_dict()) == keys  # plain model again: no parametrization entries
    assert not any(is_masked(m) for m in twin.modules())
    assert sparsity_of(twin) == pytest.approx(0.7, abs=1e-3)


def test_mask_shape_mismatch_is_an_error():
    net = IncrementalNet("mlp", 1, 8, 3, {"hidden": [5]})
    with pytest.raises(CompactCLError, match="another model"):
        apply_masks_(net, {"head": torch.ones(2, 2, dtype=torch.bool)})


def test_magnitude_90_percent_then_finetune_keeps_accuracy(trained_mlp, task):
    base = accuracy(trained_mlp, task.test)
    net = copy.deepcopy(trained_mlp)
    prune_(net, MagnitudeConfig(ratio=0.9), PruneData((1, 8, 8), task.train, task.val))
    finetune_(net, task.train, TrainConfig(epochs=3, lr=0.01))
    finalize_(net)
    assert sparsity_of(net) >= 0.9 - 1e-3
    assert accuracy(net, task.test) >= base - 0.05, (base, accuracy(net, task.test))


def test_layer_scope_prunes_every_layer_equally(trained_mlp):
    net = copy.deepcopy(trained_mlp)
    prune_(net, MagnitudeConfig(ratio=0.5, scope="layer"), PruneData((1, 8, 8)))
    assert all(s == pytest.approx(0.5, abs=0.01) for s in layer_sparsity(net).values())


def test_agp_schedule_reaches_the_target(trained_mlp, task):
    net = copy.deepcopy(trained_mlp)
    res = prune_(net, MagnitudeConfig(ratio=0.8, schedule="agp", agp_steps=3),
                 PruneData((1, 8, 8), task.train, None, TrainConfig(epochs=3, lr=0.01)))
    assert res.info["schedule"][-1] == pytest.approx(0.8)
    finalize_(net)
    assert sparsity_of(net) == pytest.approx(0.8, abs=1e-3)
    assert accuracy(net, task.test) >= accuracy(trained_mlp, task.test) - 0.05


def test_l1_training_pushes_weights_to_zero(trained_mlp, task):
    layers = lambda n: (n.backbone.body[1], n.backbone.body[3], n.head)  # noqa: E731
    near_zero = lambda n: sum(int((m.weight.abs() < 1e-3).sum()) for m in layers(n))  # noqa: E731
    norm = lambda n: sum(float(m.weight.detach().abs().sum()) for m in layers(n))  # noqa: E731
    cfg = TrainConfig(epochs=4, lr=0.02, weight_decay=0)
    plain, reg = copy.deepcopy(trained_mlp), copy.deepcopy(trained_mlp)
    train(plain, task.train, cross_entropy, cfg)
    train(reg, task.train, with_l1(cross_entropy, 5e-3), cfg)
    assert norm(reg) < 0.8 * norm(plain)
    assert near_zero(reg) > 2 * near_zero(plain)


def test_l1_method_trains_then_prunes(trained_mlp, task):
    net = copy.deepcopy(trained_mlp)
    res = prune_(net, L1Config(ratio=0.5, strength=1e-3, epochs=1),
                 PruneData((1, 8, 8), task.train, None, TrainConfig(lr=0.01)))
    assert len(res.info["l1_loss"]) == 1
    finalize_(net)
    assert sparsity_of(net) == pytest.approx(0.5, abs=1e-3)
    assert accuracy(net, task.test) >= accuracy(trained_mlp, task.test) - 0.1
