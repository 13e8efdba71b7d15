"""fp32 depthwise conv2d: NCHW in, NCHW out, one vector of channels per step inside.

The input is repacked into ``[N, C/lanes, H+pads, W+pads, lanes]`` (zero padded, channel tail
padded), so any stride and dilation runs on full vectors of channels; a register tile of
``reg_n`` output pixels is accumulated over the ``R x S`` taps and written back to NCHW with the
epilogue fused. Weights are packed ``[C/lanes, R, S, lanes]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tvm import te, tirx

from ..common import (ceil_div, finish, optional_bias, padded_width, register_tile,
                      schedule_register_tile, schedule_repack)
from ..target_features import TargetFeatures
from ..workload import Conv2dWorkload


@dataclass(frozen=True)
class DepthwiseConfig:
    c_bn: int
    reg_n: int


def fallback_config(wl: Conv2dWorkload, features: TargetFeatures) -> DepthwiseConfig:
    return DepthwiseConfig(c_bn=features.fp32_lanes,
                           reg_n=register_tile(wl.out_width, 16 if features.vector_registers >= 32 else 8))


def packed_weight_shape(wl: Conv2dWorkload, cfg: DepthwiseConfig) -> tuple[int, ...]:
    return (ceil_div(wl.out_channels, cfg.c_bn), wl.kernel_h, wl.kernel_w, cfg.c_bn)


def pack_weight(weight: np.ndarray, wl: Conv2dWorkload, cfg: DepthwiseConfig) -> np.ndarray:
    """``[C, 1, R, S]`` -> ``[C/c_bn, R, S, c_bn]``, zero padded in channels."""
    if weight.shape != wl.weight_shape:
        raise ValueError(f"weight shape {weight.shape} does not match workload {wl.weight_shape}")
    cb, r, s, c_bn = packed_weight_shape(wl, cfg)
    padded = np.zeros((cb * c_bn, r, s), dtype=np.float32)
    padded[: wl.out_channels] = weight[:, 0]
    return np.ascontiguousarray(padded.reshape(cb, c_bn, r, s).transpose(0, 2, 3, 1))


def output_shape(wl: Conv2dWorkload) -> tuple[int, ...]:
    return wl.out_shape


def compute(wl: Conv2dWorkload, cfg: DepthwiseConfig) -> list[te.Tensor]:
    if not wl.is_depthwise:
        raise ValueError(f"not a depthwise workload: {wl}")
    n_, c_, h_, w_ = wl.data_shape
    cb, r_, s_, c_bn = packed_weight_shape(wl, cfg)
    pt, pl = wl.pad_top, wl.pad_left
    hp = h_ + pt + wl.pad_bottom
    # the conv runs over a width padded to whole register tiles; the epilogue drops the extra
    owp = padded_width(wl.out_width, cfg.reg_n)
    wp = max(w_ + pl + wl.pad_right, (owp - 1) * wl.stride_w + (wl.kernel_w - 1) * wl.dilation_w + 1)
    data = te.placeholder(wl.data_shape, "float32", name="data")
    weight = te.placeholder((cb, r_, s_, c_bn), "float32", name="weight")

    def pack(n, b, h, w, ci):  # type: ignore[no-untyped-def]
        c = b * c_bn + ci
        inside = tirx.all(h >= pt, h < h_ + pt, w >= pl, w < w_ + pl)
        if c_ % c_bn:
            inside = tirx.all(inside, c < c_)
        return tirx.if_then_else(inside, data[n, c, h - pt, w - pl], tirx.const(0.0, "float32"))

    dpack = te.compute((n_, cb, hp, wp, c_bn), pack, name="data_pack")
    rh = te.reduce_axis((0, r_), "rh")
    rw = te.reduce_axis((0, s_), "rw")
    sh, sw, dh, dw = wl.stride_h, wl.stride_w, wl.dilation_h, wl.dilation_w
    conv = te.compute(
        (n_, cb, wl.out_height, owp, c_bn),
        lambda n, b, y, x, ci: te.sum(
            dpack[n, b, y * sh + rh * dh, x * sw + rw * dw, ci] * weight[b, rh, rw, ci],
            axis=[rh, rw]),
        name="conv")
    bias = optional_bias(wl.epilogue, c_)

    def epilogue(n, c, y, x):  # type: ignore[no-untyped-def]
        return finish(conv[n, c // c_bn, y, x, c % c_bn], bias, c, wl.epilogue)

    out = te.compute(wl.out_shape, epilogue, name="out")
    return [data, weight] + ([bias] if bias is not None else []) + [out]


def schedule(sch, wl: Conv2dWorkload, cfg: DepthwiseConfig) -> None:  # type: ignore[no-untyped-def]
    conv_b = sch.get_sblock("conv")
    out_b = sch.get_sblock("out")
    pack_b = sch.get_sblock("data_pack")
    n, b, y, x, ci, rh, rw = sch.get_loops(conv_b)
    schedule_register_tile(sch, conv_b, out_b, outer=[n, b, y], x=x, reductions=[rh, rw],
                           lane=ci, reg_n=cfg.reg_n)
    schedule_repack(sch, pack_b)
