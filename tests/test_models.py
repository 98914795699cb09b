import pytest
import torch

from compactcl.models import (DERNet, IncrementalNet, create_backbone, list_backbones, load_checkpoint,
                              save_checkpoint)
from compactcl.models.checkpoint import read_header


@pytest.mark.parametrize("name", list_backbones())
@pytest.mark.parametrize("size,channels", [(8, 1), (16, 3), (28, 1), (32, 3)])
def test_every_backbone_runs_at_every_size(name, size, channels):
    net = create_backbone(name, in_channels=channels, input_size=size)
    x = torch.randn(2, channels, size, size, requires_grad=True)
    out = net(x)
    assert out.shape == (2, net.out_dim)
    out.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_grow_keeps_old_outputs_exactly():
    net = IncrementalNet("cnn", 1, 8, num_classes=2, backbone_kwargs={"width": 8}).eval()
    x = torch.randn(4, 1, 8, 8)
    before = net(x)
    net.grow(3)
    after = net(x)
    assert after.shape == (4, 5)
    assert torch.equal(after[:, :2], before)


def test_der_grows_a_branch_per_task_and_freezes_old_ones():
    net = DERNet("cnn", 1, 8, backbone_kwargs={"width": 8})
    sizes = []
    for _ in range(3):
        net.grow(2)
        sizes.append(sum(p.numel() for p in net.parameters()))
    assert sizes[0] < sizes[1] < sizes[2]
    assert len(net.branches) == 3 and net.num_classes == 6
    assert not any(p.requires_grad for p in net.branches[0].parameters())
    assert all(p.requires_grad for p in net.branches[2].parameters())
    logits, aux = net.forward_train(torch.randn(2, 1, 8, 8))
    assert logits.shape == (2, 6) and aux.shape == (2, 3)


@pytest.mark.parametrize("kind", ["single", "der"])
def test_checkpoint_roundtrip_exact_logits(tmp_path, kind):
    net = (IncrementalNet if kind == "single" else DERNet)("resnet20", 1, 8, backbone_kwargs={"width": 8})
    net.grow(3)
    net.grow(2)
    net.eval()
    x = torch.randn(3, 1, 8, 8)
    path = tmp_path / "m.safetensors"
    size = save_checkpoint(net, path, meta={"note": "x"})
    assert size == path.stat().st_size
    back = load_checkpoint(path)
    assert torch.equal(back(x), net(x))
    assert read_header(path)["meta"] == {"note": "x"}


def test_conform_reloads_a_model_with_fewer_channels(tmp_path):
    net = IncrementalNet("cnn", 1, 8, num_classes=4, backbone_kwargs={"width": 8}).eval()
    # shrink the first conv's outputs from 8 to 5 by hand, with its BN and the next conv's inputs
    body = net.backbone.body
    conv0, bn0, conv1 = body[0][0], body[0][1], body[1][0]
    keep = torch.tensor([0, 2, 3, 5, 7])
    conv0.weight = torch.nn.Parameter(conv0.weight[keep])
    conv0.out_channels = 5
    for name in ("weight", "bias"):
        setattr(bn0, name, torch.nn.Parameter(getattr(bn0, name)[keep]))
    bn0.running_mean, bn0.running_var = bn0.running_mean[keep], bn0.running_var[keep]
    conv1.weight = torch.nn.Parameter(conv1.weight[:, keep])
    x = torch.randn(2, 1, 8, 8)
    path = tmp_path / "pruned.safetensors"
    save_checkpoint(net, path)
    back = load_checkpoint(path)
    assert back.backbone.body[0][0].out_channels == 5
    assert torch.allclose(back(x), net(x), atol=1e-6)


def test_corrupted_checkpoint_is_refused(tmp_path):
    from compactcl import CompactCLError

    net = IncrementalNet("mlp", 1, 8, num_classes=2, backbone_kwargs={"hidden": [16]})
    path = tmp_path / "m.safetensors"
    save_checkpoint(net, path)
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0xFF  # flip bits in the last weight
    path.write_bytes(bytes(raw))
    with pytest.raises(CompactCLError, match="checksum"):
        load_checkpoint(path)
    path.write_bytes(bytes(raw[: len(raw) // 2]))
    with pytest.raises(CompactCLError, match="truncated|not a readable"):
        load_checkpoint(path)
