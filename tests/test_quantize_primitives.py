"""Pure quantization math, tested against PyTorch's fake-quant ops and brute-force references."""

import math

import pytest
import torch
from torch.ao.quantization import MinMaxObserver, PerChannelMinMaxObserver

from compactcl.compress.quantize import primitives as P


def _observer_qparams(w, bits, symmetric, axis):
    """Scale and zero point from PyTorch's own min-max observers (the independent reference).

    Symmetric: the narrow signed range [-(2**(b-1)-1), 2**(b-1)-1] on qint8, so the observer divides max|w|
    by (qmax - qmin) / 2 = qmax and keeps zero point 0. Affine: [0, 2**b - 1] on quint8.
    """
    if symmetric:
        qmin, qmax, dtype = -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1, torch.qint8
    else:
        qmin, qmax, dtype = 0, 2 ** bits - 1, torch.quint8
    if axis is None:
        qscheme = torch.per_tensor_symmetric if symmetric else torch.per_tensor_affine
        obs = MinMaxObserver(dtype=dtype, qscheme=qscheme, quant_min=qmin, quant_max=qmax)
    else:
        qscheme = torch.per_channel_symmetric if symmetric else torch.per_channel_affine
        obs = PerChannelMinMaxObserver(ch_axis=axis, dtype=dtype, qscheme=qscheme, quant_min=qmin, quant_max=qmax)
    obs(w)
    scale, zp = obs.calculate_qparams()
    return scale.reshape(-1), zp.reshape(-1)


@pytest.mark.parametrize("bits", [2, 3, 4, 6, 8])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("axis", [None, 0])
def test_linear_qparams_equal_pytorch_minmax_observers(bits, symmetric, axis):
    torch.manual_seed(bits)
    # 64 channels with varied ranges and offsets: some all-positive, some all-negative, so the
    # zero point lands on every kind of fraction (a floored zero point differs from a rounded one)
    w = torch.randn(64, 50) * torch.rand(64, 1) + torch.randn(64, 1) * (0.0 if symmetric else 0.5)
    ref_scale, ref_zp = _observer_qparams(w, bits, symmetric, axis)
    scale, zp = P.linear_qparams(w, bits, symmetric, axis)
    assert scale.dtype == torch.float32 and zp.dtype == torch.int32
    assert torch.allclose(scale.reshape(-1), ref_scale.float(), rtol=1e-6, atol=0)
    assert torch.equal(zp.reshape(-1).long(), ref_zp.long())


def test_linear_qparams_hand_computed():
    w = torch.tensor([[-0.7, 0.3, 0.1], [0.2, 0.4, 0.35], [-1.5, -0.5, -0.1]])
    # symmetric 4-bit: max|w| / 7 per row; zero point 0
    scale, zp = P.linear_qparams(w, 4, True, 0)
    assert torch.allclose(scale, torch.tensor([0.7, 0.4, 1.5]) / 7)
    assert torch.equal(zp, torch.zeros(3, dtype=torch.int32))
    # affine 2-bit (0..3), range always includes 0: row 0 [-0.7, 0.3] -> scale 1/3, zp = 0 - round(-2.1) = 2;
    # row 1 [0, 0.4] -> scale 0.4/3, zp 0; row 2 [-1.5, 0] -> scale 0.5, zp = round(3.0) = 3
    scale, zp = P.linear_qparams(w, 2, False, 0)
    assert torch.allclose(scale, torch.tensor([1.0 / 3, 0.4 / 3, 0.5]))
    assert zp.tolist() == [2, 0, 3]
    # zero point = -round(lo / scale), rounded both ways: at 2 bits with hi - lo = 1 the scale is 1/3;
    # [-0.55, 0.45]: lo/scale = -1.65 -> zp 2 (flooring 1.65 gives 1); [-0.4, 0.6]: -1.2 -> zp 1 (floor(-1.2) gives 2)
    _, zp = P.linear_qparams(torch.tensor([[-0.55, 0.45], [-0.4, 0.6]]), 2, False, 0)
    assert zp.tolist() == [2, 1]


