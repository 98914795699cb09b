"""The speed options of train() on the CPU path; the CUDA-only parts are guarded, not run here."""

import pytest
import torch
import torch.nn.functional as F

from compactcl import CompactCLError
from compactcl.data import class_incremental
from compactcl.engine.loop import TrainConfig, TrainHooks, accuracy, train
from compactcl.models import IncrementalNet


def _ce(model, x, y):
    return F.cross_entropy(model(x), y)


@pytest.fixture(scope="module")
def task(digits):
    return class_incremental(digits, tasks=1, classes_per_task=10, seed=0).tasks[0]


def _cnn():
    torch.manual_seed(0)
    return IncrementalNet("cnn", 1, 8, 10, {"width": 8})


def test_channels_last_and_bf16_on_cpu_train_and_leave_a_saveable_model(task, tmp_path):
    from compactcl.models.checkpoint import save_checkpoint

    ref = _cnn()
    h_ref = train(ref, task.train, _ce, TrainConfig(epochs=2, batch_size=32))
    model = _cnn()
    h = train(model, task.train, _ce, TrainConfig(epochs=2, batch_size=32, channels_last=True))
    assert h == pytest.approx(h_ref, rel=1e-3)  # the same computation in another memory layout
    assert all(p.is_contiguous() for p in model.parameters())  # converted back: safetensors needs it
    save_checkpoint(model, tmp_path / "m.safetensors", {})
    model = _cnn()
    h16 = train(model, task.train, _ce, TrainConfig(epochs=2, batch_size=32, bf16=True, channels_last=True))
    assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast, not a cast of the weights
    assert h16[-1] < h16[0] and h16 == pytest.approx(h_ref, rel=0.1)
    assert accuracy(model, task.test) > 0.7


def test_compile_runs_the_same_steps(task):
    pytest.importorskip("torch._dynamo")
    ref = _cnn()
    h_ref = train(ref, task.train, _ce, TrainConfig(iterations=6, batch_size=64))
    model = _cnn()
    h = train(model, task.train, _ce, TrainConfig(iterations=6, batch_size=64, compile="eager"))
    assert h == pytest.approx(h_ref, rel=1e-4)
    for a, b in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_batched_nan_check_names_the_step_range(task):
    model = IncrementalNet("mlp", 1, 8, 10, {"hidden": [32]})
    cfg = TrainConfig(epochs=1, lr=1e30, batch_size=32, momentum=0.0, nan_check_every=10)
    with pytest.raises(CompactCLError, match=r"loss became .* at epoch 0, (one of steps \d+\.\.\d+|step \d+)"):
        train(model, task.train, _ce, cfg)


def test_per_step_nan_check_keeps_the_last_good_weights(task):
    model = IncrementalNet("mlp", 1, 8, 10, {"hidden": [32]})
    with pytest.raises(CompactCLError, match=r"loss became .* at epoch 0, step \d+"):
        train(model, task.train, _ce, TrainConfig(epochs=1, lr=1e30, batch_size=32, momentum=0.0))


def test_loss_history_unchanged_by_device_side_accumulation(task):
    """The epoch means are summed on the device now; one process must give the old figures."""
    torch.manual_seed(0)
    model = IncrementalNet("mlp", 1, 8, 10, {"hidden": [32]})
    steps = []  # (loss, batch size) of every step, read on the host as the loss function returns it

    def recording_ce(model, x, y):
        loss = F.cross_entropy(model(x), y)
        steps.append((float(loss), len(y)))
        return loss

    seen = []
    h = train(model, task.train, recording_ce,
              TrainConfig(epochs=2, batch_size=50),
              hooks=TrainHooks(end_epoch=lambda m, e, v: seen.append((e, v))))
    per_epoch = -(-len(task.train) // 50)
    assert len(steps) == 2 * per_epoch and len(task.train) % 50 != 0  # a short last batch: weighting matters
    expected = [sum(v * n for v, n in ep) / sum(n for _, n in ep) for ep in (steps[:per_epoch], steps[per_epoch:])]
    assert h == pytest.approx(expected, rel=1e-9, abs=0)  # sample-weighted mean of the host-side step losses
    assert [e for e, _ in seen] == [0, 1] and [v for _, v in seen] == h and h[1] < h[0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message PyTorch without CUDA gives")
def test_cuda_without_cuda_is_a_clear_error(task):
    model = IncrementalNet("mlp", 1, 8, 10, {"hidden": [32]})
    with pytest.raises(CompactCLError, match="no CUDA device.*--device cpu"):
        train(model, task.train, _ce, TrainConfig(epochs=1, device="cuda"))
    with pytest.raises(CompactCLError, match="no CUDA device"):
        train(model, task.train, _ce, TrainConfig(epochs=1, device="cuda:1"))


def test_cli_flags_reach_the_train_config(tmp_path):
    from compactcl.pipeline.recipe import load_recipe
    from compactcl.pipeline.run import train_config

    r = load_recipe(None, ["learner.bf16=true", "learner.channels_last=true", "learner.compile=true"])
    cfg = train_config(r, "cpu", False)
    assert (cfg.bf16, cfg.channels_last, cfg.compile) == (True, True, True)
    from compactcl.cli.main import build_parser

    args = build_parser().parse_args(["run", "--bf16", "--channels-last", "--compile"])
    assert (args.bf16, args.channels_last, args.compile) == (True, True, True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_path_bf16_channels_last(task):  # pragma: no cover - runs on GPU machines only
    torch.manual_seed(0)
    model = IncrementalNet("cnn", 1, 8, 10, {"width": 8}).cuda()
    for on_device in (True, False):  # whole set on the GPU / pinned host batches
        h = train(model, task.train, _ce, TrainConfig(epochs=2, batch_size=64, device="cuda", bf16=True,
                                                      data_on_device=on_device))
        assert h[-1] < h[0]
    assert all(p.is_contiguous() for p in model.parameters())
