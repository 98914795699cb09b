import math

import pytest
from torch import nn

from compactcl.metrics import (average_incremental_accuracy, backward_transfer, count_flops, count_params,
                               final_accuracy, forgetting, summarize, to_matrix)

# Hand-computed: after task 0 -> [0.9]; after 1 -> [0.6, 0.8]; after 2 -> [0.5, 0.7, 0.9]
ACC = [[0.9], [0.6, 0.8], [0.5, 0.7, 0.9]]


def test_matrix_is_lower_triangular_with_nan_above():
    m = to_matrix(ACC)
    assert m.shape == (3, 3)
    assert math.isnan(m[0, 1]) and math.isnan(m[1, 2])
    assert m[2, 1] == 0.7


def test_hand_computed_figures():
    # averages per step: 0.9, 0.7, 0.7 -> AIA = 2.3 / 3
    assert average_incremental_accuracy(ACC) == pytest.approx(2.3 / 3)
    assert final_accuracy(ACC) == pytest.approx(0.7)
    # forgetting: task0 best 0.9 -> 0.5 (0.4); task1 best 0.8 -> 0.7 (0.1); mean 0.25
    assert forgetting(ACC) == pytest.approx(0.25)
    # bwt: (0.5 - 0.9 + 0.7 - 0.8) / 2 = -0.25
    assert backward_transfer(ACC) == pytest.approx(-0.25)


def test_forgetting_uses_best_earlier_accuracy_not_first():
    acc = [[0.5], [0.9, 0.9], [0.6, 0.9, 1.0]]
    assert forgetting(acc) == pytest.approx(((0.9 - 0.6) + 0.0) / 2)
    assert backward_transfer(acc) == pytest.approx(((0.6 - 0.5) + 0.0) / 2)


def test_single_task_and_ragged_rows():
    assert summarize([[0.8]]) == {"average_incremental_accuracy": 0.8, "final_accuracy": 0.8,
                                  "forgetting": 0.0, "bwt": 0.0}
    with pytest.raises(ValueError, match="row 1 of the accuracy matrix has 1 entries, needs 2"):
        to_matrix([[0.1], [0.2]])


def test_flops_count_matches_hand_count():
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 8 * 8, 10))
    # conv: 4*8*8 outputs x 1*3*3 MACs; linear: 10 x 256
    assert count_flops(model, (1, 8, 8)) == 4 * 64 * 9 + 10 * 256
    assert count_params(model) == 4 * 9 + 4 + 256 * 10 + 10
    dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
    assert count_flops(dw, (8, 4, 4)) == 8 * 16 * 9


def test_forgetting_ignores_the_final_row_when_choosing_the_best():
    # every old task improves in the final row: forgetting is negative, not clipped at 0 by the final row
    acc = [[0.5], [0.6, 0.7], [0.9, 0.8, 0.9]]
    # task 0: best before the last task max(0.5, 0.6) = 0.6, final 0.9 -> -0.3; task 1: 0.7 -> 0.8 -> -0.1
    assert forgetting(acc) == pytest.approx((-0.3 - 0.1) / 2)
    # two tasks, the old one improves: best earlier is the first row only
    assert forgetting([[0.4], [0.7, 0.9]]) == pytest.approx(-0.3)


def test_square_rows_and_two_task_bwt():
    nan = float("nan")
    square = [[0.9, nan, nan], [0.6, 0.8, nan], [0.5, 0.7, 0.9]]  # NaN above the diagonal, as documented
    assert summarize(square) == summarize(ACC)
    assert backward_transfer([[0.9], [0.6, 0.8]]) == pytest.approx(-0.3)
