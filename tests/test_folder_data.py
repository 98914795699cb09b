"""Image folders of real-format photos (PNG + JPEG, odd sizes): resize, normalisation, memory bound, lazy, augment."""

import numpy as np
import pytest
import torch

from compactcl.data import load_dataset
from compactcl.data.datasets import augment_batch, lazy_folder
from compactcl.errors import CompactCLError


def _photo_folder(root, per_class: int = 6, classes=("cat", "dog", "owl")):
    """Three classes of noisy colour images of different sizes, half PNG and half JPEG (one greyscale)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            h, w = 20 + 3 * i, 14 + 5 * i  # not square, not the target size
            base = np.zeros((h, w, 3), dtype=np.float64)
            base[..., c] = 200  # each class has its own dominant colour
            arr = np.clip(base + rng.normal(0, 30, (h, w, 3)), 0, 255).astype(np.uint8)
            im = Image.fromarray(arr)
            if i == 0 and c == 0:
                im = im.convert("L")  # a greyscale photo among colour ones
            im.save(root / name / f"{i}.{'png' if i % 2 else 'jpg'}")
    return root


@pytest.fixture
def photos(tmp_path):
    return _photo_folder(tmp_path / "photos")


def test_folder_resizes_normalizes_and_records(photos):
    from PIL import Image

    ds = load_dataset("folder", root=str(photos), image_size=16, channels=3, test_fraction=1 / 3)
    assert ds.num_classes == 3 and ds.class_names == ["cat", "dog", "owl"]
    assert ds.train.x.shape == (12, 3, 16, 16) and ds.test.x.shape == (6, 3, 16, 16)
    assert ds.train.x.dtype == torch.float32
    assert sorted(ds.test.y.tolist()) == [0, 0, 1, 1, 2, 2]  # stratified
    norm = ds.normalization
    assert norm["resize"] == [16, 16] and norm["channels"] == 3 and norm["scale"] == "pixel/255"
    assert abs(float(ds.train.x.mean())) < 1e-5 and abs(float(ds.train.x.std()) - 1) < 1e-3  # train stats
    # Reproduce one image by hand from the recorded recipe: resize, /255, (x - mean) / std.
    with Image.open(photos / "dog" / "1.png") as im:
        ref = np.asarray(im.convert("RGB").resize((16, 16), Image.BILINEAR), dtype=np.float32) / 255.0
    mean, std = (np.asarray(norm[k]).reshape(3, 1, 1) for k in ("mean", "std"))  # one number per channel
    ref = torch.from_numpy((ref.transpose(2, 0, 1) - mean) / std).float()
    all_x = torch.cat([ds.train.x, ds.test.x])
    assert min(float((x - ref).abs().max()) for x in all_x) < 1e-5  # the decoded image is in the data
    # Class colour survives: the mean of the class's dominant channel is the largest one.
    for c in range(3):
        means = ds.train.x[ds.train.y == c].mean((0, 2, 3))
        assert int(means.argmax()) == c


def test_folder_greyscale(photos):
    ds = load_dataset("folder", root=str(photos), image_size=8, channels=1)
    assert ds.train.x.shape[1:] == (1, 8, 8) and ds.normalization["channels"] == 1


def test_memory_limit_refuses_before_decoding(photos):
    (photos / "cat" / "broken.png").write_bytes(b"not an image")  # decoding would fail on it
    with pytest.raises(CompactCLError, match="max_in_memory_mb") as err:
        load_dataset("folder", root=str(photos), image_size=64, max_in_memory_mb=0.1)
    assert "lazy_folder" in str(err.value) and "0 MB" not in str(err.value)
    with pytest.raises(CompactCLError, match="not a readable image"):  # within the limit it does decode
        load_dataset("folder", root=str(photos), image_size=64, max_in_memory_mb=10)


def test_lazy_folder_matches_folder_and_decodes_on_access(photos):
    from PIL import Image

    ds = load_dataset("folder", root=str(photos), image_size=12)
    train, test, norm = lazy_folder(str(photos), image_size=12)
    assert len(train) == len(ds.train) and train.shape == tuple(ds.train.x.shape)
    assert norm["mean"] == ds.normalization["mean"] and norm["std"] == ds.normalization["std"]
    assert torch.equal(train[:], ds.train.x) and torch.equal(test.materialize().x, ds.test.x)
    assert torch.equal(train.y, ds.train.y)
    assert train[3].shape == (3, 12, 12) and torch.equal(train[3], ds.train.x[3])
    assert torch.equal(train[torch.tensor([5, 1])], ds.train.x[[5, 1]])
    assert torch.equal(train[train.y == 2], ds.train.x[ds.train.y == 2])
    # Nothing is cached: a file changed on disk is seen at the next access.
    Image.fromarray(np.zeros((12, 12, 3), dtype=np.uint8)).save(train.files[0])
    black = [-m / s for m, s in zip(norm["mean"], norm["std"])]  # a black pixel, standardised per channel
    assert torch.allclose(train[0], torch.tensor(black).reshape(3, 1, 1).expand(3, 12, 12))


def test_augment_batch_crops_flips_and_is_seeded():
    x = torch.randn(32, 3, 8, 8)
    x0 = x.clone()
    a = augment_batch(x, torch.Generator().manual_seed(1))
    b = augment_batch(x, torch.Generator().manual_seed(1))
    c = augment_batch(x, torch.Generator().manual_seed(2))
    assert a.shape == x.shape and torch.equal(x, x0)  # same shape, input untouched
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert (a != x).flatten(1).any(1).float().mean() > 0.5  # most images change

    # Each crop (no flip) is an 8x8 window of the zero-padded image.
    crops = augment_batch(x, torch.Generator().manual_seed(3), padding=2, flip=False)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(len(x)):
        windows = [padded[i, :, dy: dy + 8, dx: dx + 8] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(crops[i], w) for w in windows)
    # Flip only: each image is itself or its mirror, and both happen.
    flips = augment_batch(x, torch.Generator().manual_seed(4), padding=0)
    same = [torch.equal(flips[i], x[i]) for i in range(len(x))]
    mirrored = [torch.equal(flips[i], x[i].flip(-1)) for i in range(len(x))]
    assert all(s or m for s, m in zip(same, mirrored)) and any(same) and any(mirrored)
