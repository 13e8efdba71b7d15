"""numpy references for the kernels (float64 accumulation for the fp32 ones)."""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import functools

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .quant import requantize, rescale
from .workload import Conv2dWorkload, DenseWorkload, Epilogue


def _epilogue(acc: np.ndarray, bias: np.ndarray | None, ep: Epilogue, axis: int,
              residual: np.ndarray | None = None) -> np.ndarray:
    if bias is not None:
        shape = [1] * acc.ndim
        shape[axis] = -1
        acc = acc + bias.reshape(shape)
    if ep.residual:
        if residual is None:
            raise ValueError("the epilogue fuses a residual add: pass residual=")
        acc = acc + residual.astype(np.float64)
    if ep.activation == "relu":
        acc = np.maximum(acc, 0)
    elif ep.activation == "clip":
        acc = np.clip(acc, ep.clip_min, ep.clip_max)
    elif ep.activation in ("hardswish", "hardswish_mul_div"):
        acc = acc * (np.clip(acc + 3, 0, 6) / 6)
    return acc


def _grouped_conv(x: np.ndarray, weight: np.ndarray, wl: Conv2dWorkload, pad_value: float | int,
                  dtype: type) -> np.ndarray:
    """``sum x * w`` over each output's window, NCHW / OIHW, grouped, in ``dtype`` (exact for
    int64; float64 for the fp32 reference)."""
    xp = np.pad(x.astype(dtype), ((0, 0), (0, 0), (wl.pad_top, wl.pad_bottom),
                                  (wl.pad_left, wl.pad_right)), constant_values=pad_value)
    span_h = (wl.kernel_h - 1) * wl.dilation_h + 1
    span_w = (wl.kernel_w - 1) * wl.dilation_w + 1
    win = sliding_window_view(xp, (span_h, span_w), axis=(2, 3))
    win = win[:, :, ::wl.stride_h, ::wl.stride_w, ::wl.dilation_h, ::wl.dilation_w]
    win = win[:, :, :wl.out_height, :wl.out_width]
    g, cg, kg = wl.groups, wl.in_per_group, wl.out_per_group
    n = x.shape[0]
    win = win.reshape(n, g, cg, wl.out_height, wl.out_width, wl.kernel_h, wl.kernel_w)
    w = weight.astype(dtype).reshape(g, kg, cg, wl.kernel_h, wl.kernel_w)
    out = np.einsum("ngchwrs,gkcrs->ngkhw", win, w, optimize=dtype is np.float64)
    return out.reshape(n, wl.out_channels, wl.out_height, wl.out_width)


def conv2d(data: np.ndarray, weight: np.ndarray, bias: np.ndarray | None,
           wl: Conv2dWorkload, residual: np.ndarray | None = None) -> np.ndarray:
    """NCHW x OIHW grouped conv with the workload's epilogue, accumulated in float64."""
    out = _grouped_conv(data, weight, wl, 0.0, np.float64)
    return _epilogue(out, bias, wl.epilogue, 1, residual).astype(np.float32)


def dense(data: np.ndarray, weight: np.ndarray, bias: np.ndarray | None,
          wl: DenseWorkload, residual: np.ndarray | None = None) -> np.ndarray:
    out = data.astype(np.float64) @ weight.astype(np.float64).T
    return _epilogue(out, bias, wl.epilogue, 1, residual).astype(np.float32)


def conv2d_int(xq: np.ndarray, x_zp: int, wq: np.ndarray, wl: Conv2dWorkload) -> np.ndarray:
    """Integer conv ``sum x * w``, the input padded with its zero point, exact (int64), returned
    as int32 (raises if it would not fit). The zero-point correction ``-x_zp * sum(w)`` is not
    applied here: the compiler folds it into the int32 bias, as the kernels expect. NHWC in
    and out for a channels-last workload."""
    if wl.nhwc:
        acc = conv2d_int(xq.transpose(0, 3, 1, 2), x_zp, wq, dataclasses.replace(wl, layout="NCHW"))
        return np.ascontiguousarray(acc.transpose(0, 2, 3, 1))
    acc = _grouped_conv(xq, wq, wl, x_zp, np.int64)
    if acc.min() < -2 ** 31 or acc.max() >= 2 ** 31:
        raise OverflowError("int32 accumulator overflow")
    return acc.astype(np.int32)


