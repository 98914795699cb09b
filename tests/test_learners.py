"""Every learner on a 3-task digits stream, a few epochs: bounded claims, seconds each."""

import pytest
import torch

from compactcl.data import ExemplarMemory, class_incremental
from compactcl.learners import LEARNERS, LearnerState, create_learner
from compactcl.engine import TrainConfig, accuracy
from compactcl.models import IncrementalNet


def run_stream(digits, name, epochs=6, **opts):
    torch.manual_seed(0)
    stream = class_incremental(digits, tasks=3, classes_per_task=2, seed=0, all_classes=False)
    model = LEARNERS[name].build_model("mlp", 1, 8, {"hidden": [64]})
    state = LearnerState(model, ExemplarMemory(60), TrainConfig(epochs=epochs, lr=0.05, batch_size=32))
    learner = create_learner(name, **opts)
    sizes = []
    for task in stream:
        state = learner.fit_task(state, task)
        sizes.append(sum(p.numel() for p in state.model.parameters()))
    accs = [accuracy(state.model, t.test, state.means()) for t in stream]
    return accs, sizes, state


@pytest.mark.parametrize("name", sorted(LEARNERS))
def test_every_learner_learns_the_last_task(digits, name):
    accs, sizes, state = run_stream(digits, name)
    assert state.model.num_classes == 6
    # measured 0.986-1.0 on its 72 test images (one error = 0.014); 0.93 leaves ~5 errors of margin for
    # float differences across machines, and a learner that fails to learn (chance is 1/6) falls far below
    assert accs[-1] >= 0.93, accs


def test_finetune_forgets_and_replay_learners_remember(digits):
    ft, _, _ = run_stream(digits, "finetune")
    icarl, _, _ = run_stream(digits, "icarl")
    joint, _, _ = run_stream(digits, "joint")
    assert sum(ft[:2]) / 2 < 0.3  # catastrophic forgetting of old tasks
    assert sum(icarl[:2]) / 2 > 0.8
    assert sum(joint) / 3 > 0.9


def test_der_grows_and_icarl_nme_classifies(digits):
    _, sizes, state = run_stream(digits, "der")
    assert sizes[0] < sizes[1] < sizes[2]
    assert state.model.aux_head is None  # dropped after each task
    accs, _, state = run_stream(digits, "icarl", nme=True)
    assert state.classifier == "nme" and sum(accs) / 3 > 0.8


def test_unknown_learner_and_option():
    from compactcl import CompactCLError

    with pytest.raises(CompactCLError, match="choose one of"):
        create_learner("ewc")
    with pytest.raises(CompactCLError, match="does not take"):
        create_learner("lwf", gamma=2)


def test_diverging_loss_names_the_step(digits):
    from compactcl import CompactCLError

    # step 0 starts from finite weights; its lr=1e30 update makes step 1 the first non-finite loss
    with pytest.raises(CompactCLError, match=r"^task 0: loss became (nan|-?inf) at epoch 0, step 1; lower the learning"):
        _diverge(digits)


@pytest.mark.parametrize("bad", ["nan", "inf"])
def test_windowed_check_names_the_steps_of_an_inf_or_nan_loss(digits, bad):
    # GPU / DDP check the loss sum once per window (one host sync): the error names the window's steps
    from compactcl import CompactCLError
    from compactcl.engine import train

    data = class_incremental(digits, tasks=1, classes_per_task=10, seed=0).tasks[0].train
    net, steps = IncrementalNet("mlp", 1, 8, 10, {"hidden": [8]}), iter(range(10 ** 6))

    def loss(m, x, y):  # only step 5's value is bad; its gradient stays finite, so later steps are finite
        out = torch.nn.functional.cross_entropy(m(x), y)
        return out + float(bad) if next(steps) == 5 else out

    with pytest.raises(CompactCLError, match=rf"^w: loss became {bad} at epoch 0, one of steps 4\.\.7; lower"):
        train(net, data, loss, TrainConfig(epochs=1, batch_size=32, nan_check_every=4), desc="w")


def _diverge(digits):
    stream = class_incremental(digits, tasks=1, classes_per_task=10, seed=0)
    state = LearnerState(IncrementalNet("mlp", 1, 8, 0, {"hidden": [32]}), ExemplarMemory(0),
                         TrainConfig(epochs=1, lr=1e30, batch_size=32, optimizer="sgd", momentum=0.0))
    create_learner("finetune").fit_task(state, stream.tasks[0])
