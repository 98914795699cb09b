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
