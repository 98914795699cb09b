"""Quantization-aware fine-tuning: STE for linear/log, centroid training for k-means."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compactcl.compress.quantize import (KMeansQuantConfig, LinearQuantConfig, LogQuantConfig, QATConfig,
                                         get_weight_quant, qat_, quantize_, quantized_layers)
from compactcl.compress.quantize.qat import SharedWeights
from compactcl.compress.quantize.state import WeightQuant
from compactcl.data import class_incremental
from compactcl.engine import TrainConfig, accuracy, train
from compactcl.models import IncrementalNet




@pytest.fixture(scope="module")
def trained(digits):
    torch.manual_seed(0)
    task = class_incremental(digits, tasks=1, classes_per_task=10, seed=0).tasks[0]
    net = IncrementalNet("mlp", 1, 8, 10, backbone_kwargs={"hidden": [64]})
    train(net, task.train, lambda m, x, y: F.cross_entropy(m(x), y), TrainConfig(epochs=8, lr=0.05))
    return net, task


@pytest.mark.parametrize("cfg,margin", [(LinearQuantConfig(bits=2), 0.04), (LogQuantConfig(bits=2), 0.05)],
                         ids=["linear2", "log2"])
def test_qat_recovers_accuracy_at_two_bits(trained, cfg, margin):
    net, task = trained
    ptq = accuracy(quantize_(copy.deepcopy(net), cfg), task.test)
    torch.manual_seed(0)
    q = copy.deepcopy(net)
    qat_(q, cfg, task.train, QATConfig(epochs=3, seed=0))
    after = accuracy(q, task.test)
    assert after >= ptq + margin, (ptq, after)
    for name, wq in quantized_layers(q).items():  # still a quantized model, on its PTQ grid
        assert wq.on_grid(q.get_submodule(name).weight)
        assert wq.bits == 2


def test_kmeans_qat_trains_centroids_and_keeps_codes(trained):
    net, task = trained
    cfg = KMeansQuantConfig(bits=1)
    ptq = quantize_(copy.deepcopy(net), cfg)
    q = copy.deepcopy(net)
    qat_(q, cfg, task.train, QATConfig(epochs=3, lr=3e-3, seed=0))
    for name, wq in quantized_layers(q).items():
        w = q.get_submodule(name).weight
        before = get_weight_quant(ptq.get_submodule(name))
        assert torch.unique(w).numel() <= 2  # still two shared values
        assert not torch.equal(wq.params["codebook"], before.params["codebook"])  # centroids moved
        assert torch.equal(wq.encode(w), before.encode(ptq.get_submodule(name).weight))  # codes did not
    assert accuracy(q, task.test) >= accuracy(ptq, task.test) + 0.01


def test_centroid_gradient_is_sum_of_shared_weight_gradients():
    codebook = torch.tensor([-0.5, 0.25, 1.0])
    codes = torch.tensor([[0, 1, 2, 1], [2, 2, 0, 1]])
    p = SharedWeights(WeightQuant("kmeans", 2, {"codebook": codebook}, None, {"zero_code": None}), codes,
                      torch.ones(2, 4))
    w = p(torch.empty(0))
    upstream = torch.randn(2, 4)
    (w * upstream).sum().backward()
    expected = torch.zeros(3).index_add_(0, codes.flatten(), upstream.flatten())
    assert torch.allclose(p.codebook.grad, expected)


def test_qat_keeps_pruned_weights_zero(trained):
    net, task = trained
    for cfg in (LinearQuantConfig(bits=3), KMeansQuantConfig(bits=2), LogQuantConfig(bits=3)):
        q = copy.deepcopy(net)
        with torch.no_grad():
            w = q.backbone.body[1].weight
            w[w.abs() < w.abs().quantile(0.8)] = 0
        zeros = q.backbone.body[1].weight == 0
        qat_(q, cfg, task.train.subset(torch.arange(256)), QATConfig(epochs=1))
        assert bool((q.backbone.body[1].weight[zeros] == 0).all()), cfg.method
        assert not isinstance(q.backbone.body[1].weight, nn.Parameter) or q.backbone.body[1].weight.requires_grad
        assert type(q.backbone.body[1]) is nn.Linear  # parametrization removed


def test_qat_without_config_needs_quantized_model(trained):
    net, task = trained
    with pytest.raises(ValueError, match="quantize"):
        qat_(copy.deepcopy(net), None, task.train, QATConfig(epochs=1))
    q = quantize_(copy.deepcopy(net), LinearQuantConfig(bits=3))
    qat_(q, None, task.train.subset(torch.arange(128)), QATConfig(epochs=1))
    assert set(quantized_layers(q)) == {"backbone.body.1", "head"}
