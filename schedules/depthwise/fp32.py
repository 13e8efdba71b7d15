"""fp32 depthwise conv2d in NCHW, vectorised along the output width (NHWC workloads: ``fp32_nhwc``,
vectorised over channels; the configuration's type chooses the template).

Depthwise convs are memory-bound (9 MACs per output for 3x3), so the kernel touches every input
byte once: per channel (in parallel) it copies the plane into a zero-padded buffer that stays in
cache, then slides a tile of ``reg_n`` output pixels (whole vectors) along each row, the taps'
weights broadcast from scalars. The output width is padded to whole tiles inside the kernel.
Weights stay ``[C, R, S]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from tvm import te, tirx

from ..common import (
    TemplateDispatch,
    ceil_div,
    finish,
    keep_tile_in_registers,
    kernel_args,
    optional_bias,
    optional_residual,
    padded_width,
    split_tile,
)
from ..kernel import KernelDef, KernelKey
from ..space import ConfigType, grid
from ..target_features import TargetFeatures
from ..workload import Conv2dWorkload
from . import fp32_nhwc
from .int8_nhwc import ChannelsLastDepthwiseConfig


@dataclass(frozen=True)
class DepthwiseConfig:
    lanes: int
    reg_n: int  # output pixels per tile, a multiple of ``lanes``
    # the padded-plane copy: vectorised by TVM along each phase row, or left to LLVM with the
    # phases innermost (source order)
    pad_vectorize: bool = False


def fallback_config(wl: Conv2dWorkload, features: TargetFeatures) -> DepthwiseConfig:
    """``pad_vectorize`` only for strided convs on large maps. Measured on AVX2 (MobileNetV2's
    depthwise shapes, fp32): stride 1 at 112x112 / 56x56 0.30 -> 0.19-0.20 ms without it, equal
    below; stride 2 at 112x112 / 56x56 0.62 / 0.21 ms with it vs 0.66 / 0.25 without, but at
    28x28 / 14x14 0.094 / 0.087 with vs 0.056 / 0.075 without."""
    lanes = features.fp32_lanes
    vecs = min(range(1, 5), key=lambda t: (padded_width(wl.out_width, lanes * t) * (1 + 1 / t), -t))
    return DepthwiseConfig(lanes=lanes, reg_n=lanes * vecs,
                           pad_vectorize=wl.stride_w > 1 and wl.width >= 56)


def packed_weight_shape(wl: Conv2dWorkload, cfg: DepthwiseConfig) -> tuple[int, ...]:
    return (wl.out_channels, wl.kernel_h, wl.kernel_w)


def pack_weight(weight: np.ndarray, wl: Conv2dWorkload, cfg: DepthwiseConfig) -> np.ndarray:
    """``[C, 1, R, S]`` -> ``[C, R, S]``."""
    if weight.shape != wl.weight_shape:
        raise ValueError(f"weight shape {weight.shape} does not match workload {wl.weight_shape}")
    return np.ascontiguousarray(weight[:, 0])


def input_shape(wl: Conv2dWorkload, cfg: object = None) -> tuple[int, ...]:
    return wl.data_shape


def output_shape(wl: Conv2dWorkload, cfg: object = None) -> tuple[int, ...]:
    return wl.out_shape


def reduction_order(wl: Conv2dWorkload, cfg: DepthwiseConfig) -> list[tuple[int, int, int]]:
    """Each output accumulates the taps row by row (``rh``, then ``rw``)."""
    return [(0, r, s) for r in range(wl.kernel_h) for s in range(wl.kernel_w)]


def conv_body(wl: Conv2dWorkload, cfg: DepthwiseConfig, data: te.Tensor, weight: te.Tensor,
              pad_value: tirx.PrimExpr, acc_dtype: str) -> te.Tensor:
    """The depthwise convolution ``[N, C, OH, OWp]`` in ``acc_dtype``, input padded with
    ``pad_value`` (shared by every precision)."""
    if not wl.is_depthwise:
        raise ValueError(f"not a depthwise workload: {wl}")
    n_, c_, h_, w_ = wl.data_shape
    pt, pl = wl.pad_top, wl.pad_left
    hp = h_ + pt + wl.pad_bottom
    owp = padded_width(wl.out_width, cfg.reg_n)
    wp = max(w_ + pl + wl.pad_right, (owp - 1) * wl.stride_w + (wl.kernel_w - 1) * wl.dilation_w + 1)
    sh, sw, dh, dw = wl.stride_h, wl.stride_w, wl.dilation_h, wl.dilation_w
    # columns are stored phase by phase (w -> [w % sw, w // sw]) so that a strided conv still
    # reads whole contiguous vectors; each phase row is whole vectors so the copy vectorises
    wq = ceil_div(ceil_div(wp, sw), cfg.lanes) * cfg.lanes

    def padded(n, c, h, ph, q):  # type: ignore[no-untyped-def]
        w = q * sw + ph
        return tirx.if_then_else(tirx.all(h >= pt, h < h_ + pt, w >= pl, w < w_ + pl),
                                 data[n, c, h - pt, w - pl], pad_value)

    pad = te.compute((n_, c_, hp, sw, wq), padded, name="data_pad")
    rh = te.reduce_axis((0, wl.kernel_h), "rh")
    rw = te.reduce_axis((0, wl.kernel_w), "rw")
    return te.compute(
        (n_, c_, wl.out_height, owp),
        lambda n, c, y, x: te.sum(
            pad[n, c, y * sh + rh * dh, (rw * dw) % sw, x + (rw * dw) // sw].astype(acc_dtype)
            * weight[c, rh, rw].astype(acc_dtype), axis=[rh, rw]),
        name="conv")


def compute(wl: Conv2dWorkload, cfg: DepthwiseConfig,
            data: te.Tensor | None = None, weight: te.Tensor | None = None) -> list[te.Tensor]:
    if data is None:  # (bf16 layers pass rounded inputs and unpacked weights)
        data = te.placeholder(wl.data_shape, "float32", name="data")
    if weight is None:
        weight = te.placeholder(packed_weight_shape(wl, cfg), "float32", name="weight")
    conv = conv_body(wl, cfg, data, weight, tirx.const(0.0, "float32"), "float32")
    bias = optional_bias(wl.epilogue, wl.out_channels)
    residual = optional_residual(wl.epilogue, wl.out_shape)
    out = te.compute(wl.out_shape, lambda n, c, y, x: finish(conv[n, c, y, x], bias, c, wl.epilogue,
                                                             residual, (n, c, y, x)),
                     name="out")
    return kernel_args(data, weight, bias, residual, out)


def schedule(sch, wl: Conv2dWorkload, cfg: DepthwiseConfig, sample: bool = False,  # type: ignore[no-untyped-def]
             vectorize_ragged_out: bool = True) -> None:
    """``vectorize_ragged_out=False``: where the output width is not whole tiles, the output
    stores stay scalar (see ``depthwise.int8.schedule``)."""
    conv_b = sch.get_sblock("conv")
    out_b = sch.get_sblock("out")
    pad_b = sch.get_sblock("data_pad")
    n, c, y, x, rh, rw = sch.get_loops(conv_b)
    xvecs, xl = sch.split(x, [None, cfg.lanes])
    xo, xt = split_tile(sch, xvecs, cfg.reg_n // cfg.lanes, max_inner=4, sample=sample)
    sch.reorder(n, c, y, xo, rh, rw, xt, xl)
    nc = sch.fuse(n, c)
    sch.parallel(nc)
    sch.vectorize(xl)
    sch.reverse_compute_at(out_b, xo, preserve_unit_loops=True)
    init = sch.decompose_reduction(conv_b, rh)
    sch.vectorize(sch.get_loops(init)[-1])
    sch.unroll(xt)
    # the padded plane of one channel, built right before that channel is convolved
    sch.compute_at(pad_b, nc, preserve_unit_loops=True)
    phase, pw = sch.get_loops(pad_b)[-2:]
    if cfg.pad_vectorize:
        sch.vectorize(sch.split(pw, [None, cfg.lanes])[1])
    else:  # source order: each input row read once, front to back
        sch.reorder(pw, phase)
        sch.unroll(phase)
    ox = sch.get_loops(out_b)[-1]
    if vectorize_ragged_out or wl.out_width % cfg.reg_n == 0:
        try:
            sch.vectorize(sch.split(ox, [None, cfg.lanes])[1])
        except Exception:  # a ragged last tile: keep it scalar
            pass
    keep_tile_in_registers(sch, init, out_b, xo)


def config_space(start: DepthwiseConfig, wl: Conv2dWorkload,
                 features: TargetFeatures) -> list[DepthwiseConfig]:
    """The tuning candidates: tiles of 1-6 vectors of ``start.lanes`` pixels, the padded-plane
    copy vectorised or not."""
    return grid(lambda vecs, pad_vectorize: DepthwiseConfig(start.lanes, start.lanes * vecs, pad_vectorize),
                vecs=(1, 2, 3, 4, 6), pad_vectorize=(False, True))


CONFIG_TYPES = (ConfigType(DepthwiseConfig, config_space),)


class _NCHW:
    """This module's NCHW template, as ``TemplateDispatch`` sees a template."""

    compute = staticmethod(compute)
    schedule = staticmethod(schedule)
    pack_weight = staticmethod(pack_weight)
    input_shape = staticmethod(input_shape)
    output_shape = staticmethod(output_shape)
    reduction_order = staticmethod(reduction_order)


def _template(cfg: Any) -> Any:
    return fp32_nhwc if isinstance(cfg, ChannelsLastDepthwiseConfig) else _NCHW


def _fallback_config(wl: Conv2dWorkload, features: TargetFeatures) -> Any:
    """NHWC: ``fp32_nhwc``'s (vectorised over channels); NCHW: this module's."""
    return fp32_nhwc.fallback_config(wl, features) if wl.nhwc else fallback_config(wl, features)


_dispatch = TemplateDispatch(_template)


def kernels() -> list[KernelDef]:
    return [KernelDef(KernelKey("depthwise_conv2d", "fp32", "generic"), _dispatch.compute, _dispatch.schedule,
                      _fallback_config, _dispatch.pack_weight, _dispatch.input_shape, _dispatch.output_shape,
                      "NCHW depthwise conv vectorised along rows, or NHWC vectorised over channels",
                      _dispatch.reduction_order)]

