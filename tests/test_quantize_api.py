"""quantize_ over the registry: layer selection, mixed bits, representation that survives copies."""

import copy

import pytest
import torch

from compactcl.compress.quantize import (QUANTIZERS, KMeansQuantConfig, LinearQuantConfig, LogQuantConfig,
                                         calibrate_activations_, config_for, get_weight_quant, list_quantizers,
                                         quantize_, quantized_layers, remove_activation_quant_, select_layers)
from compactcl.errors import CompactCLError
from compactcl.models import IncrementalNet




def _net(backbone="cnn", **kw):
    kw = kw or ({"width": 8} if backbone == "cnn" else {"hidden": [32]})
    return IncrementalNet(backbone, 1, 8, num_classes=10, backbone_kwargs=kw).eval()


CONFIGS = [LinearQuantConfig(bits=8), LinearQuantConfig(bits=3, per_channel=False, symmetric=False),
           LogQuantConfig(bits=4), LogQuantConfig(bits=3, per_channel=True), KMeansQuantConfig(bits=2)]


def test_registry_covers_every_config():
    assert list_quantizers() == ["kmeans", "linear", "log"]
    assert {c.method for c in QUANTIZERS} == {"linear", "log", "kmeans"}
    assert isinstance(config_for("log", 3), LogQuantConfig)
    with pytest.raises(CompactCLError, match="unknown quantization method 'ternary'; choose one of kmeans, linear, log"):
        config_for("ternary", 2)


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c.method}{c.bits}")
def test_quantize_in_place_values_per_channel(cfg):
    net = _net()
    out = quantize_(net, cfg)
    assert out is net
    names = select_layers(net, cfg)
    assert set(quantized_layers(net)) == set(names) and "head" in names  # head quantized by default
    for name in names:
        m = net.get_submodule(name)
        wq = get_weight_quant(m)
        assert wq.on_grid(m.weight)
        per_row = [torch.unique(r).numel() for r in m.weight.detach().reshape(m.weight.shape[0], -1)]
        levels = 2 ** cfg.bits - (1 if cfg.method == "linear" and cfg.symmetric else 0)
        if cfg.method == "kmeans":
            assert torch.unique(m.weight).numel() <= 2 ** cfg.bits
        else:
            assert max(per_row) <= levels


def test_survives_deepcopy_eval_and_train_modes():
    net = quantize_(_net(), LinearQuantConfig(bits=4))
    clone = copy.deepcopy(net)
    clone.train(); clone.eval()
    assert set(quantized_layers(clone)) == set(quantized_layers(net))
    x = torch.randn(3, 1, 8, 8)
    assert torch.equal(clone(x), net(x))
    wq_a = get_weight_quant(net.head)
    wq_b = get_weight_quant(clone.head)
    assert wq_a is not wq_b and torch.equal(wq_a.params["scale"], wq_b.params["scale"])


def test_layer_filter_and_mixed_bits():
    net = _net("mlp", hidden=[32, 16])
    cfg = LinearQuantConfig(bits=8, skip_head=True, exclude=("backbone.body.3",), layer_bits={"backbone.body.1": 2})
    quantize_(net, cfg)
    layers = quantized_layers(net)
    assert set(layers) == {"backbone.body.1"} and layers["backbone.body.1"].bits == 2
    assert get_weight_quant(net.head) is None
    net2 = quantize_(_net("mlp", hidden=[32, 16]), LogQuantConfig(bits=3, include=("head",)))
    assert set(quantized_layers(net2)) == {"head"}
    with pytest.raises(CompactCLError, match="layer_bits"):
        quantize_(_net(), LinearQuantConfig(layer_bits={"nope": 4}))


def test_config_validation_names_the_fix():
    with pytest.raises(CompactCLError, match="bits"):
        LinearQuantConfig(bits=1)
    with pytest.raises(CompactCLError, match="bits"):
        KMeansQuantConfig(bits=9)
    with pytest.raises(CompactCLError, match="init"):
        KMeansQuantConfig(init="random")
    with pytest.raises(CompactCLError, match="levels"):
        LogQuantConfig(bits=3, levels=5)
    assert KMeansQuantConfig(bits=1).bits == 1
    assert LinearQuantConfig(bits=4).to_dict()["method"] == "linear"


def test_pruned_zeros_stay_zero_for_every_method():
    for cfg in CONFIGS:
        net = _net("mlp")
        with torch.no_grad():
            w = net.backbone.body[1].weight
            w[w.abs() < w.abs().median()] = 0  # 50% pruned
        zeros = net.backbone.body[1].weight == 0
        quantize_(net, cfg)
        assert bool((net.backbone.body[1].weight[zeros] == 0).all()), cfg.method


def test_side_tensors_rounded_to_fp16():
    net = quantize_(_net(), LinearQuantConfig(bits=8))
    bn = net.backbone.body[0][1]
    for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var, net.head.bias):
        assert torch.equal(t.half().float(), t)


def test_activation_calibration_simulates_int8(digits):
    torch.manual_seed(0)
    net = _net("mlp")
    x = digits.train.x[:256]
    ref = net(x)
    for method in ("minmax", "percentile"):
        ranges = calibrate_activations_(net, x, method=method)
        assert set(ranges) == {"backbone.body.1", "head"}
        sim = net(x)
        assert not torch.equal(sim, ref)
        assert (sim.argmax(1) == ref.argmax(1)).float().mean() > 0.97
        clone = copy.deepcopy(net)
        assert torch.equal(clone(x), sim)
    remove_activation_quant_(net)
    assert torch.equal(net(x), ref)
