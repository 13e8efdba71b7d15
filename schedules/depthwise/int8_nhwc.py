"""W8A8 depthwise conv2d on channels-last activations, vectorised over channels.

The layout every fast CPU int8 engine uses for depthwise (XNNPACK, onnxruntime's MLAS, oneDNN:
``../shared/PERF_NOTES.md``): activations ``[N, H, W, C]``, so ``cb`` consecutive channels of a
pixel are one vector load; each uint8 / int8 is widened to an int32 lane and multiplied and
accumulated per channel (LLVM: ``vpmaddwd`` + ``vpaddd``, fused to ``vpdpwssd`` for Zen 4 /
Sapphire Rapids CPU names). A register tile of ``tile`` output pixels x ``cb`` channels of
int32 accumulators runs over the whole ``R x S`` window (taps and tile unrolled), then the
fused epilogue (``common.int8_epilogue``: float32 or dyadic requantization, clamp, residual)
stores ``cb`` channels per pixel as one vector.

Padding: a tap outside the input reads the input zero point (the compiler folded
``-x_zp * sum(w)`` into the int32 bias, so a padded tap adds exactly nothing); the test is
uniform over the ``cb`` channels (it depends on the pixel and the tap only), no padded copy.

Weights are packed ``[C/cb, R, S, cb]``; ``tile`` divides the output width, ``cb`` the channels.
Arguments as ``conv2d/int8_portable`` (NHWC data / output / residual).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tvm import te, tirx

from ..common import int8_epilogue, int8_operands, keep_tile_in_registers
from ..space import grid
from ..target_features import TargetFeatures
from ..workload import Conv2dWorkload

__all__ = ["ChannelsLastDepthwiseConfig", "candidates", "compute", "fallback_config", "input_shape",
           "output_shape", "pack_weight", "schedule"]


@dataclass(frozen=True)
class ChannelsLastDepthwiseConfig:
    """``cb`` channels per vector step (divides the channels), ``tile`` output pixels per
    register tile (divides the output width)."""

    cb: int
    tile: int

    def __post_init__(self) -> None:
        if self.cb < 1 or self.tile < 1:
            raise ValueError(f"cb and tile must be >= 1, got {self}")


def _check(wl: Conv2dWorkload, cfg: ChannelsLastDepthwiseConfig) -> None:
    if not wl.nhwc or not wl.is_depthwise:
        raise ValueError(f"a channels-last depthwise kernel, not for {wl}")
    if wl.in_channels % cfg.cb or wl.out_width % cfg.tile:
        raise ValueError(f"{cfg}: cb must divide the channels ({wl.in_channels}) and tile the "
                         f"output width ({wl.out_width})")


def _accumulators(features: TargetFeatures) -> int:
    """int32 accumulator vectors a tile may hold (the rest: the input and weight vectors)."""
    return 24 if features.vector_registers >= 32 else 12


def fallback_config(wl: Conv2dWorkload, features: TargetFeatures) -> ChannelsLastDepthwiseConfig:
    """``cb``: 32 channels (two AVX-512 vectors, four AVX2 ones) where they divide the channels,
    else the largest power of two that does; ``tile``: the largest divisor of the output width
    whose accumulators fit the registers (the probe of PERF_NOTES: cb 16 x 14-16 pixels or
    cb 32 x 5-8 on Zen 4)."""
    cb = next(b for b in (32, 16, 8, 4, 2, 1) if wl.in_channels % b == 0)
    lanes = features.fp32_lanes
    vecs = max(1, cb // lanes)
    most = max(1, _accumulators(features) // vecs)
    tile = max(t for t in range(1, min(most, wl.out_width) + 1) if wl.out_width % t == 0)
    return ChannelsLastDepthwiseConfig(cb, tile)


def packed_weight_shape(wl: Conv2dWorkload, cfg: ChannelsLastDepthwiseConfig) -> tuple[int, ...]:
    return (wl.in_channels // cfg.cb, wl.kernel_h, wl.kernel_w, cfg.cb)


def pack_weight(weight: np.ndarray, wl: Conv2dWorkload, cfg: ChannelsLastDepthwiseConfig) -> np.ndarray:
    """``[C, 1, R, S]`` -> ``[C/cb, R, S, cb]``."""
    if weight.shape != wl.weight_shape:
        raise ValueError(f"weight shape {weight.shape} does not match workload {wl.weight_shape}")
    c, r, s = wl.in_channels, wl.kernel_h, wl.kernel_w
    return np.ascontiguousarray(weight.reshape(c // cfg.cb, cfg.cb, r, s).transpose(0, 2, 3, 1))


def input_shape(wl: Conv2dWorkload, cfg: object = None) -> tuple[int, ...]:
    return wl.data_shape


def output_shape(wl: Conv2dWorkload, cfg: object = None) -> tuple[int, ...]:
    return wl.out_shape


def compute(wl: Conv2dWorkload, cfg: ChannelsLastDepthwiseConfig, weight: te.Tensor | None = None,
            data_dtype: str = "uint8") -> list[te.Tensor]:
    """``weight``, ``data_dtype``: as ``common.int8_operands``."""
    _check(wl, cfg)
    data, weight = int8_operands(wl.data_shape, packed_weight_shape(wl, cfg), weight, data_dtype)
    args, qp, epilogue, _ = int8_epilogue(wl.epilogue, wl.out_channels, wl.out_shape)
    h_, w_, cb = wl.height, wl.width, cfg.cb
    rh = te.reduce_axis((0, wl.kernel_h), "rh")
    rw = te.reduce_axis((0, wl.kernel_w), "rw")

    def tap(n, y, x, c):  # type: ignore[no-untyped-def]
        h = y * wl.stride_h + rh * wl.dilation_h - wl.pad_top
        w = x * wl.stride_w + rw * wl.dilation_w - wl.pad_left
        inside = tirx.all(h >= 0, h < h_, w >= 0, w < w_)
        value = data[n, h, w, c]
        if wl.pad_top or wl.pad_left or wl.pad_bottom or wl.pad_right:
            value = tirx.if_then_else(inside, value, qp[0].astype(data_dtype))
        return value.astype("int32") * weight[c // cb, rh, rw, c % cb].astype("int32")

    conv = te.compute(wl.out_shape, lambda n, y, x, c: te.sum(tap(n, y, x, c), axis=[rh, rw]),
                      name="conv")
    out = te.compute(wl.out_shape, lambda n, y, x, c: epilogue(conv[n, y, x, c], c, (n, y, x, c)),
                     name="out")
    return [data, weight, *args, out]


def schedule(sch, wl: Conv2dWorkload, cfg: ChannelsLastDepthwiseConfig, sample: bool = False) -> None:  # type: ignore[no-untyped-def]
    """Tiles of ``tile`` pixels x ``cb`` channels, parallel over (batch, rows); per tile the
    whole window (taps unrolled) into vector accumulators, then the epilogue stores them.
    ``sample``: the tile is fixed by the config (its candidates are the search space)."""
    _check(wl, cfg)
    conv_b = sch.get_sblock("conv")
    out_b = sch.get_sblock("out")
    n, y, x, c, rh, rw = sch.get_loops(conv_b)
    co, ci = sch.split(c, [None, cfg.cb])
    xo, xi = sch.split(x, [None, cfg.tile])
    sch.reorder(n, y, co, xo, rh, rw, xi, ci)
    sch.parallel(sch.fuse(n, y))
    sch.vectorize(ci)
    sch.reverse_compute_at(out_b, xo, preserve_unit_loops=True)
    init = sch.decompose_reduction(conv_b, rh)
    sch.vectorize(sch.get_loops(init)[-1])
    sch.unroll(rh)
    sch.unroll(rw)
    sch.unroll(xi)
    sch.vectorize(sch.get_loops(out_b)[-1])
    keep_tile_in_registers(sch, init, out_b, xo)


def candidates(wl: Conv2dWorkload, features: TargetFeatures) -> list[ChannelsLastDepthwiseConfig]:
    """Every channel block (a power of two up to 64 dividing the channels) with every tile
    that divides the output width and fits the registers."""
    lanes = features.fp32_lanes

    def make(cb: int, tile: int) -> ChannelsLastDepthwiseConfig:
        if wl.in_channels % cb or wl.out_width % tile:
            raise ValueError("cb / tile do not divide the shape")
        if tile * max(1, cb // lanes) > _accumulators(features):
            raise ValueError("tile does not fit the registers")
        return ChannelsLastDepthwiseConfig(cb, tile)

    return grid(make, cb=[b for b in (8, 16, 32, 64) if b <= wl.in_channels] or [wl.in_channels],
                tile=range(1, min(wl.out_width, 32) + 1))
