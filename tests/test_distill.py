"""distill() and the student registry on the built-in digits (8x8, 1,437 training images)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compactcl.compress.distill import DistillConfig, create_student, distill, list_students
from compactcl.data import TensorData
from compactcl.errors import CompactCLError
from compactcl.engine.loop import TrainConfig, accuracy, train
from compactcl.models import DERNet, IncrementalNet, list_backbones


def ce(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(x), y)


@pytest.fixture(scope="module")
def teacher(digits) -> IncrementalNet:
    torch.manual_seed(0)
    net = IncrementalNet("cnn", 1, 8, 10, {"width": 16})
    train(net, digits.train, ce, TrainConfig(epochs=15, lr=0.05, seed=0))
    return net.eval()


def _soft_kl(teacher: nn.Module, student: nn.Module, x: torch.Tensor, temperature: float = 4.0) -> float:
    """KL(teacher_T || student_T) on held-out images: how well the student copies the teacher's outputs."""
    with torch.no_grad():
        return float(F.kl_div(F.log_softmax(student(x) / temperature, 1), F.softmax(teacher(x) / temperature, 1),
                              reduction="batchmean"))


def _student(seed: int = 1) -> IncrementalNet:
    torch.manual_seed(seed)
    return IncrementalNet("mlp", 1, 8, 10, {"hidden": [32]})


def test_teacher_is_good(digits, teacher) -> None:
    assert accuracy(teacher, digits.test) >= 0.95


def test_distilled_student_is_accurate_and_copies_teacher_better_than_hard_labels(digits, teacher) -> None:
    cfg = DistillConfig(temperature=4.0, alpha=0.9, epochs=30, lr=0.05, seed=0)
    random_student = _student()
    hard = copy.deepcopy(random_student)
    train(hard, digits.train, ce, cfg.train_config())
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = distill(teacher, copy.deepcopy(random_student), digits.train, cfg)

    acc_t, acc_s = accuracy(teacher, digits.test), accuracy(student, digits.test)
    assert acc_s >= 0.93 and acc_s >= acc_t - 0.05
    x = digits.test.x
    kl_distilled, kl_hard, kl_random = (_soft_kl(teacher, m, x) for m in (student, hard, random_student))
    assert kl_distilled < 0.5 * kl_random
    assert kl_distilled < kl_hard  # soft targets transfer more of the teacher than labels alone
    assert not student.training and not teacher.training
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())  # teacher untouched


def test_alpha_zero_is_exactly_plain_cross_entropy_training(digits, teacher) -> None:
    cfg = DistillConfig(alpha=0.0, epochs=2, seed=3)
    a, b = _student(), _student()
    distill(teacher, a, digits.train, cfg)
    train(b, digits.train, ce, cfg.train_config())
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb)


def test_cached_and_live_teacher_give_the_same_student(digits, teacher) -> None:
    # the cache is only an optimisation: per-batch teacher passes must give the same training run
    cfg = DistillConfig(epochs=1, hints=["features", ("backbone.body.1", "backbone.body.1")], seed=0)
    make = lambda: create_student("narrow-cnn", teacher, width=4)  # noqa: E731
    torch.manual_seed(0)
    a = distill(teacher, make(), digits.train, cfg)
    torch.manual_seed(0)
    b = distill(teacher, make(), digits.train, DistillConfig(**{**cfg.to_dict(), "cache_teacher": False}))
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, atol=1e-4, rtol=1e-4)


def test_hints_train_a_usable_student_without_labels(digits, teacher) -> None:
    # alpha=1 keeps the labels out: soft targets + feature hint alone must still teach the task
    cfg = DistillConfig(epochs=5, alpha=1.0, hints=["features"], hint_weight=1.0, seed=0)
    torch.manual_seed(0)
    student = create_student("narrow-cnn", teacher, width=4)
    distill(teacher, student, digits.train, cfg)
    assert accuracy(student, digits.test) >= 0.85
    # hooks are removed afterwards: a plain forward leaves no captured state behind
    assert all(not m._forward_hooks for m in student.modules())


