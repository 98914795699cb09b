import gzip
import struct

import numpy as np
import pytest
import torch

from compactcl import CompactCLError
from compactcl.data import class_incremental, from_arrays, load_dataset, read_idx
from compactcl.data.datasets import list_datasets


def _write_idx(path, arr: np.ndarray, gz: bool):
    header = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    data = header + arr.astype(np.uint8).tobytes()
    (gzip.open if gz else open)(path, "wb").write(data)


@pytest.mark.parametrize("gz", [True, False])
def test_idx_roundtrip(tmp_path, gz):
    arr = np.random.default_rng(0).integers(0, 255, (7, 5, 5), dtype=np.uint8)
    p = tmp_path / ("a.idx" + (".gz" if gz else ""))
    _write_idx(p, arr, gz)
    assert np.array_equal(read_idx(p), arr)


def test_idx_truncated_says_so(tmp_path):
    arr = np.zeros((4, 3, 3), dtype=np.uint8)
    p = tmp_path / "t.idx"
    _write_idx(p, arr, gz=False)
    p.write_bytes(p.read_bytes()[:-5])
    with pytest.raises(CompactCLError, match="truncated"):
        read_idx(p)


def _mnist_folder(root, n_train=40, n_test=20, size=6):
    rng = np.random.default_rng(1)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        _write_idx(root / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 255, (n, size, size)), True)
        _write_idx(root / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 4, False)


def test_mnist_folder_gz_and_raw_mixed(tmp_path):
    _mnist_folder(tmp_path)
    ds = load_dataset("mnist", root=str(tmp_path))
    assert ds.train.x.shape == (40, 1, 6, 6) and ds.test.x.shape == (20, 1, 6, 6)
    assert ds.num_classes == 4
    assert abs(float(ds.train.x.mean())) < 1e-5  # standardised with train statistics


def test_missing_files_say_where_and_how(tmp_path):
    with pytest.raises(CompactCLError) as e:
        load_dataset("fashion-mnist", root=str(tmp_path))
    assert str(tmp_path) in str(e.value) and "make data" in str(e.value)


def test_digits_shapes_and_fixed_split(digits):
    assert digits.train.x.shape[1:] == (1, 8, 8)
    assert len(digits.train) + len(digits.test) == 1797
    again = load_dataset("digits")
    assert torch.equal(again.test.y, digits.test.y)


def test_stream_equal_tasks_seeded_order(digits):
    s0 = class_incremental(digits, tasks=5, seed=0)
    s1 = class_incremental(digits, tasks=5, seed=1)
    assert [len(t.classes) for t in s0] == [2] * 5
    assert sorted(c for t in s0 for c in t.classes) == list(range(10))
    assert s0.class_order != s1.class_order
    assert class_incremental(digits, tasks=5, seed=0).class_order == s0.class_order
    for t in s0:  # labels are positions in the class order
        assert set(t.train.y.tolist()) == set(t.labels) == set(t.test.y.tolist())
        assert [s0.class_order[label] for label in t.labels] == t.classes


def test_val_is_carved_from_train_and_test_untouched(digits):
    s = class_incremental(digits, tasks=2, seed=0, val_fraction=0.2)
    n_train = sum(len(t.train) + len(t.val) for t in s)
    assert n_train == len(digits.train)
    assert sum(len(t.test) for t in s) == len(digits.test)
    for t in s:
        assert 0.15 < len(t.val) / (len(t.val) + len(t.train)) < 0.25


def test_b50_larger_first_task(digits):
    s = class_incremental(digits, tasks=3, first_task_classes=6, seed=0)
    assert [len(t.classes) for t in s] == [6, 2, 2]


def test_impossible_split_is_explained(digits):
    with pytest.raises(CompactCLError, match="classes_per_task"):
        class_incremental(digits, tasks=3, seed=0)
    with pytest.raises(CompactCLError, match="dataset has 10"):
        class_incremental(digits, tasks=4, classes_per_task=3, seed=0)


def test_a_stream_that_leaves_classes_out_is_refused_unless_asked_for(digits):
    from compactcl.pipeline.recipe import load_recipe
    from compactcl.pipeline.stream import build_stream

    # the default recipe is 5 x 2: --set data.tasks=3 alone would learn 6 of the 10 digits
    with pytest.raises(CompactCLError) as e:
        build_stream(load_recipe(None, ["data.tasks=3"]), digits)
    msg = str(e.value)
    assert "data.tasks=3 x data.classes_per_task=2 covers 6 of the dataset's 10 classes and would leave 4 out" in msg
    assert "data.tasks=5 for all of them" in msg and "data.all_classes=false" in msg
    with pytest.raises(CompactCLError, match="first_task_classes=6.*covers 8 of"):
        class_incremental(digits, tasks=2, classes_per_task=2, first_task_classes=6)
    s = build_stream(load_recipe(None, ["data.tasks=3", "data.all_classes=false"]), digits)  # the opt-in
    assert [len(t.classes) for t in s] == [2, 2, 2] and len({c for t in s for c in t.classes}) == 6


def test_from_arrays_and_label_count_mismatch():
    x = np.random.rand(10, 4, 4)
    ds = from_arrays(x, np.arange(10) % 2, x[:4], np.arange(4) % 2)
    assert ds.train.x.shape == (10, 1, 4, 4)
    with pytest.raises(CompactCLError, match="labels"):
        from_arrays(x, np.arange(9) % 2, x[:4], np.arange(4) % 2)


def test_folder_dataset(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(6):
            Image.fromarray(rng.integers(0, 255, (20, 14, 3), dtype=np.uint8)).save(tmp_path / cls / f"{i}.png")
    ds = load_dataset("folder", root=str(tmp_path), image_size=16, channels=3)
    assert ds.train.x.shape[1:] == (3, 16, 16)
    assert ds.class_names == ["cat", "dog"]
    assert ds.normalization["resize"] == [16, 16]
    (tmp_path / "empty").mkdir()
    with pytest.raises(CompactCLError, match="no images"):
        load_dataset("folder", root=str(tmp_path))


def test_registry_lists_everything():
    assert {"digits", "idx", "fashion-mnist", "mnist", "folder"} <= set(list_datasets())
    with pytest.raises(CompactCLError, match="choose one of"):
        load_dataset("imagenet")
