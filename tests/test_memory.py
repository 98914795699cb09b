import pytest
import torch

from compactcl.data import ExemplarMemory, TensorData
from compactcl.data.memory import herding
from compactcl.models import IncrementalNet


def naive_herding(f: torch.Tensor, m: int) -> list[int]:
    mu, chosen = f.mean(0), []
    for k in range(1, m + 1):
        best, best_d = None, float("inf")
        for i in range(len(f)):
            if i in chosen:
                continue
            d = float((mu - (f[chosen].sum(0) + f[i]) / k).norm()) if chosen else float((mu - f[i]).norm())
            if d < best_d:
                best, best_d = i, d
        chosen.append(best)
    return chosen


def test_herding_matches_naive_loop():
    f = torch.nn.functional.normalize(torch.randn(30, 5), dim=1)
    assert herding(f, 10) == naive_herding(f, 10)


def test_herding_prefix_approximates_mean_better_than_random():
    f = torch.nn.functional.normalize(torch.randn(200, 16), dim=1)
    idx = herding(f, 10)
    err_h = (f[idx].mean(0) - f.mean(0)).norm()
    errs_r = [(f[torch.randperm(200)[:10]].mean(0) - f.mean(0)).norm() for _ in range(20)]
    assert err_h < min(errs_r)


@pytest.mark.parametrize("selection", ["herding", "random"])
def test_total_budget_is_shared_by_all_classes(selection):
    model = IncrementalNet("mlp", 1, 4, num_classes=6, backbone_kwargs={"hidden": [8]})
    mem = ExemplarMemory(size=30, selection=selection)
    task = lambda labels: TensorData(torch.randn(20 * len(labels), 1, 4, 4),  # noqa: E731
                                     torch.tensor(labels).repeat_interleave(20))
    mem.update(model, task([0, 1]))
    assert len(mem) == 30 and all(len(v) == 15 for v in mem.x.values())
    first_kept = mem.x[0][:5].clone()
    mem.update(model, task([2, 3, 4]))
    assert len(mem) == 30 and all(len(v) == 6 for v in mem.x.values())
    assert torch.equal(mem.x[0][:5], first_kept)  # shrinking keeps the head of the herding order
    assert sorted(mem.means) == [0, 1, 2, 3, 4]


def test_bad_memory_config():
    with pytest.raises(ValueError, match="selection"):
        ExemplarMemory(10, selection="best")
    with pytest.raises(ValueError, match=">= 0"):
        ExemplarMemory(-1)


def _labelled_task(labels, per=20, seed=0):
    """Images whose every pixel is the label plus small noise: an exemplar shows its class."""
    g = torch.Generator().manual_seed(seed)
    y = torch.tensor(labels).repeat_interleave(per)
    return TensorData(y.float().view(-1, 1, 1, 1) + 0.1 * torch.randn(len(y), 1, 4, 4, generator=g), y)


def test_exemplars_are_the_herding_choice_of_their_own_class():
    torch.manual_seed(0)
    model = IncrementalNet("mlp", 1, 4, num_classes=4, backbone_kwargs={"hidden": [8]}).eval()
    mem = ExemplarMemory(size=12)
    task = _labelled_task([0, 1, 2])
    mem.update(model, task)
    for c in (0, 1, 2):
        xc = task.x[task.y == c]
        assert torch.all((mem.x[c] - c).abs() < 0.5)  # every exemplar is an image of class c
        with torch.no_grad():  # herding order on L2-normalised features, computed here without extract_features
            feats = torch.nn.functional.normalize(model.features(xc), dim=1)
            assert torch.equal(mem.x[c], xc[herding(feats, 4)])
            # class mean: normalised mean of the normalised exemplar features
            mean = torch.nn.functional.normalize(model.features(mem.x[c]), dim=1).mean(0)
            assert torch.allclose(mem.means[c], mean / mean.norm(), atol=1e-6)


def test_random_selection_is_seeded_and_data_round_trips():
    model = IncrementalNet("mlp", 1, 4, num_classes=4, backbone_kwargs={"hidden": [8]})
    task = _labelled_task([0, 1])
    a, b = ExemplarMemory(6, "random", seed=3), ExemplarMemory(6, "random", seed=3)
    assert a.data() is None
    a.update(model, task)
    b.update(model, task)
    assert all(torch.equal(a.x[c], b.x[c]) for c in (0, 1))
    d = a.data()
    assert d.y.tolist() == [0, 0, 0, 1, 1, 1] and torch.equal(d.x, torch.cat([a.x[0], a.x[1]]))
    c = ExemplarMemory(6)
    c.load_state_tensors({**a.state_tensors(), "other.key": torch.zeros(1)})
    assert sorted(c.x) == [0, 1] and all(torch.equal(c.x[k], a.x[k]) for k in (0, 1))


def test_zero_size_memory_and_an_empty_task():
    model = IncrementalNet("mlp", 1, 4, num_classes=2, backbone_kwargs={"hidden": [8]})
    mem = ExemplarMemory(0)  # finetune keeps nothing: allowed
    mem.update(model, TensorData(torch.zeros(0, 1, 4, 4), torch.zeros(0, dtype=torch.long)))
    assert len(mem) == 0 and mem.means == {}
    mem.update(model, _labelled_task([0, 1]))
    assert len(mem) == 0 and mem.data() is not None and len(mem.data()) == 0
