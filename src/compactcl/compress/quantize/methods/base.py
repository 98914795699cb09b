"""What a quantization method is: one class, registered by name, that owns everything about its grid.

A method (``"linear"``, ``"log"``, ``"kmeans"``, or yours) knows its config dataclass, the
fewest bits it supports, which recipe/CLI options it takes, how to fit a grid to a weight
(:meth:`QuantMethod.fit`), how codes are made and read back (``encode``/``decode``), how
QAT trains it, and what it writes into the ``.ccl`` header and blobs. Nobody else switches
on the method's name: :class:`~compactcl.compress.quantize.state.WeightQuant`, ``quantize_``,
``qat_``, the artifact, the recipe and the CLI all ask the registry.

>>> get_method("kmeans").min_bits
1
>>> list_methods()
['kmeans', 'linear', 'log']
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Mapping, Protocol

import numpy as np
import torch
from torch import nn

from ....errors import CompactCLError

if TYPE_CHECKING:
    from ..onnx_graph import DecodeGraph

__all__ = ["QuantConfig", "QuantMethod", "QUANT_METHODS", "register_method", "get_method", "list_methods",
           "BlobWriter", "BlobReader", "LAYER_TYPES", "WeightQuant", "StraightThrough", "is_fp16", "fp16_values"]

LAYER_TYPES = {"Conv2d": nn.Conv2d, "Linear": nn.Linear}


@dataclass(frozen=True)
class QuantConfig:
    """Fields every scheme shares: which layers, how many bits, what else is rounded."""

    bits: int = 8
    types: tuple[str, ...] = ("Conv2d", "Linear")
    include: tuple[str, ...] = ()  # fnmatch patterns on module names; empty = all
    exclude: tuple[str, ...] = ()
    skip_head: bool = False
    layer_bits: dict[str, int] = field(default_factory=dict)  # mixed precision: module name -> bits
    # biases and batch-norm tensors rounded to fp16 so the artifact stores them in 2 bytes, losslessly
    fp16_side: bool = True
    version: int = 1
    method = "base"  # the registry name of the QuantMethod this config is for

    @property
    def min_bits(self) -> int:
        # the method owns its bit range; a config no method claims keeps the common floor of 2
        m = QUANT_METHODS.get(self.method)
        return m.min_bits if m is not None else 2

    def __post_init__(self) -> None:
        object.__setattr__(self, "types", tuple(self.types))
        object.__setattr__(self, "include", tuple(self.include))
        object.__setattr__(self, "exclude", tuple(self.exclude))
        object.__setattr__(self, "layer_bits", dict(self.layer_bits))
        for b in [self.bits, *self.layer_bits.values()]:
            if not isinstance(b, int) or not self.min_bits <= b <= 8:
                raise CompactCLError(f"{type(self).__name__}: bits must be an integer in {self.min_bits}..8, "
                                     f"got {b!r}; pick e.g. bits=8 or bits=4")
        unknown = [t for t in self.types if t not in LAYER_TYPES]
        if unknown:
            raise CompactCLError(f"{type(self).__name__}: unknown layer types {unknown}; use {sorted(LAYER_TYPES)}")

    def bits_for(self, name: str) -> int:
        return int(self.layer_bits.get(name, self.bits))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["method"] = self.method
        return d


class BlobWriter(Protocol):
    """The artifact's writer: ``put("u8" | "f16" | "f32", array)`` appends to that flat blob."""

    def put(self, blob: str, a: np.ndarray) -> None: ...


class BlobReader(Protocol):
    """The artifact's reader: ``take(blob, n)`` returns the next ``n`` values of that blob."""

    source: str

    def take(self, blob: str, n: int) -> np.ndarray: ...


