"""TensorBoard logs: written under RUN/tensorboard/ and read back with TensorBoard's own reader."""

import io
import sys

import numpy as np
import pytest

pytest.importorskip("tensorboard")

from compactcl.errors import CompactCLError  # noqa: E402
from compactcl.report.tensorboard import TensorBoardLogger, accuracy_matrix, heatmap_image  # noqa: E402

ROWS = [
    {"index": 0, "classes": [3, 7], "accuracy": {"working": [0.98], "deployed": [0.96]},
     "bytes": {"fp32": 40000, "deployed": 9000}, "params": 10000, "flops": 123456, "seconds": 1.5},
    {"index": 1, "classes": [1, 2], "accuracy": {"working": [0.80, 0.95], "deployed": [0.75, 0.90]},
     "bytes": {"fp32": 40800, "deployed": 9300}, "params": 10200, "flops": 123999, "seconds": 2.0},
]


def _read(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    ea.Reload()
    return ea


def _values(ea, tag):
    return [(e.step, pytest.approx(e.value)) for e in ea.Scalars(tag)]


def test_logger_writes_scalars_and_heatmaps(tmp_path):
    with TensorBoardLogger(tmp_path) as log:
        for task, losses in enumerate([[2.0, 1.0], [1.5, 0.5, 0.25]]):
            for epoch, loss in enumerate(losses):
                log.log_epoch(task, epoch, loss)
        for i, row in enumerate(ROWS):
            log.log_task(i, row, {"working": accuracy_matrix(ROWS[: i + 1], "working"),
                                  "deployed": [r["accuracy"]["deployed"] for r in ROWS[: i + 1]]})
    ea = _read(tmp_path)
    assert _values(ea, "train/loss/task_01") == [(0, 1.5), (1, 0.5), (2, 0.25)]
    assert _values(ea, "train/loss") == [(0, 2.0), (1, 1.0), (2, 1.5), (3, 0.5), (4, 0.25)]
    assert _values(ea, "accuracy/working/task_00") == [(0, 0.98), (1, 0.80)]
    assert _values(ea, "accuracy/deployed/task_01") == [(1, 0.90)]
    assert _values(ea, "accuracy/working/average") == [(0, 0.98), (1, 0.875)]
    assert _values(ea, "bytes/deployed") == [(0, 9000), (1, 9300)]
    assert _values(ea, "flops") == [(0, 123456), (1, 123999)]

    from PIL import Image

    tags = ea.Tags()["images"]
    assert set(tags) == {"accuracy_matrix/working", "accuracy_matrix/deployed"}
    events = ea.Images("accuracy_matrix/working")
    assert [e.step for e in events] == [0, 1]
    last = np.asarray(Image.open(io.BytesIO(events[1].encoded_image_string)).convert("RGB"))
    assert last.shape == (events[1].height, events[1].width, 3)
    assert np.array_equal(last, heatmap_image(accuracy_matrix(ROWS, "working"),
                                              title="working accuracy after task 1"))  # PNG is lossless
    first = np.asarray(Image.open(io.BytesIO(events[0].encoded_image_string)).convert("RGB"))
    assert first.shape[0] < last.shape[0]  # one more task, a bigger matrix


def test_accuracy_matrix_and_heatmap():
    m = accuracy_matrix(ROWS, "deployed")
    assert m.shape == (2, 2) and np.isnan(m[0, 1])
    assert np.allclose(m[[0, 1, 1], [0, 0, 1]], [0.96, 0.75, 0.90])
    img = heatmap_image(m)
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
    assert not np.array_equal(img, heatmap_image([[0.1], [0.2, 0.3]]))  # values change the picture


def test_missing_tensorboard_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(CompactCLError, match="pip install tensorboard"):
        TensorBoardLogger(tmp_path)
