import json

import pytest
import torch

from compactcl.compress.prune import (PruneData, SensitivityConfig, Sensitivity, finalize_, layer_sparsity, prune_,
                                      ratios_for_target, save_sensitivity, sensitivity_analysis)
from compactcl.compress.prune.api import cross_entropy
from compactcl.compress.prune.sensitivity import allowed_ratio
from compactcl.data import class_incremental
from compactcl.errors import CompactCLError
from compactcl.engine import TrainConfig, accuracy, train
from compactcl.models import IncrementalNet

RATIOS = [0.0, 0.2, 0.4, 0.6, 0.8]




def test_allowed_ratio_interpolates_the_crossing():
    accs = [0.9, 0.9, 0.88, 0.80, 0.5]
    assert allowed_ratio(RATIOS, accs, 0.9, 0.0) == pytest.approx(0.2)
    assert allowed_ratio(RATIOS, accs, 0.9, 0.02) == pytest.approx(0.4)
    assert allowed_ratio(RATIOS, accs, 0.9, 0.06) == pytest.approx(0.4 + 0.2 * (0.06 - 0.02) / 0.08)
    assert allowed_ratio(RATIOS, accs, 0.9, 1.0) == pytest.approx(0.8)


def test_allowed_ratio_does_not_trust_a_recovering_curve():
    # a noisy bump back up at 0.6 must not make 0.6 look safe after 0.4 failed
    accs = [0.9, 0.9, 0.7, 0.9, 0.9]
    assert allowed_ratio(RATIOS, accs, 0.9, 0.01) == pytest.approx(0.2 + 0.2 * 0.01 / 0.2)


def _sens():
    return Sensitivity(0.9, RATIOS, {"robust": [0.9, 0.9, 0.9, 0.89, 0.88], "fragile": [0.9, 0.7, 0.5, 0.3, 0.1]},
                       {"robust": 300, "fragile": 100})


def test_ratios_for_target_reach_it_and_spare_the_fragile_layer():
    sens = _sens()
    for target in (0.3, 0.5, 0.6):
        rs = ratios_for_target(sens, target)
        overall = (rs["robust"] * 300 + rs["fragile"] * 100) / 400
        assert overall == pytest.approx(target, abs=1e-4)
        assert rs["robust"] > rs["fragile"]
    assert ratios_for_target(_sens(), 0.6)["fragile"] < 0.05


def test_unreachable_target_is_an_error():
    with pytest.raises(CompactCLError, match="out of reach"):
        ratios_for_target(_sens(), 0.85)


@pytest.fixture(scope="module")
def trained(digits):
    task = class_incremental(digits, tasks=1, seed=0).tasks[0]
    torch.manual_seed(0)
    net = IncrementalNet("mlp", 1, 8, 10, {"hidden": [64, 32]})
    train(net, task.train, cross_entropy, TrainConfig(epochs=8, lr=0.05))
    return net, task


def test_analysis_measures_every_layer_and_restores_the_model(trained, tmp_path):
    net, task = trained
    before = {k: v.clone() for k, v in net.state_dict().items()}
    sens = sensitivity_analysis(net, lambda m: accuracy(m, task.val), tuple(RATIOS))
    assert set(sens.curves) == {"backbone.body.1", "backbone.body.3", "head"}
    assert all(c[0] == sens.baseline and len(c) == len(RATIOS) for c in sens.curves.values())
    assert all(c[-1] < sens.baseline for c in sens.curves.values())  # 80% of one layer hurts a bit
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    paths = save_sensitivity(sens, tmp_path)
    assert Sensitivity.from_json(json.loads(paths["json"].read_text())) == sens
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sensitivity_pruning_reaches_the_target_with_per_layer_ratios(trained):
    import copy

    net, task = trained
    pruned = copy.deepcopy(net)
    res = prune_(pruned, SensitivityConfig(ratio=0.6, ratios=tuple(RATIOS)), PruneData((1, 8, 8), task.train, task.val))
    finalize_(pruned)
    per_layer = layer_sparsity(pruned)
    n = {k: pruned.get_submodule(k).weight.numel() for k in per_layer}
    overall = sum(per_layer[k] * n[k] for k in n) / sum(n.values())
    assert overall == pytest.approx(0.6, abs=0.01)
    assert res.info["layer_ratios"] == pytest.approx({k: per_layer[k] for k in per_layer}, abs=0.01)
    assert len(set(round(v, 2) for v in per_layer.values())) > 1  # not uniform: the curves decided
    assert accuracy(pruned, task.test) >= accuracy(net, task.test) - 0.08
