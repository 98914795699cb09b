"""``quantize_(model, config)``: one verb, many typed configs, one registry (the torchao pattern).

>>> from compactcl.models import IncrementalNet
>>> net = IncrementalNet("mlp", 1, 8, num_classes=4)
>>> quantize_(net, LinearQuantConfig(bits=8))            # in place
>>> sorted(quantized_layers(net))[:1]
['backbone.body.1']

Every config selects layers (``types``, ``include``/``exclude`` fnmatch patterns on module
names, the head included unless ``skip_head``) and may give ``layer_bits`` (name -> bits)
for mixed precision. Adding a scheme = one :class:`~.methods.QuantMethod` file with
``@register_method`` (its config dataclass, grid fitting, codes, QAT, artifact layout).
"""

from __future__ import annotations

import fnmatch
from typing import Any, Callable, Iterator, Mapping

import torch
from torch import nn

from ...errors import CompactCLError
from .methods import (LAYER_TYPES, QUANT_METHODS, KMeansQuantConfig, LinearQuantConfig, LogQuantConfig, QuantConfig,
                      get_method, list_methods, register_method)
from .state import WeightQuant, quantized_layers, set_weight_quant

__all__ = ["QuantConfig", "LinearQuantConfig", "LogQuantConfig", "KMeansQuantConfig", "quantize_",
           "register_method", "get_method", "list_methods", "list_quantizers", "QUANTIZERS", "config_for",
           "select_layers", "round_side_tensors_", "ActivationFakeQuant", "calibrate_activations_",
           "remove_activation_quant_", "describe"]

# --------------------------------------------------------------------------------------- registry
Handler = Callable[[torch.Tensor, QuantConfig, int], WeightQuant]


class _FitByConfig(Mapping[type, Handler]):
    """Read-only view of the method registry keyed by config type: ``QUANTIZERS[LinearQuantConfig](w, cfg, bits)``.
    Kept for callers of the earlier config -> handler registry; :func:`register_method` is how to add one."""

    def __getitem__(self, config_type: type) -> Handler:
        for m in QUANT_METHODS.values():
            if m.config is config_type:
                return m.fit
        raise KeyError(config_type)

    def __iter__(self) -> Iterator[type]:
        return iter([m.config for m in QUANT_METHODS.values()])

    def __len__(self) -> int:
        return len(QUANT_METHODS)


QUANTIZERS: Mapping[type, Handler] = _FitByConfig()


def list_quantizers() -> list[str]:
    """Names of the registered quantization methods (same as :func:`list_methods`)."""
    return list_methods()


def config_for(method: str, bits: int, **kwargs: Any) -> QuantConfig:
    """Config of the registered method ``method`` (see :func:`list_methods`) — handy for CLIs and searches."""
    return get_method(method).make_config(bits, **kwargs)


# -------------------------------------------------------------------------------------- surgery
def _head_names(model: nn.Module) -> set[str]:
    return {name for name, m in model.named_modules() if name.split(".")[-1] in ("head", "aux_head")}


def select_layers(model: nn.Module, config: QuantConfig) -> list[str]:
    """Names of the modules ``config`` quantizes, in model order."""
    types = tuple(LAYER_TYPES[t] for t in config.types)
    heads = _head_names(model) if config.skip_head else set()
    names = []
    for name, m in model.named_modules():
        if not isinstance(m, types) or name in heads or getattr(m, "weight", None) is None:
            continue
        if config.include and not any(fnmatch.fnmatchcase(name, p) for p in config.include):
            continue
        if any(fnmatch.fnmatchcase(name, p) for p in config.exclude):
            continue
        names.append(name)
    unknown = set(config.layer_bits) - set(names)
    if unknown:
        raise CompactCLError(f"layer_bits names layers that are not quantized: {sorted(unknown)}; "
                             f"quantizable layers are {names}")
    return names


@torch.no_grad()
def round_side_tensors_(model: nn.Module) -> None:
    """Round biases and batch-norm tensors to fp16 values (kept as fp32) so they pack losslessly in 2 bytes."""
    for m in model.modules():
        tensors = [getattr(m, "bias", None)]
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            tensors += [m.weight, m.running_mean, m.running_var]
        for t in tensors:
            if isinstance(t, torch.Tensor) and t.is_floating_point():
                t.copy_(t.half().float())


