"""Crafted hostile files, built small: real headers edited the way an attacker would (checksums recomputed).

Shared by tests/test_bounded_readers.py, tests/test_bad_input_corpus.py and scripts/measure_crafted_rss.py.
Every builder writes into ``folder`` and returns the path it wrote.
"""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from compactcl.models import DERNet, IncrementalNet, save_checkpoint
from compactcl.models.checkpoint import file_digest, read_header


def resign(path: Path, header: dict[str, Any], tensors: dict[str, torch.Tensor] | None = None) -> Path:
    """Rewrite ``path`` with ``header`` and a freshly computed checksum, as a crafter would (a compact
    .ccl keeps its data; a safetensors file gets ``tensors`` when given)."""
    from compactcl.utils.frame import is_frame, pack_frame, read_frame

    if tensors is None:
        raw = path.read_bytes()
        if is_frame(raw):
            path.write_bytes(pack_frame(header, read_frame(raw, str(path))[1]))
            return path
        tensors = st_load(raw)
    header = {k: v for k, v in header.items() if k != "sha256"}
    header["sha256"] = file_digest(tensors, header)
    path.write_bytes(st_save(tensors, metadata={"compactcl": json.dumps(header)}))
    return path


def real_checkpoint(folder: Path, name: str = "m.safetensors", der: bool = False) -> Path:
    torch.manual_seed(0)
    if der:
        net: torch.nn.Module = DERNet("cnn", 1, 8, backbone_kwargs={"width": 4})
        net.grow(2)
        net.grow(2)
        net.end_task()
    else:
        net = IncrementalNet("cnn", 1, 8, num_classes=4, backbone_kwargs={"width": 4})
    save_checkpoint(net.eval(), folder / name)
    return folder / name


def real_artifact(folder: Path, name: str = "m.ccl") -> Path:
    from compactcl.compress.quantize import LinearQuantConfig, quantize_
    from compactcl.export.artifact import save_artifact

    torch.manual_seed(0)
    net = IncrementalNet("cnn", 1, 8, num_classes=4, backbone_kwargs={"width": 4}).eval()
    save_artifact(quantize_(net, LinearQuantConfig(bits=4)), folder / name)
    return folder / name


def checkpoint_many_branches(folder: Path) -> Path:
    """A real DER checkpoint (~40 KB) whose spec claims 10**9 branches."""
    path = real_checkpoint(folder, "branches.safetensors", der=True)
    header = read_header(path)
    header["spec"]["branches"] = 10 ** 9
    return resign(path, header)


def checkpoint_many_classes(folder: Path) -> Path:
    """A real checkpoint whose spec claims 15e6 classes (a float, as a JSON crafter may write it)."""
    path = real_checkpoint(folder, "classes.safetensors")
    header = read_header(path)
    header["spec"]["num_classes"] = 15e6
    return resign(path, header)


def checkpoint_many_classes_int(folder: Path) -> Path:
    """The same with an int: 15,000,000 classes on an 8-feature head is 120M values, under the old 1000x slack."""
    path = real_checkpoint(folder, "classes_int.safetensors")
    header = read_header(path)
    header["spec"]["num_classes"] = 15_000_000
    return resign(path, header)


def checkpoint_long_hidden(folder: Path) -> Path:
    """An MLP spec whose hidden list has 10**6 layers (a meta-device build of it alone takes minutes)."""
    path = real_checkpoint(folder, "hidden.safetensors")
    header = read_header(path)
    header["spec"].update(backbone="mlp", backbone_kwargs={"hidden": [1] * 10 ** 6})
    return resign(path, header)


def artifact_huge_layer(folder: Path) -> Path:
    """A real .ccl whose first quantized layer claims shape [1e5, 1e5] (9.3 GiB as float32)."""
    path = real_artifact(folder, "huge.ccl")
    header = read_header(path)
    for entry in header["layers"]:
        if "enc" in entry:
            entry["shape"] = [100_000, 100_000]
            return resign(path, header)
    raise AssertionError("no quantized layer")


def artifact_huge_sparse_layer(folder: Path) -> Path:
    """A .ccl float entry made sparse with no stored index and shape [1e5, 1e5]: nothing backs its zeros."""
    path = real_artifact(folder, "huge_sparse.ccl")
    header = read_header(path)
    header["layers"][artifact_keys(header).index("head.bias")] = {"shape": [100_000, 100_000], "dt": "f32",
                                                                  "sparse": 2, "ib": 8, "ne": 0}
    return resign(path, header)


def artifact_keys(header: dict[str, Any]) -> list[str]:
    """The tensor names of a compact .ccl header's layer table (its spec's model, in state-dict order)."""
    from compactcl.models.checkpoint import spec_layout

    return [k for k, _ in spec_layout(header["spec"], len(header["layers"]), "test")]


