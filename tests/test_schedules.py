"""Multi-step learning-rate schedules and the first task's own schedule (PyCIL's protocol)."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from compactcl.data import TensorData
from compactcl.engine.loop import TrainConfig, TrainHooks, train
from compactcl.learners import learner_options


def _lrs(cfg: TrainConfig, n: int = 40, batch: int = 10) -> list[float]:
    """The learning rate of every optimizer step, read from inside the loop."""
    model = torch.nn.Linear(4, 2)
    data = TensorData(torch.randn(n, 4), torch.randint(0, 2, (n,)))

    def loss(m, x, y):
        return torch.nn.functional.cross_entropy(m(x), y)

    before: list[float] = []
    orig = torch.optim.SGD.step

    def spy(self, *a, **k):
        before.append(self.param_groups[0]["lr"])
        return orig(self, *a, **k)

    torch.optim.SGD.step = spy
    try:
        train(model, data, loss, cfg)
    finally:
        torch.optim.SGD.step = orig
    return before


def test_multistep_multiplies_by_gamma_at_each_epoch_milestone() -> None:
    lrs = _lrs(TrainConfig(epochs=6, batch_size=10, lr=0.1, schedule="multistep", milestones=(2, 5), gamma=0.1))
    per_epoch = [lrs[e * 4] for e in range(6)]  # 4 steps an epoch, constant within an epoch
    assert per_epoch == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.01, 0.001])
    assert all(lrs[e * 4] == lrs[e * 4 + 3] for e in range(6))


def test_first_task_schedule_applies_to_task_zero_only() -> None:
    opts = learner_options({"name": "icarl", "epochs": 3, "lr": 0.1, "schedule": "multistep", "milestones": [2],
                            "weight_decay": 2e-4, "first_epochs": 5, "first_lr": 0.5, "first_milestones": [1, 3],
                            "first_weight_decay": 5e-4})
    cfg = opts.train_config()
    first, later = cfg.for_task(0), cfg.for_task(1)
    assert (first.epochs, first.lr, first.milestones, first.weight_decay) == (5, 0.5, (1, 3), 5e-4)
    assert (later.epochs, later.lr, later.milestones, later.weight_decay) == (3, 0.1, (2,), 2e-4)
    lrs = _lrs(first)  # batch 32 of 40 images: 2 steps an epoch
    assert len(lrs) == 5 * 2 and lrs[-1] == pytest.approx(0.005) and lrs[1] == 0.5 and lrs[2] == pytest.approx(0.05)
    assert learner_options({"name": "icarl"}).train_config().first is None  # unset: every task alike


def test_learner_trains_task_zero_for_first_epochs(digits) -> None:
    from compactcl.data import ExemplarMemory, class_incremental
    from compactcl.learners import create_learner
    from compactcl.learners.base import LearnerState

    epochs: list[int] = []
    stream = class_incremental(digits, tasks=2, classes_per_task=2, all_classes=False)
    learner = create_learner("replay", epochs=1, first_epochs=3)
    state = LearnerState(model=learner.build_model("cnn", 1, 8, {"width": 4}), memory=ExemplarMemory(size=20),
                         train=learner.options.train_config(),
                         hooks=TrainHooks(end_epoch=lambda m, e, loss: epochs.append(e)))
    for task in stream:
        before = len(epochs)
        state = learner.fit_task(state, task)
        epochs.append(-(len(epochs) - before))  # marks how many epochs that task ran
    assert [e for e in epochs if e < 0] == [-3, -1]


@pytest.mark.parametrize("section, match", [
    ({"milestones": [5]}, "needs schedule: multistep"),
    ({"schedule": "multistep", "milestones": [5, 3]}, "increasing"),
    ({"schedule": "multistep", "first_milestones": [0]}, "increasing"),
    ({"lr_decay": 0}, "greater than 0"),
])
def test_schedule_options_are_checked(section: dict, match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        learner_options({"name": "icarl", **section})
