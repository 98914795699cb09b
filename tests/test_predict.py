"""`compactcl predict`: a deployed .onnx and its .ccl name the same classes with the same
probabilities, from PNGs, an IDX file or a folder; bad input is a clear error (exit 2)."""

import json
import struct

import numpy as np
import pytest
import torch

from compactcl.cli.main import main
from compactcl.export.artifact import save_artifact
from compactcl.export.compressed import deploy_metadata, describe, export_compressed_onnx
from compactcl.export.predict import Predictor
from compactcl.models import IncrementalNet
from deployable import quantized_cnn

pytest.importorskip("onnxruntime")
Image = pytest.importorskip("PIL.Image")
NAMES = ["zero", "one", "two", "three", "four", "five"]
CLASSES = [5, 2, 0, 3]  # dataset class ids in output order


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    """(folder, net, images uint8 (N, 8, 8)): deployed.onnx + deployed.ccl of one quantized net, and PNGs."""
    d = tmp_path_factory.mktemp("predict")
    net = quantized_cnn(4)
    meta = {"stream": {"class_names": NAMES, "normalization": {"mean": 0.25, "std": 0.3}}, "task": 1,
            "classes": CLASSES, "recipe": "t"}
    desc = describe(meta, (1, 8, 8))
    save_artifact(net, d / "deployed.ccl", {**meta, **{k: desc[k] for k in ("class_names", "input", "normalization")}})
    export_compressed_onnx(net, d / "deployed.onnx", (1, 8, 8), deploy_metadata(meta, (1, 8, 8), d / "deployed.ccl"))
    images = np.random.default_rng(0).integers(0, 256, (10, 8, 8), dtype=np.uint8)
    (d / "imgs").mkdir()
    for i, a in enumerate(images):
        Image.fromarray(a).save(d / "imgs" / f"{i:02d}.png")
    return d, net, images


def test_onnx_and_ccl_predict_the_reference(deployed):
    d, net, images = deployed
    with torch.no_grad():
        x = torch.from_numpy(images.astype(np.float32) / 255.0)[:, None]
        prob = torch.softmax(net((x - 0.25) / 0.3), 1).numpy()
    for model in ("deployed.onnx", "deployed.ccl"):
        preds = Predictor.open(d / model).predict([d / "imgs"], top_k=3)
        assert [p.source for p in preds] == [str(d / "imgs" / f"{i:02d}.png") for i in range(10)]
        for p, row in zip(preds, prob):
            order = np.argsort(-row)[:3]
            assert [n for n, _ in p.top] == [NAMES[CLASSES[i]] for i in order], model
            assert p.class_ids == [CLASSES[i] for i in order]
            assert np.allclose([q for _, q in p.top], row[order], atol=1e-4)


def test_idx_file_gives_the_same_predictions_as_pngs(deployed, tmp_path):
    d, _, images = deployed
    idx = tmp_path / "t10k-images-idx3-ubyte"
    idx.write_bytes(b"\x00\x00\x08\x03" + struct.pack(">3I", *images.shape) + images.tobytes())
    p = Predictor.open(d / "deployed.onnx")
    from_idx, from_png = p.predict([idx]), p.predict([d / "imgs"])
    assert [a.top for a in from_idx] == [b.top for b in from_png]
    assert from_idx[3].source == f"{idx}[3]"


def test_cli_prints_class_names_and_json(deployed, capsys):
    d, _, _ = deployed
    assert main(["predict", str(d / "deployed.onnx"), str(d / "imgs" / "00.png"), "--top-k", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out[0]["class"] in NAMES and len(out[0]["top"]) == 2
    assert out[0]["top"][0]["probability"] >= out[0]["top"][1]["probability"]
    assert main(["predict", str(d / "deployed.ccl"), str(d / "imgs" / "00.png")]) == 0
    assert out[0]["class"] in capsys.readouterr().out


def test_bad_inputs_are_clear_errors(deployed, tmp_path, capsys):
    d, _, _ = deployed
    (tmp_path / "notes.png").write_text("not an image")
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(tmp_path / "big.png")
    from compactcl.export.compressed import export_dense_onnx

    plain = tmp_path / "plain.onnx"
    export_dense_onnx(IncrementalNet("cnn", 1, 8, 4, backbone_kwargs={"width": 8}), plain, (1, 8, 8))
    cases = [([str(d / "deployed.onnx"), str(tmp_path / "notes.png")], "not a readable image"),
             ([str(d / "deployed.onnx"), str(tmp_path / "big.png")], "the model takes 8x8"),
             ([str(plain), str(d / "imgs" / "00.png")], "without compactcl metadata")]
    for argv, words in cases:
        assert main(["predict", *argv]) == 2
        err = capsys.readouterr().err
        assert words in err and argv[-1 if "metadata" not in words else 0] in err
    assert main(["predict", str(d / "deployed.onnx"), str(tmp_path / "big.png"), "--resize"]) == 0


def test_a_run_folder_means_its_deployed_onnx(deployed, tmp_path, capsys):
    d, _, _ = deployed
    run = tmp_path / "run"
    (run / "final").mkdir(parents=True)
    (run / "final" / "deployed.ccl").write_bytes((d / "deployed.ccl").read_bytes())
    png = str(d / "imgs" / "03.png")
    assert main(["predict", str(run), png, "--json"]) == 0  # only the .ccl: it is used
    from_ccl = json.loads(capsys.readouterr().out)
    (run / "final" / "deployed.onnx").write_bytes((d / "deployed.onnx").read_bytes())
    assert main(["predict", str(run), png, "--json"]) == 0
    captured = capsys.readouterr()
    assert f"using {run / 'final' / 'deployed.onnx'}" in captured.err
    from_onnx = json.loads(captured.out)
    assert from_onnx[0]["class"] == from_ccl[0]["class"]
    assert main(["predict", str(tmp_path), png]) == 2  # a folder without final/deployed.*
    assert "without final/deployed.onnx" in capsys.readouterr().err
