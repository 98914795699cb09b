"""Classify image files with a deployed model — ``.onnx`` (ONNX Runtime) or ``.ccl``/checkpoint
(PyTorch) — using the preprocessing and class names the file records.

Inputs: PNG/JPEG/... images (Pillow) and IDX arrays (MNIST format, ``*idx*`` names, raw or
gzip: one image per row), or folders of them. Each image is converted to the model's channels,
scaled to 0..1 (``pixel / 255``), standardised per channel with the recorded mean and std,
and must have the model's size unless the model was trained on resized images (image folders)
or ``resize`` is asked for.

>>> p = Predictor.open("run/final/deployed.onnx")  # doctest: +SKIP
>>> p.predict(["seven.png"], top_k=3)[0].top[0]  # doctest: +SKIP
('7', 0.98)
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import CompactCLError

__all__ = ["Prediction", "Predictor", "deployed_file", "read_inputs", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".pgm", ".ppm")
MAX_PIXELS = 2 ** 26  # as data/: a small file must not decode to gigabytes


@dataclass
class Prediction:
    source: str  # file, or file[i] for a row of an IDX array
    top: list[tuple[str, float]]  # (class name, probability), most probable first
    class_ids: list[int] = field(default_factory=list)  # dataset class ids of ``top``

    def as_dict(self) -> dict[str, Any]:
        return {"image": self.source, "class": self.top[0][0], "probability": self.top[0][1],
                "top": [{"class": n, "class_id": i, "probability": p}
                        for (n, p), i in zip(self.top, self.class_ids)]}


def _is_idx(path: Path) -> bool:
    return "idx" in path.name.lower()


def _image(path: Path, channels: int, size: int, resize: bool) -> np.ndarray:
    """One image file -> float32 (C, size, size) in 0..1."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                if im.width * im.height > MAX_PIXELS:
                    raise CompactCLError(f"{path}: image too large ({im.width}x{im.height} pixels); shrink it")
                if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):  # 16-bit grey: to 0..255 first
                    im = Image.fromarray((np.asarray(im).astype(np.int64).clip(0, 65535) * 255 // 65535)
                                         .astype(np.uint8), "L")
                im = im.convert("L" if channels == 1 else "RGB")
                if im.size != (size, size):
                    if not resize:
                        raise CompactCLError(f"{path}: image is {im.width}x{im.height}, the model takes {size}x{size}; "
                                             f"resize it to {size}x{size}, or pass --resize to resize it bilinearly")
                    im = im.resize((size, size), Image.BILINEAR)
                a = np.asarray(im, dtype=np.float32) / 255.0
    except CompactCLError:
        raise
    except FileNotFoundError as e:
        raise CompactCLError(f"no such file: {path}") from e
    except Exception as e:  # noqa: BLE001 - Pillow raises UnidentifiedImageError, OSError, SyntaxError, ...
        raise CompactCLError(f"{path}: not a readable image ({type(e).__name__}: {e}); pass PNG/JPEG images, an IDX "
                             "file (MNIST format, 'idx' in its name) or a folder of them") from e
    return a[None] if channels == 1 else a.transpose(2, 0, 1)  # (C, H, W)


def _idx(path: Path, channels: int, size: int) -> list[tuple[str, np.ndarray]]:
    from ..data.datasets import read_idx

    a = read_idx(path)
    if a.ndim == 2:
        a = a[None]
    if a.ndim == 3:
        a = a[:, None]  # (N, 1, H, W)
    if a.ndim != 4 or a.shape[1] != channels or a.shape[2:] != (size, size):
        raise CompactCLError(f"{path}: IDX array of shape {a.shape}, the model takes images (N, {channels}, {size}, "
                             f"{size}); pass images of that size (an IDX of labels is not images)")
    if a.dtype != np.uint8:
        raise CompactCLError(f"{path}: IDX values are {a.dtype}, expected uint8 pixels 0..255")
    x = a.astype(np.float32) / 255.0
    return [(f"{path}[{i}]", x[i]) for i in range(len(x))]


def read_inputs(paths: list[str | os.PathLike], channels: int, size: int, resize: bool = False,
                ) -> tuple[list[str], np.ndarray]:
    """(names, pixels (N, C, size, size) in 0..1) of image files, IDX files and folders of them (sorted)."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and (f.suffix.lower() in IMAGE_SUFFIXES or _is_idx(f)))
            if not found:
                raise CompactCLError(f"{p}: no images in this folder (looked for {', '.join(IMAGE_SUFFIXES)} and IDX "
                                     "files); pass image files or a folder that holds them")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise CompactCLError(f"no such file or folder: {p}")
    names, xs = [], []
    for f in files:
        rows = _idx(f, channels, size) if _is_idx(f) else [(str(f), _image(f, channels, size, resize))]
        for name, x in rows:
            names.append(name)
            xs.append(x)
    return names, np.stack(xs).astype(np.float32)


def deployed_file(path: str | os.PathLike) -> Path:
    """``path`` itself, or for a run folder the deployed model a device would run: ``final/deployed.onnx``,
    else ``final/deployed.ccl``."""
    path = Path(path)
    if not path.is_dir():
        return path
    for name in ("deployed.onnx", "deployed.ccl"):
        if (path / "final" / name).is_file():
            return path / "final" / name
    raise CompactCLError(f"{path} is a folder without final/deployed.onnx or final/deployed.ccl; pass a run folder "
                         "written by `compactcl run` with a compress: section, or a deployed .onnx/.ccl file")


class Predictor:
    """A model file with what it needs to classify images: :func:`describe`'s fields and a logits function."""

    def __init__(self, path: Path, description: dict[str, Any], logits: Callable[[np.ndarray], np.ndarray]):
        self.path, self.description, self._logits = path, description, logits

    @classmethod
    def open(cls, path: str | os.PathLike) -> "Predictor":
        """A deployed ``.onnx`` (ONNX Runtime) or ``.ccl`` (PyTorch); a run folder means its
        ``final/deployed.onnx`` (else ``final/deployed.ccl``), as on the command line."""
        path = deployed_file(path)
        if not path.is_file():
            raise CompactCLError(f"no such model file: {path}; pass a deployed.onnx or deployed.ccl")
        if path.suffix.lower() == ".onnx":
            return cls._onnx(path)
        return cls._torch(path)

    @classmethod
    def _onnx(cls, path: Path) -> "Predictor":
        import onnxruntime as ort

        from .compressed import read_metadata

        meta = read_metadata(path)
        desc = {"class_names": meta["class_names"], "class_ids": meta.get("class_ids") or [],
                "input": {"channels": meta["input_channels"], "size": meta["input_size"]},
                "normalization": meta["normalization"]}
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        return cls(path, desc, lambda x: sess.run(None, {name: x})[0])

    @classmethod
    def _torch(cls, path: Path) -> "Predictor":
        import torch

        from ..models.checkpoint import read_header
        from .compressed import describe
        from .load import load

        meta = read_header(path).get("meta") or {}
        model = load(path)
        spec = getattr(model, "spec", None) or {}
        if not meta.get("classes") or not spec.get("input_size"):
            raise CompactCLError(f"{path}: its header records no classes or input size, so it cannot say what its "
                                 "outputs mean; use a model file written by `compactcl run`")
        # a deployed .ccl carries the description; older files and checkpoints: derive it from the stream meta
        desc = describe(meta, (int(spec.get("in_channels", 1)), int(spec["input_size"]), int(spec["input_size"])))
        desc.update({k: meta[k] for k in ("class_names", "input", "normalization") if k in meta})

        def logits(x: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return model(torch.from_numpy(x)).numpy()

        return cls(path, desc, logits)

    def predict(self, inputs: list[str | os.PathLike], top_k: int = 1, resize: bool = False) -> list[Prediction]:
        d = self.description
        channels, size = int(d["input"]["channels"]), int(d["input"]["size"])
        norm = d["normalization"]
        names, x = read_inputs(inputs, channels, size, resize or "resize" in norm)
        mean = np.asarray(norm["mean"], np.float32).reshape(-1, 1, 1)
        std = np.asarray(norm["std"], np.float32).reshape(-1, 1, 1)
        x = ((x - mean) / std).astype(np.float32)  # (N, C, H, W)
        z = np.concatenate([self._logits(x[i: i + 256]) for i in range(0, len(x), 256)])
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        classes, ids = d["class_names"], list(d.get("class_ids") or [])
        if len(classes) != p.shape[1]:
            raise CompactCLError(f"{self.path}: {p.shape[1]} outputs but {len(classes)} class names recorded; "
                                 "the file is inconsistent, export it again")
        k = max(1, min(int(top_k), p.shape[1]))
        out = []
        for name, row in zip(names, p):
            order = np.argsort(-row, kind="stable")[:k]
            out.append(Prediction(name, [(str(classes[i]), float(row[i])) for i in order],
                                  [int(ids[i]) for i in order] if len(ids) == len(classes) else []))
        return out