class QuantMethod(ABC):
    """One quantization method. Subclass, fill in the class attributes and the abstract methods,
    decorate with :func:`register_method`; ``quantize_``, ``qat_``, search, the ``.ccl`` artifact,
    recipes (``quantize: {method: NAME}``) and ``compactcl quantize --method NAME`` then accept it.

    ``encode``/``decode`` work on CPU float32 weights; codes are unsigned, ``< 2**bits``, one per
    weight (the artifact bit-packs them and stores pruned zeros sparsely on its own).
    """

    name: ClassVar[str]
    config: ClassVar[type[QuantConfig]]
    min_bits: ClassVar[int] = 2
    options: ClassVar[tuple[str, ...]] = ()  # config fields a recipe step or the CLI may set, e.g. per_channel

    # ----------------------------------------------------------------------------- configs
    def make_config(self, bits: int, **kwargs: Any) -> QuantConfig:
        """This method's config at ``bits`` (``kwargs``: any config field)."""
        return self.config(bits=bits, **kwargs)

    def accepted(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """The subset of recipe/CLI ``options`` this method takes (the rest do not apply to it)."""
        return {k: v for k, v in options.items() if k in self.options}

    # ------------------------------------------------------------------------------- grid
    @abstractmethod
    def fit(self, w: torch.Tensor, cfg: QuantConfig, bits: int) -> "WeightQuant":
        """The grid of ``bits`` bits that ``cfg`` asks for, fitted to the float32 CPU weight ``w``."""

    @abstractmethod
    def encode(self, wq: "WeightQuant", w: torch.Tensor) -> torch.Tensor:
        """Codes (int64, shape of ``w``) of the nearest grid points of the CPU float32 weights ``w``."""

    @abstractmethod
    def decode(self, wq: "WeightQuant", codes: torch.Tensor) -> torch.Tensor:
        """Float32 weights of ``codes`` (no mask: :meth:`WeightQuant.decode` applies it)."""

    def fake(self, wq: "WeightQuant", w: torch.Tensor) -> torch.Tensor:
        """``w`` snapped to the grid, on ``w``'s device (QAT's forward pass)."""
        return wq.decode(wq.encode(w)).to(w.device)

    def on_grid(self, wq: "WeightQuant", w: torch.Tensor) -> bool:
        """True when the CPU float32 ``w`` decodes back from its codes exactly (zeros may be carried by a mask)."""
        return torch.equal(wq.decode(wq.encode(w), w != 0), w)

    def dequantize(self, wq: "WeightQuant", codes: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Float32 weights the deployed model uses (pruned positions outside ``mask`` are 0)."""
        w = self.decode(wq, codes)
        return torch.where(mask, w, torch.zeros(())) if mask is not None else w

    def onnx_weight(self, wq: "WeightQuant", weight: torch.Tensor) -> torch.Tensor:
        """The dense float weight the in-graph decode must reproduce (and a dense fp32 export holds)."""
        w = weight.detach().float().cpu()
        return self.dequantize(wq, self.encode(wq, w), w != 0)

    # ------------------------------------------------------------------------------- ONNX
    def onnx_table(self, wq: "WeightQuant", channels: int) -> np.ndarray:
        """This grid as a codebook: float32 ``(2**bits,)``, or ``(channels, 2**bits)`` per output channel —
        every value a code can decode to (default: :meth:`decode` of every code)."""
        k = torch.arange(2 ** wq.bits, dtype=torch.int64)
        grid = k if wq.axis is None else k.expand(channels, -1).contiguous()
        return self.decode(wq, grid).numpy().astype(np.float32)

    def onnx_decode(self, wq: "WeightQuant", codes: torch.Tensor, graph: "DecodeGraph") -> str:
        """Add to ``graph`` the ops that turn this layer's ``codes`` (int64, the weight's shape) into
        float32 weights equal to :meth:`decode`; return the output's name. Default: the codebook path,
        bit-packed codes -> ``Gather`` in :meth:`onnx_table`. A method with a cheaper form overrides it."""
        return graph.lookup(self.onnx_table(wq, int(codes.shape[0])), codes.numpy(), wq.bits, wq.axis)

    def onnx_weight_decode(self, wq: "WeightQuant", weight: torch.Tensor, graph: "DecodeGraph") -> str:
        """The in-graph decode of ``weight`` (on the grid): :meth:`onnx_decode` of its codes, plus the
        pruned zeros (a 1-bit mask) when some zero weights have codes that decode to non-zero."""
        w = weight.detach().float().cpu()
        codes = self.encode(wq, w)
        out = self.onnx_decode(wq, codes, graph)
        mask = w != 0
        if not torch.equal(self.decode(wq, codes), self.dequantize(wq, codes, mask)):
            zero = graph.const(np.zeros((), np.float32), key="zero_f32")
            out = graph.op("Where", [graph.mask(mask.numpy()), out, zero])
        return out

    # -------------------------------------------------------------------------------- QAT
    def qat_attach_(self, module: nn.Module, wq: "WeightQuant", start: torch.Tensor, mask: torch.Tensor) -> None:
        """Make ``module.weight`` trainable on the grid (default: straight-through latent weight from ``start``)."""
        from torch.nn.utils import parametrize

        with torch.no_grad():
            module.weight.copy_(start)
        parametrize.register_parametrization(module, "weight", StraightThrough(wq, mask))

    def qat_collect(self, wq: "WeightQuant", parametrization: nn.Module) -> None:
        """After training, before the parametrization goes: copy what it trained into ``wq`` (default: nothing)."""

    # --------------------------------------------------------------------------- artifact
    @abstractmethod
    def write_grid(self, wq: "WeightQuant", entry: dict[str, Any], wr: BlobWriter) -> None:
        """Write the grid's parameters after the codes: header keys into ``entry``, tensors via ``wr.put``.
        The bytes are the file format: change them only with a new artifact format version."""

    def grid_nbytes(self, numel: int, bits: int) -> int:
        """Bytes of a ``numel``-weight layer's grid at ``bits`` that change with ``bits`` (the bit search ranks
        lowering a layer by the bytes it saves). Default: 0 — scales or exponents cost the same at any width."""
        return 0

    def grid_values(self, entry: dict[str, Any], channels: int) -> dict[str, int]:
        """How many values :meth:`write_grid` puts in each blob (``u8``/``f16``/``f32``) for this header
        entry: a reader checks a file can hold them before decoding anything. Default: none."""
        return {}

    @abstractmethod
    def read_grid(self, entry: dict[str, Any], rd: BlobReader) -> "WeightQuant":
        """Read back what :meth:`write_grid` wrote (``entry`` also holds ``shape``, ``bits``, ``axis``)."""

    @staticmethod
    def channels(entry: dict[str, Any]) -> int:
        """Number of per-channel parameters of an artifact entry (1 when per tensor)."""
        axis = entry.get("axis")
        return int(entry["shape"][axis]) if axis is not None else 1


# ---------------------------------------------------------------------------------- fp16 grids
def is_fp16(t: torch.Tensor) -> bool:
    """True when every value of the float tensor ``t`` is exactly an fp16 value (stored in 2 bytes, losslessly)."""
    t = t.detach().float()
    return bool(torch.isfinite(t).all()) and torch.equal(t.half().float(), t)


def fp16_values(t: torch.Tensor) -> torch.Tensor:
    """``t`` (float32) rounded to fp16 values, so a grid is stored in 2 bytes a value — unless a non-zero value
    lies outside fp16's normal range (it would overflow or lose precision); then ``t`` as is. A grid
    fitted so moves each value by at most 2**-11 of itself, which the accuracy measured after
    quantizing includes."""
    t = t.detach().float()
    nonzero = t[t != 0].abs()
    if bool(torch.isfinite(t).all()) and bool(((nonzero >= 2.0 ** -14) & (nonzero <= 65504.0)).all()):
        return t.half().float()
    return t.clone()


# ------------------------------------------------------------------------------------ registry
QUANT_METHODS: dict[str, QuantMethod] = {}


def register_method(cls: type[QuantMethod]) -> type[QuantMethod]:
    """Class decorator: register one instance of ``cls`` under ``cls.name``."""
    if getattr(cls.config, "method", None) != cls.name:
        raise CompactCLError(f"{cls.__name__}: its config {cls.config.__name__} must say method = {cls.name!r}")
    QUANT_METHODS[cls.name] = cls()
    return cls


def get_method(name: str) -> QuantMethod:
    """The registered method called ``name``."""
    try:
        return QUANT_METHODS[name]
    except KeyError:
        raise CompactCLError(f"unknown quantization method {name!r}; choose one of {', '.join(list_methods())}") \
            from None


def list_methods() -> list[str]:
    return sorted(QUANT_METHODS)


@dataclass
class WeightQuant:
    """The grid one layer's weights live on: plain data; the registered method ``method`` gives it meaning.

    ``params`` and ``options`` are the method's own (each method's docstring lists them, e.g.
    a uniform grid's ``scale``/``zero_point``, a codebook). ``axis`` is 0 for per-output-channel
    parameters.
    """

    method: str  # a name in compactcl.compress.quantize.methods.list_methods()
    bits: int
    params: dict[str, torch.Tensor]
    axis: int | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def encode(self, w: torch.Tensor) -> torch.Tensor:
        """Unsigned codes (int64, shape of ``w``) of weights on this grid (nearest grid point otherwise)."""
        return self.quant_method.encode(self, w.detach().float().cpu())

    def decode(self, codes: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Float32 weights of ``codes``; outside ``mask`` (when given) the weight is 0."""
        return self.quant_method.dequantize(self, codes, mask)

    def fake(self, w: torch.Tensor) -> torch.Tensor:
        """Snap ``w`` to the grid (nearest point), keeping zeros zero. Used by QAT's forward pass."""
        return self.quant_method.fake(self, w)

    def on_grid(self, w: torch.Tensor) -> bool:
        """True when ``w`` decodes back from its codes exactly (zeros may be carried by a mask)."""
        return self.quant_method.on_grid(self, w.detach().float().cpu())

    @property
    def quant_method(self) -> QuantMethod:
        """The registered :class:`~compactcl.compress.quantize.methods.QuantMethod` that owns this grid."""
        return get_method(self.method)


class StraightThrough(nn.Module):
    """Parametrization: latent weight -> grid value in the forward pass, identity gradient."""

    def __init__(self, wq: "WeightQuant", mask: torch.Tensor):
        super().__init__()
        self.wq = wq
        self.register_buffer("mask", mask)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            snapped = self.wq.fake(latent.detach())
        # value is exactly ``snapped`` (latent - latent.detach() is 0.0); gradient is the identity
        return (snapped + (latent - latent.detach())) * self.mask