@torch.no_grad()
def quantize_(model: nn.Module, config: QuantConfig) -> nn.Module:
    """Quantize the weights of the selected layers of ``model`` in place (and return it).

    Each weight is replaced by its dequantized value and ``module.weight_quant`` records the
    grid; the model stays a normal PyTorch model. Re-quantizing a layer starts from its
    current weights.
    """
    method = QUANT_METHODS.get(config.method)
    if method is None or not isinstance(config, method.config):
        raise CompactCLError(f"no quantization method registered for {type(config).__name__}; "
                             f"registered: {', '.join(list_methods())}")
    for name in select_layers(model, config):
        m = model.get_submodule(name)
        w = m.weight.detach().float().cpu()
        wq = method.fit(w, config, config.bits_for(name))
        new = wq.decode(wq.encode(w), w != 0)
        m.weight.copy_(new.to(m.weight.device, m.weight.dtype))
        set_weight_quant(m, wq)
    if config.fp16_side:
        round_side_tensors_(model)
    return model


# ---------------------------------------------------------------------------- activations (sim)
class ActivationFakeQuant:
    """Forward pre-hook that fake-quantizes a layer's input to int8 (simulation of the int8 runtime).

    A plain object (not a closure) so ``copy.deepcopy`` of the model copies it with its scale.
    """

    def __init__(self, scale: float, zero_point: int, qmin: int = 0, qmax: int = 255):
        self.scale, self.zero_point, self.qmin, self.qmax = float(scale), int(zero_point), qmin, qmax

    def __call__(self, module: nn.Module, inputs: tuple[torch.Tensor, ...]):
        x = inputs[0]
        return (torch.fake_quantize_per_tensor_affine(x, self.scale, self.zero_point, self.qmin, self.qmax),
                *inputs[1:])


@torch.no_grad()
def calibrate_activations_(model: nn.Module, x: torch.Tensor, method: str = "minmax", percentile: float = 99.99,
                           bits: int = 8, types: tuple[str, ...] = ("Conv2d", "Linear"),
                           batch_size: int = 256) -> dict[str, tuple[float, int]]:
    """Attach uint8 input fake-quant to every Conv2d/Linear, ranges from calibration images ``x``.

    ``method``: ``"minmax"`` (observed range) or ``"percentile"`` (clip the tails at
    ``percentile``, robust to outliers). Returns ``{layer: (scale, zero_point)}``.
    """
    if method not in ("minmax", "percentile"):
        raise CompactCLError(f"activation calibration {method!r} unknown; use 'minmax' or 'percentile'")
    remove_activation_quant_(model)
    kinds = tuple(LAYER_TYPES[t] for t in types)
    seen: dict[str, list[torch.Tensor]] = {}
    hooks = []
    for name, m in model.named_modules():
        if isinstance(m, kinds):
            hooks.append(m.register_forward_pre_hook(
                lambda mod, inp, name=name: seen.setdefault(name, []).append(inp[0].detach().flatten().cpu())))
    was_training = model.training
    model.eval()
    try:
        for i in range(0, len(x), batch_size):
            model(x[i: i + batch_size])
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    qmin, qmax = 0, 2 ** bits - 1
    out = {}
    for name, chunks in seen.items():
        v = torch.cat(chunks)
        if method == "percentile" and v.numel() > 16:
            sample = v[torch.randperm(v.numel(), generator=torch.Generator().manual_seed(0))[:1_000_000]]
            lo = float(torch.quantile(sample, 1 - percentile / 100))
            hi = float(torch.quantile(sample, percentile / 100))
        else:
            lo, hi = float(v.min()), float(v.max())
        lo, hi = min(lo, 0.0), max(hi, 0.0)
        scale = max((hi - lo) / (qmax - qmin), float(torch.finfo(torch.float32).eps))
        zp = int(min(max(qmin - round(lo / scale), qmin), qmax))
        hook = ActivationFakeQuant(scale, zp, qmin, qmax)
        model.get_submodule(name).register_forward_pre_hook(hook)
        out[name] = (scale, zp)
    return out


def remove_activation_quant_(model: nn.Module) -> None:
    """Remove the hooks :func:`calibrate_activations_` attached."""
    for m in model.modules():
        for key, hook in list(m._forward_pre_hooks.items()):
            if isinstance(hook, ActivationFakeQuant):
                del m._forward_pre_hooks[key]


def describe(model: nn.Module) -> list[dict[str, Any]]:
    """One row per quantized layer: name, method, bits, weights."""
    return [{"layer": name, "method": wq.method, "bits": wq.bits,
             "weights": model.get_submodule(name).weight.numel()} for name, wq in quantized_layers(model).items()]

