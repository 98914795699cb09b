"""Readers bound their work by what a file honestly holds: crafted headers are refused fast, before allocating.

Each crafted file is a real file with its header edited and its checksum recomputed (a crafter
can always do that), so the defence is the size check, not the digest. Every case asserts the
named CompactCLError and a time bound; scripts/measure_crafted_rss.py measures peak RSS.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest
import torch

import compactcl
from compactcl import CompactCLError

import crafted
from bounds import Clock

FAST_S = 2.0  # each crafted file must be refused within this (the attacks ran for minutes)


def _assert_refused_fast(load: Callable[[], object], match: str) -> None:
    clock = Clock()
    with pytest.raises(CompactCLError, match=match):
        load()
    assert clock.within(FAST_S), clock


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
    _assert_refused_fast(lambda: compactcl.load(path), match)


def test_a_spec_wider_than_its_weights_builds_only_what_the_file_holds(tmp_path: Path) -> None:
    """Old rule: up to 1000x the file's values were built, then shrunk. Now the spec is conformed to the
    saved shapes on the meta device, so a pruned-looking spec costs what the file holds."""
    path = crafted.real_checkpoint(tmp_path)
    header = compactcl.models.checkpoint.read_header(path)
    header["spec"]["backbone_kwargs"]["width"] = 4000  # conv weights (8000, 8000, 3, 3): 2.3 GB if built
    crafted.resign(path, header)
    clock = Clock()
    model = compactcl.load(path)
    assert clock.within(FAST_S), clock
    assert sum(t.numel() for t in model.state_dict().values()) < 2000


def test_der_branch_count_must_match_the_saved_branches(tmp_path: Path) -> None:
    path = crafted.real_checkpoint(tmp_path, der=True)
    header = compactcl.models.checkpoint.read_header(path)
    header["spec"]["branches"] = 3  # the file holds 2
    crafted.resign(path, header)
    _assert_refused_fast(lambda: compactcl.load(path), "branches=3 but the file holds weights of 2 branches")


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
    _assert_refused_fast(lambda: compactcl.load(path), r"claims shape \[100000, 100000\].*more than the file's data")


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
    entry = next(e for e in header["layers"] if "enc" in e)
    entry.update(edit)
    crafted.resign(path, header)
    _assert_refused_fast(lambda: compactcl.load(path), match)


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


# --- IDX files -------------------------------------------------------------------------------

def test_a_gzip_idx_that_inflates_past_its_header_is_refused_after_the_header_size(tmp_path: Path) -> None:
    path = crafted.idx_gzip_bomb(tmp_path, body_mib=64)  # the attack used 2 GiB; the bound is the same
    _assert_refused_fast(lambda: compactcl.data.read_idx(path), "longer than the 2352 bytes its header promises")


def test_an_idx_header_claiming_terabytes_is_refused_before_reading(tmp_path: Path) -> None:
    path = crafted.idx_huge_claim(tmp_path)
    _assert_refused_fast(lambda: compactcl.data.read_idx(path), r"claims shape \(2147483648, 28, 28\)")


def test_idx_dims_that_overflow_int64_are_not_wrapped(tmp_path: Path) -> None:
    import numpy as np

    path = tmp_path / "x-idx3-ubyte"  # 2**32-1 cubed overflows np.prod to a small number
    path.write_bytes(crafted.idx_bytes(np.zeros(0, np.uint8), shape=(2 ** 32 - 1,) * 3))
    _assert_refused_fast(lambda: compactcl.data.read_idx(path), "over the limit")


def test_a_huge_idx_label_is_refused_without_allocating_per_class(tmp_path: Path) -> None:
    root = crafted.idx_huge_label(tmp_path / "m")
    _assert_refused_fast(lambda: compactcl.data.load_dataset("mnist", str(root)), "found label 2000000000")


def _relabel(root: Path, split: str, labels) -> None:
    import numpy as np

    stem = "train" if split == "train" else "t10k"
    (root / f"{stem}-labels-idx1-ubyte").write_bytes(crafted.idx_bytes(np.asarray(labels, np.uint8)))


@pytest.mark.parametrize("split, labels, match", [
    ("train", [0, 1, 3] * 13 + [3], "class 2 has no training images"),  # 2 missing everywhere
    ("test", [0, 1, 2] * 6 + [0, 1], "class 3 has no test images"),  # 3 only in train
    ("train", [0, 1, 2] * 13 + [2], "class 3 has no training images"),  # 3 only in test
])
def test_idx_class_gaps_are_refused_naming_the_class(tmp_path: Path, split: str, labels, match: str) -> None:
    root = crafted.write_mnist(tmp_path / "m")
    _relabel(root, split, labels)
    _assert_refused_fast(lambda: compactcl.data.load_dataset("mnist", str(root)), match)


def test_idx_float_labels_and_swapped_files_are_named(tmp_path: Path) -> None:
    import numpy as np

    root = crafted.write_mnist(tmp_path / "m")
    (root / "train-labels-idx1-ubyte").write_bytes(crafted.idx_bytes((np.arange(40) % 4 + 0.5).astype(">f4"),
                                                                     code=0x0D))
    _assert_refused_fast(lambda: compactcl.data.load_dataset("mnist", str(root)), "labels must be integers")
    crafted.write_mnist(root)
    (root / "train-labels-idx1-ubyte").write_bytes((root / "train-images-idx3-ubyte").read_bytes())
    _assert_refused_fast(lambda: compactcl.data.load_dataset("mnist", str(root)), "has 3 dimensions")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_pixels_are_named_at_load_not_blamed_on_the_learning_rate(tmp_path: Path, bad: float) -> None:
    import numpy as np

    root = crafted.write_mnist(tmp_path / "m")
    x = np.random.default_rng(0).random((20, 6, 6)) * 255
    x[7, 2, 3] = bad
    (root / "t10k-images-idx3-ubyte").write_bytes(crafted.idx_bytes(x.astype(">f4"), code=0x0D))
    _assert_refused_fast(lambda: compactcl.data.load_dataset("mnist", str(root)), "test image 7 holds NaN or infinite")
    xs = np.zeros((8, 1, 4, 4), np.float32)
    xs[3, 0, 0, 0] = bad
    with pytest.raises(CompactCLError, match="training image 3 holds NaN or infinite.*not a learning-rate"):
        compactcl.data.from_arrays(xs, np.arange(8) % 2, np.zeros_like(xs[:4]), np.arange(4) % 2)


def test_genuine_idx_still_loads(tmp_path: Path) -> None:
    for gz in (False, True):
        root = crafted.write_mnist(tmp_path / f"m{gz}", gz=gz)
        ds = compactcl.data.load_dataset("mnist", str(root))
        assert ds.num_classes == 4 and ds.train.x.shape == (40, 1, 6, 6)


# --- image folders ---------------------------------------------------------------------------

def _load_folder(root: Path, **options):
    return compactcl.data.load_dataset("folder", str(root), image_size=6, **options)


def test_a_fifo_named_like_an_image_is_refused_not_read(tmp_path: Path) -> None:
    import os

    root = crafted.image_folder(tmp_path / "f")
    os.mkfifo(root / "a" / "x.png")  # reading it would block forever
    _assert_refused_fast(lambda: _load_folder(root), r"x.png is a FIFO, not an image file")


def test_a_socket_named_like_an_image_is_refused(tmp_path: Path) -> None:
    import socket

    root = crafted.image_folder(tmp_path / "f")
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(root / "b" / "s.png"))
        _assert_refused_fast(lambda: _load_folder(root), "s.png is a socket")
    finally:
        sock.close()


def test_symlink_loops_and_dangling_links_are_refused_by_name(tmp_path: Path) -> None:
    root = crafted.image_folder(tmp_path / "f")
    (root / "a" / "loop.png").symlink_to(root / "a" / "loop.png")
    _assert_refused_fast(lambda: _load_folder(root), "loop.png: cannot open it")
    (root / "a" / "loop.png").unlink()
    (root / "a" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    _assert_refused_fast(lambda: _load_folder(root), "gone.png: cannot open it")
    (root / "a" / "gone.png").unlink()
    (root / "a" / "ok.png").symlink_to(root / "b" / "0.png")  # a link to a real image is fine
    assert _load_folder(root).num_classes == 2


@pytest.mark.parametrize("name, build, match", [
    ("bad.png", crafted.png_syntax_error, r"not a readable image \(SyntaxError"),
    ("bad.bmp", crafted.bmp_value_error, r"not a readable image \(ValueError"),
    ("empty.png", lambda: b"", "not a readable image"),
    ("bomb.png", lambda: crafted.png_bomb(10_000, 10_000), "too large to decode"),  # Pillow warns; we refuse
    ("huge.png", lambda: crafted.png_bomb(100_000, 100_000), "too large to decode"),  # Pillow's own error
])
def test_corrupt_and_bomb_images_give_a_named_error(tmp_path: Path, name: str, build, match: str) -> None:
    root = crafted.image_folder(tmp_path / "f")
    (root / "b" / name).write_bytes(build())
    _assert_refused_fast(lambda: _load_folder(root), match)


def test_the_pixel_limit_holds_even_with_pillows_check_disabled(tmp_path: Path, monkeypatch) -> None:
    from PIL import Image

    from compactcl.data.datasets import MAX_IMAGE_PIXELS

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    root = crafted.image_folder(tmp_path / "f")
    (root / "b" / "bomb.png").write_bytes(crafted.png_bomb(MAX_IMAGE_PIXELS // 1000 + 1, 1000))
    _assert_refused_fast(lambda: _load_folder(root), "too large to decode")


def test_16_bit_greyscale_is_scaled_not_clipped(tmp_path: Path) -> None:
    import numpy as np

    from compactcl.data.datasets import _decode

    values = np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000  # 0..63000
    (tmp_path / "g.png").write_bytes(crafted.png16(values))
    grey = _decode(tmp_path / "g.png", 8, 1)[0]  # same size: no resampling
    assert np.abs(grey.astype(int) - np.round(values.astype(float) * 255 / 65535)).max() <= 1
    assert len(np.unique(grey)) > 50  # not all 255 (convert("L") clips 16-bit values)
    rgb = _decode(tmp_path / "g.png", 8, 3)
    assert np.array_equal(rgb[0], grey) and np.array_equal(rgb[2], grey)


@pytest.mark.parametrize("size", [0, -3, 2.5, True, "32", 10 ** 6])
def test_bad_image_size_is_named(tmp_path: Path, size) -> None:
    root = crafted.image_folder(tmp_path / "f")
    with pytest.raises(CompactCLError, match="data.options.image_size"):
        compactcl.data.load_dataset("folder", str(root), image_size=size)
    with pytest.raises(CompactCLError, match="data.options.image_size"):
        compactcl.data.datasets.lazy_folder(str(root), image_size=size)


# --- peak memory, measured in a fresh process ------------------------------------------------

_RSS_CHILD = r"""
import json, resource, sys, tempfile
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import compactcl, crafted
from bounds import Clock
folder = Path(tempfile.mkdtemp())
cases = [(crafted.checkpoint_many_branches(folder), compactcl.load),
         (crafted.checkpoint_padded_many_classes(folder), compactcl.load),
         (crafted.artifact_huge_sparse_layer(folder), compactcl.load),
         (crafted.idx_gzip_bomb(folder, 256), compactcl.data.read_idx),
         (crafted.idx_huge_label(folder / "m"), lambda p: compactcl.data.load_dataset("mnist", str(p)))]
times = []
for path, load in cases:
    clock = Clock()
    try:
        load(path)
    except compactcl.CompactCLError:
        times.append({"within": clock.within(float(sys.argv[2])), "took": str(clock)})
try:  # VmHWM: this process's own peak; ru_maxrss can carry over the parent's peak through fork + exec
    peak_kb = int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1])
except (OSError, StopIteration):
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"times": times, "peak_mb": peak_kb / 1024}))
"""


def test_crafted_files_are_refused_under_500_mb_peak_rss() -> None:
    """Peak RSS of one fresh process that loads five crafted files (torch's import alone is ~280 MB)."""
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(compactcl.__file__).parents[1]),
                                                        os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", _RSS_CHILD, str(Path(__file__).parent), str(FAST_S)], capture_output=True,
                         text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(result["times"]) == 5, result  # every file refused with CompactCLError
    assert all(t["within"] for t in result["times"]), result
    assert result["peak_mb"] < 500, result
