"""WA, Weight Aligning (Zhao et al., CVPR 2020, "Maintaining Discrimination and Fairness in Class
Incremental Learning"): iCaRL's replay + distillation, then the new classes' head rows are
rescaled so their mean norm equals the old classes'.

Why: trained on many new images and few exemplars, the head's new rows grow longer than the old
ones, so the logits lean towards new classes; one scalar per task removes that bias, no extra
data and no extra parameters. As in PyCIL, only the weight rows are scaled (the bias is kept) and
the paper's weight clipping (non-negative head weights during training) is left out.
"""

from __future__ import annotations

import torch
from torch import nn

from ..data.stream import Task
from .base import LearnerState, register_learner
from .icarl import ICaRL, ICaRLOptions

__all__ = ["WA", "align_weights_"]


@torch.no_grad()
def align_weights_(head: nn.Linear, n_old: int) -> float:
    """Scale rows ``n_old:`` of ``head.weight`` in place so their mean L2 norm equals that of rows
    ``:n_old``; return the factor gamma (1.0 when there are no old or no new rows).

    >>> h = nn.Linear(2, 3); _ = h.weight.data.copy_(torch.tensor([[3., 4], [0, 5], [0, 1]]))
    >>> align_weights_(h, 2), h.weight[2].norm().item()
    (5.0, 5.0)
    """
    w = head.weight
    if n_old <= 0 or n_old >= w.shape[0]:
        return 1.0
    norms = w.norm(dim=1)  # (num_classes,)
    gamma = float(norms[:n_old].mean() / norms[n_old:].mean())
    w[n_old:] *= gamma
    return gamma


@register_learner
class WA(ICaRL):
    """iCaRL's loss (CE + KD of the previous model) on new data + exemplars, then weight aligning."""

    name = "wa"
    Options = ICaRLOptions

    def fit_task(self, state: LearnerState, task: Task) -> LearnerState:
        n_old = len(state.seen_labels)
        state, old = self.begin(state, task)
        self.train_on(state, task, self.with_memory(state, task.train), self.loss(old))
        align_weights_(state.model.head, n_old)  # before herding: exemplars are picked on features, unaffected
        state.memory.update(state.model, task.train)
        state.classifier = "nme" if self.options.nme else "logits"
        return state
