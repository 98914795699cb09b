"""Bad input gives a clear CompactCLError (naming the key or file), and nothing already written is lost."""

import errno
import gzip
import json
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

import compactcl
from compactcl import CompactCLError
from compactcl.api import check_input
from compactcl.data.datasets import load_dataset, read_idx
from compactcl.models import IncrementalNet, load_checkpoint, save_checkpoint
from compactcl.pipeline.recipe import load_recipe
from compactcl.pipeline.run import run_recipe
from compactcl.utils import atomic

TINY = Path(__file__).parent / "data" / "tiny.yaml"


@pytest.fixture
def tiny():
    return str(TINY)


def _quiet(recipe, out, **kw):
    return run_recipe(recipe, out, progress=False, log=lambda s: None, **kw)


# --- recipes ---------------------------------------------------------------------------------

@pytest.mark.parametrize("override,key", [
    ("learner.epoch=3", "learner.epoch"),  # unknown key (typo)
    ("data.taks=3", "data.taks"),
    ("learner.epochs=many", "learner.epochs"),  # wrong type
    ("learner.nme=maybe", "learner.nme"),
    ("memory.size=-5", "memory.size"),  # negative size
    ("data.tasks=0", "data.tasks"),
    ("learner.batch_size=0", "learner.batch_size"),
    ("learner.lr=-1", "learner.lr"),
    ("data.val_fraction=2", "data.val_fraction"),
    ("model=[1, 2]", "model"),
    ("version=99", "version"),
])
def test_recipe_errors_name_the_key(tiny, override, key):
    with pytest.raises(CompactCLError) as e:
        load_recipe(tiny, [override])
    assert key in str(e.value)


@pytest.mark.parametrize("override,key", [
    ("model.options.width=-4", "model.options"),  # negative size: refused before training
    ("model.options.width=0", "model.options"),
    ("model.options.width=100000000", "model.options"),  # absurd: ~10^17 parameters, refused unallocated
    ("model.options.colour=1", "model.options"),  # an option the backbone does not take
    ("data.options.bogus=1", "data.options"),
    ("seed=-1", "seed"),
    ("data.classes_per_task=1000", "data.classes_per_task"),  # more classes than the dataset has
    ("data.tasks=1000000", "data.tasks"),
    ("data.class_order=[99, 1, 2, 3, 4, 5, 6, 7, 8, 0]", "data.class_order"),
])
def test_values_that_validate_but_cannot_run_fail_before_training_naming_the_key(tiny, tmp_path, override, key):
    with pytest.raises(CompactCLError) as e:  # refused when the recipe is read (seed, data.tasks bounds) or before training
        _quiet(load_recipe(tiny, [override]), tmp_path / "run")
    assert key in str(e.value)
    assert not (tmp_path / "run" / "tasks").exists()  # nothing trained, nothing half-written


def test_recipe_that_is_not_text_or_not_a_mapping(tmp_path):
    for body in (b"- just\n- a list\n", b"42\n", b"data: {tasks: [unclosed\n"):
        p = tmp_path / "r.yaml"
        p.write_bytes(body)
        with pytest.raises(CompactCLError, match=str(p)):
            load_recipe(str(p))


# --- datasets --------------------------------------------------------------------------------