@pytest.mark.parametrize("bits", [2, 3, 4, 6, 8])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("shape", [(16, 8, 3, 3), (10, 64)])
def test_linear_fake_quant_equals_pytorch(bits, symmetric, shape):
    w = torch.randn(shape) * 0.2 + (0.0 if symmetric else 0.05)
    qmin, qmax = P.qrange(bits, symmetric)
    s, z = P.linear_qparams(w, bits, symmetric, axis=0)
    ref_s, ref_z = _observer_qparams(w, bits, symmetric, 0)  # the grid itself is PyTorch's choice too
    assert torch.allclose(s, ref_s.float(), rtol=1e-6, atol=0) and torch.equal(z.long(), ref_z.long())
    ref = torch.fake_quantize_per_channel_affine(w, s, z, 0, qmin, qmax)
    assert torch.equal(P.fake_quantize_linear(w, s, z, bits, 0, symmetric), ref)
    codes, s2, z2 = P.quantize_linear(w, bits, 0, symmetric)
    assert codes.min() >= 0 and codes.max() < 2 ** bits
    assert torch.equal(P.dequantize_linear(codes, s2, z2, bits, 0, symmetric), ref)
    s, z = P.linear_qparams(w, bits, symmetric, axis=None)
    ref_s, ref_z = _observer_qparams(w, bits, symmetric, None)
    assert math.isclose(float(s), float(ref_s), rel_tol=1e-6) and int(z) == int(ref_z)
    ref = torch.fake_quantize_per_tensor_affine(w, float(s), int(z), qmin, qmax)
    assert torch.equal(P.fake_quantize_linear(w, s, z, bits, None, symmetric), ref)
    codes, s2, z2 = P.quantize_linear(w, bits, None, symmetric)
    assert torch.equal(P.dequantize_linear(codes, s2, z2, bits, None, symmetric), ref)


@pytest.mark.parametrize("symmetric", [True, False])
def test_linear_keeps_zero_and_requantizes_exactly(symmetric):
    w = torch.randn(8, 20)
    w[w.abs() < 0.5] = 0
    codes, s, z = P.quantize_linear(w, 4, 0, symmetric)
    deq = P.dequantize_linear(codes, s, z, 4, 0, symmetric)
    assert torch.equal(deq[w == 0], torch.zeros(int((w == 0).sum())))
    # weights already on the grid get the same codes back
    again, _, _ = P.quantize_linear(deq, 4, 0, symmetric, s, z)
    assert torch.equal(again, codes)


def test_symmetric_two_bit_is_ternary():
    w = torch.randn(4, 50)
    codes, s, z = P.quantize_linear(w, 2, 0, True)
    deq = P.dequantize_linear(codes, s, z, 2, 0, True)
    for row, sc in zip(deq, s):
        assert set(torch.unique(row / sc).tolist()) <= {-1.0, 0.0, 1.0}


def _nearest_exponent_brute_force(w, axis):
    """e minimising |2**e - max|w|| over every candidate exponent (float64; a tie goes to the larger)."""
    tops = w.abs().amax(dim=1) if axis == 0 else w.abs().max().reshape(1)
    out = []
    for top in tops.double().tolist():
        cands = range(-130, 130)
        out.append(min(cands, key=lambda e: (abs(2.0 ** e - top), -e)))
    return torch.tensor(out, dtype=torch.int32)


