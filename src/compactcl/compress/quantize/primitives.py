"""Pure quantization math: tensor in, integer codes + parameters out, and back.

No module surgery here. Three families, each a ``quantize_*`` / ``dequantize_*`` pair:

* linear (uniform): symmetric or affine, per tensor or per output channel (axis 0). The
  rounding and clamping are PyTorch's own (``round half to even`` of ``x * (1/scale)``,
  plus the zero point, clamped), so :func:`fake_quantize_linear` equals
  ``torch.fake_quantize_per_{tensor,channel}_affine`` bit for bit.
* logarithmic: sign + power-of-two exponent; code 0 is reserved for an exact zero, so
  pruned weights stay pruned.
* k-means weight sharing (Deep Compression): a codebook of ``2**bits`` centroids fitted to
  the *non-zero* weights only; zeros stay exactly zero.

Codes returned by every ``quantize_*`` are unsigned integers in ``[0, 2**bits)`` (int64), the
form :mod:`.packing` packs into bytes.

>>> w = torch.tensor([[0.5, -1.0], [0.25, 0.0]])
>>> codes, scale, zp = quantize_linear(w, bits=8, axis=0)
>>> torch.equal(dequantize_linear(codes, scale, zp, bits=8, axis=0), fake_quantize_linear(w, scale, zp, 8, axis=0))
True
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["qrange", "linear_qparams", "quantize_linear", "dequantize_linear", "fake_quantize_linear",
           "log_levels", "log_qparams", "quantize_log", "dequantize_log", "fake_quantize_log",
           "KMeansResult", "kmeans_codebook", "quantize_kmeans", "dequantize_kmeans", "assign_codebook"]

_EPS = torch.finfo(torch.float32).eps  # PyTorch observers floor the scale here too


def _check_bits(bits: int, low: int = 2, high: int = 8) -> None:
    if not isinstance(bits, int) or not low <= bits <= high:
        raise ValueError(f"bits must be an integer in {low}..{high}, got {bits!r}")


def _bcast(p: torch.Tensor, w: torch.Tensor, axis: int | None) -> torch.Tensor:
    """Per-channel parameter (C,) -> shape that broadcasts along ``axis`` of ``w``."""
    if axis is None or p.dim() == 0:
        return p.reshape(()) if p.numel() == 1 else p
    shape = [1] * w.dim()
    shape[axis] = -1
    return p.reshape(shape)


def _reduce_dims(w: torch.Tensor, axis: int | None) -> list[int]:
    return [d for d in range(w.dim()) if d != axis] if axis is not None else list(range(w.dim()))


# ---------------------------------------------------------------------------------------- linear
def qrange(bits: int, symmetric: bool) -> tuple[int, int]:
    """Integer range of a ``bits``-bit grid.

    Symmetric uses the narrow signed range ``[-(2**(b-1)-1), 2**(b-1)-1]`` (zero point 0), so
    the grid is symmetric and 2-bit is ternary {-s, 0, s}; affine uses ``[0, 2**b - 1]``.
    """
    _check_bits(bits)
    if symmetric:
        return -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1
    return 0, 2 ** bits - 1


def linear_qparams(w: torch.Tensor, bits: int, symmetric: bool = True,
                   axis: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Min-max ``(scale float32, zero_point int32)``, one per channel of ``axis`` or scalars.

    The range always contains 0, so zero (a pruned weight) is exactly representable.
    """
    qmin, qmax = qrange(bits, symmetric)
    w = w.detach().float()
    dims = _reduce_dims(w, axis)
    if w.numel() == 0:
        shape = (w.shape[axis],) if axis is not None else ()
        return torch.ones(shape), torch.zeros(shape, dtype=torch.int32)
    lo = torch.clamp(torch.amin(w, dim=dims) if dims else w, max=0.0)
    hi = torch.clamp(torch.amax(w, dim=dims) if dims else w, min=0.0)
    if symmetric:
        scale = torch.maximum(-lo, hi) / qmax
        zero_point = torch.zeros_like(scale, dtype=torch.int32)
    else:
        scale = (hi - lo) / float(qmax - qmin)
        scale = torch.clamp(scale, min=_EPS)
        zero_point = torch.clamp(qmin - torch.round(lo / scale), qmin, qmax).to(torch.int32)
    scale = torch.clamp(scale, min=_EPS).to(torch.float32)
    return scale, zero_point


def _linear_q(w: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int,
              axis: int | None) -> torch.Tensor:
    """Signed integer grid values (float tensor), exactly as PyTorch's fake-quant kernels compute them."""
    inv = _bcast(torch.reciprocal(scale.float()), w, axis)  # the kernels use 1.0f / scale
    zp = _bcast(zero_point.float(), w, axis)
    return torch.clamp(torch.round(w.float() * inv) + zp, qmin, qmax)


