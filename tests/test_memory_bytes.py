"""Exemplars stored as uint8 pixels: lossless for 8-bit images, counted in bytes, budgeted in bytes."""

import pytest
import torch

from compactcl.data import ExemplarMemory, TensorData, class_incremental
from compactcl.data.memory import decode_uint8, encode_uint8
from compactcl.models import IncrementalNet


def test_uint8_round_trip_is_bit_exact_on_digits(digits):
    for x in (digits.train.x, digits.test.x):
        u = encode_uint8(x, digits.normalization)
        assert u.dtype == torch.uint8 and int(u.max()) == 16  # sklearn's digits have 17 grey levels
        assert torch.equal(decode_uint8(u, digits.normalization), x)


def test_uint8_memory_replays_the_same_images_in_a_quarter_of_the_bytes(digits):
    task = class_incremental(digits, tasks=1, classes_per_task=10, seed=0).tasks[0]
    model = IncrementalNet("mlp", 1, 8, 10, {"hidden": [16]})
    f32, u8 = ExemplarMemory(40), ExemplarMemory(40, normalization=digits.normalization)
    f32.update(model, task.train)
    u8.update(model, task.train)
    assert (f32.codec, u8.codec) == ("float32", "uint8")
    a, b = f32.data(), u8.data()
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)  # same exemplars, same pixels when batched
    assert all(torch.equal(f32.means[c], u8.means[c]) for c in f32.means)
    assert u8.nbytes == 40 * 64 and f32.nbytes == 4 * u8.nbytes
    assert all(t.dtype == torch.uint8 for t in u8.state_tensors().values())
    back = ExemplarMemory(40, normalization=digits.normalization)
    back.load_state_tensors(u8.state_tensors())
    assert torch.equal(back.data().x, a.x)


@pytest.mark.parametrize("budget,per_class", [(64 * 30, 15), (64 * 30 + 63, 15), (64 * 3, 1)])
def test_a_byte_budget_sets_the_number_of_exemplars(digits, budget, per_class):
    task = class_incremental(digits, tasks=1, classes_per_task=2, seed=0, all_classes=False).tasks[0]
    mem = ExemplarMemory(0, normalization=digits.normalization, bytes=budget)
    mem.update(IncrementalNet("mlp", 1, 8, 2, {"hidden": [8]}), task.train)
    assert mem.size == budget // 64 and all(len(v) == per_class for v in mem.x.values())
    assert mem.nbytes <= budget
    with pytest.raises(ValueError, match="bytes"):
        ExemplarMemory(0, bytes=-1)


def test_float_images_off_the_pixel_grid_are_rounded_to_it():
    norm = {"scale": "pixel/255", "mean": 0.5, "std": 0.25}
    x = (torch.rand(3, 1, 4, 4) - 0.5) / 0.25  # any value in [0, 1] before standardising
    back = decode_uint8(encode_uint8(x, norm), norm)
    assert (back - x).abs().max() <= 0.5 / 255 / 0.25 + 1e-6  # at most half a grey level
    assert TensorData(back, torch.zeros(3)).x.dtype == torch.float32