def idx_bytes(arr: np.ndarray, code: int = 0x08, shape: tuple[int, ...] | None = None) -> bytes:
    shape = arr.shape if shape is None else shape
    return bytes([0, 0, code, len(shape)]) + struct.pack(f">{len(shape)}I", *shape) + arr.tobytes()


def write_mnist(root: Path, n_train: int = 40, n_test: int = 20, size: int = 6, classes: int = 4,
                gz: bool = False) -> Path:
    """A small valid MNIST-format folder (every class in train and test)."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 255, (n, size, size), dtype=np.uint8)
        y = (np.arange(n) % classes).astype(np.uint8)
        suffix = ".gz" if gz else ""
        opener: Callable[..., Any] = gzip.open if gz else open
        with opener(root / f"{prefix}-images-idx3-ubyte{suffix}", "wb") as f:
            f.write(idx_bytes(x))
        with opener(root / f"{prefix}-labels-idx1-ubyte{suffix}", "wb") as f:
            f.write(idx_bytes(y))
    return root


def idx_gzip_bomb(folder: Path, body_mib: int = 2048) -> Path:
    """A small gzip IDX whose header claims 3 images of 28x28 followed by ``body_mib`` MiB of zeros."""
    path = folder / "train-images-idx3-ubyte.gz"
    chunk = bytes(2 ** 20)
    with gzip.open(path, "wb", compresslevel=9) as f:
        f.write(idx_bytes(np.zeros(0, np.uint8), shape=(3, 28, 28)))
        for _ in range(body_mib):
            f.write(chunk)
    return path


def idx_huge_claim(folder: Path) -> Path:
    """A tiny gzip IDX whose header claims 2**31 images of 28x28 (1.5 TiB)."""
    path = folder / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros(64, np.uint8), shape=(2 ** 31, 28, 28))))
    return path


def idx_huge_label(root: Path) -> Path:
    """A valid MNIST folder whose last training label is 2e9 (int32 IDX labels)."""
    write_mnist(root)
    y = (np.arange(40) % 4).astype(">i4")
    y[-1] = 2_000_000_000
    (root / "train-labels-idx1-ubyte").write_bytes(idx_bytes(y, code=0x0C))
    return root


def checkpoint_padded_many_classes(folder: Path) -> Path:
    """15M classes on an 8-feature head (120M values) plus a 135k-value padding tensor: the old 1000x
    slack let it build the 480 MB head (2.1 GB peak) before refusing the unexpected tensor."""
    path = real_checkpoint(folder, "padded.safetensors")
    header = read_header(path)
    header["spec"]["num_classes"] = 15_000_000
    tensors = st_load(path.read_bytes())
    tensors["pad"] = torch.zeros(135_000)
    return resign(path, header, tensors)


# --- image folders ---------------------------------------------------------------------------

def image_folder(root: Path, per_class: int = 3, classes: tuple[str, ...] = ("a", "b"), size: int = 6) -> Path:
    """A valid folder dataset: one sub-folder of small PNGs per class."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for name in classes:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


def _chunk(kind: bytes, data: bytes) -> bytes:
    import zlib

    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_bomb(width: int, height: int) -> bytes:
    """A PNG header claiming width x height grey pixels, with a tiny compressed body (a decompression bomb)."""
    import zlib

    ihdr = _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
    return PNG_SIGNATURE + ihdr + _chunk(b"IDAT", zlib.compress(bytes(1000))) + _chunk(b"IEND", b"")


def png_syntax_error() -> bytes:
    """A PNG whose second IDAT chunk has a broken chunk type: Pillow raises SyntaxError while decoding."""
    import zlib

    z = zlib.compress(b"".join(b"\0" + bytes(range(24)) for _ in range(8)))  # 8 rows of 8 RGB pixels
    ihdr = _chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 8, 2, 0, 0, 0))
    broken = struct.pack(">I", len(z) - 10) + b"\xff\xff\xff\xff" + z[10:] + bytes(4)
    return PNG_SIGNATURE + ihdr + _chunk(b"IDAT", z[:10]) + broken + _chunk(b"IEND", b"")


def bmp_value_error() -> bytes:
    """A palette BMP claiming 306 palette colours: Pillow raises ValueError ("invalid palette size")."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), np.uint8)).convert("P").save(buf, "BMP")
    raw = bytearray(buf.getvalue())
    raw[46:50] = struct.pack("<I", 306)
    return bytes(raw)


def png16(values: np.ndarray) -> bytes:
    """A 16-bit greyscale PNG (Pillow mode I;16) of ``values``."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(values.astype(np.uint16)).save(buf, "PNG")
    return buf.getvalue()