def test_log_qparams_is_the_nearest_power_of_two_of_the_largest_magnitude():
    # hand-made: max|w| per row 0.7 -> 0.5 (e=-1); 0.8 -> 1 (e=0); 3.1 -> 4 (e=2); 2.9 -> 2 (e=1);
    # 0.75 (exactly between 0.5 and 1 in the linear domain) -> the larger, 1 (e=0); 1.0 -> e=0
    w = torch.tensor([[0.7, -0.1], [-0.8, 0.2], [3.1, 0.0], [-2.9, 1.0], [0.75, -0.5], [1.0, -1.0]])
    assert P.log_qparams(w, 0).tolist() == [-1, 0, 2, 1, 0, 0]
    assert int(P.log_qparams(w, None)) == 2
    torch.manual_seed(0)
    w = torch.randn(200, 30) * torch.rand(200, 1) * 4
    assert torch.equal(P.log_qparams(w, 0), _nearest_exponent_brute_force(w, 0))


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 8])
@pytest.mark.parametrize("axis", [None, 0])
def test_log_quant_nearest_power_of_two_and_zero(bits, axis):
    w = torch.randn(6, 40) * 0.1
    w[:, :5] = 0
    emax = P.log_qparams(w, axis)
    assert torch.equal(emax.reshape(-1), _nearest_exponent_brute_force(w, axis))
    codes = P.quantize_log(w, bits, emax, axis)
    deq = P.dequantize_log(codes, bits, emax, axis)
    assert codes.min() >= 0 and codes.max() < 2 ** bits
    assert torch.equal(deq[:, :5], torch.zeros(6, 5))  # zeros stay exactly zero
    nz = deq[deq != 0].abs()
    assert torch.equal(torch.frexp(nz)[0], torch.full_like(nz, 0.5))  # exact powers of two
    assert torch.equal(torch.sign(deq[deq != 0]), torch.sign(w[deq != 0]))
    # brute force: the result is the nearest grid value (linear domain)
    L = P.log_levels(bits)
    em = emax.reshape(-1, 1) if axis == 0 else emax.reshape(1, 1).expand(6, 1)
    for i in range(6):
        grid = torch.cat([torch.zeros(1), *[torch.tensor([2.0 ** e, -(2.0 ** e)])
                                           for e in range(int(em[i]) - L + 1, int(em[i]) + 1)]])
        best = (w[i, :, None] - grid[None]).abs().min(1).values
        assert torch.all((w[i] - deq[i]).abs() <= best + 1e-12)
    assert torch.equal(P.quantize_log(deq, bits, emax, axis), codes)


def test_log_levels_configurable():
    w = torch.randn(100)
    emax = torch.tensor(0, dtype=torch.int32)
    deq = P.fake_quantize_log(w, 4, emax, None, levels=2)
    assert set(deq.abs().unique().tolist()) <= {0.0, 0.5, 1.0}
    with pytest.raises(ValueError, match="a 3-bit log code holds 1..3 exponent levels per sign, got 4"):
        P.log_levels(3, levels=4)


@pytest.mark.parametrize("init", ["linear", "density", "kmeans++"])
@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_kmeans_dense(init, bits):
    w = torch.randn(32, 16)
    res = P.quantize_kmeans(w, bits, init=init, iters=1000)
    assert res.zero_code is None and res.codebook.numel() == 2 ** bits
    deq = P.dequantize_kmeans(res.codes, res.codebook)
    assert torch.unique(deq).numel() <= 2 ** bits
    if init != "kmeans++":  # Lloyd fixed point: each used centroid is the mean of its members
        for k in torch.unique(res.codes):
            members = w[res.codes == k]
            assert abs(float(members.mean()) - float(res.codebook[k])) < 1e-5


@pytest.mark.parametrize("init", ["linear", "density", "kmeans++"])
def test_kmeans_beats_uniform_grid(init):
    w = torch.randn(2000)
    res = P.quantize_kmeans(w, 4, init=init)
    err = (P.dequantize_kmeans(res.codes, res.codebook) - w).pow(2).mean()
    s, z = P.linear_qparams(w, 4, symmetric=False)
    uniform = (P.fake_quantize_linear(w, s, z, 4, symmetric=False) - w).pow(2).mean()
    assert err < 0.8 * uniform  # Lloyd-Max for a normal is ~0.0095 vs ~0.018 for 16 uniform levels


def test_kmeans_sparse_modes_keep_zeros_and_exclude_them():
    w = torch.randn(40, 50)
    few = w.clone(); few[:, :2] = 0  # 4% zeros -> a reserved zero code
    res = P.quantize_kmeans(few, 3)
    assert res.zero_code == 7 and float(res.codebook[7]) == 0.0
    deq = P.dequantize_kmeans(res.codes, res.codebook)
    assert torch.equal(deq == 0, few == 0)
    many = w.clone(); many[:, :45] = 0  # 90% zeros -> the mask carries them; all 8 codes are centroids
    res = P.quantize_kmeans(many, 3)
    assert res.zero_code is None
    assert bool((res.codebook != 0).all())
    deq = P.dequantize_kmeans(res.codes, res.codebook, mask=many != 0)
    assert torch.equal(deq == 0, many == 0)
    # zeros were excluded from clustering: the centroids equal those of the non-zeros alone
    alone = P.kmeans_codebook(many[many != 0], 8)
    assert torch.allclose(torch.sort(res.codebook).values, torch.sort(alone).values)


