"""Integer-only arithmetic, defined once: the kernels and the numpy references both follow it.

Dyadic requantization (HAWQ-V3, gemmlowp): a real per-channel multiplier ``M = s_in * s_w / s_out``
is represented as ``m * 2**-shift`` with ``m`` an int32 in ``[2**30, 2**31)`` and ``1 <= shift <=
62``. An int32 accumulator ``acc`` becomes::

    out = clamp(((acc * m + 2**(shift - 1)) >> shift) + zp_out, lo, hi)

computed in int64 (``|acc * m| < 2**62``), ``>>`` an arithmetic shift (floor), so the rounding is
**round half up** (ties towards +inf), exactly, on every target. A fused residual branch ``r``
(uint8, zero point ``r_zp``) is rescaled to the output scale on its own and added before the
zero point: ``+ (((r - r_zp) * r_m + 2**(r_shift-1)) >> r_shift)``.

Float32 requantization (the default on CPUs, as in XNNPACK, MLAS and oneDNN): one float32 scale
per channel, ``s = float32(s_in * s_w / s_out)``, and::

    out = clamp(rint(clamp(float32(acc) * s, -2**30, 2**30)) + zp_out, lo, hi)

every step one correctly rounded IEEE float32 operation (int32 -> float32 and ``rint`` round half
to even), every add in integers (no multiply-add can fuse into an FMA): exactly reproducible in
numpy. The inner clamp only keeps the float -> int conversion defined; a value it moves is far
outside ``[lo, hi]`` either way. A fused residual: ``+ rint(clamp(float32(r - r_zp) * r_s, ...))``.
The kernels compute the same integers in fewer instructions where there is no residual:
``rint(clamp(float32(acc) * s, lo - zp_out, hi - zp_out)) + zp_out`` (rounding is monotonic
and fixes the integer bounds, so clamping before or after it is the same; see
``common.requantize_float_expr``).

Quantizing real values (``quantize``) rounds half to even, as onnxruntime and ``R.quantize`` do.
Weights are symmetric per output channel in the narrow range ``[-(2**(b-1) - 1), 2**(b-1) - 1]``;
activations per tensor, asymmetric (unsigned with a zero point) by default.
"""

from __future__ import annotations

import hashlib

import numpy as np

MIN_SHIFT, MAX_SHIFT = 1, 62


