"""CIFAR-10/100 readers: binary records and the python (pickle) version, written here in small files."""

from __future__ import annotations

import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest

import cifar_files
from compactcl import CompactCLError
from compactcl.data.cifar import read_cifar_records, safe_unpickle
from compactcl.data.datasets import list_datasets, load_dataset


def _pixels(splits, which: str) -> np.ndarray:
    """The stored uint8 pixels back from the standardised float tensors."""
    n = splits.normalization
    channel = lambda v: np.asarray(v).reshape(-1, 1, 1)  # noqa: E731 - one number per channel
    x = getattr(splits, which).x.numpy() * channel(n["std"]) + channel(n["mean"])
    return np.rint(x * 255).astype(np.int64)


def test_registered() -> None:
    assert {"cifar10", "cifar100"} <= set(list_datasets())


def test_cifar10_binary_folder_reads_every_pixel_and_label(tmp_path: Path) -> None:
    want = cifar_files.cifar10_binary(tmp_path)
    for root in (tmp_path, tmp_path / "cifar-10-batches-bin"):  # torchvision's root or the folder itself
        ds = load_dataset("cifar10", str(root))
        assert ds.num_classes == 10 and ds.class_names == cifar_files.CIFAR10_NAMES
        assert ds.train.x.shape == (150, 3, 32, 32) and ds.test.x.shape == (20, 3, 32, 32)
        np.testing.assert_array_equal(ds.train.y.numpy(), want["train_y"])  # batch 1..5 in order
        np.testing.assert_array_equal(_pixels(ds, "train"), want["train_x"])
        np.testing.assert_array_equal(_pixels(ds, "test"), want["test_x"])
        # stats from train only, per channel
        np.testing.assert_allclose(ds.normalization["mean"], want["train_x"].mean((0, 2, 3)) / 255, atol=1e-9)


