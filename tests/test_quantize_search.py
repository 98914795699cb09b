"""Bit-width search on validation data: per model (tolerance) and per layer (tolerance or byte budget)."""

import copy

import pytest
import torch
import torch.nn.functional as F

from compactcl.compress.quantize import quantize_, quantized_layers, search_layer_bits, search_model_bits
from compactcl.data import class_incremental
from compactcl.errors import CompactCLError
from compactcl.export.artifact import artifact_nbytes
from compactcl.engine import TrainConfig, accuracy, train
from compactcl.models import IncrementalNet




@pytest.fixture(scope="module")
def trained(digits):
    torch.manual_seed(0)
    task = class_incremental(digits, tasks=1, classes_per_task=10, seed=0).tasks[0]
    net = IncrementalNet("mlp", 1, 8, 10, backbone_kwargs={"hidden": [64, 32]})
    train(net, task.train, lambda m, x, y: F.cross_entropy(m(x), y), TrainConfig(epochs=8, lr=0.05))
    return net, task


def test_model_search_picks_smallest_width_within_tolerance(trained):
    net, task = trained
    res = search_model_bits(net, "linear", task.val, tolerance=0.02, size_of=artifact_nbytes)
    base = accuracy(net, task.val)
    assert res.baseline_val_accuracy == base and res.met
    chosen = [r for r in res.rows if r["chosen"]]
    assert len(chosen) == 1 and chosen[0]["drop"] <= 0.02
    assert all(r["drop"] > 0.02 for r in res.rows if r["bits"] < chosen[0]["bits"])
    assert set(res.bits.values()) == {chosen[0]["bits"]}
    q = quantize_(copy.deepcopy(net), res.config)
    assert accuracy(q, task.val) == res.val_accuracy and artifact_nbytes(q) == res.bytes
    # impossible: reports, does not pretend
    strict = search_model_bits(net, "log", task.val, tolerance=-1.0, size_of=artifact_nbytes)
    assert not strict.met and strict.bits["head"] == 8


def test_layer_search_under_budget_fits_and_reports_reasons(trained):
    net, task = trained
    uniform8 = artifact_nbytes(quantize_(copy.deepcopy(net), search_model_bits(net, "kmeans", task.val,
                                                                               choices=(8,),
                                                                               size_of=artifact_nbytes).config))
    budget = int(uniform8 * 0.45)
    res = search_layer_bits(net, "kmeans", task.val, tolerance=None, budget_bytes=budget, choices=(8, 4, 3, 2),
                            size_of=artifact_nbytes)
    q = quantize_(copy.deepcopy(net), res.config)
    assert res.met and artifact_nbytes(q) == res.bytes <= budget
    assert {wq.bits for wq in quantized_layers(q).values()} == set(res.bits.values())
    assert len(set(res.bits.values())) > 1  # mixed precision, not one width everywhere
    sens = [r for r in res.rows if r["phase"] == "sensitivity"]
    assert len(sens) == 3 * 4 and all("reason" in r for r in res.rows)
    assert any(r["decision"] == "lowered" for r in res.rows)


def test_layer_search_under_tolerance_keeps_the_drop(trained):
    net, task = trained
    res = search_layer_bits(net, "linear", task.val, tolerance=0.01, choices=(8, 4, 3, 2),
                            size_of=artifact_nbytes)
    assert res.met and res.baseline_val_accuracy - res.val_accuracy <= 0.01
    assert min(res.bits.values()) < 8  # something was lowered
    q = quantize_(copy.deepcopy(net), res.config)
    assert accuracy(q, task.val) == res.val_accuracy
    with pytest.raises(CompactCLError, match="needs a tolerance or a budget_bytes"):
        search_layer_bits(net, "linear", task.val, tolerance=None, budget_bytes=None,
                          size_of=artifact_nbytes)