def quantize_linear(w: torch.Tensor, bits: int, axis: int | None = None, symmetric: bool = True,
                    scale: torch.Tensor | None = None,
                    zero_point: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``w`` -> ``(codes, scale, zero_point)``; codes are ``q - qmin`` in ``[0, 2**bits)``.

    Pass ``scale``/``zero_point`` to quantize on an existing grid (e.g. re-encoding weights).
    """
    qmin, qmax = qrange(bits, symmetric)
    if scale is None or zero_point is None:
        scale, zero_point = linear_qparams(w, bits, symmetric, axis)
    q = _linear_q(w, scale, zero_point, qmin, qmax, axis)
    return (q - qmin).to(torch.int64), scale, zero_point


def dequantize_linear(codes: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, bits: int,
                      axis: int | None = None, symmetric: bool = True) -> torch.Tensor:
    """Codes -> float32 weights ``(q - zero_point) * scale``."""
    qmin, _ = qrange(bits, symmetric)
    q = codes.float() + qmin
    return (q - _bcast(zero_point.float(), q, axis)) * _bcast(scale.float(), q, axis)


def fake_quantize_linear(w: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, bits: int,
                         axis: int | None = None, symmetric: bool = True) -> torch.Tensor:
    """Quantize-dequantize; equals ``torch.fake_quantize_per_*_affine`` with ``qrange(bits, symmetric)``."""
    qmin, qmax = qrange(bits, symmetric)
    q = _linear_q(w, scale, zero_point, qmin, qmax, axis)
    return (q - _bcast(zero_point.float(), q, axis)) * _bcast(scale.float(), q, axis)


# ------------------------------------------------------------------------------------------- log
def log_levels(bits: int, levels: int | None = None) -> int:
    """Number of exponents per sign: code 0 is zero, then ``levels`` positive and ``levels`` negative."""
    _check_bits(bits)
    most = 2 ** (bits - 1) - 1
    levels = most if levels is None else levels
    if not 1 <= levels <= most:
        raise ValueError(f"a {bits}-bit log code holds 1..{most} exponent levels per sign, got {levels}")
    return levels


def _nearest_pow2_exponent(a: torch.Tensor) -> torch.Tensor:
    """Exponent ``e`` of the power of two nearest to ``a > 0`` in the linear domain (exact, via frexp)."""
    mantissa, exponent = torch.frexp(a)  # a = m * 2**exponent, m in [0.5, 1)
    return (exponent - 1 + (mantissa >= 0.75).to(exponent.dtype)).to(torch.int32)


def log_qparams(w: torch.Tensor, axis: int | None = None) -> torch.Tensor:
    """Top exponent ``e_max`` (int32, per channel or scalar): the power of two nearest max|w|."""
    a = w.detach().abs().float()
    dims = _reduce_dims(a, axis)
    top = torch.amax(a, dim=dims) if (dims and a.numel()) else (a if a.numel() else torch.ones(()))
    return _nearest_pow2_exponent(torch.clamp(top, min=2.0 ** -126))


def quantize_log(w: torch.Tensor, bits: int, emax: torch.Tensor, axis: int | None = None,
                 levels: int | None = None) -> torch.Tensor:
    """Codes: 0 = zero, ``1..L`` = +2**e, ``L+1..2L`` = -2**e with e in ``[emax-L+1, emax]``.

    Rounds to the nearest grid value in the linear domain; magnitudes under half the smallest
    level become 0.
    """
    L = log_levels(bits, levels)
    w = w.detach().float()
    # float32 arithmetic on small integers (exact) throughout: integer `where` is the slow path
    emax_b = _bcast(emax.to(torch.float32), w, axis)
    emin_b = emax_b - (L - 1)
    a = w.abs()
    mantissa, exponent = torch.frexp(a)  # a = m * 2**exponent, m in [0.5, 1); a = 0 gives exponent 0
    e = exponent.to(torch.float32) - 1 + (mantissa >= 0.75).to(torch.float32)  # nearest power of two
    e = torch.minimum(torch.maximum(e, emin_b), emax_b)
    keep = (a >= torch.exp2(emin_b) * 0.5).to(torch.float32)  # under half the smallest level -> 0
    code = (e - emin_b + 1 + L * (w < 0).to(torch.float32)) * keep
    return code.to(torch.int64)


def dequantize_log(codes: torch.Tensor, bits: int, emax: torch.Tensor, axis: int | None = None,
                   levels: int | None = None) -> torch.Tensor:
    """Codes -> float32 ``±2**e`` (exact powers of two) or 0."""
    L = log_levels(bits, levels)
    c = codes.to(torch.float32)  # small integers: exact in float32, and float ops are the fast path
    negative = c > L
    k = c - 1 - L * negative.to(torch.float32)  # 0..L-1 for non-zero codes
    emin_b = _bcast(emax.to(torch.float32), c, axis) - (L - 1)
    mag = torch.exp2(emin_b + k)
    return torch.where(c == 0, torch.zeros(()), torch.where(negative, -mag, mag))


def fake_quantize_log(w: torch.Tensor, bits: int, emax: torch.Tensor, axis: int | None = None,
                      levels: int | None = None) -> torch.Tensor:
    return dequantize_log(quantize_log(w, bits, emax, axis, levels), bits, emax, axis, levels)


# ---------------------------------------------------------------------------------------- kmeans
@dataclass
class KMeansResult:
    """Codes over the whole tensor, the codebook, and which code (if any) is the reserved zero.

    ``zero_code is None`` with zeros present means *mask mode*: zeros are kept by the sparsity
    mask ``w != 0`` (the artifact stores it) and every code is a fitted centroid.
    """

    codes: torch.Tensor  # int64, shape of w
    codebook: torch.Tensor  # float32 (2**bits,)
    zero_code: int | None


def _assign(values: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Index of the nearest centroid for each value (1-D, via sorted midpoints: O(n log k))."""
    order = torch.argsort(centroids)
    sorted_c = centroids[order]
    mids = (sorted_c[1:] + sorted_c[:-1]) / 2
    return order[torch.bucketize(values, mids)]


def kmeans_codebook(values: torch.Tensor, k: int, init: str = "linear", iters: int = 30,
                    seed: int = 0) -> torch.Tensor:
    """``k`` centroids (float32) for 1-D ``values`` by Lloyd's algorithm.

    ``init``: ``"linear"`` (evenly spaced over [min, max], Deep Compression's best for accuracy:
    large weights keep their own centroids), ``"density"`` (quantiles of the CDF) or
    ``"kmeans++"`` (scikit-learn's seeding and fit).
    """
    values = values.detach().float().flatten()
    if values.numel() == 0:
        return torch.zeros(k)
    if init == "kmeans++":
        from sklearn.cluster import KMeans

        n_clusters = min(k, int(torch.unique(values).numel()))
        km = KMeans(n_clusters=n_clusters, init="k-means++", n_init=1, random_state=seed, max_iter=iters)
        km.fit(values.double().numpy()[:, None])
        c = torch.from_numpy(km.cluster_centers_[:, 0]).float()
        return torch.cat([c, c[-1:].expand(k - n_clusters)]) if n_clusters < k else c
    if init == "linear":
        c = torch.linspace(float(values.min()), float(values.max()), k)
    elif init == "density":
        c = torch.quantile(values.double(), (torch.arange(k, dtype=torch.float64) + 0.5) / k).float()
    else:
        raise ValueError(f"unknown k-means init {init!r}; use 'linear', 'density' or 'kmeans++'")
    for _ in range(iters):
        idx = _assign(values, c)
        sums = torch.zeros(k, dtype=torch.float64).index_add_(0, idx, values.double())
        counts = torch.bincount(idx, minlength=k)
        new = torch.where(counts > 0, (sums / counts.clamp(min=1)).float(), c)  # empty clusters stay put
        if torch.equal(new, c):
            break
        c = new
    return c


def quantize_kmeans(w: torch.Tensor, bits: int, init: str = "linear", iters: int = 30,
                    seed: int = 0) -> KMeansResult:
    """Cluster the non-zero weights of ``w`` into a ``2**bits`` codebook; zeros stay zero.

    With no zeros every code is a centroid. When zeros are rare (0 < fraction <= 1/bits) one
    code (the last) is reserved for 0.0, which is cheaper than a mask; when they are common
    the sparsity mask carries them (cheaper than a code) and all ``2**bits`` codes are centroids.
    """
    _check_bits(bits, 1, 8)
    w = w.detach().float()
    k = 2 ** bits
    nonzero = w != 0
    zero_frac = 1.0 - float(nonzero.float().mean()) if w.numel() else 0.0
    reserve = 0.0 < zero_frac <= 1.0 / bits
    n_fit = k - 1 if reserve else k
    values = w[nonzero]
    centroids = kmeans_codebook(values, n_fit, init, iters, seed) if n_fit else torch.zeros(0)
    codes = torch.zeros(w.shape, dtype=torch.int64)
    if values.numel() and n_fit:
        codes[nonzero] = _assign(values, centroids)
    if reserve:
        codes[~nonzero] = k - 1
        return KMeansResult(codes, torch.cat([centroids, torch.zeros(1)]), k - 1)
    return KMeansResult(codes, centroids, None)


def dequantize_kmeans(codes: torch.Tensor, codebook: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``codebook[codes]``, zeroed outside ``mask`` (the non-zero pattern) when one is given."""
    w = codebook.float()[codes.to(torch.int64)]
    return torch.where(mask, w, torch.zeros(())) if mask is not None else w


def assign_codebook(w: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Codes of weights that already are codebook values (exact lookup; ties pick any equal entry)."""
    return _assign(w.detach().float().flatten(), codebook.float()).reshape(w.shape)