def quantize_multiplier(real: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """``M`` (>= 0, < 2**30) -> ``(m, shift)`` int32 arrays with ``M ~= m * 2**-shift``.

    ``m`` is normalised into ``[2**30, 2**31)`` for 31 bits of precision; ``M == 0`` gives
    ``m = 0``. Below ``2**-31`` the shift stays 62 and ``m`` loses precision (0 below 2**-63).
    """
    r = np.atleast_1d(np.asarray(real, dtype=np.float64))
    if np.any(~np.isfinite(r)) or np.any(r < 0) or np.any(r >= 2.0 ** 30):
        raise ValueError(f"requantization multipliers must be finite, >= 0 and < 2**30: {r}")
    m = np.zeros(r.shape, np.int64)
    shift = np.full(r.shape, MIN_SHIFT, np.int64)
    nz = r > 0
    mant, exp = np.frexp(r[nz])  # r = mant * 2**exp, mant in [0.5, 1)
    q = np.round(mant * 2.0 ** 31).astype(np.int64)  # in [2**30, 2**31]
    carry = q == 2 ** 31
    q[carry] //= 2
    exp = exp + carry
    s = 31 - exp
    # below 2**-31 the shift would pass 62: keep shift 62 and a denormal m (0 below 2**-63);
    # s >= 1 always holds since r < 2**30
    small = s > MAX_SHIFT
    q[small] = np.round(r[nz][small] * 2.0 ** MAX_SHIFT).astype(np.int64)
    s = np.clip(s, MIN_SHIFT, MAX_SHIFT)
    m[nz], shift[nz] = q, s
    return m.astype(np.int32), shift.astype(np.int32)


def rescale(v: np.ndarray, m: np.ndarray | int, shift: np.ndarray | int) -> np.ndarray:
    """``round_half_up(v * m * 2**-shift)``, exact in int64."""
    ss = np.asarray(shift, np.int64)
    return (v.astype(np.int64) * np.asarray(m, np.int64) + (np.int64(1) << (ss - 1))) >> ss


FLOAT_LIMIT = np.float32(2.0 ** 30)
# A fused residual's float32 scale stays within 2**22: |r - r_zp| <= 255 for a uint8 residual
# with its zero point in [0, 255], so |(r - r_zp) * r_scale| < 2**30 and ``rescale_float``'s
# clamp never acts on it; the kernels then leave that clamp out (two instructions per vector).
RESIDUAL_SCALE_LIMIT = np.float32(2.0 ** 22)


# A kernel that fuses a residual requantizes with float32 scales of at most 0.5: any int32
# accumulator times such a scale lies within 2**30, so ``rescale_float``'s clamp never acts on
# the accumulator's term either and the kernels leave it out. (Without a residual the clamp is
# folded into the output bounds and costs nothing.) ``tvmq``'s builds widen such a layer's
# output range where a scale would exceed it.
FUSED_REQUANT_SCALE_LIMIT = np.float32(0.5)


def residual_scale(ratio: float) -> np.float32:
    """The float32 scale of a fused residual (its scale over the output's), at most
    ``RESIDUAL_SCALE_LIMIT``: a larger ratio saturates the output at any nonzero residual
    either way, and the limit keeps the kernels' unclamped residual term exact."""
    return np.float32(min(float(np.float32(ratio)), float(RESIDUAL_SCALE_LIMIT)))


def rescale_float(v: np.ndarray, scale: np.ndarray | float) -> np.ndarray:
    """``rint(clamp(float32(v) * scale, -2**30, 2**30))`` as int64, each step in float32."""
    f = np.asarray(v).astype(np.float32) * np.asarray(scale, np.float32)
    return np.rint(np.clip(f, -FLOAT_LIMIT, FLOAT_LIMIT)).astype(np.int64)


def requantize(acc: np.ndarray, m: np.ndarray, shift: np.ndarray | None, zp: int, lo: int, hi: int,
               axis: int = 1, residual: tuple | None = None) -> np.ndarray:
    """The exact requantization (see module docstring) of int32 ``acc`` (bias included), per
    channel along ``axis``: dyadic with ``m`` / ``shift`` (``residual = (r, r_zp, r_m,
    r_shift)``), or float32 with ``shift=None`` and ``m`` the float32 scales (``residual = (r,
    r_zp, r_scale)``). A residual branch is rescaled to the output scale on its own and added
    (each branch rounded once, then summed)."""
    if acc.dtype != np.int32:
        raise TypeError(f"accumulators are int32, got {acc.dtype}")
    shape = [1] * acc.ndim
    shape[axis] = -1
    if shift is None:
        out = rescale_float(acc, np.asarray(m, np.float32).reshape(shape)) + zp
        if residual is not None:
            r, r_zp, r_s = residual
            if not (0 <= int(r_zp) <= 255 and abs(float(r_s)) <= RESIDUAL_SCALE_LIMIT):
                raise ValueError(f"a fused residual needs its zero point in [0, 255] and |scale| <= 2**22 "
                                 f"(quant.residual_scale), got {r_zp}, {r_s}")
            if float(np.abs(np.asarray(m, np.float32)).max(initial=0.0)) > FUSED_REQUANT_SCALE_LIMIT:
                raise ValueError("a kernel that fuses a residual requantizes with scales <= 0.5 "
                                 "(quant.FUSED_REQUANT_SCALE_LIMIT)")
            out = out + rescale_float(r.astype(np.int32) - np.int32(r_zp), np.float32(r_s))
        return np.clip(out, lo, hi)
    out = rescale(acc, np.asarray(m).reshape(shape), np.asarray(shift).reshape(shape)) + zp
    if residual is not None:
        r, r_zp, r_m, r_s = residual
        out = out + rescale(r.astype(np.int64) - r_zp, r_m, r_s)
    return np.clip(out, lo, hi)


def qrange(bits: int, signed: bool, narrow: bool = False) -> tuple[int, int]:
    if signed:
        hi = 2 ** (bits - 1) - 1
        return (-hi if narrow else -hi - 1), hi
    return 0, 2 ** bits - 1


def quantize(x: np.ndarray, scale: float | np.ndarray, zp: int | np.ndarray, bits: int,
             signed: bool, axis: int | None = None) -> np.ndarray:
    """Real -> integer, round half to even, clamp to the full range of the type."""
    if axis is not None:
        shape = [1] * x.ndim
        shape[axis] = -1
        scale = np.asarray(scale).reshape(shape)
        zp = np.asarray(zp).reshape(shape)
    lo, hi = qrange(bits, signed)
    q = np.clip(np.round(np.asarray(x, np.float64) / scale) + zp, lo, hi)
    dtype = {(8, False): np.uint8, (8, True): np.int8, (16, True): np.int16, (16, False): np.uint16,
             (4, True): np.int8, (4, False): np.uint8}[(bits, signed)]
    return q.astype(dtype)


def weight_scales(w: np.ndarray, bits: int, clip_search: bool | None = None) -> np.ndarray:
    """Symmetric per-output-channel scales (narrow range), never zero.

    ``clip_search`` (default: on below 8 bits) shrinks each channel's range to the clipping
    ratio in ``[0.3, 1]`` (grid of 71) that minimises ``||W - Q(W)||^2`` of that channel: with
    15 levels the largest weight should not set the step for all the others. The search's
    results are remembered per weight content (a model build, its sensitivity analysis and its
    calibration quantize the same weights again and again).
    """
    search = clip_search if clip_search is not None else bits < 8
    if not search:
        return _max_scales(w, bits)
    key = (hashlib.blake2b(np.ascontiguousarray(w).view(np.uint8).data, digest_size=16).digest(),
           w.shape, w.dtype.str, bits)
    if key not in _SEARCHED:
        if len(_SEARCHED) >= 1024:
            _SEARCHED.pop(next(iter(_SEARCHED)))
        _SEARCHED[key] = _clip_search(w, bits)
    return _SEARCHED[key].copy()


_SEARCHED: dict[tuple, np.ndarray] = {}  # ``weight_scales``' clipping searches, oldest first


def _max_scales(w: np.ndarray, bits: int) -> np.ndarray:
    hi = 2 ** (bits - 1) - 1
    amax = np.abs(w.reshape(w.shape[0], -1).astype(np.float64)).max(axis=1)
    return np.where(amax > 0, amax / hi, 1.0)


def _clip_search(w: np.ndarray, bits: int) -> np.ndarray:
    hi = 2 ** (bits - 1) - 1
    flat = w.reshape(w.shape[0], -1).astype(np.float64)
    scales = _max_scales(w, bits)
    best = np.full(len(scales), np.inf)
    chosen = scales.copy()
    buf = np.empty_like(flat)
    for ratio in np.linspace(1.0, 0.3, 71):
        sc = scales * ratio
        col = sc[:, None]
        # ((clip(rint(flat / sc), -hi, hi) * sc - flat) ** 2).sum(1), without temporaries
        np.divide(flat, col, out=buf)
        np.rint(buf, out=buf)
        np.clip(buf, -hi, hi, out=buf)
        np.multiply(buf, col, out=buf)
        np.subtract(buf, flat, out=buf)
        np.multiply(buf, buf, out=buf)
        err = buf.sum(axis=1)
        better = err < best
        best = np.where(better, err, best)
        chosen = np.where(better, sc, chosen)
    return chosen


def quantize_weights(w: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """``(w_q int8, scales)``: symmetric, per output channel, values in the narrow range."""
    scales = weight_scales(w, bits)
    hi = 2 ** (bits - 1) - 1
    shape = (-1,) + (1,) * (w.ndim - 1)
    q = np.clip(np.round(w / scales.reshape(shape)), -hi, hi).astype(np.int8)
    return q, scales


def activation_params(lo: float, hi: float, bits: int = 8, signed: bool = False) -> tuple[float, int]:
    """``(scale, zero_point)`` covering ``[lo, hi]`` (widened to include 0, so that 0 and the
    padding value are exact)."""
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError(f"activation range must be finite, got [{lo}, {hi}]")
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    qlo, qhi = qrange(bits, signed)
    if hi == lo:
        return 1.0, 0 if signed else qlo
    scale = (hi - lo) / (qhi - qlo)
    zp = int(np.clip(np.round(qlo - lo / scale), qlo, qhi))
    return scale, zp


# the largest |w0| + |w1| of a same-signed weight pair that ``vpmaddubsw`` keeps exact
PAIR_LIMIT = 128


def pair_sums(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(positive, negative)`` part sums of the pairs (0, 1), (2, 3), ... of the last axis
    (an odd last channel paired with 0)."""
    if w.shape[-1] % 2:
        w = np.concatenate([w, np.zeros(w.shape[:-1] + (1,), w.dtype)], axis=-1)
    a, b = w[..., 0::2], w[..., 1::2]
    return np.maximum(a, 0) + np.maximum(b, 0), np.maximum(-a, 0) + np.maximum(-b, 0)


def pair_fit_scales(w: np.ndarray) -> np.ndarray:
    """Per-output-channel scales of conv weights ``w`` (OIHW) at which 8-bit rounding gives
    weights ``vpmaddubsw`` is exact on (``pairs_fit_int16`` over input-channel pairs): each
    channel's step set by the larger of its largest weight and its largest same-signed pair
    sum, over 127. Rounding then adds at most 1/2 to each, so a pair sums to at most 128. A
    channel loses at most one bit (a pair of two maximal weights), most lose a fraction of one;
    7-bit weights (every channel at -63..63) would lose one everywhere."""
    flat = np.moveaxis(np.asarray(w, np.float64), 1, -1).reshape(w.shape[0], -1, w.shape[1])
    pos, neg = pair_sums(flat)
    amax = np.abs(flat).reshape(w.shape[0], -1).max(axis=1)
    top = np.maximum(amax, np.maximum(pos, neg).reshape(w.shape[0], -1).max(axis=1))
    return np.where(top > 0, top / 127, 1.0)


def pairs_fit_int16(packed: np.ndarray, pair_axis: int = -1) -> bool:
    """Whether ``vpmaddubsw`` is exact on int8 weights ``packed`` whose ``pair_axis`` holds
    consecutive input channels, paired (0, 1), (2, 3), ...: for any uint8 activations the pair
    sum ``a0 w0 + a1 w1`` stays in int16 iff the positive parts and the negative parts of each
    pair sum to at most 128 (255 x 128 = 32640 <= 32767). Always true of int4 weights; false of
    most full-range int8 weights (why W8A8 keeps ``vpmaddwd``, ``schedules.intrinsics``)."""
    w = np.moveaxis(np.asarray(packed, np.int32), pair_axis, -1)
    if w.size == 0:
        return True
    pos, neg = pair_sums(w)
    return max(int(pos.max()), int(neg.max())) <= PAIR_LIMIT
