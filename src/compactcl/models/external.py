"""Bring your own model: wrap any ``nn.Module`` classifier into compactcl's model interface.

A wrapped model behaves like :class:`~compactcl.models.net.IncrementalNet` for learners,
compressors and exporters: ``features(x) -> (B, D)``, ``head`` (the user's ``nn.Linear``),
``grow(n_new)``, ``num_classes`` and a JSON ``spec``.

Saving needs no pickle. The spec names a *factory*, an importable function
(``"package.module:function"``) that builds the architecture, plus JSON keyword arguments;
loading imports that function by name and calls it, then fills in the weights from
safetensors. Import by name is not unpickling: a file cannot carry code, it can only name a
function that is already installed, and compactcl calls only functions marked with
:func:`model_factory`, so a crafted file cannot make it call, say, ``os:system``.

>>> from compactcl.models.external import from_module
>>> net = from_module(my_resnet, head="fc", factory="mypkg.models:resnet")  # doctest: +SKIP
>>> net.grow(5); compactcl.models.save_checkpoint(net, "m.safetensors")  # doctest: +SKIP
"""

from __future__ import annotations

import ast
import copy
import importlib
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, ClassVar

import torch
from torch import nn

from ..errors import CompactCLError
from .protocol import empty_linear, grow_linear, register_model_kind

__all__ = ["ExternalNet", "from_module", "model_factory", "load_weights", "create_external", "is_external_name",
           "hub_model", "model_from_spec", "FACTORY_MARK"]

FACTORY_MARK = "__compactcl_model_factory__"
_HUBS = {"timm": "timm", "torchvision": "torchvision"}


