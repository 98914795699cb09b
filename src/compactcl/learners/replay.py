"""Experience replay: new data + exemplars, cross-entropy only."""

from __future__ import annotations

from torch import nn

from ..data.stream import Task
from ..engine.loop import LossFn
from ..engine.losses import ce_loss
from .base import Learner, LearnerOptions, LearnerState, register_learner


class ReplayOptions(LearnerOptions):
    nme: bool = False  # classify by the nearest mean of exemplars instead of the head


@register_learner
class Replay(Learner):
    """Trains on the new task + the exemplar memory; herding picks the exemplars after each task."""

    name = "replay"
    Options = ReplayOptions
    uses_memory = True

    def loss(self, old: nn.Module | None) -> LossFn:
        return ce_loss

    def fit_task(self, state: LearnerState, task: Task) -> LearnerState:
        state, old = self.begin(state, task)
        self.train_on(state, task, self.with_memory(state, task.train), self.loss(old))
        state.memory.update(state.model, task.train)
        state.classifier = "nme" if self.options.nme else "logits"
        return state

    def adopt_task(self, state: LearnerState, task: Task, model: nn.Module) -> LearnerState:
        state = super().adopt_task(state, task, model)
        state.classifier = "nme" if self.options.nme else "logits"
        return state