def conv2d_w8a8(xq: np.ndarray, wq: np.ndarray, bias_q: np.ndarray, multiplier: np.ndarray,
                shift: np.ndarray | None, x_zp: int, out_zp: int, lo: int, hi: int,
                wl: Conv2dWorkload, residual: tuple | None = None, out_dtype: type = np.uint8) -> np.ndarray:
    """The integer layer the integer kernels compute: conv, + bias, requantize, clamp (input
    uint8 with its zero point, or int16 with zero point 0; output ``out_dtype``). ``shift=None``:
    float32 requantization, ``multiplier`` the float32 scales (``quant.requantize``). A
    channels-last workload (``wl.layout == "NHWC"``) takes and returns NHWC arrays (a fused
    residual too): the same integers, transposed."""
    if wl.nhwc:
        if residual is not None:
            residual = (residual[0].transpose(0, 3, 1, 2), *residual[1:])
        out = conv2d_w8a8(xq.transpose(0, 3, 1, 2), wq, bias_q, multiplier, shift, x_zp, out_zp, lo, hi,
                          dataclasses.replace(wl, layout="NCHW"), residual, out_dtype)
        return np.ascontiguousarray(out.transpose(0, 2, 3, 1))
    acc = conv2d_int(xq, x_zp, wq, wl).astype(np.int64) + bias_q.astype(np.int64).reshape(1, -1, 1, 1)
    if acc.min() < -2 ** 31 or acc.max() >= 2 ** 31:
        raise OverflowError("int32 accumulator overflow after the bias")
    return requantize(acc.astype(np.int32), multiplier, shift, out_zp, lo, hi,
                      residual=residual).astype(out_dtype)


def dense_w8a8(xq: np.ndarray, wq: np.ndarray, bias_q: np.ndarray, multiplier: np.ndarray,
               shift: np.ndarray | None, out_zp: int, lo: int, hi: int,
               residual: tuple | None = None, out_dtype: type = np.uint8) -> np.ndarray:
    """Integer-only dense: ``x @ w.T`` (int64, exact) + bias, requantized and clamped
    (``out_dtype``: uint8, or int16)."""
    acc = xq.astype(np.int64) @ wq.astype(np.int64).T + bias_q.astype(np.int64)
    if acc.min() < -2 ** 31 or acc.max() >= 2 ** 31:
        raise OverflowError("int32 accumulator overflow")
    return requantize(acc.astype(np.int32), multiplier, shift, out_zp, lo, hi,
                      residual=residual).astype(out_dtype)


def quantize_u8(x: np.ndarray, scale: float, zp: int) -> np.ndarray:
    """``schedules.elementwise.quantize`` in numpy (the same float32 operations)."""
    f = np.floor(x.astype(np.float32) / np.float32(scale) + np.float32(0.5))
    v = np.clip(f, -512, 512).astype(np.int64) + zp
    return np.clip(v, 0, 255).astype(np.uint8)


def quantize_i16(x: np.ndarray, scale: float, qmax: int) -> np.ndarray:
    """``schedules.elementwise.quantize_i16`` in numpy (the same float32 operations)."""
    f = np.floor(x.astype(np.float32) / np.float32(scale) + np.float32(0.5))
    return np.clip(f, -qmax, qmax).astype(np.int16)


def requantize_i16_u8(q: np.ndarray, m: int, shift: int, zp: int) -> np.ndarray:
    return np.clip(rescale(q.astype(np.int32), m, shift) + zp, 0, 255).astype(np.uint8)


def widen_u8_i16(q: np.ndarray, zp: int) -> np.ndarray:
    return (q.astype(np.int32) - zp).astype(np.int16)


def dequantize_u8(q: np.ndarray, scale: float, zp: int) -> np.ndarray:
    return (q.astype(np.int32) - zp).astype(np.float32) * np.float32(scale)


