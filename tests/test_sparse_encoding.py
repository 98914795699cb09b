import numpy as np
import pytest

from compactcl.export.sparse import best_index_bits, decode_positions, encode_gaps, entries_for


@pytest.mark.parametrize("density", [0.0, 0.02, 0.1, 0.5, 1.0])
@pytest.mark.parametrize("idx_bits", [1, 2, 3, 5, 8])
def test_roundtrip_positions(density, idx_bits):
    rng = np.random.default_rng(int(density * 100) + idx_bits)
    n = 3000
    positions = np.flatnonzero(rng.random(n) < density)
    stored = encode_gaps(positions, idx_bits)
    assert stored.max(initial=0) < (1 << idx_bits)
    assert len(stored) == entries_for(positions, idx_bits)
    assert np.array_equal(decode_positions(stored, idx_bits, n), positions)


def test_hand_worked_skips():
    # 3-bit codes, skip code 7 advances 7: positions 2 and 32 -> gap 3 (code 2), gap 30 = 7*4 + 2 (code 1)
    assert encode_gaps(np.array([2, 32]), 3).tolist() == [2, 7, 7, 7, 7, 1]


def test_one_bit_indices_are_a_bitmask():
    mask = np.array([0, 1, 1, 0, 0, 1, 0], dtype=bool)
    stored = encode_gaps(np.flatnonzero(mask), 1)
    # code 1 = skip one position, code 0 = a non-zero here; trailing zeros need nothing
    assert stored.tolist() == [1, 0, 0, 1, 1, 0]


def test_index_bits_choice_beats_a_bitmask_when_sparse():
    rng = np.random.default_rng(0)
    n = 100_000
    positions = np.flatnonzero(rng.random(n) < 0.08)
    b, bits = best_index_bits(positions, value_bits=5)
    assert b > 1 and bits < 0.8 * (n + positions.size * 5)
    with pytest.raises(ValueError, match=f"relative indices run past the tensor's {n} values"):
        decode_positions(np.array([n]), 8, n)


def _entries_by_walking(positions, idx_bits):
    """Count the codes by walking the gaps one skip at a time (independent of the vectorised encoder)."""
    skip = (1 << idx_bits) - 1
    count, prev = 0, -1
    for p in positions:
        gap = int(p) - prev  # >= 1; a real code stores gap - 1 in [0, skip - 1]
        while gap - 1 >= skip:
            count += 1
            gap -= skip
        count += 1
        prev = int(p)
    return count


@pytest.mark.parametrize("density", [0.002, 0.01, 0.05, 0.3, 0.9])
def test_best_index_bits_is_the_brute_force_minimum_over_all_widths(density):
    rng = np.random.default_rng(int(density * 1000))
    positions = np.flatnonzero(rng.random(20_000) < density)
    value_bits = 4
    costs = {b: _entries_by_walking(positions, b) * b + len(positions) * value_bits for b in range(1, 9)}
    for b in (1, 3, 8):
        assert entries_for(positions, b) == _entries_by_walking(positions, b)
    b, bits = best_index_bits(positions, value_bits)
    assert bits == min(costs.values()) and costs[b] == bits
    if density <= 0.01:  # very sparse: the best width is wide (> 3 bits), so every width must be tried
        assert b > 3


def test_best_index_bits_hand_worked():
    # positions 0 and 100, 2-bit values. 1-bit: 1 + 100 entries -> 101 + 4; 7-bit (skip 127): 2 entries ->
    # 14 + 4 = 18; 8-bit: 16 + 4 = 20; 6-bit (skip 63): gap 100 -> 63 + real -> 3 entries -> 18 + 4 = 22
    b, bits = best_index_bits(np.array([0, 100]), 2)
    assert (b, bits) == (7, 18)


def test_negative_codes_are_refused():
    with pytest.raises(ValueError, match="run past the tensor's 10 values"):
        decode_positions(np.array([-3, 2]), 3, 10)
