"""Plain fine-tuning on each new task: the lower bound (catastrophic forgetting)."""

from __future__ import annotations

from ..data.stream import Task
from ..engine.losses import ce_loss
from .base import Learner, LearnerState, register_learner


@register_learner
class Finetune(Learner):
    """Trains on the new task only, cross-entropy; keeps nothing of the past."""

    name = "finetune"

    def fit_task(self, state: LearnerState, task: Task) -> LearnerState:
        state, _ = self.begin(state, task)
        self.train_on(state, task, task.train, ce_loss)
        return state