def test_bad_bits_rejected():
    with pytest.raises(ValueError, match=r"bits must be an integer in 2\.\.8, got 1"):
        P.qrange(1, True)
    with pytest.raises(ValueError, match=r"bits must be an integer in 2\.\.8, got 9"):
        P.qrange(9, False)


# ------------------------------------------------ edges and contracts (each kills a mutant, notes/mutation.md)
def test_qrange_and_log_levels_hand_table():
    assert [P.qrange(b, True) for b in (2, 3, 4, 8)] == [(-1, 1), (-3, 3), (-7, 7), (-127, 127)]
    assert [P.qrange(b, False) for b in (2, 3, 4, 8)] == [(0, 3), (0, 7), (0, 15), (0, 255)]
    assert [P.log_levels(b) for b in (2, 3, 4, 8)] == [1, 3, 7, 127]


def test_linear_defaults_are_symmetric_and_dtypes_are_fixed():
    w = torch.randn(5, 7) + 0.3
    s_sym, z_sym = P.linear_qparams(w, 4, True)
    s, z = P.linear_qparams(w, 4)
    assert torch.equal(s, s_sym) and torch.equal(z, z_sym)
    codes, s, z = P.quantize_linear(w, 4)
    assert codes.dtype == torch.int64 and torch.equal(codes, P.quantize_linear(w, 4, None, True)[0])
    assert torch.equal(P.dequantize_linear(codes, s, z, 4), P.dequantize_linear(codes, s, z, 4, None, True))
    assert torch.equal(P.fake_quantize_linear(w, s, z, 4), P.fake_quantize_linear(w, s, z, 4, None, True))


def test_linear_qparams_of_an_empty_tensor():
    s, z = P.linear_qparams(torch.zeros(3, 0), 4, False, axis=0)
    assert s.shape == (3,) and s.dtype == torch.float32 and torch.equal(s, torch.ones(3))
    assert z.dtype == torch.int32 and torch.equal(z, torch.zeros(3, dtype=torch.int32))
    s, z = P.linear_qparams(torch.zeros(0), 4, True)
    assert s.shape == () and z.shape == () and z.dtype == torch.int32


@pytest.mark.parametrize("symmetric", [True, False])
def test_given_grid_is_used_and_out_of_range_values_clamp(symmetric):
    w = torch.linspace(-3, 3, 61).reshape(1, -1)
    scale, zp = torch.tensor(0.1), torch.tensor(0 if symmetric else 7, dtype=torch.int32)
    qmin, qmax = P.qrange(4, symmetric)
    codes, s, z = P.quantize_linear(w, 4, None, symmetric, scale, zp)
    assert s is scale and z is zp  # the given grid, not a min-max one
    assert int(codes.min()) == 0 and int(codes.max()) == qmax - qmin  # clamped at both ends
    ref = torch.fake_quantize_per_tensor_affine(w, 0.1, int(zp), qmin, qmax)
    assert torch.equal(P.fake_quantize_linear(w, scale, zp, 4, None, symmetric), ref)
    assert torch.equal(P.dequantize_linear(codes, s, z, 4, None, symmetric), ref)
    # only a scale: the grid is chosen afresh (both parameters come from min-max)
    assert torch.equal(P.quantize_linear(w, 4, None, symmetric, scale=scale)[0], P.quantize_linear(w, 4, None, symmetric)[0])


def test_scalar_tensors_keep_their_shape():
    w = torch.tensor(0.33)
    out = P.fake_quantize_linear(w, torch.tensor([0.1]), torch.tensor([0], dtype=torch.int32), 4)
    assert out.shape == () and float(out) == pytest.approx(0.3)
    assert int(P.log_qparams(torch.tensor(3.1))) == 2  # a 0-d tensor is its own maximum