def test_cifar100_binary_tarball_fine_and_coarse(tmp_path: Path) -> None:
    want = cifar_files.cifar100_binary(tmp_path, tarball=True)
    fine = load_dataset("cifar100", str(want["root"]))
    assert fine.num_classes == 100 and fine.class_names[:2] == ["fine0", "fine1"]
    np.testing.assert_array_equal(fine.test.y.numpy(), want["test_y"])
    np.testing.assert_array_equal(_pixels(fine, "train"), want["train_x"])
    coarse = load_dataset("cifar100", str(want["root"]), labels="coarse")
    assert coarse.num_classes == 20 and coarse.class_names[-1] == "coarse19"
    np.testing.assert_array_equal(coarse.train.y.numpy(), want["train_y"] // 5)


def test_python_version_equals_the_binary_version(tmp_path: Path) -> None:
    cifar_files.cifar10_binary(tmp_path / "bin")
    cifar_files.cifar10_python(tmp_path / "py")
    b, p = load_dataset("cifar10", str(tmp_path / "bin")), load_dataset("cifar10", str(tmp_path / "py"))
    assert p.class_names == cifar_files.CIFAR10_NAMES
    assert np.array_equal(b.train.x.numpy(), p.train.x.numpy()) and np.array_equal(b.test.y.numpy(), p.test.y.numpy())


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("where", ["test_batch", "batches.meta", "data_batch_1"])
def test_malicious_pickle_is_refused_without_running(tmp_path: Path, where: str) -> None:
    cifar_files.cifar10_python(tmp_path)
    marker = tmp_path / "pwned"
    payload = {b"data": np.zeros((10, 3072), np.uint8), b"labels": list(range(10)), b"x": _Evil(marker)}
    (tmp_path / "cifar-10-batches-py" / where).write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(CompactCLError, match=r"asks for (posix|os|nt)\.system.*refused without running"):
        load_dataset("cifar10", str(tmp_path))
    assert not marker.exists()


@pytest.mark.parametrize("payload", [
    pickle.dumps(eval),  # a builtin
    b"cbuiltins\ngetattr\n.",  # the classic gadget, hand-written
    pickle.dumps(np.array([object()], dtype=object), protocol=2),  # object arrays unpickle arbitrary items
    pickle.dumps(_Evil(Path("/nonexistent/x"))),
    b"\x80\x02}q\x00",  # truncated
])
def test_safe_unpickle_refuses_anything_but_plain_data(payload: bytes) -> None:
    with pytest.raises(CompactCLError, match="refused|not a readable pickle"):
        safe_unpickle(payload, "crafted")


def test_safe_unpickle_reads_arrays_of_every_protocol() -> None:
    a = np.arange(12, dtype=np.uint8).reshape(3, 4)
    for protocol in range(2, pickle.HIGHEST_PROTOCOL + 1):
        out = safe_unpickle(pickle.dumps({"a": a, "l": [b"x", "y", 1.5]}, protocol=protocol))
        assert np.array_equal(out["a"], a) and out["l"] == [b"x", "y", 1.5]


def test_records_must_divide_exactly_and_name_the_cause(tmp_path: Path) -> None:
    x, y = read_cifar_records(bytes([3]) + bytes(range(256)) * 12, label_bytes=1)
    assert int(y[0, 0]) == 3 and int(x[0, 0, 0, 5]) == 5 and int(x[0, 2, 31, 31]) == 255
    with pytest.raises(CompactCLError, match="not a whole number of 3073-byte records"):
        read_cifar_records(bytes(3073 * 2 + 5), label_bytes=1)
    with pytest.raises(CompactCLError, match="CIFAR-100 2"):  # CIFAR-100 records read as CIFAR-10
        read_cifar_records(bytes(3074 * 3), label_bytes=1)


def test_truncated_missing_and_oversized_files_are_named(tmp_path: Path) -> None:
    cifar_files.cifar10_binary(tmp_path)
    folder = tmp_path / "cifar-10-batches-bin"
    with pytest.raises(CompactCLError, match="over max_in_memory_mb"):  # bounded by sizes, before reading
        load_dataset("cifar10", str(tmp_path), max_in_memory_mb=0.25)  # ~0.5 MB of uint8 pixels
    (folder / "data_batch_2.bin").write_bytes((folder / "data_batch_2.bin").read_bytes()[:-7])
    with pytest.raises(CompactCLError, match="data_batch_2.bin: .* not a whole number"):
        load_dataset("cifar10", str(tmp_path))
    (folder / "data_batch_2.bin").unlink()
    with pytest.raises(CompactCLError, match="missing .*data_batch_2.bin"):
        load_dataset("cifar10", str(tmp_path))
    with pytest.raises(CompactCLError, match="no CIFAR-100 files"):
        load_dataset("cifar100", str(tmp_path))
    with pytest.raises(CompactCLError, match="needs data.root"):
        load_dataset("cifar10", None)


def test_label_out_of_range_and_wrong_name_count(tmp_path: Path) -> None:
    cifar_files.cifar10_binary(tmp_path)
    folder = tmp_path / "cifar-10-batches-bin"
    (folder / "batches.meta.txt").write_text("a\nb\n")
    with pytest.raises(CompactCLError, match="lists 2 class names for 10 classes"):
        load_dataset("cifar10", str(tmp_path))
    (folder / "batches.meta.txt").unlink()  # names fall back to CIFAR-10's own
    assert load_dataset("cifar10", str(tmp_path)).class_names[0] == "airplane"
    data = bytearray((folder / "test_batch.bin").read_bytes())
    data[0] = 200  # label 200 with 10 classes' worth of images
    (folder / "test_batch.bin").write_bytes(bytes(data))
    with pytest.raises(CompactCLError, match="found label 200"):
        load_dataset("cifar10", str(tmp_path))


def test_a_tarball_that_is_not_one(tmp_path: Path) -> None:
    bad = tmp_path / "cifar-10-binary.tar.gz"
    bad.write_bytes(b"not a tarball at all")
    with pytest.raises(CompactCLError, match="not a readable tarball"):
        load_dataset("cifar10", str(bad))
    with tarfile.open(tmp_path / "empty.tar", "w"):
        pass
    with pytest.raises(CompactCLError, match="no CIFAR-10 files"):
        load_dataset("cifar10", str(tmp_path / "empty.tar"))
