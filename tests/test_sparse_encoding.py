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
