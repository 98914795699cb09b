"""Small CIFAR files in each distributed format, written by the tests (no download, no real data)."""

from __future__ import annotations

import pickle
import tarfile
from pathlib import Path

import numpy as np

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def images(classes: int, per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3, 32, 32) uint8 images whose mean colour depends on the class, and labels (N,)."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(classes), per_class)
    rng.shuffle(y)
    base = (y[:, None, None, None] * 37 % 200).astype(np.int64)  # a class-dependent brightness
    x = np.clip(base + rng.integers(0, 56, size=(len(y), 3, 32, 32)), 0, 255).astype(np.uint8)
    return x, y


def records(x: np.ndarray, y: np.ndarray, coarse: np.ndarray | None = None) -> bytes:
    """Binary records: [coarse byte] label byte, then the 3,072 pixels (R, G, B planes)."""
    labels = [y[:, None]] if coarse is None else [coarse[:, None], y[:, None]]
    return np.concatenate([*[lab.astype(np.uint8) for lab in labels], x.reshape(len(x), -1)], axis=1).tobytes()


def cifar10_binary(folder: Path, per_class: int = 3, test_per_class: int = 2) -> dict[str, np.ndarray]:
    """cifar-10-batches-bin/ under ``folder``: five training batches, the test batch, the names."""
    d = folder / "cifar-10-batches-bin"
    d.mkdir(parents=True)
    tx, ty = images(10, per_class * 5, seed=1)
    vx, vy = images(10, test_per_class, seed=2)
    for i, part in enumerate(np.array_split(np.arange(len(ty)), 5)):
        (d / f"data_batch_{i + 1}.bin").write_bytes(records(tx[part], ty[part]))
    (d / "test_batch.bin").write_bytes(records(vx, vy))
    (d / "batches.meta.txt").write_text("\n".join(CIFAR10_NAMES) + "\n\n")
    return {"train_x": tx, "train_y": ty, "test_x": vx, "test_y": vy}


def cifar10_python(folder: Path, per_class: int = 3, test_per_class: int = 2) -> dict[str, np.ndarray]:
    """cifar-10-batches-py/: pickled dicts with bytes keys, as the published batches (protocol 2)."""
    d = folder / "cifar-10-batches-py"
    d.mkdir(parents=True)
    tx, ty = images(10, per_class * 5, seed=1)
    vx, vy = images(10, test_per_class, seed=2)

    def batch(x: np.ndarray, y: np.ndarray, label: str) -> bytes:
        return pickle.dumps({b"batch_label": label.encode(), b"labels": [int(v) for v in y],
                             b"data": x.reshape(len(x), -1), b"filenames": [b"img_%d.png" % i for i in range(len(y))]},
                            protocol=2)

    for i, part in enumerate(np.array_split(np.arange(len(ty)), 5)):
        (d / f"data_batch_{i + 1}").write_bytes(batch(tx[part], ty[part], f"training batch {i + 1} of 5"))
    (d / "test_batch").write_bytes(batch(vx, vy, "testing batch 1 of 1"))
    (d / "batches.meta").write_bytes(pickle.dumps({b"label_names": [n.encode() for n in CIFAR10_NAMES],
                                                   b"num_cases_per_batch": 10000, b"num_vis": 3072}, protocol=2))
    return {"train_x": tx, "train_y": ty, "test_x": vx, "test_y": vy}


def cifar100_binary(folder: Path, per_class: int = 5, test_per_class: int = 2, tarball: bool = False) -> dict:
    """cifar-100-binary/ (train.bin, test.bin, label names) under ``folder``, or a .tar.gz of it."""
    d = folder / "cifar-100-binary"
    d.mkdir(parents=True)
    tx, ty = images(100, per_class, seed=3)
    vx, vy = images(100, test_per_class, seed=4)
    (d / "train.bin").write_bytes(records(tx, ty, coarse=ty // 5))
    (d / "test.bin").write_bytes(records(vx, vy, coarse=vy // 5))
    (d / "fine_label_names.txt").write_text("".join(f"fine{i}\n" for i in range(100)))
    (d / "coarse_label_names.txt").write_text("".join(f"coarse{i}\n" for i in range(20)))
    out = {"train_x": tx, "train_y": ty, "test_x": vx, "test_y": vy, "root": d}
    if tarball:
        archive = folder / "cifar-100-binary.tar.gz"
        with tarfile.open(archive, "w:gz") as tar:
            tar.add(d, arcname="cifar-100-binary")
        out["root"] = archive
    return out
