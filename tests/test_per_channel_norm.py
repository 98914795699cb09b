"""Per-channel normalization: an RGB folder whose channels differ gets one mean/std per channel, and
everything that reads ``normalization`` (uint8 exemplars, predict, the ONNX metadata) agrees with it."""

import numpy as np
import pytest
import torch

from compactcl.data import load_dataset
from compactcl.data.datasets import lazy_folder, standardize_array
from compactcl.data.memory import decode_uint8, encode_uint8
from compactcl.errors import CompactCLError

Image = pytest.importorskip("PIL.Image")
SIZE = 8


@pytest.fixture(scope="module")
def rgb(tmp_path_factory):
    """Two classes of 8x8 PNGs whose channels have very different statistics: R bright and flat,
    G dark and noisy, B spread over the whole range."""
    root = tmp_path_factory.mktemp("rgb")
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (root / c).mkdir()
        for i in range(10):
            r = rng.normal(220, 5, (SIZE, SIZE))
            g = rng.normal(40, 30, (SIZE, SIZE))
            b = rng.uniform(0, 255, (SIZE, SIZE))
            px = np.clip(np.stack([r, g, b], -1), 0, 255).astype(np.uint8)  # (H, W, 3)
            Image.fromarray(px).save(root / c / f"{i}.png")
    return root


def test_rgb_folder_is_standardised_per_channel(rgb):
    ds = load_dataset("folder", root=str(rgb), image_size=SIZE, channels=3)
    mean, std = ds.normalization["mean"], ds.normalization["std"]
    assert len(mean) == len(std) == 3
    assert mean[0] > 0.8 and mean[1] < 0.25 and std[0] < 0.05 < 0.1 < std[1]  # the channels really differ
    x = ds.train.x.double()  # (N, 3, S, S)
    assert torch.allclose(x.mean((0, 2, 3)), torch.zeros(3, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(x.std((0, 2, 3), unbiased=False), torch.ones(3, dtype=torch.float64), atol=1e-4)
    _, _, lazy = lazy_folder(str(rgb), image_size=SIZE, channels=3)  # the streaming pass finds the same numbers
    assert lazy["mean"] == mean and lazy["std"] == std


def test_uint8_exemplars_round_trip_rgb_bit_for_bit(rgb):
    ds = load_dataset("folder", root=str(rgb), image_size=SIZE, channels=3)
    train, _, _ = lazy_folder(str(rgb), image_size=SIZE, channels=3)
    u = encode_uint8(ds.train.x, ds.normalization)
    with Image.open(train.files[0]) as im:  # the very pixels of the file come back
        assert np.array_equal(u[0].numpy(), np.asarray(im.convert("RGB")).transpose(2, 0, 1))
    assert torch.equal(decode_uint8(u, ds.normalization), ds.train.x)


def test_scalar_normalization_of_older_files_still_reads():
    x = torch.randint(0, 256, (4, 3, 5, 5), dtype=torch.uint8)
    old, new = {"scale": "pixel/255", "mean": 0.4, "std": 0.2}, {"scale": "pixel/255", "mean": [0.4] * 3, "std": [0.2] * 3}
    assert torch.equal(decode_uint8(x, old), decode_uint8(x, new))
    assert torch.equal(encode_uint8(decode_uint8(x, old), old), x)
    with pytest.raises(CompactCLError, match="2 values for 3-channel"):
        standardize_array(np.zeros((1, 3, 2, 2), np.float32), [0.1, 0.2], 1.0)


def test_predict_standardises_rgb_like_training(rgb, tmp_path):
    pytest.importorskip("onnxruntime")
    from compactcl.compress.quantize import config_for, quantize_
    from compactcl.export.artifact import save_artifact
    from compactcl.export.compressed import deploy_metadata, describe, export_compressed_onnx, read_metadata
    from compactcl.export.predict import Predictor
    from compactcl.models import IncrementalNet

    ds = load_dataset("folder", root=str(rgb), image_size=SIZE, channels=3)
    train, _, _ = lazy_folder(str(rgb), image_size=SIZE, channels=3)
    torch.manual_seed(0)
    net = IncrementalNet("cnn", 3, SIZE, 2, backbone_kwargs={"width": 4}).eval()
    quantize_(net, config_for("kmeans", 3))
    meta = {"stream": {"class_names": ["a", "b"], "normalization": ds.normalization}, "task": 0,
            "classes": [0, 1], "recipe": "t"}
    desc = describe(meta, (3, SIZE, SIZE))
    assert desc["normalization"]["mean"] == ds.normalization["mean"]
    save_artifact(net, tmp_path / "m.ccl", {**meta, **{k: desc[k] for k in ("class_names", "input", "normalization")}})
    export_compressed_onnx(net, tmp_path / "m.onnx", (3, SIZE, SIZE), deploy_metadata(meta, (3, SIZE, SIZE), None))
    assert read_metadata(tmp_path / "m.onnx")["normalization"]["std"] == pytest.approx(ds.normalization["std"])
    with torch.no_grad():  # the model on the training tensor of the same files
        want = torch.softmax(net(ds.train.x[:6]), 1).numpy()
    for name in ("m.ccl", "m.onnx"):
        got = Predictor.open(tmp_path / name).predict(train.files[:6], top_k=2)
        for p, row in zip(got, want):
            assert dict(p.top) == pytest.approx({"a": row[0], "b": row[1]}, abs=1e-5), name