def test_der_and_plain_module_teachers(digits, teacher) -> None:
    torch.manual_seed(0)
    der = DERNet("cnn", 1, 8, 0, {"width": 8})
    der.grow(5)
    train(der, digits.train.subset(torch.nonzero(digits.train.y < 5).flatten()), ce, TrainConfig(epochs=5, seed=0))
    der.grow(5)  # a second branch (the first frozen): the teacher has grown
    train(der, digits.train, ce, TrainConfig(epochs=5, seed=1))
    der.end_task()
    student = create_student("same", der)
    assert isinstance(student, IncrementalNet) and student.spec["backbone_kwargs"] == {"width": 8}
    distill(der, student, digits.train, DistillConfig(epochs=5, seed=0))
    assert accuracy(student, digits.test) >= 0.85

    plain = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))  # any module returning logits
    student = create_student("mlp", {"in_channels": 1, "input_size": 8, "num_classes": 10}, hidden=[16])
    distill(plain, student, digits.train, DistillConfig(epochs=1))
    with pytest.raises(CompactCLError, match="features"):
        distill(plain, student, digits.train, DistillConfig(epochs=1, hints=["features"]))


def test_distill_errors_name_the_fix(digits, teacher) -> None:
    with pytest.raises(CompactCLError, match="num_classes"):
        distill(teacher, IncrementalNet("mlp", 1, 8, 5), digits.train, DistillConfig(epochs=1))
    with pytest.raises(CompactCLError, match="no module"):
        distill(teacher, _student(), digits.train, DistillConfig(epochs=1, hints=["nope"]))
    with pytest.raises(CompactCLError, match="empty"):
        distill(teacher, _student(), TensorData(digits.train.x[:0], digits.train.y[:0]), DistillConfig())


def test_config_validates_and_round_trips() -> None:
    cfg = DistillConfig(temperature=8, alpha=0.5, hints=["features", ("a", "b")])
    assert DistillConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    for bad in ({"temperature": 0}, {"alpha": 1.5}, {"optimizer": "lbfgs"}, {"batch_size": 0}, {"version": 2}):
        with pytest.raises(CompactCLError, match="distill config"):
            DistillConfig(**bad)
    with pytest.raises(CompactCLError, match="unknown key"):
        DistillConfig.from_dict({"temprature": 4})


@pytest.mark.parametrize("name", list_students())
def test_every_student_builds_trains_and_fits_the_teacher(name: str, teacher, digits) -> None:
    student = create_student(name, teacher)
    assert student.num_classes == 10 and student.spec["input_size"] == 8
    x = torch.randn(4, 1, 8, 8)
    out = student(x)
    assert out.shape == (4, 10) and torch.isfinite(out).all()
    F.cross_entropy(out, torch.arange(4)).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in student.parameters() if p.requires_grad)
    assert create_student(name, teacher.spec, num_classes=3).num_classes == 3
    # a short distillation (40 steps; lenet5 starts slowly, 100) makes every student copy the teacher:
    # held-out KL to the teacher falls well below the untrained one and most argmaxes agree
    torch.manual_seed(0)
    student = create_student(name, teacher)
    x = digits.test.x

    def agreement(m: nn.Module) -> float:
        with torch.no_grad():
            return float((m.eval()(x).argmax(1) == teacher(x).argmax(1)).float().mean())

    kl_before, agree_before = _soft_kl(teacher, student.eval(), x), agreement(student)
    distill(teacher, student, digits.train, DistillConfig(iterations=100 if name == "lenet5" else 40, seed=0))
    kl_after, agree_after = _soft_kl(teacher, student, x), agreement(student)
    assert kl_after < 0.6 * kl_before, (kl_before, kl_after)  # measured: 0.07-0.47 of it
    assert agree_before < 0.3 and agree_after > 0.6, (agree_before, agree_after)  # measured: 0.73-0.99 after


def test_student_registry_rules(teacher) -> None:
    assert set(list_backbones()) <= set(list_students())
    assert {"narrow-cnn", "mobilenetv2", "same"} <= set(list_students())
    n_params = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    narrow = create_student("narrow-cnn", teacher)
    assert narrow.spec["backbone_kwargs"] == {"width": 8} and n_params(narrow) < n_params(teacher) / 3
    assert create_student("narrow-cnn", teacher, width=3).spec["backbone_kwargs"] == {"width": 3}
    assert create_student("same", teacher).spec == teacher.spec
    assert create_student("mobilenetv2", teacher, width_mult=0.25).spec["backbone_kwargs"]["width_mult"] == 0.25
    with pytest.raises(CompactCLError, match="unknown student"):
        create_student("resnet9000", teacher)
    with pytest.raises(CompactCLError, match="spec"):
        create_student("same", nn.Linear(2, 2))