def global_avg_pool_u8(q: np.ndarray) -> np.ndarray:
    count = q.shape[2] * q.shape[3]
    total = q.astype(np.int64).sum(axis=(2, 3), keepdims=True)
    return ((total + count // 2) // count).astype(np.uint8)


def max_pool_u8(q: np.ndarray, out_hw: tuple[int, int], pool: tuple[int, int],
                strides: tuple[int, int], dilation: tuple[int, int],
                pad_top_left: tuple[int, int]) -> np.ndarray:
    """``elementwise.max_pool_u8``: the window max of the codes, out-of-range taps are 0."""
    return max_pool(q, out_hw, pool, strides, dilation, pad_top_left, 0)


def global_avg_pool_requant_u8(q: np.ndarray, zp_in: int, scale: float, zp_out: int) -> np.ndarray:
    """``elementwise.global_avg_pool_requant_u8``: the NCHW window sum less its zero points,
    requantized by ``scale`` (float32) into ``zp_out``."""
    count = q.shape[2] * q.shape[3]
    acc = (q.astype(np.int64).sum(axis=(2, 3), keepdims=True) - count * zp_in).astype(np.int32)
    return requantize(acc, np.full(q.shape[1], scale, np.float32), None, zp_out, 0, 255).astype(np.uint8)


def multiply_u8(a: np.ndarray, b: np.ndarray, a_zp: int, b_zp: int, scale: float, out_zp: int) -> np.ndarray:
    """``elementwise.multiply_u8``: ``b`` broadcast, one float32 scale."""
    prod = (a.astype(np.int32) - np.int32(a_zp)) * (b.astype(np.int32) - np.int32(b_zp))
    return requantize(prod, np.full(1, scale, np.float32), None, out_zp, 0, 255, axis=0).astype(np.uint8)


def avg_pool_u8(q: np.ndarray, out_hw: tuple[int, int], pool: tuple[int, int], strides: tuple[int, int],
                pad_top_left: tuple[int, int], count_include_pad: bool, zp: int) -> np.ndarray:
    """``elementwise.avg_pool_u8``: the NCHW window mean of the codes, rounded half up."""
    (oh, ow), (kh, kw), (sh, sw), (ph, pw) = out_hw, pool, strides, pad_top_left
    n, c, h, w = q.shape
    need_h, need_w = (oh - 1) * sh + kh, (ow - 1) * sw + kw
    padded = np.full((n, c, max(need_h, h + ph), max(need_w, w + pw)), zp if count_include_pad else 0, np.int64)
    padded[:, :, ph:ph + h, pw:pw + w] = q
    inside = np.zeros(padded.shape[2:], np.int64)
    inside[ph:ph + h, pw:pw + w] = 1
    total = np.zeros((n, c, oh, ow), np.int64)
    count = np.zeros((oh, ow), np.int64)
    for i in range(kh):
        for j in range(kw):
            total += padded[:, :, i: i + (oh - 1) * sh + 1: sh, j: j + (ow - 1) * sw + 1: sw]
            count += inside[i: i + (oh - 1) * sh + 1: sh, j: j + (ow - 1) * sw + 1: sw]
    if count_include_pad:
        count[:] = kh * kw
    return ((total + count // 2) // count).astype(np.uint8)


def max_pool(x: np.ndarray, out_hw: tuple[int, int], pool: tuple[int, int],
             strides: tuple[int, int], dilation: tuple[int, int],
             pad_top_left: tuple[int, int], pad_value: float | int) -> np.ndarray:
    """NCHW window max, out-of-range taps ``pad_value`` (exact in any dtype)."""
    (oh, ow), (kh, kw), (sh, sw), (dh, dw), (ph, pw) = out_hw, pool, strides, dilation, pad_top_left
    n, c, h, w = x.shape
    need_h, need_w = (oh - 1) * sh + (kh - 1) * dh + 1, (ow - 1) * sw + (kw - 1) * dw + 1
    padded = np.full((n, c, max(need_h, h + ph), max(need_w, w + pw)), pad_value, x.dtype)
    padded[:, :, ph:ph + h, pw:pw + w] = x
    out = np.full((n, c, oh, ow), pad_value, x.dtype)
    for i in range(kh):
        for j in range(kw):
            tap = padded[:, :, i * dh: i * dh + (oh - 1) * sh + 1: sh, j * dw: j * dw + (ow - 1) * sw + 1: sw]
            np.maximum(out, tap, out=out)
    return out


def dequantizing_epilogue(acc: np.ndarray, bias_q: np.ndarray, scale: np.ndarray, ep: Epilogue,
                          axis: int = 1) -> np.ndarray:
    """``act(float32(acc + bias) * scale)`` per channel: an integer layer at a model edge."""
    shape = [1] * acc.ndim
    shape[axis] = -1
    summed = (acc.astype(np.int64) + bias_q.astype(np.int64).reshape(shape)).astype(np.int32)
    out = summed.astype(np.float32) * scale.astype(np.float32).reshape(shape)
    if ep.activation == "relu":
        out = np.maximum(out, np.float32(0))
    elif ep.activation == "clip":
        out = np.minimum(np.maximum(out, np.float32(ep.clip_min)), np.float32(ep.clip_max))
    return out


# -- float kernels, bit for bit ------------------------------------------------------------------
# The fp32 / bf16 kernels accumulate each output sequentially over the reduction, in an order
# their template fixes (``reduction_order``), with one fused multiply-add per term where the
# target has FMA (LLVM contracts ``acc + x * w``; measured), a float32 multiply then add where it
# has not. Floating-point addition is not associative, so a float64 reference only agrees within
# a bound; these functions take the same terms in the same order with the same roundings, and
# agree exactly.

_F32_TIE_BITS = np.uint64((1 << 29) - 1)  # float64 mantissa bits below a float32 one


def fma_f32(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """``a * b + c`` in float32 with a single rounding (to nearest even), as an FMA instruction.

    The product of two float32 values is exact in float64; the float64 sum ``s`` is rounded once,
    so rounding ``s`` to float32 can only differ from rounding the exact sum when ``s`` lands on a
    float32 tie the exact sum is not on (double rounding). The float64 rounding error ``e`` of the
    sum (TwoSum, exact) says which way the exact value lies; those rare elements are fixed.
    (Ties between float32 *subnormals*, below 1.2e-38, are not detected: no layer output lives
    there.)
    """
    p = np.asarray(a, np.float64) * np.asarray(b, np.float64)
    c64 = np.asarray(c, np.float64)
    s = p + c64
    t = s - p
    e = (p - (s - t)) + (c64 - t)  # p + c == s + e exactly
    r = s.astype(np.float32)
    suspect = (e != 0) & ((s.view(np.uint64) & _F32_TIE_BITS) == (1 << 28))
    if suspect.any():  # s is a float32 tie: the exact value is past it, on e's side
        s_, e_, r_ = s[suspect], e[suspect], r[suspect]
        r64 = r_.astype(np.float64)
        toward = np.nextafter(r_, np.where(s_ > r64, np.float32(np.inf), np.float32(-np.inf)))
        tie = (s_ != r64) & (s_ - r64 == (toward.astype(np.float64) - r64) / 2)
        past = tie & (np.sign(e_) == np.sign(s_ - r64))
        r[suspect] = np.where(past, toward, r_)
    return r


def _madd(a: np.ndarray, b: np.ndarray, c: np.ndarray, fma: bool) -> np.ndarray:
    """One accumulation step: ``fma_f32``, or float32 ``c + a * b`` rounded twice."""
    if fma:
        return fma_f32(a, b, c)
    return c + np.asarray(a, np.float32) * np.asarray(b, np.float32)


def matmul_in_order(a: np.ndarray, b: np.ndarray, fma: bool = True) -> np.ndarray:
    """``relax.matmul`` of two float32 tensors as TVM's legalized compute runs it (numpy's
    broadcasting and 1-D rules): each output accumulated from 0 over the reduction index in
    order, a fused multiply-add each (``fma=False``: a multiply, then an add)."""
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    a2 = a[None, :] if a.ndim == 1 else a
    b2 = b[:, None] if b.ndim == 1 else b
    acc = np.zeros(np.broadcast_shapes(a2.shape[:-1] + (1,), b2.shape[:-2] + (1, b2.shape[-1])), np.float32)
    for k in range(a2.shape[-1]):
        acc = _madd(a2[..., :, k:k + 1], b2[..., k:k + 1, :], acc, fma)
    if b.ndim == 1:
        acc = acc[..., 0]
    if a.ndim == 1:
        acc = acc[..., 0, :] if b.ndim > 1 else acc[..., 0]
    return acc


def _float_epilogue(acc: np.ndarray, bias: np.ndarray | None, ep: Epilogue,
                    residual: np.ndarray | None) -> np.ndarray:
    """``schedules.common.finish`` in float32: + bias (if the epilogue has one), + residual,
    then the activation."""
    if ep.bias:
        if bias is None:
            raise ValueError("the epilogue adds a bias: pass bias=")
        acc = acc + bias.astype(np.float32).reshape((1, -1) + (1,) * (acc.ndim - 2))
    if ep.residual:
        if residual is None:
            raise ValueError("the epilogue fuses a residual add: pass residual=")
        acc = acc + residual.astype(np.float32).reshape(acc.shape)
    if ep.activation == "relu":
        acc = np.maximum(acc, np.float32(0))
    elif ep.activation == "clip":
        acc = np.minimum(np.maximum(acc, np.float32(ep.clip_min)), np.float32(ep.clip_max))
    elif ep.activation in ("hardswish", "hardswish_mul_div"):
        relu6 = np.minimum(np.maximum(acc + np.float32(3), np.float32(0)), np.float32(6))
        acc = acc * (relu6 / np.float32(6)) if ep.activation == "hardswish" else (acc * relu6) / np.float32(6)
    return acc


def conv2d_in_order(data: np.ndarray, weight: np.ndarray, bias: np.ndarray | None,
                    wl: Conv2dWorkload, order: list[tuple[int, int, int]],
                    residual: np.ndarray | None = None, fma: bool = True) -> np.ndarray:
    """NCHW x OIHW grouped conv in float32, each output accumulated from 0 over the terms
    ``(input channel within the group, kernel row, kernel column)`` in ``order`` with a fused
    multiply-add each (``fma=False``: a multiply, then an add), then the epilogue: what a float
    kernel with that order computes. Padding terms (zeros) are left out: adding an exact zero
    does not change a sum."""
    x = np.pad(np.asarray(data, np.float32), ((0, 0), (0, 0), (wl.pad_top, wl.pad_bottom),
                                              (wl.pad_left, wl.pad_right)))
    g, cg, kg = wl.groups, wl.in_per_group, wl.out_per_group
    n, oh, ow = x.shape[0], wl.out_height, wl.out_width
    w = np.asarray(weight, np.float32).reshape(g, kg, cg, wl.kernel_h, wl.kernel_w)
    acc = np.zeros((n, g, kg, oh, ow), np.float32)
    groups = np.arange(g) * cg
    for c, r, s in order:
        y0, x0 = r * wl.dilation_h, s * wl.dilation_w
        tap = x[:, groups + c, y0: y0 + (oh - 1) * wl.stride_h + 1: wl.stride_h,
                x0: x0 + (ow - 1) * wl.stride_w + 1: wl.stride_w]
        acc = _madd(tap[:, :, None], w[None, :, :, c, r, s, None, None], acc, fma)
    return _float_epilogue(acc.reshape(n, wl.out_channels, oh, ow), bias, wl.epilogue, residual)


def dense_in_order(data: np.ndarray, weight: np.ndarray, bias: np.ndarray | None,
                   wl: DenseWorkload, order: list[int], residual: np.ndarray | None = None,
                   fma: bool = True) -> np.ndarray:
    """``data @ weight.T`` in float32, accumulated over the input features in ``order`` (a fused
    multiply-add each, or not: see ``conv2d_in_order``), then the epilogue."""
    x, w = np.asarray(data, np.float32), np.asarray(weight, np.float32)
    acc = np.zeros((x.shape[0], w.shape[0]), np.float32)
    for c in order:
        acc = _madd(x[:, c, None], w[None, :, c], acc, fma)
    return _float_epilogue(acc, bias, wl.epilogue, residual)


def mean_in_order(x: np.ndarray, axes: list[int], keepdims: bool) -> np.ndarray:
    """``relax.mean`` as TVM computes it in float32 (``topi.sum`` then ``topi.divide`` by the
    count): each output sums its elements from 0 in row-major order over ``axes``, then one
    division."""
    x = np.asarray(x, np.float32)
    axes = sorted(a % x.ndim for a in axes)
    moved = np.moveaxis(x, axes, list(range(x.ndim - len(axes), x.ndim)))
    flat = moved.reshape(moved.shape[: x.ndim - len(axes)] + (-1,))
    acc = np.zeros(flat.shape[:-1], np.float32)
    for i in range(flat.shape[-1]):
        acc = acc + flat[..., i]
    out = acc / np.float32(flat.shape[-1])
    if keepdims:
        out = out.reshape([1 if d in axes else n for d, n in enumerate(x.shape)])
    return out


@functools.lru_cache(maxsize=2)
def _libm(name: str, args: int) -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    try:
        fn = getattr(ctypes.CDLL(ctypes.util.find_library("m") or "libm.so.6"), name)
    except (OSError, AttributeError):
        return None
    fn.restype, fn.argtypes = ctypes.c_float, [ctypes.c_float] * args
    return fn


def _libm_expf() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    return _libm("expf", 1)


def has_libm_expf() -> bool:
    """Whether the C library's ``expf`` (and ``powf``) is at hand (``libm_expf``)."""
    return _libm_expf() is not None and _libm("powf", 2) is not None


def power_llvm(x: np.ndarray, exponent: float) -> np.ndarray:
    """``x ** exponent`` (a constant) as LLVM compiles ``pow`` with it: ``x * x`` for 2,
    ``|sqrt(x)|`` (and +inf at -inf) for 0.5, the C library's ``powf`` otherwise."""
    x = np.asarray(x, np.float32)
    if exponent == 2.0:
        return x * x
    if exponent == 0.5:
        return np.where(x == -np.inf, np.float32(np.inf), np.abs(np.sqrt(x))).astype(np.float32)
    fn, e = _libm("powf", 2), float(np.float32(exponent))
    assert fn is not None, "no C library powf"
    flat = x.ravel()
    return np.fromiter((fn(float(v), e) for v in flat), np.float32, flat.size).reshape(x.shape)


def libm_expf(x: np.ndarray) -> np.ndarray:
    """``expf`` of the C library, element by element: the function a compiled float exp calls
    (TVM's LLVM code calls ``expf`` through the PLT: the same libm, the same bits); numpy's own
    ``exp`` rounds differently in some last places."""
    fn = _libm_expf()
    assert fn is not None, "no C library expf"
    flat = np.asarray(x, np.float32).ravel()
    return np.fromiter((fn(float(v)) for v in flat), np.float32, flat.size).reshape(np.shape(x))


def sigmoid_libm(x: np.ndarray) -> np.ndarray:
    """TVM's float32 sigmoid on LLVM: ``1 / (1 + expf(0 - x))``, one rounding per operation."""
    one = np.float32(1)
    return np.divide(one, one + libm_expf(np.float32(0) - np.asarray(x, np.float32)), dtype=np.float32)


def tanh_libm(x: np.ndarray) -> np.ndarray:
    """TVM's float32 tanh on LLVM: ``(1 - expf(-2x)) / (1 + expf(-2x))`` for ``x >= 0``, else
    ``(expf(2x) - 1) / (expf(2x) + 1)``, one rounding per operation."""
    x = np.asarray(x, np.float32)
    one = np.float32(1)
    down, up = libm_expf(np.float32(-2) * x), libm_expf(np.float32(2) * x)
    return np.where(x >= 0, (one - down) / (one + down), (up - one) / (up + one)).astype(np.float32)


def softmax_in_order(x: np.ndarray, axis: int) -> np.ndarray:
    """``relax.nn.softmax`` as TVM computes it in float32 (``topi.nn.softmax``): the maximum along
    ``axis`` subtracted, ``expf`` (``libm_expf``), the sum from 0 in index order, one division."""
    x = np.asarray(x, np.float32)
    axis %= x.ndim
    e = libm_expf(np.subtract(x, x.max(axis=axis, keepdims=True), dtype=np.float32))
    total = np.zeros(tuple(1 if d == axis else n for d, n in enumerate(x.shape)), np.float32)
    for j in range(x.shape[axis]):
        total = np.add(total, np.take(e, [j], axis=axis), dtype=np.float32)
    return np.divide(e, total, dtype=np.float32)


# -- native bf16 kernels (AVX512-BF16 ``vdpbf16ps``), bit for bit ---------------------------------
# Each instruction adds, per fp32 lane, the product of the odd bf16 elements of a pair, then the
# product of the even ones: two float32 fused multiply-adds (the products of bf16 values are
# exact), round to nearest even, bf16 denormal inputs read as zero (DAZ), denormal results
# flushed to zero (FTZ), whatever MXCSR says. The kernels' order puts the odd channel of each pair
# before the even one (``schedules.conv2d.bf16_dot.dot_order``).

_F32_MIN_NORMAL = np.float32(2.0 ** -126)


def flush_denormals(x: np.ndarray) -> np.ndarray:
    """float32 denormals -> zero of the same sign (DAZ on inputs, FTZ on results)."""
    x = np.asarray(x, np.float32)
    return np.where(np.abs(x) < _F32_MIN_NORMAL, np.copysign(np.float32(0), x), x).astype(np.float32)


def bf16_dot_step(a: np.ndarray, b: np.ndarray, acc: np.ndarray) -> np.ndarray:
    """One term of ``vdpbf16ps``: ``acc + a * b`` rounded once to float32 (``fma_f32``), the
    result flushed to zero if denormal; ``a``, ``b`` bf16 values (as float32), already DAZ."""
    return flush_denormals(fma_f32(a, b, acc))


def conv2d_bf16_dot(data: np.ndarray, weight: np.ndarray, bias: np.ndarray | None,
                    wl: Conv2dWorkload, order: list[tuple[int, int, int]],
                    residual: np.ndarray | None = None) -> np.ndarray:
    """``conv2d_in_order`` as a native bf16 kernel computes it: ``data`` / ``weight`` are bf16
    values (float32 arrays), read with DAZ; each output accumulates from 0 over the terms
    ``(input channel within the group, kernel row, kernel column)`` in ``order``, one
    ``bf16_dot_step`` each; then the float32 epilogue."""
    x = np.pad(flush_denormals(data), ((0, 0), (0, 0), (wl.pad_top, wl.pad_bottom),
                                       (wl.pad_left, wl.pad_right)))
    g, cg, kg = wl.groups, wl.in_per_group, wl.out_per_group
    n, oh, ow = x.shape[0], wl.out_height, wl.out_width
    w = flush_denormals(weight).reshape(g, kg, cg, wl.kernel_h, wl.kernel_w)
    acc = np.zeros((n, g, kg, oh, ow), np.float32)
    groups = np.arange(g) * cg
    for c, r, s in order:
        y0, x0 = r * wl.dilation_h, s * wl.dilation_w
        tap = x[:, groups + c, y0: y0 + (oh - 1) * wl.stride_h + 1: wl.stride_h,
                x0: x0 + (ow - 1) * wl.stride_w + 1: wl.stride_w]
        acc = bf16_dot_step(tap[:, :, None], w[None, :, :, c, r, s, None, None], acc)
    return _float_epilogue(acc.reshape(n, wl.out_channels, oh, ow), bias, wl.epilogue, residual)


def dense_bf16_dot(data: np.ndarray, weight: np.ndarray, bias: np.ndarray | None,
                   wl: DenseWorkload, order: list[int], residual: np.ndarray | None = None) -> np.ndarray:
    """``dense_in_order`` as a native bf16 kernel computes it (see ``conv2d_bf16_dot``)."""
    x, w = flush_denormals(data), flush_denormals(weight)
    acc = np.zeros((x.shape[0], w.shape[0]), np.float32)
    for c in order:
        acc = bf16_dot_step(x[:, c, None], w[None, :, c], acc)
    return _float_epilogue(acc, bias, wl.epilogue, residual)


# -- AMX-BF16 ``tdpbf16ps``, by the Intel SDM's pseudo-code -----------------------------------------
# Per output element (row m, column n) of one instruction over K/2 channel pairs, the SDM
# (``TDPBF16PS``, "Operation") keeps two fp32 partials, both starting at +0:
#     for k in 0 .. K/2-1:   even = even + a[2k]   * b[2k]      (FP32 FMA, DAZ = FTZ = 1, RNE)
#                            odd  = odd  + a[2k+1] * b[2k+1]    (same)
#     dest = dest + (even + odd)                                (two FP32 adds, DAZ = FTZ = 1, RNE)
# MXCSR is neither consulted nor updated. (The Intrinsics Guide's shorter pseudo-code for
# ``_tile_dpbf16ps`` accumulates both products straight into ``dest``, like ``vdpbf16ps`` but
# even first; the SDM's is the one followed here.) Hardware may order the partial sums
# otherwise: this has not been checked on an AMX CPU.


def bf16_amx_step(a: np.ndarray, b: np.ndarray, acc: np.ndarray) -> np.ndarray:
    """One ``tdpbf16ps`` for every output: ``a`` ``[..., K]`` (K even: the op's input channels,
    pairs adjacent) against ``b`` ``[..., K]`` (bf16 values as float32, already DAZ), broadcast
    against each other, added to ``acc`` as the SDM's pseudo-code does (see above)."""
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    shape = np.broadcast_shapes(a.shape[:-1], b.shape[:-1], np.shape(acc))
    even = np.zeros(shape, np.float32)
    odd = np.zeros(shape, np.float32)
    for k in range(0, a.shape[-1], 2):
        even = bf16_dot_step(a[..., k], b[..., k], even)
        odd = bf16_dot_step(a[..., k + 1], b[..., k + 1], odd)
    return flush_denormals(acc + flush_denormals(even + odd))


def conv2d_bf16_amx(data: np.ndarray, weight: np.ndarray, bias: np.ndarray | None,
                    wl: Conv2dWorkload, ic_bn: int, residual: np.ndarray | None = None) -> np.ndarray:
    """A conv as the AMX-BF16 kernel computes it: ``data`` / ``weight`` bf16 values (float32
    arrays), read with DAZ, each group's input channels zero padded to blocks of ``ic_bn``; each
    output accumulates from 0 one ``bf16_amx_step`` per (channel block, kernel row, kernel
    column), in that order, over the block's ``ic_bn`` channels (padding terms included, as the
    tile ops read them); then the float32 epilogue."""
    g, cg, kg = wl.groups, wl.in_per_group, wl.out_per_group
    n, oh, ow = data.shape[0], wl.out_height, wl.out_width
    blocks = -(-cg // ic_bn)
    x = flush_denormals(data).reshape(n, g, cg, wl.height, wl.width)
    x = np.pad(x, ((0, 0), (0, 0), (0, blocks * ic_bn - cg), (wl.pad_top, wl.pad_bottom),
                   (wl.pad_left, wl.pad_right)))
    w = flush_denormals(weight).reshape(g, kg, cg, wl.kernel_h, wl.kernel_w)
    w = np.pad(w, ((0, 0), (0, 0), (0, blocks * ic_bn - cg), (0, 0), (0, 0)))
    acc = np.zeros((n, g, kg, oh, ow), np.float32)
    for blk in range(blocks):
        chans = slice(blk * ic_bn, (blk + 1) * ic_bn)
        for r in range(wl.kernel_h):
            for s in range(wl.kernel_w):
                y0, x0 = r * wl.dilation_h, s * wl.dilation_w
                tap = x[:, :, chans, y0: y0 + (oh - 1) * wl.stride_h + 1: wl.stride_h,
                        x0: x0 + (ow - 1) * wl.stride_w + 1: wl.stride_w]  # n, g, K, oh, ow
                a = np.moveaxis(tap, 2, -1)[:, :, None]  # n, g, 1, oh, ow, K
                b = w[:, :, chans, r, s][None, :, :, None, None, :]  # 1, g, kg, 1, 1, K
                acc = bf16_amx_step(a, b, acc)
    return _float_epilogue(acc.reshape(n, wl.out_channels, oh, ow), bias, wl.epilogue, residual)
