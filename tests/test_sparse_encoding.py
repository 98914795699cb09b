import numpy as np
import pytest

from compactcl.export.sparse import best_index_bits, decode_positions, encode_gaps, entries_for


@pytest.mark.parametrize("density", [0.02, 0.1, 0.5, 1.0])
@pytest.mark.parametrize("idx_bits", [2, 3, 5, 8])
def test_roundtrip_positions_and_fillers(density, idx_bits):
    rng = np.random.default_rng(int(density * 100) + idx_bits)
    n = 3000
    positions = np.flatnonzero(rng.random(n) < density)
    stored, src = encode_gaps(positions, idx_bits)
    assert stored.max(initial=0) < (1 << idx_bits)
    assert len(stored) == entries_for(positions, idx_bits)
    decoded = decode_positions(stored, n)
    assert np.array_equal(decoded[src >= 0], positions)  # real entries land where they were
    assert np.array_equal(src[src >= 0], np.arange(positions.size))


def test_naive_reference_for_fillers():
    # gaps 3 and 30 with 3-bit indices (span 8): 30 -> 3 fillers of 8 then 6
    stored, src = encode_gaps(np.array([2, 32]), 3)
    assert stored.tolist() == [2, 7, 7, 7, 5]
    assert src.tolist() == [0, -1, -1, -1, 1]


def test_index_bits_choice_beats_a_bitmask_when_sparse():
    rng = np.random.default_rng(0)
    n = 100_000
    positions = np.flatnonzero(rng.random(n) < 0.08)
    b, bits = best_index_bits(positions, value_bits=5)
    bitmask_bits = n + positions.size * 5
    assert bits < 0.8 * bitmask_bits
    with pytest.raises(ValueError):
        decode_positions(np.array([n]), n)
