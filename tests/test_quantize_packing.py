import numpy as np
import pytest

from compactcl.compress.quantize.packing import pack_bits, pack_mask, packed_nbytes, unpack_bits, unpack_mask


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("n", [0, 1, 7, 8, 13, 1000, 4097])
def test_pack_roundtrip_and_size(bits, n):
    rng = np.random.default_rng(bits * 100 + n)
    codes = rng.integers(0, 2 ** bits, n).astype(np.int64)
    packed = pack_bits(codes, bits)
    assert packed.dtype == np.uint8 and packed.nbytes == (n * bits + 7) // 8 == packed_nbytes(n, bits)
    assert np.array_equal(unpack_bits(packed, bits, n), codes)


def test_pack_known_layout():
    # little-endian bit order, codes back to back: 3-bit [1, 2, 3, 0, 7] -> 0b11_010_001, 0b0_111_000_0
    assert pack_bits(np.array([1, 2, 3, 0, 7]), 3).tolist() == [0b11010001, 0b01110000]
    assert pack_bits(np.array([0xA, 0x5]), 4).tolist() == [0x5A]


def test_pack_rejects_out_of_range_and_short_buffers():
    with pytest.raises(ValueError, match=r"codes must be in \[0, 8\) to pack into 3 bits"):
        pack_bits(np.array([8]), 3)
    with pytest.raises(ValueError, match="1 bytes cannot hold 3 codes of 4 bits"):
        unpack_bits(np.zeros(1, np.uint8), 4, 3)


def test_mask_roundtrip():
    mask = np.random.default_rng(0).random(1001) < 0.1
    packed = pack_mask(mask)
    assert packed.nbytes == 126
    assert np.array_equal(unpack_mask(packed, 1001), mask)


def test_pack_contracts():
    with pytest.raises(ValueError, match="bits must be in 1..8, got 9"):
        pack_bits(np.array([1]), 9)
    with pytest.raises(ValueError, match="bits must be in 1..8, got 0"):
        pack_bits(np.array([0]), 0)
    codes = np.arange(24).reshape(4, 6) % 8
    assert np.array_equal(pack_bits(codes, 3), pack_bits(codes.reshape(-1), 3))  # any shape, row-major
    packed = pack_bits(codes.reshape(-1), 3)
    out = unpack_bits(packed.tolist(), 3, 24)  # bytes handed over as plain ints still unpack
    assert out.dtype == np.uint8 and np.array_equal(out, codes.reshape(-1))
    mask = np.array([[0.0, 1.5], [0.0, 2.0], [1.0, 0.0]])  # any non-zero is kept, 2-D is flattened
    assert np.array_equal(pack_mask(mask), pack_mask(mask.reshape(-1) != 0))
    back = unpack_mask(pack_mask(mask).tolist(), 6)
    assert back.dtype == bool and back.tolist() == [False, True, False, True, True, False]
