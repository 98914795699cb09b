"""WA, FOSTER and MEMO on the 3-task digits stream, their math against a reference, and resume
exactness for their models (MEMO's own model kind included)."""

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compactcl.cli.main import main
from compactcl.learners import LEARNERS
from compactcl.learners.foster import balanced_kd, boosted_net
from compactcl.learners.memo import MEMONet, split_backbone
from compactcl.learners.wa import align_weights_
from compactcl.models import IncrementalNet, create_backbone
from compactcl.models.checkpoint import load_checkpoint, save_checkpoint

from test_learners import run_stream
from test_reliability import FAST_ARGS, _comparable, _truncate_to


def test_weight_aligning_equalises_mean_norms():
    torch.manual_seed(1)
    head = nn.Linear(5, 6)
    with torch.no_grad():
        head.weight[4:] *= 7.0  # new classes' rows much longer, as after training on their many images
    before = head.weight.detach().clone()
    gamma = align_weights_(head, 4)
    norms = head.weight.norm(dim=1)
    assert torch.allclose(norms[4:].mean(), norms[:4].mean())
    assert torch.equal(head.weight[:4], before[:4])  # old rows untouched
    assert torch.allclose(head.weight[4:], before[4:] * gamma)
    assert align_weights_(head, 0) == 1.0 and align_weights_(head, 6) == 1.0


@pytest.mark.parametrize("name", ["wa", "foster", "memo"])
def test_learns_the_last_task_and_keeps_the_old_ones(digits, name):
    accs, sizes, state = run_stream(digits, name)
    # measured (mlp, 6 epochs, 60 exemplars): wa .931/.930/.986, foster .944/.986/.973, memo .917/.901/.986;
    # finetune keeps < .3 of the old tasks, so 0.8 tells remembering from forgetting with ~7 errors of margin
    assert accs[-1] >= 0.93, accs
    assert sum(accs[:2]) / 2 > 0.8, accs
    if name in ("wa", "foster"):  # one backbone all along: FOSTER's boosting branch was compressed away
        assert type(state.model) is IncrementalNet and sizes[2] - sizes[0] == 4 * (64 + 1)  # 4 head rows, no branch
    else:
        assert type(state.model) is MEMONet and len(state.model.blocks) == 3 and state.model.aux_head is None


def test_balanced_kd_matches_a_naive_loop():
    torch.manual_seed(2)
    s, t, w, temp = torch.randn(4, 5), torch.randn(4, 5), torch.rand(5) + 0.1, 2.0
    ref = 0.0
    for i in range(4):
        p = [F.softmax(t[i] / temp, 0)[k] * w[k] for k in range(5)]
        q = F.log_softmax(s[i] / temp, 0)
        ref += -sum(p[k] / sum(p) * q[k] for k in range(5))
    assert torch.allclose(balanced_kd(s, t, w, temp), ref / 4 * temp ** 2)


def test_boosted_net_starts_as_the_old_model_on_old_classes():
    torch.manual_seed(3)
    old = IncrementalNet("cnn", 1, 8, 2, {"width": 8}).eval()
    boosted = boosted_net(old, 3).eval()
    x = torch.randn(5, 1, 8, 8)
    assert boosted.num_classes == 5 and len(boosted.branches) == 2
    # the new branch's columns of the old rows start at zero: old logits exactly as before
    assert torch.allclose(boosted(x)[:, :2], old(x), atol=1e-6)
    assert not any(p.requires_grad for p in boosted.branches[0].parameters())


@pytest.mark.parametrize("backbone,kwargs", [("cnn", {"width": 8}), ("resnet20", {"width": 4}), ("mlp", {"hidden": [16, 8]}),
                                             ("lenet5", {}), ("mobilenetv2", {"width_mult": 0.25, "last_channels": 16})])
def test_memo_split_is_the_backbone_and_shares_the_shallow_part(backbone, kwargs):
    torch.manual_seed(4)
    full = create_backbone(backbone, 1, 8, **kwargs).eval()
    modules, k = split_backbone(full)
    x = torch.randn(3, 1, 8, 8)
    assert torch.equal(nn.Sequential(*modules)(x), full(x))  # the split runs the same layers, in order
    assert 0 < k < len(modules)
    net = MEMONet(backbone, 1, 8, backbone_kwargs=kwargs)
    net.grow(2)
    net.grow(2)
    shallow = sum(p.numel() for p in net.shallow.parameters())
    block = sum(p.numel() for p in net.blocks[0].parameters())
    assert sum(p.numel() for p in full.parameters()) == shallow + block
    assert not any(p.requires_grad for p in [*net.shallow.parameters(), *net.blocks[0].parameters()])
    assert all(p.requires_grad for p in net.blocks[1].parameters())


def test_memo_checkpoint_round_trip_gives_identical_logits(tmp_path):
    torch.manual_seed(5)
    net = MEMONet("resnet20", 1, 8, backbone_kwargs={"width": 4})
    net.grow(2)
    net.grow(3)
    net.end_task()
    net.eval()
    save_checkpoint(net, tmp_path / "m.safetensors")
    back = load_checkpoint(tmp_path / "m.safetensors")
    x = torch.randn(4, 1, 8, 8)
    assert back.spec == net.spec and torch.equal(back(x), net(x))


@pytest.mark.parametrize("name", ["wa", "foster", "memo", "bic"])
def test_resume_is_exact(tmp_path, name):
    full, part = tmp_path / "full", tmp_path / "part"
    args = [*FAST_ARGS, "--set", f"learner.name={name}"]
    assert main(["run", "--out", str(full), *args]) == 0
    assert main(["run", "--out", str(part), *args]) == 0
    _truncate_to(part, 1)
    (part / "tasks" / "01" / "state.safetensors").unlink()
    assert main(["run", "--out", str(part), "--resume", *args]) == 0
    a, b = (json.loads((p / "metrics.json").read_text()) for p in (full, part))
    assert _comparable(a) == _comparable(b)


def test_registry_tests_cover_the_new_learners():
    assert {"wa", "foster", "memo"} <= set(LEARNERS)  # tests/test_learners.py loops over LEARNERS
