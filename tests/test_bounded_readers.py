"""Readers bound their work by what a file honestly holds: crafted headers are refused fast, before allocating.

Each crafted file is a real file with its header edited and its checksum recomputed (a crafter
can always do that), so the defence is the size check, not the digest. Every case asserts the
named CompactCLError and a time bound; scripts/measure_crafted_rss.py measures peak RSS.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import pytest
import torch

import compactcl
from compactcl import CompactCLError

import crafted

FAST_S = 2.0  # each crafted file must be refused within this (the attacks ran for minutes)


def _refused_fast(load: Callable[[], object], match: str) -> None:
    start = time.perf_counter()
    with pytest.raises(CompactCLError, match=match):
        load()
    assert time.perf_counter() - start < FAST_S


# --- checkpoints -----------------------------------------------------------------------------

@pytest.mark.parametrize("build, match", [
    (crafted.checkpoint_many_branches, "branches=1000000000"),
    (crafted.checkpoint_many_classes, "num_classes=15000000.0"),
    (crafted.checkpoint_many_classes_int, "num_classes=15000000"),
    (crafted.checkpoint_padded_many_classes, "num_classes=15000000"),
    (crafted.checkpoint_long_hidden, "list of 1,000,000 entries"),
], ids=lambda v: getattr(v, "__name__", "")[:40] if callable(v) else "")
def test_crafted_checkpoint_specs_are_refused_before_building(tmp_path: Path, build, match: str) -> None:
    path = build(tmp_path)
    _refused_fast(lambda: compactcl.load(path), match)


def test_a_spec_wider_than_its_weights_builds_only_what_the_file_holds(tmp_path: Path) -> None:
    """Old rule: up to 1000x the file's values were built, then shrunk. Now the spec is conformed to the
    saved shapes on the meta device, so a pruned-looking spec costs what the file holds."""
    path = crafted.real_checkpoint(tmp_path)
    header = compactcl.models.checkpoint.read_header(path)
    header["spec"]["backbone_kwargs"]["width"] = 4000  # conv weights (8000, 8000, 3, 3): 2.3 GB if built
    crafted.resign(path, header)
    start = time.perf_counter()
    model = compactcl.load(path)
    assert time.perf_counter() - start < FAST_S
    assert sum(t.numel() for t in model.state_dict().values()) < 2000


def test_der_branch_count_must_match_the_saved_branches(tmp_path: Path) -> None:
    path = crafted.real_checkpoint(tmp_path, der=True)
    header = compactcl.models.checkpoint.read_header(path)
    header["spec"]["branches"] = 3  # the file holds 2
    crafted.resign(path, header)
    _refused_fast(lambda: compactcl.load(path), "branches=3 but the file holds weights of 2 branches")


def test_genuine_and_pruned_checkpoints_still_load_exactly(tmp_path: Path) -> None:
    from compactcl.models import IncrementalNet, save_checkpoint
    from compactcl.models.checkpoint import model_from_state

    for net in (IncrementalNet("cnn", 1, 8, num_classes=3, backbone_kwargs={"width": 4}),
                crafted_der()):
        net.eval()
        save_checkpoint(net, tmp_path / "m.safetensors")
        back = compactcl.load(tmp_path / "m.safetensors")
        assert back.spec == net.spec
        for k, v in net.state_dict().items():
            assert torch.equal(back.state_dict()[k], v), k
    # a structurally pruned model: its spec says hidden 64, its weights are 24 wide
    small = IncrementalNet("mlp", 1, 8, num_classes=3, backbone_kwargs={"hidden": [24]})
    spec = IncrementalNet("mlp", 1, 8, num_classes=3, backbone_kwargs={"hidden": [64]}).spec
    back = model_from_state(spec, small.state_dict())
    assert back.backbone.body[1].weight.shape == (24, 64)


def crafted_der() -> torch.nn.Module:
    from compactcl.models import DERNet

    net = DERNet("cnn", 1, 8, backbone_kwargs={"width": 4})
    net.grow(2)
    net.grow(2)
    return net


# --- packed artifacts (.ccl) -----------------------------------------------------------------

@pytest.mark.parametrize("build", [crafted.artifact_huge_layer, crafted.artifact_huge_sparse_layer],
                         ids=["dense-1e5x1e5", "sparse-1e5x1e5-unbacked"])
def test_crafted_layer_shapes_are_refused_before_decoding(tmp_path: Path, build) -> None:
    path = build(tmp_path)
    _refused_fast(lambda: compactcl.load(path), r"claims shape \[100000, 100000\].*more than the file's data")


@pytest.mark.parametrize("edit, match", [
    ({"bits": 0}, "bits=0"),
    ({"bits": 9}, "bits=9"),
    ({"enc": "zip"}, "unknown weight encoding"),
    ({"axis": 7}, "axis=7"),
    ({"shape": [-1, 4]}, "no valid shape"),
    ({"shape": "big"}, "no valid shape"),
    ({"sparse": 2, "ib": 8, "ne": 10 ** 12}, "ne="),
    ({"sparse": 3}, "unknown sparse encoding"),
])
def test_bad_layer_entries_are_named(tmp_path: Path, edit: dict, match: str) -> None:
    path = crafted.real_artifact(tmp_path)
    header = compactcl.models.checkpoint.read_header(path)
    entry = next(e for es in header["layers"].values() for e in es.values() if "enc" in e)
    entry.update(edit)
    crafted.resign(path, header)
    _refused_fast(lambda: compactcl.load(path), match)


def test_a_sparse_artifact_with_all_zero_tensors_still_loads(tmp_path: Path) -> None:
    from compactcl.compress.quantize import LinearQuantConfig, quantize_
    from compactcl.export.artifact import save_artifact
    from compactcl.models import IncrementalNet

    net = IncrementalNet("mlp", 1, 8, num_classes=4, backbone_kwargs={"hidden": [64]}).eval()
    with torch.no_grad():
        net.backbone.body[1].weight[:, 1:].zero_()  # 98% zeros: stored as relative indices
        net.backbone.body[1].bias.zero_()  # all zeros: nothing stored at all
    save_artifact(quantize_(net, LinearQuantConfig(bits=4)), tmp_path / "z.ccl")
    back = compactcl.load(tmp_path / "z.ccl")
    assert torch.count_nonzero(back.backbone.body[1].bias) == 0
