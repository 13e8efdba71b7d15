"""fp32 depthwise conv2d on channels-last activations, vectorised over channels.

The fp32 twin of ``int8_nhwc`` (the layout fp32 models keep end to end, ``LowerToKernels``):
``cb`` consecutive channels of a pixel are one vector load, a register tile of ``tile`` output
pixels x ``cb`` channels of float32 accumulators runs over the whole ``R x S`` window (taps and
tile unrolled, one multiply-add per tap), then the epilogue (``common.finish``: bias, residual,
activation) stores ``cb`` channels per pixel as one vector. Every stride reads whole vectors (a
strided conv steps over pixels, not lanes), which the NCHW template cannot do.

Padding: a tap outside the input reads 0.0 (the test is uniform over the ``cb`` channels), no
padded copy. Each output sums its taps row by row from 0 (``reduction_order``), as the NCHW
template does. Weights ``[C/cb, R, S, cb]``; configuration ``int8_nhwc.ChannelsLastDepthwiseConfig``
(``cb`` divides the channels, ``tile`` the output width).
"""

from __future__ import annotations

from tvm import te, tirx

from ..common import finish, kernel_args, optional_bias, optional_residual
from ..workload import Conv2dWorkload
from .int8_nhwc import (
    ChannelsLastDepthwiseConfig,
    _check,
    fallback_config,
    input_shape,
    output_shape,
    pack_weight,
    packed_weight_shape,
    schedule,  # the same blocks ("conv", "out") and loops: tiles of ``tile`` pixels x ``cb`` channels
)

__all__ = ["compute", "fallback_config", "input_shape", "output_shape", "pack_weight", "reduction_order",
           "schedule"]


def reduction_order(wl: Conv2dWorkload, cfg: object) -> list[tuple[int, int, int]]:
    """Each output accumulates the taps row by row (``rh``, then ``rw``)."""
    return [(0, r, s) for r in range(wl.kernel_h) for s in range(wl.kernel_w)]


def compute(wl: Conv2dWorkload, cfg: ChannelsLastDepthwiseConfig,
            data: te.Tensor | None = None, weight: te.Tensor | None = None) -> list[te.Tensor]:
    """TE compute: ``[data, packed_weight, (bias,) (residual,) out]``, NHWC."""
    _check(wl, cfg)
    if data is None:
        data = te.placeholder(wl.data_shape, "float32", name="data")
    if weight is None:
        weight = te.placeholder(packed_weight_shape(wl, cfg), "float32", name="weight")
    h_, w_, cb = wl.height, wl.width, cfg.cb
    rh = te.reduce_axis((0, wl.kernel_h), "rh")
    rw = te.reduce_axis((0, wl.kernel_w), "rw")
    padded = bool(wl.pad_top or wl.pad_left or wl.pad_bottom or wl.pad_right)

    def tap(n, y, x, c):  # type: ignore[no-untyped-def]
        h = y * wl.stride_h + rh * wl.dilation_h - wl.pad_top
        w = x * wl.stride_w + rw * wl.dilation_w - wl.pad_left
        value = data[n, h, w, c]
        if padded:
            value = tirx.if_then_else(tirx.all(h >= 0, h < h_, w >= 0, w < w_), value,
                                      tirx.const(0.0, "float32"))
        return value * weight[c // cb, rh, rw, c % cb]

    conv = te.compute(wl.out_shape, lambda n, y, x, c: te.sum(tap(n, y, x, c), axis=[rh, rw]), name="conv")
    bias = optional_bias(wl.epilogue, wl.out_channels)
    residual = optional_residual(wl.epilogue, wl.out_shape)
    out = te.compute(wl.out_shape, lambda n, y, x, c: finish(conv[n, y, x, c], bias, c, wl.epilogue,
                                                             residual, (n, y, x, c)), name="out")
    return kernel_args(data, weight, bias, residual, out)
