"""Student registry: ``create_student(name, teacher)`` builds a smaller compactcl model for distillation.

Why a registry: the deployed model's size is a recipe choice ("distil into a narrow CNN"),
and the tests loop over :func:`list_students` so a new student kind is tested for free.
A student is always a single-branch :class:`~compactcl.models.IncrementalNet` with the
teacher's input shape and class count; a grown ``DERNet`` teacher counts as its branch
backbone (its width is one branch's width).

>>> from compactcl.models import IncrementalNet
>>> teacher = IncrementalNet("cnn", 1, 8, 10, {"width": 32})
>>> create_student("narrow-cnn", teacher).spec["backbone_kwargs"]
{'width': 16}
"""

from __future__ import annotations

from typing import Any, Callable

from torch import nn

from ...errors import CompactCLError
from ...models.backbones import BACKBONES, list_backbones
from ...models.net import IncrementalNet

__all__ = ["create_student", "list_students", "register_student", "STUDENTS"]

# factory(teacher_spec, num_classes, **kw) -> student
StudentFactory = Callable[..., nn.Module]
STUDENTS: dict[str, StudentFactory] = {}
_DEFAULT_CNN_WIDTH = 32  # SmallCNN's default, used when the teacher is not a "cnn"


def register_student(name: str) -> Callable[[StudentFactory], StudentFactory]:
    def wrap(factory: StudentFactory) -> StudentFactory:
        STUDENTS[name] = factory
        return factory

    return wrap


def list_students() -> list[str]:
    """Every name :func:`create_student` accepts: the named recipes plus every backbone name."""
    return sorted(set(STUDENTS) | set(list_backbones()))


def _spec_of(teacher: nn.Module | dict[str, Any]) -> dict[str, Any]:
    spec = teacher if isinstance(teacher, dict) else getattr(teacher, "spec", None)
    if not isinstance(spec, dict) or not {"in_channels", "input_size"} <= set(spec):
        raise CompactCLError("create_student needs a compactcl model (with .spec) or its spec dict holding "
                             "in_channels and input_size; for another teacher pass its spec by hand, e.g. "
                             "{'in_channels': 1, 'input_size': 28, 'num_classes': 10}")
    return spec


def _net(spec: dict[str, Any], num_classes: int, backbone: str, backbone_kwargs: dict[str, Any]) -> IncrementalNet:
    return IncrementalNet(backbone, spec["in_channels"], spec["input_size"], num_classes, backbone_kwargs)


def create_student(name: str, teacher: nn.Module | dict[str, Any], num_classes: int | None = None,
                   **kwargs: Any) -> IncrementalNet:
    """Build student ``name`` for ``teacher`` (a compactcl model or its ``spec``).

    ``num_classes`` defaults to the teacher's; ``kwargs`` override the student's backbone
    options (``width=8``, ``width_mult=0.5``, ``hidden=[100, 100]``). Any backbone name from
    :func:`compactcl.models.list_backbones` works as a student name, with ``kwargs`` passed through.

    >>> create_student("mlp", {"in_channels": 1, "input_size": 8, "num_classes": 10}, hidden=[100, 100]).num_classes
    10
    """
    spec = _spec_of(teacher)
    if num_classes is None:
        num_classes = spec.get("num_classes")
        if not num_classes:
            raise CompactCLError("create_student: the teacher spec has no num_classes; pass num_classes=")
    if name in STUDENTS:
        return STUDENTS[name](spec, num_classes, **kwargs)
    if name in BACKBONES:
        return _net(spec, num_classes, name, kwargs)
    raise CompactCLError(f"unknown student {name!r}; choose one of {', '.join(list_students())}")


@register_student("narrow-cnn")
def narrow_cnn(spec: dict[str, Any], num_classes: int, width: int | None = None) -> IncrementalNet:
    """The small CNN at half the teacher's width (or ``width``): ~1/4 of the conv MACs."""
    if width is None:
        teacher_width = spec.get("backbone_kwargs", {}).get("width", _DEFAULT_CNN_WIDTH) \
            if spec.get("backbone") == "cnn" else _DEFAULT_CNN_WIDTH
        width = max(1, teacher_width // 2)
    return _net(spec, num_classes, "cnn", {"width": int(width)})


@register_student("mobilenetv2")
def small_mobilenetv2(spec: dict[str, Any], num_classes: int, width_mult: float = 0.5,
                      last_channels: int = 128) -> IncrementalNet:
    """A narrow MobileNetV2 (depthwise convolutions; few parameters, deployable on phones)."""
    return _net(spec, num_classes, "mobilenetv2", {"width_mult": width_mult, "last_channels": last_channels})


@register_student("same")
def same(spec: dict[str, Any], num_classes: int, **kwargs: Any) -> IncrementalNet:
    """The teacher's backbone and options (one branch of a DER teacher); ``kwargs`` override options."""
    if "backbone" not in spec:
        raise CompactCLError("student 'same' needs the teacher's backbone name in its spec; "
                             "pass a compactcl model or name the backbone as the student")
    return _net(spec, num_classes, spec["backbone"], {**spec.get("backbone_kwargs", {}), **kwargs})
