"""examples/edge_predict.py runs where torch cannot be imported and predicts what compactcl predicts."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from compactcl.export.compressed import deploy_metadata, export_compressed_onnx
from deployable import quantized_cnn

pytest.importorskip("onnxruntime")
Image = pytest.importorskip("PIL.Image")
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "edge_predict.py"
# torch blocked: sys.modules[name] = None makes `import torch` raise ImportError
NO_TORCH = ("import sys, runpy; sys.modules['torch'] = None\n"
            "try:\n    import torch\nexcept ImportError:\n    pass\nelse:\n    raise SystemExit('torch importable')\n"
            "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")


def test_edge_example_without_torch_matches_compactcl(tmp_path):
    net = quantized_cnn(4)
    names = ["zero", "one", "two", "three", "four", "five"]
    meta = {"stream": {"class_names": names, "normalization": {"mean": 0.25, "std": 0.3}}, "task": 1,
            "classes": [5, 2, 0, 3], "recipe": "t"}
    export_compressed_onnx(net, tmp_path / "m.onnx", (1, 8, 8), deploy_metadata(meta, (1, 8, 8), None))
    rng = np.random.default_rng(0)
    images = []
    for i in range(12):
        p = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 20 * (i + 1), (8, 8), dtype=np.uint8)).save(p)  # dark to bright
        images.append(p)
    with torch.no_grad():
        x = torch.stack([torch.from_numpy(np.asarray(Image.open(p), np.float32) / 255.0)[None] for p in images])
        prob = torch.softmax(net((x - 0.25) / 0.3), 1)
    want = [names[[5, 2, 0, 3][int(i)]] for i in prob.argmax(1)]
    run = subprocess.run([sys.executable, "-c", NO_TORCH, str(EXAMPLE), str(tmp_path / "m.onnx"), *map(str, images)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    rows = [line.split("\t") for line in run.stdout.splitlines()]
    assert [r[1] for r in rows] == want
    assert np.allclose([float(r[2]) for r in rows], prob.max(1).values.numpy(), atol=2e-3)
