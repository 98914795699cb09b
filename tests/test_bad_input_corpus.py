"""A seeded corpus of bad files fed to the CLI verbs that read them: exit 2 and a named error, never a traceback.

Checkpoints and .ccl artifacts (truncated, bit-flipped, garbage, headers crafted and re-signed) go
to ``quantize``, ``prune``, ``export`` and ``sensitivity``; IDX folders and image folders go to
``run --set data.dataset=idx|folder --set data.root=DIR``. Most cases run in-process through
``compactcl.cli.main.main(argv)`` (an exception escaping it is a traceback); one case of each kind
also runs in a subprocess. A generated input that still loads is not bad and is left out, so the
corpus is filtered by the library's own loader first, and any error other than CompactCLError
there is a failure too.
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
from safetensors.torch import load as st_load

import compactcl
from compactcl import CompactCLError
from compactcl.cli.main import main
from compactcl.models.checkpoint import read_header

import crafted
from bounds import Clock

SEED = 14
CALL_S = 5.0  # one CLI call on a bad file (a load that fails) must end within this, on a busy 2-core box

MODEL_VERBS: list[list[str]] = [["quantize", "--out", "{out}/o.ccl"], ["prune", "--ratio", "0.5", "--out", "{out}/o.safetensors"],
                                ["export", "--onnx", "--out", "{out}/o.onnx"], ["sensitivity", "--out", "{out}/sens"]]


# --- generators: each returns (name, path) pairs; what still loads is dropped later -----------------------

def _mutations(raw: bytes, rng: random.Random, n: int, header_end: int) -> list[tuple[str, bytes]]:
    """Truncations, bit flips (anywhere and in the JSON header) and garbage, ``n`` of each kind."""
    out = []
    for i in range(n):
        out.append((f"cut{i}", raw[: rng.randrange(len(raw))]))
        flipped = bytearray(raw)
        for _ in range(rng.randint(1, 4)):
            flipped[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
        out.append((f"flip{i}", bytes(flipped)))
        in_header = bytearray(raw)
        in_header[rng.randrange(8, header_end)] = rng.randrange(256)
        out.append((f"hdr{i}", bytes(in_header)))
        garbage = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 300)))
        out.append((f"garbage{i}", garbage if i % 2 else raw[:8] + garbage))
    return out


SPEC_EDITS: list[dict[str, Any]] = [
    {"branches": 10 ** 9}, {"branches": -1}, {"branches": "x"}, {"branches": 2.5}, {"num_classes": 15e6},
    {"num_classes": 10 ** 12}, {"num_classes": -1}, {"num_classes": 7}, {"num_classes": "4"},
    {"backbone_kwargs": {"width": 10 ** 9}}, {"backbone_kwargs": {"width": -3}}, {"backbone_kwargs": {"width": 0}},
    {"backbone": "mlp", "backbone_kwargs": {"hidden": [1] * 100_000}}, {"backbone": "mlp", "backbone_kwargs": {"hidden": "x"}},
    {"in_channels": 10 ** 6}, {"in_channels": 0}, {"input_size": -8}, {"kind": "alien"}, {"kind": None},
    {"backbone": "no-such-net"}, {"aux_classes": 10 ** 9}, {"backbone_kwargs": [1, 2]}, {"unexpected": 1},
]


def _resigned_checkpoints(base: Path, folder: Path, rng: random.Random) -> list[tuple[str, Path]]:
    """Real headers edited as a crafter would (checksum recomputed): spec values, tensors dropped/padded/reshaped."""
    out = []
    header0, tensors0 = read_header(base), st_load(base.read_bytes())
    for i, edit in enumerate(SPEC_EDITS):
        header = json.loads(json.dumps(header0))
        header["spec"].update(edit)
        out.append((f"spec{i}", crafted.resign(folder / f"{base.stem}-spec{i}.safetensors", header, dict(tensors0))))
    names = sorted(tensors0)
    tensor_edits: list[Callable[[dict[str, torch.Tensor]], None]] = [
        lambda t: t.pop(rng.choice(names)),
        lambda t: t.update(pad=torch.zeros(50_000)),
        lambda t: t.update({"head.weight": t["head.weight"].t().contiguous()}),
        lambda t: t.update({"head.weight": torch.zeros(10 ** 5, t["head.weight"].shape[1])}),
        lambda t: t.update({rng.choice(names): torch.zeros(3, 3, 3)}),
    ]
    for i, edit in enumerate(tensor_edits):
        tensors = dict(tensors0)
        edit(tensors)
        out.append((f"tensors{i}", crafted.resign(folder / f"{base.stem}-tensors{i}.safetensors", dict(header0), tensors)))
    return out


LAYER_EDITS: list[dict[str, Any]] = [
    {"shape": [100_000, 100_000]}, {"shape": [-1, 4]}, {"shape": "big"}, {"shape": [4]}, {"bits": 0}, {"bits": 9},
    {"bits": "4"}, {"enc": "zip"}, {"axis": 9}, {"axis": "0"}, {"sparse": 2, "ib": 8, "ne": 0, "shape": [10 ** 5, 10 ** 5]},
    {"sparse": 2, "ib": 0, "ne": 4}, {"sparse": 2, "ib": 8, "ne": 10 ** 12}, {"sparse": 7}, {"sym": 0}, {"dt": "f64"},
    {"int": [1, 2, 3]}, {"levels": "x", "enc": "log"},
]


def _resigned_artifacts(base: Path, folder: Path, rng: random.Random) -> list[tuple[str, Path]]:
    out = []
    header0 = read_header(base)  # a compact (/3) .ccl: its layer table is a list in the spec's tensor order

    def resigned(name: str, header: dict[str, Any]) -> Path:
        (folder / name).write_bytes(base.read_bytes())
        return crafted.resign(folder / name, header)

    for i, edit in enumerate(LAYER_EDITS):
        header = json.loads(json.dumps(header0))
        rng.choice(header["layers"]).update(edit)
        out.append((f"layer{i}", resigned(f"layer{i}.ccl", header)))
    for i, layers in enumerate([None, [], {"x": 1}, [{"weight": None}], header0["layers"][:-1],
                                header0["layers"] + [{"dt": "f16"}]]):
        header = json.loads(json.dumps(header0))
        header["layers"] = layers
        out.append((f"table{i}", resigned(f"table{i}.ccl", header)))
    for i, (key, value) in enumerate([("n", [10 ** 9, 0, 0]), ("n", None), ("keys", ["a"]), ("keys", 7)]):
        header = json.loads(json.dumps(header0))
        header[key] = value
        out.append((f"frame{i}", resigned(f"frame{i}.ccl", header)))
    for i, edit in enumerate(SPEC_EDITS[:8]):
        header = json.loads(json.dumps(header0))
        header["spec"].update(edit)
        out.append((f"spec{i}", resigned(f"spec{i}.ccl", header)))
    return out


def _model_corpus(folder: Path) -> list[tuple[str, Path]]:
    rng = random.Random(SEED)
    folder.mkdir(parents=True)
    out: list[tuple[str, Path]] = []
    bases = [crafted.real_checkpoint(folder), crafted.real_checkpoint(folder, "der.safetensors", der=True),
             crafted.real_artifact(folder)]
    for base in bases:
        raw = base.read_bytes()
        if base.suffix == ".ccl":  # compact frame: magic, digest, header length, DEFLATE'd header
            from compactcl.utils.frame import read_frame

            header_end = len(raw) - len(read_frame(raw, str(base))[1])
        else:
            header_end = 8 + int.from_bytes(raw[:8], "little")
        for name, data in _mutations(raw, rng, 5, header_end):
            path = folder / f"{base.stem}-{name}{base.suffix}"
            path.write_bytes(data)
            out.append((f"{base.name}:{name}", path))
    out += [(f"m.safetensors:{n}", p) for n, p in _resigned_checkpoints(bases[0], folder, rng)]
    out += [(f"der.safetensors:{n}", p) for n, p in _resigned_checkpoints(bases[1], folder, rng)[:12]]
    out += [(f"m.ccl:{n}", p) for n, p in _resigned_artifacts(bases[2], folder, rng)]
    return out


_IDX_STEMS = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]


def _idx_corpus(folder: Path) -> list[tuple[str, Path, dict[str, Any]]]:
    rng = random.Random(SEED + 1)
    out = []

    def fresh(name: str, gz: bool = False) -> Path:
        root = crafted.write_mnist(folder / name, gz=gz)
        out.append((f"idx:{name}", root, {}))
        return root

    for i in range(8):  # random damage to one of the four files
        root = fresh(f"rand{i}", gz=bool(i % 2))
        f = next(root.glob(rng.choice(_IDX_STEMS) + "*"))
        raw = f.read_bytes()
        kind = i % 4
        if kind == 0:
            f.write_bytes(raw[: rng.randrange(len(raw))])
        elif kind == 1:
            f.write_bytes(raw + bytes(rng.randrange(1, 40)))
        elif kind == 2:
            f.write_bytes(bytes(rng.randrange(256) for _ in range(rng.randrange(0, 64))))
        else:
            data = bytearray(raw)
            data[rng.randrange(min(len(data), 20))] ^= 0xFF
            f.write_bytes(bytes(data))
    y32 = lambda ys: crafted.idx_bytes(np.asarray(ys, ">i4"), code=0x0C)  # noqa: E731
    edits: dict[str, Callable[[Path], None]] = {
        "huge-claim": lambda r: crafted.idx_huge_claim(r),
        "gzip-bomb": lambda r: crafted.idx_gzip_bomb(r, body_mib=8),
        "huge-label": lambda r: (r / _IDX_STEMS[1]).write_bytes(y32(list(range(39)) + [2 * 10 ** 9])),
        "negative-label": lambda r: (r / _IDX_STEMS[3]).write_bytes(y32([-1] * 20)),
        "class-gap": lambda r: (r / _IDX_STEMS[1]).write_bytes(y32([0, 1, 3] * 13 + [3])),
        "test-gap": lambda r: (r / _IDX_STEMS[3]).write_bytes(y32([0] * 20)),
        "float-labels": lambda r: (r / _IDX_STEMS[1]).write_bytes(
            crafted.idx_bytes((np.arange(40) % 4 + 0.5).astype(">f4"), code=0x0D)),
        "nan-pixels": lambda r: (r / _IDX_STEMS[0]).write_bytes(
            crafted.idx_bytes(np.full((40, 6, 6), np.nan, ">f4"), code=0x0D)),
        "inf-pixels": lambda r: (r / _IDX_STEMS[2]).write_bytes(
            crafted.idx_bytes(np.full((20, 6, 6), np.inf, ">f8"), code=0x0E)),
        "2d-images": lambda r: (r / _IDX_STEMS[0]).write_bytes(crafted.idx_bytes(np.zeros((40, 36), np.uint8))),
        "swapped": lambda r: (r / _IDX_STEMS[1]).write_bytes((r / _IDX_STEMS[0]).read_bytes()),
        "count-mismatch": lambda r: (r / _IDX_STEMS[3]).write_bytes(crafted.idx_bytes(np.zeros(7, np.uint8))),
        "missing": lambda r: (r / _IDX_STEMS[2]).unlink(),
        "0-dim": lambda r: (r / _IDX_STEMS[1]).write_bytes(bytes([0, 0, 8, 0, 5])),
        "overflow-dims": lambda r: (r / _IDX_STEMS[0]).write_bytes(
            crafted.idx_bytes(np.zeros(0, np.uint8), shape=(2 ** 32 - 1,) * 3)),
        "bad-gzip": lambda r: (r / (_IDX_STEMS[0] + ".gz")).write_bytes(b"\x1f\x8b\x08\x00garbage"),
        "empty-train": lambda r: [(r / _IDX_STEMS[0]).write_bytes(crafted.idx_bytes(np.zeros((0, 6, 6), np.uint8))),
                                  (r / _IDX_STEMS[1]).write_bytes(crafted.idx_bytes(np.zeros(0, np.uint8)))],
    }
    for name, edit in edits.items():
        root = fresh(name)
        if name in ("huge-claim", "gzip-bomb", "bad-gzip"):
            (root / _IDX_STEMS[0]).unlink()  # the .gz takes its place
        edit(root)
    return out


def _folder_corpus(folder: Path) -> list[tuple[str, Path, dict[str, Any]]]:
    rng = random.Random(SEED + 2)
    out = []

    def fresh(name: str, **options: Any) -> Path:
        root = crafted.image_folder(folder / name)
        out.append((f"folder:{name}", root, options))
        return root

    for i in range(6):  # random damage to one real PNG
        f = fresh(f"rand{i}") / rng.choice("ab") / f"{rng.randrange(3)}.png"
        raw = f.read_bytes()
        f.write_bytes(raw[: rng.randrange(8, 60)] if i % 2 else bytes(rng.randrange(256) for _ in range(100)))
    os.mkfifo(fresh("fifo") / "a" / "x.png")
    (fresh("loop") / "a" / "l.png").symlink_to(folder / "loop" / "a" / "l.png")
    (fresh("dangling") / "b" / "d.png").symlink_to(folder / "nowhere.png")
    (fresh("dir-named-png") / "a" / "d.png").mkdir()
    (fresh("syntax-error") / "a" / "s.png").write_bytes(crafted.png_syntax_error())
    (fresh("value-error") / "b" / "v.bmp").write_bytes(crafted.bmp_value_error())
    (fresh("bomb") / "b" / "bomb.png").write_bytes(crafted.png_bomb(10_000, 10_000))
    (fresh("huge") / "b" / "huge.png").write_bytes(crafted.png_bomb(100_000, 100_000))
    (fresh("empty-file") / "a" / "e.jpg").write_bytes(b"")
    for i, (key, value) in enumerate([("image_size", 0), ("image_size", -5), ("image_size", 10 ** 6),
                                      ("image_size", "abc"), ("channels", 2), ("test_fraction", 1.5)]):
        fresh(f"option{i}", **{key: value})
    one = fresh("one-class")
    for f in (one / "b").iterdir():
        f.unlink()
    (one / "b").rmdir()
    for f in list((fresh("one-image") / "a").iterdir())[1:]:
        f.unlink()
    not_dir = folder / "root-is-a-file"
    not_dir.write_bytes(b"x")
    out.append(("folder:root-is-a-file", not_dir, {}))
    out.append(("folder:missing-root", folder / "does-not-exist", {}))
    return out


def _still_loads(load: Callable[[], Any]) -> bool:
    """True if the input is in fact fine; False if the library refuses it with a CompactCLError."""
    try:
        load()
    except CompactCLError:
        return False
    return True  # any other exception propagates: a traceback found before the CLI is even asked


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, list]:
    base = tmp_path_factory.mktemp("corpus")
    sock = socket.socket(socket.AF_UNIX)  # a socket named like an image, kept bound for the module
    models = [(n, p) for n, p in _model_corpus(base / "models") if not _still_loads(lambda: compactcl.load(p))]
    idx = [(n, p, o) for n, p, o in _idx_corpus(base / "idx")
           if not _still_loads(lambda: compactcl.data.load_dataset("idx", str(p), **o))]
    folders = _folder_corpus(base / "folders")
    sock_root = crafted.image_folder(base / "folders" / "socket")
    sock.bind(str(sock_root / "a" / "s.png"))
    folders.append(("folder:socket", sock_root, {}))
    folders = [(n, p, o) for n, p, o in folders
               if not _still_loads(lambda: compactcl.data.load_dataset("folder", str(p), **{"image_size": 6, **o}))]
    yield {"models": models, "idx": idx, "folders": folders}
    sock.close()


def test_the_corpus_holds_at_least_100_bad_inputs(corpus) -> None:
    counts = {k: len(v) for k, v in corpus.items()}
    print(f"bad inputs: {counts}, total {sum(counts.values())}")
    assert sum(counts.values()) >= 100, counts
    assert counts["idx"] >= 20 and counts["folders"] >= 20, counts


def _call(argv: list[str], capsys) -> tuple[int, str, Clock]:
    clock = Clock()
    try:
        code = main(argv)
    except SystemExit as e:  # argparse
        code = e.code if isinstance(e.code, int) else 1
    return code, capsys.readouterr().err, clock


def test_model_files_exit_2_from_every_verb(corpus, tmp_path, capsys) -> None:
    bad = []
    for name, path in corpus["models"]:
        for verb in MODEL_VERBS:
            argv = [verb[0], str(path), *[a.format(out=tmp_path) for a in verb[1:]]]
            code, err, clock = _call(argv, capsys)
            if code != 2 or "Traceback" in err or "error:" not in err or not clock.within(CALL_S):
                bad.append(f"{name} {verb[0]}: exit {code} in {clock}: {err[-300:]}")
    assert not bad, "\n".join(bad)
    assert not list(tmp_path.glob("o.*")), "a refused input left an output behind"


def _run_argv(dataset: str, root: Path, options: dict[str, Any], out: Path) -> list[str]:
    argv = ["run", "--out", str(out), "--no-progress", "--set", f"data.dataset={dataset}", "--set", f"data.root={root}"]
    if dataset == "folder":
        options = {"image_size": 6, **options}
    for key, value in options.items():
        argv += ["--set", f"data.options.{key}={value}"]
    return argv


@pytest.mark.parametrize("kind, dataset", [("idx", "idx"), ("folders", "folder")])
def test_data_folders_exit_2_from_run(corpus, tmp_path, capsys, kind: str, dataset: str) -> None:
    bad = []
    for i, (name, root, options) in enumerate(corpus[kind]):
        code, err, clock = _call(_run_argv(dataset, root, options, tmp_path / f"run{i}"), capsys)
        if code != 2 or "Traceback" in err or "error:" not in err or not clock.within(CALL_S):
            bad.append(f"{name}: exit {code} in {clock}: {err[-300:]}")
    assert not bad, "\n".join(bad)


def test_a_few_in_a_real_subprocess(corpus, tmp_path) -> None:
    """The installed entry point, end to end: exit status 2, a one-line error, no Traceback."""
    picks = {"models": ["m.safetensors:spec0", "m.ccl:layer0"], "idx": ["idx:gzip-bomb"], "folders": ["folder:fifo"]}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(compactcl.__file__).parents[1]),
                                                        os.environ.get("PYTHONPATH", "")])}
    for kind, names in picks.items():
        for entry in corpus[kind]:
            if entry[0] not in names:
                continue
            if kind == "models":
                argv = ["quantize", str(entry[1]), "--out", str(tmp_path / "o.ccl")]
            else:
                argv = _run_argv("idx" if kind == "idx" else "folder", entry[1], entry[2], tmp_path / "run")
            start = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "compactcl", *argv], capture_output=True, text=True,
                                  timeout=60, env=env, cwd=tmp_path)
            assert proc.returncode == 2, (entry[0], proc.stderr[-2000:])
            assert "Traceback" not in proc.stderr and "error:" in proc.stderr, (entry[0], proc.stderr[-2000:])
            assert time.perf_counter() - start < 30, entry[0]
