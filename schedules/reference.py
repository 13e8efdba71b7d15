"""numpy references for the kernels (float64 accumulation for the fp32 ones)."""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

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
    applied here: the compiler folds it into the int32 bias, as the kernels expect."""
    acc = _grouped_conv(xq, wq, wl, x_zp, np.int64)
    if acc.min() < -2 ** 31 or acc.max() >= 2 ** 31:
        raise OverflowError("int32 accumulator overflow")
    return acc.astype(np.int32)


def conv2d_w8a8(xq: np.ndarray, wq: np.ndarray, bias_q: np.ndarray, multiplier: np.ndarray,
                shift: np.ndarray, x_zp: int, out_zp: int, lo: int, hi: int,
                wl: Conv2dWorkload, residual: tuple | None = None, out_dtype: type = np.uint8) -> np.ndarray:
    """The integer-only layer the integer kernels compute: conv, + bias, requantize, clamp
    (input uint8 with its zero point, or int16 with zero point 0; output ``out_dtype``)."""
    from .quant import requantize

    acc = conv2d_int(xq, x_zp, wq, wl).astype(np.int64) + bias_q.astype(np.int64).reshape(1, -1, 1, 1)
    if acc.min() < -2 ** 31 or acc.max() >= 2 ** 31:
        raise OverflowError("int32 accumulator overflow after the bias")
    return requantize(acc.astype(np.int32), multiplier, shift, out_zp, lo, hi,
                      residual=residual).astype(out_dtype)


def dense_w8a8(xq: np.ndarray, wq: np.ndarray, bias_q: np.ndarray, multiplier: np.ndarray,
               shift: np.ndarray, out_zp: int, lo: int, hi: int,
               residual: tuple | None = None, out_dtype: type = np.uint8) -> np.ndarray:
    """Integer-only dense: ``x @ w.T`` (int64, exact) + bias, requantized and clamped
    (``out_dtype``: uint8, or int16)."""
    from .quant import requantize

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
    from .quant import rescale

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
    (oh, ow), (kh, kw), (sh, sw), (dh, dw), (ph, pw) = out_hw, pool, strides, dilation, pad_top_left
    n, c, h, w = q.shape
    need_h, need_w = (oh - 1) * sh + (kh - 1) * dh + 1, (ow - 1) * sw + (kw - 1) * dw + 1
    padded = np.zeros((n, c, max(need_h, h + ph), max(need_w, w + pw)), np.uint8)
    padded[:, :, ph:ph + h, pw:pw + w] = q
    out = np.zeros((n, c, oh, ow), np.uint8)
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