def test_log_qparams_edges():
    emax = P.log_qparams(torch.zeros(0))
    assert emax.shape == () and emax.dtype == torch.int32 and int(emax) == 0  # nothing to fit: 2**0
    # an all-zero channel takes the smallest normal float32 exponent, not a subnormal or garbage
    assert P.log_qparams(torch.zeros(3, 4), 0).tolist() == [-126, -126, -126]


def test_log_rounding_ties_go_up_like_log_qparams():
    emax = torch.tensor(0, dtype=torch.int32)  # levels 1, 0.5, 0.25 (3 levels at 3 bits)
    w = torch.tensor([0.75, -0.375, 0.125, 0.1, 0.0])
    # 0.75 is halfway between 0.5 and 1 -> 1; 0.375 -> 0.5; 0.125 (half the smallest level) -> kept as 0.25
    assert P.fake_quantize_log(w, 3, emax).tolist() == [1.0, -0.5, 0.25, 0.0, 0.0]


def test_fake_quantize_log_per_channel_is_quantize_then_dequantize():
    w = torch.randn(6, 40)
    emax = P.log_qparams(w, 0)
    ref = P.dequantize_log(P.quantize_log(w, 4, emax, 0), 4, emax, 0)
    assert torch.equal(P.fake_quantize_log(w, 4, emax, 0), ref)


def test_kmeans_codebook_edges():
    assert torch.equal(P.kmeans_codebook(torch.zeros(0), 4), torch.zeros(4))
    assert torch.equal(P.kmeans_codebook(torch.tensor([0.5]), 4), torch.full((4,), 0.5))
    # fewer distinct values than k under k-means++: the codebook is padded with a repeat, length k
    c = P.kmeans_codebook(torch.tensor([1.0, 1.0, 2.0, 2.0, 3.0]), 8, init="kmeans++")
    assert c.numel() == 8 and set(c.tolist()) == {1.0, 2.0, 3.0}
    # k-means++ is seeded: the same seed gives the same codebook
    v = torch.randn(300)
    assert torch.equal(P.kmeans_codebook(v, 8, "kmeans++", seed=3), P.kmeans_codebook(v, 8, "kmeans++", seed=3))
    # Lloyd by hand: linear init [0, 1/3, 2/3, 1]; members 0,0,0 and 1: the two middle clusters are empty
    # and stay put, a one-member cluster sits on its member
    c = P.kmeans_codebook(torch.tensor([0.0, 0.0, 0.0, 1.0]), 4)
    assert torch.allclose(c, torch.tensor([0.0, 1 / 3, 2 / 3, 1.0]))
    with pytest.raises(ValueError, match="unknown k-means init 'best'"):
        P.kmeans_codebook(v, 4, init="best")


def test_quantize_kmeans_zero_code_boundary_and_sizes():
    w = torch.randn(4, 4).abs() + 0.1
    half = w.clone(); half.view(-1)[:8] = 0  # exactly 1/bits of zeros at 2 bits: still a reserved code
    res = P.quantize_kmeans(half, 2)
    assert res.zero_code == 3 and res.codebook.numel() == 4
    forty = torch.randn(10, 10).abs() + 0.1; forty.view(-1)[:40] = 0  # 40% > 1/3 at 3 bits: the mask
    assert P.quantize_kmeans(forty, 3).zero_code is None
    empty = P.quantize_kmeans(torch.zeros(0, 3), 1)
    assert empty.zero_code is None and empty.codes.shape == (0, 3) and empty.codebook.numel() == 2
    with pytest.raises(ValueError, match=r"bits must be an integer in 1\.\.8, got 9"):
        P.quantize_kmeans(w, 9)
    # codes unpacked from an artifact are uint8: they index, they are not a mask
    res = P.quantize_kmeans(torch.randn(20), 2)
    assert torch.equal(P.dequantize_kmeans(res.codes.to(torch.uint8), res.codebook),
                       P.dequantize_kmeans(res.codes, res.codebook))