def model_factory(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Mark ``fn`` as a model factory that compactcl may call when it loads a saved model.

    Why: loading imports a function named in the file; only marked functions are called, so a
    file cannot name an arbitrary installed function.

    >>> @model_factory
    ... def tiny(num_classes: int = 10) -> nn.Module:
    ...     return nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes))
    """
    setattr(fn, FACTORY_MARK, True)
    return fn


def _factory_path(factory: str | Callable[..., nn.Module]) -> str:
    """``"pkg.mod:function"`` for a callable or a string; checks that it resolves to a marked factory."""
    if callable(factory):
        module, qualname = getattr(factory, "__module__", None), getattr(factory, "__qualname__", "")
        if not module or "<locals>" in qualname or module == "__main__":
            raise CompactCLError(f"factory {factory!r} is not importable by name (defined in __main__ or inside a "
                                 "function); move it to a module and pass factory='package.module:function'")
        path = f"{module}:{qualname}"
    else:
        path = str(factory)
    _resolve_factory(path)
    return path


def _resolve_factory(path: str) -> Callable[..., nn.Module]:
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise CompactCLError(f"factory {path!r} must look like 'package.module:function'")
    if module_name not in sys.modules:  # importing runs the module's code: check the mark in its source first
        _check_declared_factory(module_name, attr, path)
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        raise CompactCLError(f"cannot import model factory {path!r} ({e}); install or add to PYTHONPATH the "
                             "package that defines it") from e
    if not callable(obj) or not getattr(obj, FACTORY_MARK, False):
        raise CompactCLError(f"{path!r} is not marked as a model factory; decorate it with "
                             "@compactcl.models.model_factory (compactcl only calls marked functions when it "
                             "loads a file, so a file cannot make it run arbitrary code)")
    return obj


MAX_FACTORY_SOURCE = 4 * 2**20  # bytes of a factory module's source read for the static check


def _find_module_source(module_name: str) -> Path:
    """The source file ``module_name`` would be imported from, found as the import system finds it
    but without executing anything (not even its parent packages' ``__init__``)."""
    parts = module_name.split(".")
    search: Any = None
    spec = None
    for i in range(len(parts)):
        name = ".".join(parts[: i + 1])
        if i < len(parts) - 1 and name in sys.modules:  # an imported parent: its code already ran
            search = getattr(sys.modules[name], "__path__", None)
            continue
        spec = None
        for finder in sys.meta_path:  # what importlib._bootstrap._find_spec does, minus the imports
            find = getattr(finder, "find_spec", None)
            if find is not None and (spec := find(name, search)) is not None:
                break
        if spec is None:
            raise CompactCLError(f"cannot find module {name!r} for model factory {module_name!r}; install it, or "
                                 "add its folder to PYTHONPATH")
        search = spec.submodule_search_locations
        if i < len(parts) - 1 and search is None:
            raise CompactCLError(f"{name!r} is not a package, so {module_name!r} cannot be imported")
    origin = getattr(spec, "origin", None)
    if not origin or not str(origin).endswith(".py") or not Path(origin).is_file():
        raise CompactCLError(f"module {module_name!r} has no Python source ({origin}); compactcl imports a model "
                             "factory only after reading @model_factory in its source, so it runs no code of "
                             "a module it cannot read first")
    return Path(origin)


def _decorated_as_factory(node: ast.AST) -> bool:
    def named(expr: ast.AST) -> bool:
        expr = expr.func if isinstance(expr, ast.Call) else expr
        return (isinstance(expr, ast.Name) and expr.id == "model_factory") or \
            (isinstance(expr, ast.Attribute) and expr.attr == "model_factory")

    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return any(named(d) for d in node.decorator_list)
    if isinstance(node, (ast.Assign, ast.AnnAssign)):  # f = model_factory(g)
        return node.value is not None and isinstance(node.value, ast.Call) and named(node.value)
    return False


def _defines(body: list[ast.stmt], name: str) -> ast.AST | None:
    for node in reversed(body):  # the last definition wins, as at run time
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == name:
            return node
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return node
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id == name:
            return node
    return None


def _check_declared_factory(module_name: str, attr: str, path: str) -> None:
    """Refuse a factory whose module source does not mark ``attr`` with ``@model_factory`` — read
    with :mod:`ast`, before the module is imported, so naming a module runs none of its code
    unless it declares a compactcl model factory of that name. (The import then runs the module
    and the real mark is checked again.)"""
    source = _find_module_source(module_name)
    try:
        if source.stat().st_size > MAX_FACTORY_SOURCE:
            raise CompactCLError(f"module {module_name!r} ({source}) is over {MAX_FACTORY_SOURCE >> 20} MiB of source")
        tree = ast.parse(source.read_bytes(), filename=str(source))
    except (SyntaxError, ValueError, OSError) as e:
        raise CompactCLError(f"cannot read module {module_name!r} ({source}) to check its factory: "
                             f"{type(e).__name__}") from None
    body: list[ast.stmt] = tree.body
    node: ast.AST | None = None
    for i, part in enumerate(attr.split(".")):
        node = _defines(body, part)
        if node is None:
            break
        body = node.body if isinstance(node, ast.ClassDef) else []
    if node is None or not _decorated_as_factory(node):
        raise CompactCLError(f"{path!r} is not marked as a model factory in {source} (compactcl reads the source "
                             "before importing it: a factory must be a function defined there with "
                             "@compactcl.models.model_factory, so a file or recipe cannot make compactcl import "
                             "and run an arbitrary module)")


def _find_head(module: nn.Module, head: str) -> nn.Linear:
    try:
        layer = module.get_submodule(head)
    except AttributeError as e:
        names = [n for n, m in module.named_modules() if isinstance(m, nn.Linear)]
        raise CompactCLError(f"the model has no submodule {head!r}; pass head= one of its linear layers: "
                             f"{names}") from e
    if not isinstance(layer, nn.Linear):
        raise CompactCLError(f"head {head!r} is a {type(layer).__name__}, not an nn.Linear; pass head= the name "
                             "of the final linear layer (e.g. 'fc' or 'classifier.1')")
    return layer


class ExternalNet(nn.Module):
    """A user classifier seen through compactcl's model interface.

    ``features`` returns the input of the head (captured by a forward hook, so a model whose
    ``forward`` does more after the head still gives the right features); ``forward`` is the
    user's own forward. The user module is kept as ``self.module``: state dict keys read
    ``module.<user key>``.
    """

    kind: ClassVar[str] = "external"
    grows_branches: ClassVar[bool] = False

    def __init__(self, module: nn.Module, head: str = "fc", factory: str | None = None,
                 factory_kwargs: dict[str, Any] | None = None, in_channels: int | None = None,
                 input_size: int | None = None):
        super().__init__()
        self.module = module
        self.head_name = head
        self.factory = factory
        self.factory_kwargs = dict(factory_kwargs or {})
        self.in_channels, self.input_size = in_channels, input_size
        _find_head(module, head)

    @property
    def head(self) -> nn.Linear:
        return _find_head(self.module, self.head_name)

    @head.setter
    def head(self, layer: nn.Linear) -> None:  # compressors replace the head (e.g. pruning its inputs)
        parent_name, _, leaf = self.head_name.rpartition(".")
        parent = self.module.get_submodule(parent_name) if parent_name else self.module
        setattr(parent, leaf, layer)

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "head":  # nn.Module.__setattr__ would register a new child instead of the setter
            type(self).head.fset(self, value)  # type: ignore[attr-defined]
        else:
            super().__setattr__(name, value)

    @property
    def num_classes(self) -> int:
        return self.head.out_features

    @property
    def spec(self) -> dict[str, Any]:
        if not self.factory:
            raise CompactCLError("this wrapped model has no factory, so a saved file could not rebuild it; pass "
                                 "factory='package.module:function' (a function marked @model_factory that builds "
                                 "the architecture) to from_module()")
        spec = {"kind": "external", "factory": self.factory, "factory_kwargs": self.factory_kwargs,
                "head": self.head_name, "num_classes": self.num_classes}
        if self.in_channels is not None:
            spec["in_channels"] = self.in_channels
        if self.input_size is not None:
            spec["input_size"] = self.input_size
        return spec

    def features(self, x: torch.Tensor) -> torch.Tensor:
        captured: list[torch.Tensor] = []
        hook = self.head.register_forward_hook(lambda _m, inputs, _out: captured.append(inputs[0]))
        try:
            self.module(x)
        finally:
            hook.remove()
        if not captured:
            raise CompactCLError(f"the model's forward never called its head {self.head_name!r}; pass head= the layer "
                                 "that produces the logits")
        return captured[-1].flatten(1)  # (B, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)  # (B, num_classes)

    def grow(self, n_new: int) -> None:
        """Add ``n_new`` outputs to the head; old rows are kept exactly."""
        old = self.head
        new = grow_linear(old, n_new)
        new.requires_grad_(old.weight.requires_grad)
        self.head = new

    def single_params(self) -> int:
        return sum(p.numel() for p in self.parameters())  # one backbone: a wrapped model never adds branches


def from_module(model: nn.Module, head: str = "fc", factory: str | Callable[..., nn.Module] | None = None,
                factory_kwargs: dict[str, Any] | None = None, in_channels: int | None = None,
                input_size: int | None = None) -> ExternalNet:
    """Wrap ``model`` (any classifier ending in an ``nn.Linear`` named ``head``) for compactcl.

    ``factory`` (``"pkg.mod:function"`` or the function itself, marked with :func:`model_factory`)
    with ``factory_kwargs`` rebuilds the architecture when the model is loaded; without it the
    model works but cannot be saved. ``in_channels``/``input_size`` are recorded when given
    (distillation students and exporters read them).
    """
    if isinstance(model, ExternalNet):
        return model
    path = _factory_path(factory) if factory is not None else None
    kwargs = dict(factory_kwargs or {})
    try:
        json.dumps(kwargs)
    except TypeError as e:
        raise CompactCLError(f"factory_kwargs must be JSON values (numbers, strings, lists, dicts): {e}") from e
    return ExternalNet(model, head, path, kwargs, in_channels, input_size)


def model_from_spec(spec: dict[str, Any]) -> ExternalNet:
    """Rebuild an (untrained) wrapped model from its spec: call the factory, size the head."""
    spec = copy.deepcopy(spec)
    spec.pop("kind", None)
    factory = _resolve_factory(spec["factory"])
    module = factory(**spec.get("factory_kwargs", {}))
    if not isinstance(module, nn.Module):
        raise CompactCLError(f"factory {spec['factory']!r} returned {type(module).__name__}, not an nn.Module")
    net = ExternalNet(module, spec.get("head", "fc"), spec["factory"], spec.get("factory_kwargs"),
                      spec.get("in_channels"), spec.get("input_size"))
    head, want = net.head, int(spec["num_classes"])
    if head.out_features != want:  # the factory builds the original head; the saved one may have grown
        net.head = nn.Linear(head.in_features, want, bias=head.bias is not None)
    return net


def load_weights(model: nn.Module, path: str | os.PathLike, strict: bool = True,
                 exclude_head: bool = False) -> nn.Module:
    """Load weights into ``model`` from safetensors or a PyTorch state dict, without unpickling objects.

    ``.pt``/``.pth``/``.bin`` files are read with ``torch.load(weights_only=True)``, which refuses
    arbitrary Python objects; a ``{"state_dict": ...}`` or ``{"model": ...}`` wrapper is unwrapped.
    Keys may be the user module's own (``conv1.weight``) or the wrapper's (``module.conv1.weight``).
    Layers whose saved weights are smaller (a pruned model) are resized first. ``exclude_head``
    (wrapped models) skips the head's weights: pretrained features for a head of your own classes.
    """
    from .checkpoint import conform_to

    path = Path(path)
    if not path.is_file():
        raise CompactCLError(f"no such weights file: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # safetensors and torch.load raise many types for a bad file
        raise CompactCLError(f"{path}: cannot read weights ({e}); pass a safetensors file or a state dict saved "
                             "with torch.save(model.state_dict(), path)") from e
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CompactCLError(f"{path}: not a state dict of tensors")
    target = model
    if isinstance(model, ExternalNet) and not any(k.startswith("module.") for k in state):
        target = model.module
    if exclude_head:
        if not isinstance(model, ExternalNet):
            raise CompactCLError("exclude_head needs a wrapped model (from_module / create_external)")
        prefix = model.head_name + "." if target is model.module else f"module.{model.head_name}."
        state = {k: v for k, v in state.items() if not k.startswith(prefix)}
    conform_to(target, state)
    missing, unexpected = target.load_state_dict(state, strict=False)
    if exclude_head:
        missing = [k for k in missing if not k.startswith(prefix)]
    if strict and (missing or unexpected):
        raise CompactCLError(f"{path}: weights do not fit the model (missing {missing[:5]}, unexpected "
                             f"{unexpected[:5]}); pass strict=False to load what matches")
    return model


# --- timm / torchvision ----------------------------------------------------------------------


def _import_hub(hub: str):
    try:
        return importlib.import_module(_HUBS[hub])
    except ImportError as e:
        raise CompactCLError(f"model '{hub}:...' needs the {hub} package: pip install {hub}"
                             + (" (a version built for your torch)" if hub == "torchvision" else "")) from e


def _head_path(module: nn.Module, layer: nn.Module | None) -> str:
    """Name of ``layer`` inside ``module``; the last nn.Linear when ``layer`` is None."""
    names = [n for n, m in module.named_modules() if (m is layer if layer is not None else isinstance(m, nn.Linear))]
    if not names:
        raise CompactCLError(f"{type(module).__name__} has no linear classifier head that compactcl can grow")
    return names[-1]


@model_factory
def hub_model(name: str, num_classes: int, in_channels: int = 3, pretrained: bool = False) -> nn.Module:
    """Build ``"timm:<model>"`` or ``"torchvision:<model>"`` with ``num_classes`` outputs."""
    hub, sep, arch = name.partition(":")
    if not sep or hub not in _HUBS or not arch:
        raise CompactCLError(f"model {name!r}: expected 'timm:<name>' or 'torchvision:<name>', e.g. 'timm:resnet18'")
    lib = _import_hub(hub)
    if hub == "timm":
        return lib.create_model(arch, pretrained=pretrained, num_classes=num_classes, in_chans=in_channels)
    if in_channels != 3:
        raise CompactCLError(f"torchvision models take 3-channel images; got in_channels={in_channels}. "
                             "Use data.options.channels: 3 or a timm model (in_chans is supported there)")
    model = lib.models.get_model(arch, weights="DEFAULT" if pretrained else None)
    path = _head_path(model, None)
    old = model.get_submodule(path)
    if old.out_features != num_classes:
        parent_name, _, leaf = path.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, leaf,
                nn.Linear(old.in_features, num_classes, bias=old.bias is not None))
    return model


def _call_with_supported(fn: Callable[..., nn.Module], kwargs: dict[str, Any],
                         extra: dict[str, Any]) -> tuple[nn.Module, dict[str, Any]]:
    """Call ``fn(**kwargs)`` plus those of ``extra`` (num_classes, in_channels, ...) its signature accepts."""
    import inspect

    params = inspect.signature(fn).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    full = {**{k: v for k, v in extra.items() if takes_any or k in params}, **kwargs}
    return fn(**full), full


def create_external(name: str, num_classes: int, in_channels: int = 3, pretrained: bool = False,
                    input_size: int | None = None, head: str | None = None,
                    options: dict[str, Any] | None = None) -> ExternalNet:
    """A saveable wrapped model from a name: ``"timm:resnet18"``, ``"torchvision:mobilenet_v2"`` or
    ``"module:package.module:factory"`` (a function marked :func:`model_factory`).

    ``module:`` factories get ``options`` as keyword arguments, plus ``num_classes``,
    ``in_channels`` and ``input_size`` where their signature takes them. The head is ``head``,
    else timm's ``get_classifier()``, else the last ``nn.Linear``. ``num_classes=0`` (a head
    before its first task, as the run loop starts) is allowed. Raises :class:`CompactCLError`
    saying what to ``pip install`` when timm or torchvision is missing.

    >>> net = create_external("timm:resnet18", num_classes=10)  # doctest: +SKIP
    """

    built = max(int(num_classes), 1)  # timm turns num_classes=0 into an Identity head: build one, empty it below
    hub, _, rest = name.partition(":")
    if hub == "module":
        path = _factory_path(rest)
        module, kwargs = _call_with_supported(_resolve_factory(path), dict(options or {}),
                                              {"num_classes": built, "in_channels": in_channels,
                                               "input_size": input_size})
    else:
        if options:
            raise CompactCLError(f"{name}: options {sorted(options)} are only for 'module:' factories")
        path, kwargs = f"{__name__}:hub_model", {"name": name, "num_classes": built, "in_channels": in_channels}
        module = hub_model(name, built, in_channels, pretrained)
    if not isinstance(module, nn.Module):
        raise CompactCLError(f"{name}: the factory returned {type(module).__name__}, not an nn.Module")
    if head is None:
        getter = getattr(module, "get_classifier", None)  # timm names its head; otherwise the last Linear
        head = _head_path(module, getter() if callable(getter) else None)
    net = ExternalNet(module, head, path, kwargs, in_channels, input_size)
    if num_classes == 0:
        net.head = empty_linear(net.head.in_features, 0)
    return net


def is_external_name(name: str) -> bool:
    """True for model names :func:`create_external` builds (``timm:``, ``torchvision:``, ``module:``)."""
    return name.partition(":")[0] in ("timm", "torchvision", "module") and ":" in name


# a factory is user code: it is not built on the meta device to check shapes first
register_model_kind(ExternalNet.kind, model_from_spec, meta_safe=False)
