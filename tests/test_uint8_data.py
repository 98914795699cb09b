"""Data kept as uint8 pixels: normalised per batch to the very float32 numbers of the float path,
shared by subsets and tasks, read batch by batch by the loop, evaluation and herding; image
folders with train/ + val/."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from compactcl.data import ExemplarMemory, class_incremental, from_arrays, load_dataset
from compactcl.data.datasets import PixelScale, TensorData, augment_batch, standardize_array
from compactcl.engine.loop import TrainConfig, accuracy, predict, train
from compactcl.models import IncrementalNet


def _pixels(n=40, channels=3, size=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 256, (n, channels, size, size), generator=g, dtype=torch.uint8),
            torch.arange(n) % 4)


@pytest.mark.parametrize("levels", [255, 16])
def test_batches_are_the_float_paths_numbers(levels):
    u, _ = _pixels()
    u = (u.int() % (levels + 1)).to(torch.uint8)
    mean, std = [0.31, 0.52, 0.47], [0.21, 0.19, 0.33]
    want = standardize_array(u.numpy().astype(np.float32) / np.float32(levels), mean, std)
    got = PixelScale(levels, tuple(mean), tuple(std)).normalize(u)
    assert got.dtype == torch.float32 and torch.equal(got, torch.from_numpy(want))


def test_subsets_tasks_and_cat_share_one_store():
    ds = load_dataset("digits")
    assert ds.train.images.dtype == torch.uint8 and ds.train.nbytes == len(ds.train) * 64
    stream = class_incremental(ds, tasks=5, seed=0)
    for task in stream:
        for split in (task.train, task.val, task.test):
            assert split.images.dtype == torch.uint8
            assert split.images is ds.train.images or split.images is ds.test.images  # no copy per task
    seen = TensorData.cat([t.test for t in stream.tasks[:3]])
    assert seen.images is ds.test.images and len(seen) == sum(len(t.test) for t in stream.tasks[:3])
    assert torch.equal(seen.x, torch.cat([t.test.x for t in stream.tasks[:3]]))
    idx = torch.tensor([5, 0, 3])
    assert torch.equal(seen.batch(idx), seen.x[idx]) and torch.equal(seen.subset(idx).x, seen.x[idx])


def test_a_mix_of_pixels_and_floats_is_joined_as_floats():
    u, y = _pixels(8)
    pixels = TensorData(u, y, PixelScale(255, (0.5,) * 3, (0.25,) * 3))
    floats = TensorData(torch.randn(4, 3, 6, 6), torch.zeros(4, dtype=torch.long))
    both = TensorData.cat([pixels, floats])
    assert both.images.dtype == torch.float32 and torch.equal(both.x, torch.cat([pixels.x, floats.x]))


def test_float_arrays_stay_float():
    rng = np.random.default_rng(0)
    ds = from_arrays(rng.random((20, 1, 4, 4)), np.arange(20) % 2, rng.random((6, 1, 4, 4)), np.arange(6) % 2)
    assert ds.train.scale is None and ds.train.images.dtype == torch.float32


def _ce(model, x, y):
    return F.cross_entropy(model(x), y)


def test_training_and_evaluation_on_pixels_equal_the_float_copy():
    ds = load_dataset("digits")
    data = ds.train.subset(torch.arange(200))
    floats = TensorData(data.x, data.y)
    models = []
    for d in (data, floats):
        torch.manual_seed(0)
        m = IncrementalNet("cnn", 1, 8, 10, {"width": 8})
        train(m, d, _ce, TrainConfig(epochs=2, batch_size=32, augment=True))
        models.append(m)
    for a, b in zip(models[0].state_dict().values(), models[1].state_dict().values()):
        assert torch.equal(a, b)
    assert torch.equal(predict(models[0], ds.test, batch_size=64), predict(models[0], ds.test.x, batch_size=64))
    assert accuracy(models[0], ds.test) == accuracy(models[1], TensorData(ds.test.x, ds.test.y))


def test_augmentation_is_seeded_per_batch():
    u, _ = _pixels(16, size=8)
    x = PixelScale(255, (0.5,) * 3, (0.25,) * 3).normalize(u)
    a = augment_batch(x, torch.Generator().manual_seed(3), padding=2)
    b = augment_batch(x, torch.Generator().manual_seed(3), padding=2)
    assert torch.equal(a, b) and not torch.equal(a, x)


def test_exemplars_are_the_datasets_pixels():
    ds = load_dataset("digits")
    task = class_incremental(ds, tasks=5, seed=0).tasks[0]
    model = IncrementalNet("cnn", 1, 8, 2, {"width": 8})
    memory = ExemplarMemory(size=20, normalization=ds.normalization)
    memory.update(model, task.train)
    kept = memory.data()
    assert kept.images.dtype == torch.uint8 and kept.scale == ds.train.scale
    pool = {tuple(row.flatten().tolist()) for row in task.train.stored()}
    assert all(tuple(row.flatten().tolist()) in pool for row in kept.stored())  # stored as read, not re-encoded


def _png_folder(root, split_names=("train", "val"), classes=("a", "b"), per_class=3, size=5):
    from PIL import Image

    rng = np.random.default_rng(1)
    arrays = {}
    for split in split_names:
        for c, name in enumerate(classes):
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                arr = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(arr).save(root / split / name / f"{i}.png")
                arrays[(split, name, i)] = arr
    return arrays


def test_folder_with_train_and_val_keeps_decoded_pixels(tmp_path):
    arrays = _png_folder(tmp_path)
    ds = load_dataset("folder", root=str(tmp_path), image_size=5)
    assert ds.class_names == ["a", "b"] and len(ds.train) == 6 and len(ds.test) == 6
    assert ds.train.images.dtype == torch.uint8 and ds.test.images.dtype == torch.uint8
    first_val = torch.from_numpy(arrays[("val", "a", 0)].transpose(2, 0, 1))
    assert torch.equal(ds.test.images[0], first_val)  # val/ is the held-out split, pixels as decoded
    assert ds.normalization["mean"] == pytest.approx(
        [float(np.mean([arrays[("train", n, i)][..., c] for n in "ab" for i in range(3)])) / 255 for c in range(3)])


def test_a_compressed_exported_run_never_builds_a_float_copy_of_a_data_set(tmp_path, monkeypatch):
    """Training, scoring, herding, the deployer's ONNX and int8 checks all read batches: the
    all-at-once float copy (TensorData.x, 4 bytes a value) is never built."""
    from compactcl.pipeline.recipe import load_recipe
    from compactcl.pipeline.run import run_recipe

    def whole_copy(self):
        raise AssertionError("a float32 copy of a whole data set was built")

    monkeypatch.setattr(TensorData, "x", property(whole_copy))
    recipe = load_recipe(None, ["data.tasks=2", "data.all_classes=false", "learner.name=icarl", "learner.epochs=1",
                                "export.onnx=true", "export.int8=true", "compress.steps[0].distill.epochs=1"])
    doc = run_recipe(recipe, tmp_path / "r", progress=False, log=lambda s: None)
    assert [t["deploy"]["onnx"]["agreement"] for t in doc["tasks"]] == [1.0, 1.0]
    assert all("int8" in t["deploy"]["onnx"] for t in doc["tasks"])
