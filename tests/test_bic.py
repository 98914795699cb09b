"""BiC on the 3-task digits stream and its bias-correction math against references (its exact resume is
tested with the other budget learners', tests/test_budget_learners.py)."""

import pytest
import torch
import torch.nn.functional as F

from compactcl.cli.main import main
from compactcl.data import TensorData
from compactcl.learners.bic import fit_bias_correction, fold_bias_correction_, hold_out_per_class
from compactcl.models import IncrementalNet

from test_learners import run_stream
from test_reliability import FAST_ARGS


def test_folding_the_correction_into_the_head_gives_the_corrected_logits():
    torch.manual_seed(1)
    net = IncrementalNet("cnn", 1, 8, 3, {"width": 4}).eval()
    net.grow(2)
    x = torch.randn(6, 1, 8, 8)
    before = net(x).detach()
    fold_bias_correction_(net.head, 3, 0.7, -1.25)
    after = net(x).detach()
    assert torch.equal(after[:, :3], before[:, :3])  # old classes untouched
    assert torch.allclose(after[:, 3:], 0.7 * before[:, 3:] - 1.25, atol=1e-5)


def test_fitted_alpha_beta_minimise_the_objective_on_a_grid():
    torch.manual_seed(2)
    n_old, y = 3, torch.randint(0, 5, (40,))
    z = torch.randn(40, 5) + 2.0 * F.one_hot(y, 5)  # informative but not separable logits
    z[:, n_old:] += 1.5  # new classes favoured, as after training on many new images
    ridge = 0.05

    def objective(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # (G,) candidates -> (G,) losses
        zz = z.double().expand(len(a), -1, -1).clone()  # (G, N, K)
        zz[:, :, n_old:] = a.view(-1, 1, 1) * zz[:, :, n_old:] + b.view(-1, 1, 1)
        ce = F.cross_entropy(zz.transpose(1, 2), y.expand(len(a), -1), reduction="none").mean(1)
        return ce + ridge * ((a - 1) ** 2 + b ** 2)

    alpha, beta = fit_bias_correction(z, y, n_old, ridge=ridge)
    ga, gb = torch.meshgrid(torch.arange(0, 101) / 50, torch.arange(-150, 51) / 50, indexing="ij")  # step 0.02
    losses = objective(ga.flatten().double(), gb.flatten().double())
    i = int(losses.argmin())
    fitted = float(objective(torch.tensor([alpha], dtype=torch.float64), torch.tensor([beta], dtype=torch.float64)))
    assert fitted <= float(losses[i]) + 1e-9  # at least as good as every grid point
    assert abs(alpha - float(ga.flatten()[i])) < 0.05 and abs(beta - float(gb.flatten()[i])) < 0.05
    assert beta < 0  # the favoured new classes are pushed down
    # without beta only alpha moves
    a_only, b_zero = fit_bias_correction(z, y, n_old, ridge=ridge, fit_beta=False)
    on_line = objective(torch.arange(0, 101).double() / 50, torch.zeros(101, dtype=torch.float64))
    fitted = objective(torch.tensor([a_only], dtype=torch.float64), torch.zeros(1, dtype=torch.float64))
    assert b_zero == 0.0 and float(fitted) <= float(on_line.min()) + 1e-9


def test_hold_out_takes_the_same_number_of_every_class():
    y = torch.tensor([0] * 5 + [1] * 3 + [4] * 7)
    data = TensorData(torch.arange(len(y)).float().view(-1, 1, 1, 1), y)
    train, held = hold_out_per_class(data, 2, torch.Generator().manual_seed(0))
    assert torch.bincount(held.y, minlength=5).tolist() == [2, 2, 0, 0, 2]
    ids = sorted(train.x.flatten().long().tolist() + held.x.flatten().long().tolist())
    assert ids == list(range(len(y)))  # a partition: nothing lost, nothing twice
    train, held = hold_out_per_class(data, 4, torch.Generator().manual_seed(0))
    assert torch.bincount(held.y, minlength=5).tolist() == [4, 2, 0, 0, 4]  # class 1 (3 images) keeps one
    assert torch.bincount(train.y, minlength=5).tolist() == [1, 1, 0, 0, 3]


def test_bic_keeps_old_tasks_where_icarl_forgets(digits):
    # at 2 epochs a task the head leans to the new classes; BiC's correction undoes it.
    # measured (mlp 64, 60 exemplars): bic .847/.873/.892, icarl .514/.296/.986 (72 test images a task)
    bic, _, state = run_stream(digits, "bic", epochs=2)
    icarl, _, _ = run_stream(digits, "icarl", epochs=2)
    assert sum(bic[:2]) / 2 > 0.75, bic
    assert sum(icarl[:2]) / 2 < 0.5, icarl
    assert bic[-1] >= 0.8, bic
    assert type(state.model) is IncrementalNet and state.model.num_classes == 6  # no extra layer kept


@pytest.mark.parametrize("bad", ["learner.bias_val_fraction=1.5", "learner.bias_ridge=-1"])
def test_bad_options_are_named(tmp_path, capsys, bad):
    assert main(["run", "--out", str(tmp_path / "r"), *FAST_ARGS, "--set", "learner.name=bic", "--set", bad]) == 2
    err = capsys.readouterr().err
    assert bad.split("=")[0].split(".")[1] in err and "Traceback" not in err
