"""What every learner shares: its typed options, its state, its registry.

A learner is one file in this package: a :class:`Learner` subclass with a ``name``, an
``Options`` model (the recipe's ``learner:`` keys it takes, validated with the key's name) and
``fit_task(state, task) -> state``. Files here are found and imported by
``compactcl.learners``, so adding one needs no other change. See the README, "Adding a learner".
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from torch import nn

from ..data.datasets import TensorData
from ..data.memory import ExemplarMemory
from ..data.stream import Task
from ..engine.loop import LossFn, TrainConfig, TrainHooks, train
from ..errors import CompactCLError
from ..models.external import from_module, is_external_name
from ..models.net import IncrementalNet
from ..models.protocol import IncrementalModel

__all__ = ["LearnerOptions", "DistillOptions", "LearnerState", "Learner", "LEARNERS", "register_learner",
           "create_learner", "list_learners", "learner_class", "learner_options", "pretrained_state", "shift_task"]


class LearnerOptions(BaseModel):
    """The training keys every learner takes; a learner's ``Options`` subclass adds its own."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    name: str = "icarl"
    epochs: int = Field(10, ge=0)
    iterations: int | None = Field(None, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(0.05, gt=0)
    optimizer: Literal["sgd", "adam"] = "sgd"
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    schedule: Literal["cosine", "constant", "multistep"] = "cosine"
    milestones: list[int] = Field(default_factory=list)  # multistep: epochs at which lr *= lr_decay
    lr_decay: float = Field(0.1, gt=0, le=1)  # PyCIL's lrate_decay (torch's MultiStepLR gamma)
    # The first task's own schedule (PyCIL: 200 epochs, milestones 60/120/170, wd 5e-4); unset = as above
    first_epochs: int | None = Field(None, ge=0)
    first_lr: float | None = Field(None, gt=0)
    first_weight_decay: float | None = Field(None, ge=0)
    first_milestones: list[int] | None = None
    augment: bool = False  # random crop (pad augment_padding) + horizontal flip of training batches
    augment_padding: int = Field(2, ge=0, le=16)
    bf16: bool = False  # autocast forward + loss to bfloat16 (CUDA; works on CPU, usually slower there)
    channels_last: bool | None = None  # None: on for conv models on CUDA, off on CPU
    compile: bool = False  # torch.compile the training step

    @model_validator(mode="after")
    def _milestones_fit(self) -> "LearnerOptions":
        for key in ("milestones", "first_milestones"):
            ms = getattr(self, key) or []
            if ms and self.schedule != "multistep":
                raise ValueError(f"{key} needs schedule: multistep (the schedule is {self.schedule!r})")
            if any(m < 1 for m in ms) or ms != sorted(set(ms)):
                raise ValueError(f"{key} must be increasing epoch numbers >= 1, got {ms}")
        return self

    def train_config(self, device: str = "cpu", seed: int = 0, progress: bool = False) -> TrainConfig:
        cfg = TrainConfig(epochs=self.epochs, iterations=self.iterations, batch_size=self.batch_size, lr=self.lr,
                          optimizer=self.optimizer, momentum=self.momentum, weight_decay=self.weight_decay,
                          schedule=self.schedule, milestones=tuple(self.milestones), gamma=self.lr_decay,
                          device=device, seed=seed, progress=progress, augment=self.augment,
                          augment_padding=self.augment_padding, bf16=self.bf16, channels_last=self.channels_last,
                          compile=self.compile)
        firsts = (self.first_epochs, self.first_lr, self.first_weight_decay, self.first_milestones)
        if any(v is not None for v in firsts):
            cfg.first = dataclasses.replace(
                cfg, epochs=cfg.epochs if self.first_epochs is None else self.first_epochs,
                iterations=None if self.first_epochs is not None else cfg.iterations,
                lr=self.first_lr or cfg.lr,
                weight_decay=cfg.weight_decay if self.first_weight_decay is None else self.first_weight_decay,
                milestones=cfg.milestones if self.first_milestones is None else tuple(self.first_milestones))
        return cfg


class DistillOptions(LearnerOptions):
    """Keys of the learners that distil the previous model (LwF, iCaRL)."""

    temperature: float = Field(2.0, gt=0)
    distill_weight: float = Field(1.0, ge=0)


@dataclass
class LearnerState:
    """Everything a learner carries from one task to the next."""

    model: nn.Module
    memory: ExemplarMemory
    train: TrainConfig
    task_index: int = -1
    seen_labels: list[int] = field(default_factory=list)
    archive: list[TensorData] = field(default_factory=list)  # all data seen (the joint upper bound only)
    classifier: str = "logits"  # or "nme": nearest mean of exemplars (iCaRL)
    hooks: TrainHooks | None = None  # the run's own (e.g. TensorBoard per epoch), after the learner's

    def means(self) -> dict[int, torch.Tensor] | None:
        return self.memory.means if self.classifier == "nme" and self.memory.means else None


class Learner:
    """Base class: subclasses set ``name`` and ``Options`` and implement :meth:`fit_task`."""

    name: ClassVar[str] = "base"
    Options: ClassVar[type[LearnerOptions]] = LearnerOptions
    network: ClassVar[type[nn.Module]] = IncrementalNet  # the model it grows (DER: one branch per task)
    uses_memory: ClassVar[bool] = False
    distills: ClassVar[bool] = False  # True: begin() keeps a frozen copy of the previous model as teacher

    def __init__(self, options: LearnerOptions | None = None):
        self.options = options if options is not None else self.Options(name=self.name)

    # ------------------------------------------------------------------------------ the model
    # why this learner needs a built-in backbone (it copies or splits it); None: any model will do
    builtin_backbone_reason: ClassVar[str | None] = None

    @classmethod
    def check_backbone(cls, backbone: str) -> None:
        """Raise ``ValueError`` (with the fix) for a backbone this learner cannot grow; recipes are
        checked with it before anything runs."""
        if cls.builtin_backbone_reason and is_external_name(backbone):
            raise ValueError(f"learner {cls.name!r} {cls.builtin_backbone_reason} and needs a built-in backbone "
                             f"(got {backbone!r}); use icarl/replay/lwf/wa with an external model")

    @classmethod
    def build_model(cls, backbone: str, in_channels: int, input_size: int, options: dict[str, Any]) -> nn.Module:
        """The untrained working model (no classes yet) on a built-in backbone."""
        return cls.network(backbone, in_channels, input_size, 0, options)

    # ------------------------------------------------------------------------------ training
    def fit_task(self, state: LearnerState, task: Task) -> LearnerState:
        raise NotImplementedError

    def adopt_task(self, state: LearnerState, task: Task, model: nn.Module) -> LearnerState:
        """Take ``model``, which already learnt ``task`` (a pretrained first task), instead of training:
        the state ends as :meth:`fit_task` would leave it (labels seen, exemplars chosen)."""
        if state.seen_labels:
            raise CompactCLError("a pretrained model can only stand for the first task")
        if model.num_classes != len(task.labels):
            raise CompactCLError(f"the pretrained model has {model.num_classes} outputs but the first task has "
                                 f"{len(task.labels)} classes; set data.first_task_classes: {model.num_classes}")
        state = copy.copy(state)
        state.model = model
        state.task_index = task.index
        state.seen_labels = list(task.labels)
        if self.uses_memory:
            state.memory.update(model, task.train)
        return state

    # helpers shared by the learners -----------------------------------------------------------
    def begin(self, state: LearnerState, task: Task) -> tuple[LearnerState, nn.Module | None]:
        """Freeze a copy of the current model as teacher (learners that distil), grow the head;
        return (new state, teacher or None)."""
        old = None
        if state.seen_labels and self.distills:
            old = copy.deepcopy(state.model).eval()
            old.requires_grad_(False)
        model = state.model
        model.grow(len(task.labels))
        state = copy.copy(state)
        state.model = model
        state.task_index = task.index
        state.seen_labels = state.seen_labels + list(task.labels)
        return state, old

    def kept_data(self, state: LearnerState) -> TensorData | None:
        """The data this learner keeps after a task — all a deployed model may train on besides the new
        task's: its exemplars when it has a memory; None when it keeps nothing of past tasks."""
        return state.memory.data() if self.uses_memory else None

    @staticmethod
    def with_memory(state: LearnerState, data: TensorData) -> TensorData:
        mem = state.memory.data()
        return TensorData.cat([data, mem]) if mem is not None else data

    @staticmethod
    def train_on(state: LearnerState, task: Task, data: TensorData, loss: LossFn,
                 hooks: TrainHooks | None = None) -> list[float]:
        """Train the working model on ``data`` with the one loop: a different, reproducible shuffle
        per task; the learner's hooks first, then the run's."""
        cfg = copy.copy(state.train.for_task(task.index))
        cfg.seed = state.train.seed + 7919 * task.index
        both = (hooks or TrainHooks()).then(state.hooks)
        return train(state.model, data, loss, cfg, desc=f"task {task.index}", hooks=both)


LEARNERS: dict[str, type[Learner]] = {}


def register_learner(cls: type[Learner]) -> type[Learner]:
    LEARNERS[cls.name] = cls
    return cls


def list_learners() -> list[str]:
    return sorted(LEARNERS)


def learner_class(name: str) -> type[Learner]:
    if name not in LEARNERS:
        raise CompactCLError(f"unknown learner {name!r}; choose one of {', '.join(list_learners())}")
    return LEARNERS[name]


def learner_options(section: dict[str, Any] | LearnerOptions) -> LearnerOptions:
    """The recipe's ``learner:`` section validated by the options of the learner it names
    (pydantic's ValidationError names the key)."""
    if isinstance(section, LearnerOptions):
        return section
    name = section.get("name", LearnerOptions.model_fields["name"].default)
    if name not in LEARNERS:
        raise ValueError(f"unknown learner {name!r}; allowed: {', '.join(list_learners())}")
    return LEARNERS[name].Options.model_validate({**section, "name": name})


def create_learner(name: str, **options: Any) -> Learner:
    cls = learner_class(name)
    try:
        return cls(cls.Options(name=name, **options))
    except ValidationError as e:
        wrong = "; ".join(f"does not take option {'.'.join(map(str, err['loc']))!r}" if err["type"] == "extra_forbidden"
                          else f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        raise CompactCLError(f"learner {name!r} {wrong}; its options are "
                             f"{', '.join(sorted(set(cls.Options.model_fields) - {'name'}))}") from None


# --- start from a pretrained model -----------------------------------------------------------


def pretrained_state(model: nn.Module, known_classes: int | None = None, memory: Any = None, train: Any = None,
                     old_data: Any = None) -> Any:
    """A :class:`LearnerState` in which task 0 is what ``model`` already knows.

    The head's outputs ``0..known_classes-1`` count as seen labels, so a learner's ``fit_task``
    on the next task (labels from ``known_classes`` on; see :func:`shift_task`) grows the head
    and distils from the pretrained model. ``old_data`` (TensorData of old classes, labels
    ``0..known-1``), if you have some, fills the exemplar memory for replay learners.
    Learners grow and train the model in place: pass ``copy.deepcopy(model)`` to keep the original.
    """
    model = model if isinstance(model, IncrementalModel) else from_module(model)
    known = model.num_classes if known_classes is None else int(known_classes)
    if known != model.num_classes:
        raise CompactCLError(f"known_classes={known} but the model's head has {model.num_classes} outputs; "
                             "the head's outputs are the known classes")
    memory = memory if memory is not None else ExemplarMemory(size=0)
    if old_data is not None and memory.size:
        memory.update(model, old_data)
    return LearnerState(model=model, memory=memory, train=train or TrainConfig(), task_index=0,
                        seen_labels=list(range(known)))


def shift_task(task: Any, known_classes: int, index_offset: int = 1) -> Any:
    """The same task with labels moved past the ``known_classes`` of a pretrained head.

    Why: streams number their classes from 0; after a pretrained model, new classes must take
    the head outputs after the known ones, and task 0 is the pretrained model.
    """
    def move(d: Any) -> Any:
        return dataclasses.replace(d, y=d.y + known_classes)

    return dataclasses.replace(task, index=task.index + index_offset, labels=[label + known_classes for label in task.labels],
                               train=move(task.train), val=move(task.val), test=move(task.test))
