"""The quantization-method registry: every method round-trips, and a new method is one class.

``SignQuant`` below (1-bit weights: sign x per-channel scale, as in XNOR-Net / BinaryConnect)
is defined in this file only; registering it makes ``quantize_``, ``qat_``, the ``.ccl``
artifact, ``config_for``, recipes and ``compactcl quantize --method sign`` accept it, with no
other source file touched.
"""

import copy
from dataclasses import dataclass
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from compactcl.cli.main import build_parser
from compactcl.cli.quantize import build_config
from compactcl.compress.quantize import (QUANT_METHODS, QUANTIZERS, QATConfig, QuantConfig, QuantMethod, WeightQuant,
                                         config_for, get_method, list_methods, qat_, quantize_, quantized_layers,
                                         register_method)
from compactcl.data import class_incremental
from compactcl.errors import CompactCLError
from compactcl.export.artifact import load_artifact, save_artifact
from compactcl.engine import TrainConfig, accuracy, train
from compactcl.models import IncrementalNet
from compactcl.pipeline.config import QuantizeStep


def _net(backbone="cnn"):
    kw = {"width": 8} if backbone == "cnn" else {"hidden": [32]}
    net = IncrementalNet(backbone, 1, 8, num_classes=10, backbone_kwargs=kw)
    net.train()
    net(torch.randn(32, 1, 8, 8))  # non-trivial batch-norm statistics
    return net.eval()


def _prune_(net, fraction=0.5):
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                w = m.weight
                w[w.abs() <= w.abs().flatten().kthvalue(int(fraction * w.numel())).values] = 0
    return net


# ------------------------------------------------------------------------ every registered method
@pytest.mark.parametrize("name", list_methods())
@pytest.mark.parametrize("pruned", [False, True], ids=["dense", "pruned"])
def test_every_method_round_trips_through_the_artifact(tmp_path, name, pruned):
    method = get_method(name)
    net = _net()
    if pruned:
        _prune_(net)
    cfg = config_for(name, max(method.min_bits, 3))
    assert isinstance(cfg, method.config) and cfg.method == name and QUANTIZERS[type(cfg)] == method.fit
    quantize_(net, cfg)
    for layer, wq in quantized_layers(net).items():
        w = net.get_submodule(layer).weight
        assert wq.method == name and wq.on_grid(w)
        assert torch.equal(method.onnx_weight(wq, w), w.detach())  # ONNX exports the dequantized weights
    save_artifact(net, tmp_path / "m.ccl")
    loaded = load_artifact(tmp_path / "m.ccl")
    for (a, p), (b, q) in zip(net.state_dict().items(), loaded.state_dict().items()):
        assert a == b and torch.equal(p, q), a
    save_artifact(loaded, tmp_path / "again.ccl")
    assert (tmp_path / "again.ccl").read_bytes() == (tmp_path / "m.ccl").read_bytes()


def test_registry_names_its_choices():
    assert set(list_methods()) >= {"kmeans", "linear", "log"}
    with pytest.raises(CompactCLError, match="choose one of kmeans, linear, log"):
        get_method("ternary")
    with pytest.raises(CompactCLError, match="quantize method 'ternary' unknown; choose one of"):
        from compactcl.pipeline.recipe import load_recipe

        load_recipe("default", ["compress.steps=[{quantize: {method: ternary}}]"])
    assert get_method("kmeans").min_bits == 1 and get_method("linear").min_bits == 2
    assert get_method("kmeans").accepted({"per_channel": True}) == {}
    assert get_method("log").accepted({"per_channel": True}) == {"per_channel": True}


# ------------------------------------------------------------------------ a new method, one class
@dataclass(frozen=True)
class SignQuantConfig(QuantConfig):
    """Weights become +-scale (one scale per output channel): 1 bit a weight."""

    bits: int = 1
    method = "sign"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.bits != 1 or any(b != 1 for b in self.layer_bits.values()):
            raise CompactCLError("SignQuantConfig: sign weights take exactly 1 bit")


