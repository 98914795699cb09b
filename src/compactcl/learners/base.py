"""Learner state and registry. A learner is ``fit_task(state, task) -> state``."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from ..data.datasets import TensorData
from ..data.memory import ExemplarMemory
from ..data.stream import Task
from ..errors import CompactCLError
from .loop import TrainConfig

__all__ = ["LearnerState", "Learner", "LEARNERS", "register_learner", "create_learner", "list_learners"]


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

    def means(self) -> dict[int, torch.Tensor] | None:
        return self.memory.means if self.classifier == "nme" and self.memory.means else None


class Learner:
    """Base class: subclasses implement :meth:`fit_task`. ``options`` are the recipe's learner keys."""

    name = "base"
    grows_branches = False  # True for DER: the model gains a backbone per task
    uses_memory = False
    distills = False  # True: begin() keeps a frozen copy of the previous model as teacher

    def __init__(self, temperature: float = 2.0, distill_weight: float = 1.0, nme: bool = False, **unknown: Any):
        if unknown:
            raise CompactCLError(f"learner {self.name!r} does not take option(s) {sorted(unknown)}; "
                                 "its options are temperature, distill_weight, nme")
        self.temperature = temperature
        self.distill_weight = distill_weight
        self.nme = nme

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

    @staticmethod
    def with_memory(state: LearnerState, data: TensorData) -> TensorData:
        mem = state.memory.data()
        return TensorData.cat([data, mem]) if mem is not None else data


LEARNERS: dict[str, type[Learner]] = {}


def register_learner(cls: type[Learner]) -> type[Learner]:
    LEARNERS[cls.name] = cls
    return cls


def list_learners() -> list[str]:
    return sorted(LEARNERS)


def create_learner(name: str, **options: Any) -> Learner:
    if name not in LEARNERS:
        raise CompactCLError(f"unknown learner {name!r}; choose one of {', '.join(list_learners())}")
    return LEARNERS[name](**options)


LearnerFactory = Callable[..., Learner]
