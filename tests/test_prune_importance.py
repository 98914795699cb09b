import pytest
import torch
from torch import nn

from compactcl.compress.prune import list_importances, score
from compactcl.compress.prune.importance import activation_mean
from compactcl.errors import CompactCLError


@pytest.mark.parametrize("shape", [(6, 3, 3, 3), (5, 7)])
def test_magnitude_scores_match_naive_loops(shape):
    w = torch.randn(shape)
    flat = w.reshape(shape[0], -1)
    for name in ("l1", "l2"):
        assert torch.equal(score(name, w), w.abs())
        naive = torch.tensor([sum(abs(float(v)) for v in flat[c]) if name == "l1"
                              else sum(float(v) ** 2 for v in flat[c]) ** 0.5 for c in range(shape[0])])
        assert torch.allclose(score(name, w, dim=0), naive, atol=1e-5)
    # dim=1 scores input channels: the same as scoring the transposed weight on dim 0
    assert torch.allclose(score("l1", w, dim=1), score("l1", w.transpose(0, 1), dim=0))


@pytest.mark.parametrize("shape", [(4, 2, 3, 3), (3, 5)])
def test_taylor_scores_match_naive_products(shape):
    w, g = torch.randn(shape), torch.randn(shape)
    per = score("taylor", w, g)
    wf, gf = w.flatten(), g.flatten()
    assert torch.allclose(per.flatten(), torch.tensor([abs(float(a * b)) for a, b in zip(wf, gf)]))
    per_channel = score("taylor", w, g, dim=0)
    naive = torch.tensor([sum(abs(float(a * b)) for a, b in zip(w[c].flatten(), g[c].flatten()))
                          for c in range(shape[0])])
    assert torch.allclose(per_channel, naive, atol=1e-5)


def test_taylor_without_gradients_names_the_fix():
    with pytest.raises(CompactCLError, match="gradients"):
        score("taylor", torch.randn(3, 3))


def test_taylor_estimates_the_loss_change_of_removing_a_weight():
    # For a loss linear in w the first-order estimate is exact: dL = -w * g when w -> 0.
    w = torch.randn(8, requires_grad=True)
    a = torch.randn(8)
    loss = (w * a).sum()
    loss.backward()
    s = score("taylor", w, w.grad)
    for i in range(8):
        w2 = w.detach().clone()
        w2[i] = 0
        assert abs(abs(float((w2 * a).sum() - loss.detach())) - float(s[i])) < 1e-5


def test_activation_mean_per_channel():
    a = torch.randn(4, 3, 5, 5)
    naive = torch.tensor([a[:, c].abs().sum() / a[:, c].numel() for c in range(3)])
    assert torch.allclose(activation_mean(a), naive, atol=1e-6)


def test_registry_lists_every_score_and_rejects_unknown():
    assert {"l1", "l2", "taylor"} <= set(list_importances())
    with pytest.raises(CompactCLError, match="choose one of"):
        score("nope", torch.ones(2))


def test_structured_group_score_keeps_the_strongest_hidden_units():
    """Our registry drives Torch-Pruning: the group score of a hidden unit is the mean of its
    row's L1 (producer) and its column's L1 (consumer), normalised; the lowest ones go."""
    from compactcl.compress.prune.structured import group_importance, prune_channels_

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 10)
            self.head = nn.Linear(10, 3)

        def forward(self, x):
            return self.head(torch.relu(self.fc(x.flatten(1))))

    net = Tiny()
    naive = (net.fc.weight.abs().sum(1) + net.head.weight.abs().sum(0)) / 2
    keep = set(naive.argsort(descending=True)[:7].tolist())
    w_rows = {i: net.fc.weight[i].clone() for i in keep}
    assert group_importance("l1") is not None
    prune_channels_(net, 0.3, torch.zeros(1, 1, 2, 2), importance="l1")
    assert net.fc.out_features == 7 and net.head.out_features == 3
    kept_rows = {tuple(r.tolist()) for r in net.fc.weight}
    assert kept_rows == {tuple(w_rows[i].tolist()) for i in keep}
