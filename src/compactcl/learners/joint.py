"""Joint training on every task's data seen so far: the upper bound (it keeps everything)."""

from __future__ import annotations

from torch import nn

from ..data.datasets import TensorData
from ..data.stream import Task
from ..engine.losses import ce_loss
from .base import Learner, LearnerState, register_learner


@register_learner
class Joint(Learner):
    """Retrains on all data seen so far (``state.archive``), cross-entropy."""

    name = "joint"

    def fit_task(self, state: LearnerState, task: Task) -> LearnerState:
        state, _ = self.begin(state, task)
        state.archive = state.archive + [task.train]
        self.train_on(state, task, TensorData.cat(state.archive), ce_loss)
        return state

    def kept_data(self, state: LearnerState) -> TensorData | None:
        return TensorData.cat(state.archive) if state.archive else None  # everything it has seen

    def adopt_task(self, state: LearnerState, task: Task, model: nn.Module) -> LearnerState:
        state = super().adopt_task(state, task, model)
        state.archive = state.archive + [task.train]
        return state