class SignQuant(QuantMethod):
    """``params``: ``scale`` (float32, one per output channel)."""

    name = "sign"
    config = SignQuantConfig
    min_bits = 1

    def fit(self, w: torch.Tensor, cfg: QuantConfig, bits: int) -> WeightQuant:
        rows = w.reshape(w.shape[0], -1)
        nonzero = (rows != 0).sum(1).clamp(min=1)
        scale = (rows.abs().sum(1) / nonzero).float()  # mean |w| of the kept weights
        return WeightQuant(self.name, bits, {"scale": scale}, 0)

    def encode(self, wq: WeightQuant, w: torch.Tensor) -> torch.Tensor:
        return (w > 0).to(torch.int64)

    def decode(self, wq: WeightQuant, codes: torch.Tensor) -> torch.Tensor:
        s = wq.params["scale"].reshape(-1, *[1] * (codes.dim() - 1))
        return torch.where(codes == 1, s, -s)

    def write_grid(self, wq: WeightQuant, entry: dict[str, Any], wr) -> None:
        wr.put("f32", wq.params["scale"].numpy())

    def read_grid(self, entry: dict[str, Any], rd) -> WeightQuant:
        scale = torch.from_numpy(rd.take("f32", self.channels(entry)).copy())
        return WeightQuant(self.name, int(entry["bits"]), {"scale": scale}, entry.get("axis"))


@pytest.fixture
def sign():
    register_method(SignQuant)  # in a user's own module this is the @register_method decorator
    yield get_method("sign")
    QUANT_METHODS.pop("sign")  # leave the registry as the other tests expect it


def _assert_sign_grid(net):
    layers = quantized_layers(net)
    assert layers
    for name, wq in layers.items():
        w = net.get_submodule(name).weight.detach()
        assert wq.method == "sign" and wq.bits == 1 and wq.on_grid(w)
        s = wq.params["scale"].reshape(-1, *[1] * (w.dim() - 1))
        assert bool(((w == s) | (w == -s) | (w == 0)).all())


def test_new_method_is_configured_from_the_registry(sign):
    assert "sign" in list_methods() and SignQuantConfig in QUANTIZERS
    assert isinstance(config_for("sign", 1), SignQuantConfig)
    with pytest.raises(CompactCLError, match="exactly 1 bit"):
        config_for("sign", 2)
    assert QuantizeStep.model_validate({"method": "sign", "bits": 1}).method == "sign"
    args = build_parser().parse_args(["quantize", "m.safetensors", "--method", "sign", "--bits", "1", "--out", "o.ccl"])
    assert build_config(args) == SignQuantConfig(bits=1)
    args.affine = True
    with pytest.raises(CompactCLError, match="drop --affine"):
        build_config(args)


def test_new_method_quantizes_and_survives_the_artifact(sign, tmp_path):
    for net in (quantize_(_net(), config_for("sign", 1)), quantize_(_prune_(_net("mlp")), config_for("sign", 1))):
        _assert_sign_grid(net)
        n = save_artifact(net, tmp_path / "m.ccl")
        loaded = load_artifact(tmp_path / "m.ccl")
        _assert_sign_grid(loaded)
        for (a, p), (b, q) in zip(net.state_dict().items(), loaded.state_dict().items()):
            assert a == b and torch.equal(p, q), a  # bit-equal after reload
        x = torch.randn(4, 1, 8, 8)
        assert torch.equal(loaded(x), net(x))
        assert save_artifact(loaded, tmp_path / "again.ccl") == n
        assert (tmp_path / "again.ccl").read_bytes() == (tmp_path / "m.ccl").read_bytes()
    sizes = [save_artifact(quantize_(_net("mlp"), c), tmp_path / "s.ccl") for c in
             (config_for("sign", 1), config_for("kmeans", 1), config_for("linear", 2))]
    assert sizes[0] < sizes[2]  # 1-bit codes: smaller than 2-bit linear


def test_new_method_trains_with_qat(sign, digits):
    task = class_incremental(digits, tasks=1, classes_per_task=10, seed=0).tasks[0]
    net = IncrementalNet("mlp", 1, 8, 10, backbone_kwargs={"hidden": [64]})
    train(net, task.train, lambda m, x, y: F.cross_entropy(m(x), y), TrainConfig(epochs=8, lr=0.05))
    ptq = accuracy(quantize_(copy.deepcopy(net), config_for("sign", 1)), task.test)
    q = copy.deepcopy(net)
    losses = qat_(q, config_for("sign", 1), task.train, QATConfig(epochs=3, seed=0))
    assert all(torch.isfinite(torch.tensor(losses)))
    _assert_sign_grid(q)  # the default QAT (straight-through latent weight) kept it on the sign grid
    after = accuracy(q, task.test)
    assert after >= ptq + 0.05, (ptq, after)  # measured 0.74 -> 0.93
