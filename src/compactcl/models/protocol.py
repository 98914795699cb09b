"""The one interface learners and compressors use, and the registry of model kinds.

Every working model — the built-in single-backbone net, DER's growing net, a wrapped user
model — is an :class:`IncrementalModel`: ``features(x) -> (B, D)``, ``head`` (an ``nn.Linear``),
``forward(x) -> (B, num_classes)``, ``grow(n_new)``, ``spec`` (JSON that rebuilds it through
:func:`create_model`) and :meth:`~IncrementalModel.single_params`, the size of one non-grown
model (what byte budgets are a fraction of). Nothing outside ``models/`` probes for attributes.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Protocol, runtime_checkable

import torch
from torch import nn

__all__ = ["IncrementalModel", "ModelKind", "MODEL_KINDS", "register_model_kind", "list_model_kinds", "create_model",
           "grow_linear", "empty_linear", "widen_head", "head_params"]


@runtime_checkable
class IncrementalModel(Protocol):
    kind: ClassVar[str]  # the spec's "kind", the key of MODEL_KINDS
    grows_branches: ClassVar[bool]  # True when the model gains a backbone per task (DER)

    head: nn.Linear

    @property
    def num_classes(self) -> int: ...

    @property
    def spec(self) -> dict[str, Any]: ...

    def features(self, x: torch.Tensor) -> torch.Tensor: ...  # (B, D), the head's input

    def forward(self, x: torch.Tensor) -> torch.Tensor: ...  # (B, num_classes)

    def grow(self, n_new: int) -> None: ...  # n_new more classes; old outputs kept exactly

    def single_params(self) -> int:
        """Parameters of ONE backbone + a head over the classes seen: what a single, non-growing
        model of this kind would hold (DER's working model holds one backbone per task)."""
        ...


@dataclass(frozen=True)
class ModelKind:
    """How a saved spec of this kind becomes a model, and what a loader may check before building."""

    build: Callable[[dict[str, Any]], nn.Module]  # spec without "kind" -> untrained model
    # True: building on the meta device is side-effect free, so a loader checks shapes before allocating
    meta_safe: bool = True
    # (spec, saved state) -> a list of (spec key, count the file backs) that must agree, e.g. DER's branches
    saved_counts: Callable[[dict[str, Any], dict[str, torch.Tensor]], list[tuple[str, int]]] | None = None


MODEL_KINDS: dict[str, ModelKind] = {}


def register_model_kind(kind: str, builder: Callable[[dict[str, Any]], nn.Module], *, meta_safe: bool = True,
                        saved_counts: Callable[[dict[str, Any], dict[str, torch.Tensor]], list[tuple[str, int]]]
                        | None = None) -> None:
    MODEL_KINDS[kind] = ModelKind(builder, meta_safe, saved_counts)


def list_model_kinds() -> list[str]:
    return sorted(MODEL_KINDS)


def create_model(spec: dict[str, Any]) -> nn.Module:
    """Build an (untrained) model from its ``spec``."""
    spec = copy.deepcopy(spec)
    kind = spec.pop("kind", None)
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown model kind {kind!r}; expected one of {', '.join(list_model_kinds())}")
    return MODEL_KINDS[kind].build(spec)


def empty_linear(in_features: int, out_features: int) -> nn.Linear:
    """nn.Linear that may start with zero outputs (a head before its first task) without a warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Initializing zero-element tensors")
        return nn.Linear(in_features, out_features)


def grow_linear(layer: nn.Linear, n_new: int) -> nn.Linear:
    """A copy of ``layer`` with ``n_new`` more outputs; old rows are kept exactly."""
    grown = nn.Linear(layer.in_features, layer.out_features + n_new, bias=layer.bias is not None)
    grown = grown.to(layer.weight.device, layer.weight.dtype)
    with torch.no_grad():
        grown.weight[: layer.out_features] = layer.weight
        if layer.bias is not None:
            grown.bias[: layer.out_features] = layer.bias
    return grown


def widen_head(old: nn.Linear, new_features: int, n_new: int) -> nn.Linear:
    """The head of a model that gained a branch of ``new_features`` features and ``n_new`` classes:
    old classes read only the old features, with their weights kept exactly; new rows start fresh."""
    head = nn.Linear(old.in_features + new_features, old.out_features + n_new).to(old.weight.device)
    with torch.no_grad():
        head.weight.zero_()
        head.weight[: old.out_features, : old.in_features] = old.weight
        head.bias[: old.out_features] = old.bias
        nn.init.kaiming_uniform_(head.weight[old.out_features:], a=5 ** 0.5)
    return head


def head_params(in_features: int, num_classes: int) -> int:
    return in_features * num_classes + num_classes