def _idx_bytes(a: np.ndarray) -> bytes:
    return bytes([0, 0, 0x08, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape) + a.astype(np.uint8).tobytes()


def _write_mnist(root: Path, n: int = 20) -> None:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, count in (("train", n), ("t10k", n // 2)):
        (root / f"{prefix}-images-idx3-ubyte").write_bytes(_idx_bytes(rng.integers(0, 255, (count, 28, 28))))
        (root / f"{prefix}-labels-idx1-ubyte").write_bytes(_idx_bytes(np.arange(count) % 10))


def test_idx_missing_file_is_named(tmp_path):
    _write_mnist(tmp_path / "m")
    (tmp_path / "m" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(CompactCLError, match="t10k-labels-idx1-ubyte"):
        load_dataset("mnist", str(tmp_path / "m"))


def test_idx_truncated_or_garbage_file_is_named(tmp_path):
    _write_mnist(tmp_path / "m")
    f = tmp_path / "m" / "train-images-idx3-ubyte"
    f.write_bytes(f.read_bytes()[:-100])  # truncated body
    with pytest.raises(CompactCLError, match="train-images-idx3-ubyte.*truncated"):
        load_dataset("mnist", str(tmp_path / "m"))
    for body in (b"", b"\x00\x00", b"PK\x03\x04 not idx", bytes([0, 0, 8, 3, 0, 0])):
        f.write_bytes(body)
        with pytest.raises(CompactCLError, match="train-images-idx3-ubyte"):
            read_idx(f)
    g = tmp_path / "x-idx1-ubyte.gz"
    g.write_bytes(gzip.compress(_idx_bytes(np.arange(50)))[:-10])  # truncated gzip stream
    with pytest.raises(CompactCLError, match=g.name):
        read_idx(g)


def test_idx_image_and_label_counts_must_agree(tmp_path):
    _write_mnist(tmp_path / "m")
    (tmp_path / "m" / "train-labels-idx1-ubyte").write_bytes(_idx_bytes(np.arange(7) % 10))
    with pytest.raises(CompactCLError, match="differ in count"):
        load_dataset("mnist", str(tmp_path / "m"))


def test_folder_dataset_with_an_empty_class_names_it(tmp_path):
    from PIL import Image

    for cls in ("cat", "dog"):
        (tmp_path / "f" / cls).mkdir(parents=True)
    for i in range(4):
        Image.fromarray(np.full((6, 6, 3), 40 * i, np.uint8)).save(tmp_path / "f" / "cat" / f"{i}.png")
    (tmp_path / "f" / "dog" / "notes.txt").write_text("no images here")
    with pytest.raises(CompactCLError, match="dog.*holds no images"):
        load_dataset("folder", str(tmp_path / "f"), image_size=8)
    (tmp_path / "f" / "dog" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(CompactCLError, match="dog holds 1 image"):  # one image cannot be split train/test
        load_dataset("folder", str(tmp_path / "f"), image_size=8)
    (tmp_path / "f" / "dog" / "broken2.png").write_bytes(b"not a png either")
    with pytest.raises(CompactCLError, match="broken2?.png.*not a readable image"):
        load_dataset("folder", str(tmp_path / "f"), image_size=8)


# --- images of the wrong shape ---------------------------------------------------------------

def test_wrong_image_shape_for_a_model_is_a_clear_error():
    net = IncrementalNet("cnn", 1, 8, num_classes=4, backbone_kwargs={"width": 4}).eval()
    check_input(net, torch.zeros(5, 1, 8, 8))  # right shape: fine
    with pytest.raises(CompactCLError, match="1x28x28 but the model takes 1x8x8"):
        check_input(net, torch.zeros(5, 1, 28, 28))  # the CNN's global pooling would silently accept it
    with pytest.raises(CompactCLError, match="3x8x8"):
        check_input(net, torch.zeros(5, 3, 8, 8))
    with pytest.raises(CompactCLError, match=r"x\[None\]"):
        check_input(net, torch.zeros(1, 8, 8))  # one image, no batch dimension


def test_checkpoint_whose_recorded_data_does_not_fit_it(tmp_path, capsys):
    from compactcl.cli.main import main

    net = IncrementalNet("cnn", 1, 28, num_classes=4, backbone_kwargs={"width": 4})  # built for 28x28
    meta = {"task": 0, "stream": {"dataset": "digits", "tasks": 5, "classes_per_task": 2, "seed": 0,
                                  "val_fraction": 0.1, "class_order": list(range(10))}}  # but digits are 8x8
    save_checkpoint(net, tmp_path / "m.safetensors", meta)
    with pytest.raises(CompactCLError, match="8x8 but the model takes 1x28x28"):
        compactcl.checkpoint_data(tmp_path / "m.safetensors")
    assert main(["quantize", str(tmp_path / "m.safetensors"), "--out", str(tmp_path / "q.ccl")]) == 2
    assert "1x28x28" in capsys.readouterr().err and not (tmp_path / "q.ccl").exists()


# --- NaN / inf loss --------------------------------------------------------------------------

@pytest.mark.parametrize("bad", ["nan", "inf"])
def test_diverging_task_stops_names_the_step_and_keeps_the_last_good_task(tiny, tmp_path, monkeypatch, bad):
    from compactcl.engine import loop
    from compactcl.learners import base

    recipe = load_recipe(tiny)
    _quiet(recipe, tmp_path / "ref")  # what task 0 looks like when nothing diverges
    real_train = loop.train

    def train(model, data, loss_fn, cfg, desc="train", hooks=None):
        if desc != "task 1":
            return real_train(model, data, loss_fn, cfg, desc, hooks)
        steps = iter(range(10 ** 6))
        bad_at_3 = lambda m, x, y: loss_fn(m, x, y) * (float(bad) if next(steps) == 3 else 1.0)  # noqa: E731
        return real_train(model, data, bad_at_3, cfg, desc, hooks)

    monkeypatch.setattr(base, "train", train)
    out = tmp_path / "run"
    with pytest.raises(CompactCLError, match=rf"task 1: loss became {bad} at epoch 0, step 3.*learner.lr"):
        _quiet(recipe, out)
    doc = json.loads((out / "metrics.json").read_text())
    assert len(doc["tasks"]) == 1  # task 0 recorded, task 1 not
    for name in ("working.safetensors", "deployed.safetensors", "state.safetensors"):
        assert (out / "tasks" / "00" / name).read_bytes() == (tmp_path / "ref" / "tasks" / "00" / name).read_bytes()
    assert load_checkpoint(out / "final" / "working.safetensors").num_classes == 2  # final/ = task 0
    monkeypatch.undo()
    done = _quiet(recipe, out, resume=True)  # the fix (here: nothing) + --resume finishes the run
    ref = json.loads((tmp_path / "ref" / "metrics.json").read_text())
    assert [t["accuracy"] for t in done["tasks"]] == [t["accuracy"] for t in ref["tasks"]]


# --- disk full -------------------------------------------------------------------------------

def _disk_fills_after(monkeypatch, nbytes: int, only: str = ""):
    real = Path.write_bytes

    def write_bytes(self, data):
        if only not in self.name:
            return real(self, data)
        with open(self, "wb") as f:
            f.write(bytes(data)[:nbytes])  # part of the data lands, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", write_bytes)


def test_disk_full_keeps_the_previous_file_and_says_what_to_do(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    atomic.atomic_write_json(target, {"tasks": [1]})
    before = target.read_bytes()
    _disk_fills_after(monkeypatch, 5)
    with pytest.raises(CompactCLError) as e:
        atomic.atomic_write_json(target, {"tasks": [1, 2]})
    msg = str(e.value)
    assert "disk full" in msg and "metrics.json" in msg and "Free space" in msg and "--resume" in msg
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temp file left
    net = IncrementalNet("mlp", 1, 8, num_classes=2, backbone_kwargs={"hidden": [4]})
    with pytest.raises(CompactCLError, match="disk full"):
        save_checkpoint(net, tmp_path / "m.safetensors")
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_other_os_errors_are_not_reported_as_disk_full(tmp_path, monkeypatch):
    def denied(self, data):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(Path, "write_bytes", denied)
    with pytest.raises(PermissionError, match="Permission denied"):
        atomic.atomic_write_bytes(tmp_path / "x", b"1")
    assert not list(tmp_path.iterdir())


def test_disk_full_mid_run_keeps_finished_tasks(tiny, tmp_path, monkeypatch):
    out = tmp_path / "run"
    recipe = load_recipe(tiny)
    real = Path.write_bytes
    calls = {"n": 0}

    def write_bytes(self, data):  # the disk fills while task 1 writes its working checkpoint
        if self.name.startswith(".working.safetensors") and "01" in str(self.parent):
            raise OSError(errno.ENOSPC, "No space left on device")
        calls["n"] += 1
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", write_bytes)
    with pytest.raises(CompactCLError, match="disk full"):
        _quiet(recipe, out)
    monkeypatch.undo()
    assert len(json.loads((out / "metrics.json").read_text())["tasks"]) == 1
    assert load_checkpoint(out / "tasks" / "00" / "working.safetensors").num_classes == 2
    assert not list(out.rglob("*.tmp"))
    assert len(_quiet(recipe, out, resume=True)["tasks"]) == 3  # space freed: --resume finishes


# --- corrupted / truncated checkpoints and artifacts: property-based -------------------------

def _make_files() -> dict[str, Path]:
    from compactcl.compress.quantize import LinearQuantConfig, quantize_
    from compactcl.export.artifact import save_artifact

    torch.manual_seed(0)
    folder = Path(tempfile.mkdtemp(prefix="compactcl-fuzz-"))
    net = IncrementalNet("cnn", 1, 8, num_classes=4, backbone_kwargs={"width": 4})
    net.train()
    net(torch.randn(16, 1, 8, 8))  # non-trivial batch-norm statistics
    net.eval()
    save_checkpoint(net, folder / "m.safetensors", {"note": "fuzz"})
    save_artifact(quantize_(net, LinearQuantConfig(bits=4)), folder / "m.ccl", {"note": "fuzz"})
    # ccl2: a format /2 artifact (safetensors framing) as users still hold them
    return {"safetensors": folder / "m.safetensors", "ccl": folder / "m.ccl",
            "ccl2": Path(__file__).parent / "data" / "artifact_v2" / "linear.ccl"}


FILES = _make_files()
GOOD = {k: compactcl.load(p).state_dict() for k, p in FILES.items()}


def _load_mutated(kind: str, data: bytes) -> None:
    """Load ``data``: it must give the original model exactly, or a CompactCLError."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"x.{kind}"
        path.write_bytes(data)
        try:
            model = compactcl.load(path)
        except CompactCLError as e:
            assert str(e)
            return
        state = model.state_dict()
        good = GOOD[kind]
        assert state.keys() == good.keys(), "a damaged file loaded as a different model"
        assert all(torch.equal(state[k], good[k]) for k in good), "a damaged file loaded with other weights"


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(["safetensors", "ccl", "ccl2"]), data=st.data())
def test_random_byte_mutations_give_the_model_or_our_error(kind, data):
    from compactcl.utils.frame import read_frame

    raw = bytearray(FILES[kind].read_bytes())
    if kind == "ccl":  # the frame: magic, digest, header length and the DEFLATE'd header
        n_header = len(raw) - len(read_frame(bytes(raw), "x")[1])
    else:
        n_header = 8 + int.from_bytes(raw[:8], "little")
    # half the time aim at the header (/1 files: not covered by the weights' checksum), else anywhere
    hi = n_header - 1 if data.draw(st.booleans(), label="in header") else len(raw) - 1
    edits = data.draw(st.lists(st.tuples(st.integers(0, hi), st.integers(0, 255)), min_size=1, max_size=4))
    for pos, byte in edits:
        raw[pos] = byte
    _load_mutated(kind, bytes(raw))


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(["safetensors", "ccl", "ccl2"]), data=st.data())
def test_truncated_or_extended_files_give_our_error(kind, data):
    raw = FILES[kind].read_bytes()
    cut = data.draw(st.integers(0, len(raw) - 1), label="cut")
    tail = data.draw(st.binary(max_size=16), label="appended")
    _load_mutated(kind, raw[:cut] + tail)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.recursive(st.none() | st.booleans() | st.integers(-2 ** 40, 2 ** 40) | st.text(max_size=6),
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
                    max_leaves=8),
       st.sampled_from(["spec", "layers", "format", "n", "keys"]))
def test_any_json_in_a_header_field_gives_the_model_or_our_error(value, field):
    """Replace one header field of a real artifact with arbitrary JSON, checksum recomputed (a crafted file)."""
    from compactcl.utils.frame import pack_frame, read_frame

    kind = "ccl"
    header, data = read_frame(FILES[kind].read_bytes(), "x")
    header[field] = value
    _load_mutated(kind, pack_frame(header, data))
