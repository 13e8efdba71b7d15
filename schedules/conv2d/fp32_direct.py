"""fp32 conv2d (dense and grouped): NCHW in, NCHW out, NCHW[x]c blocked inside.

The helpers (input repack, direct body, output buffer) also serve the integer convs, whose
workloads may be channels-last (``Conv2dWorkload.layout == "NHWC"``): ``load_data`` and
``conv_output`` index either layout.

The kernel repacks its input into channel blocks of ``ic_bn`` (zero padded: spatially, and in
channels up to a multiple of ``ic_bn`` per group), multiplies with weights packed ahead of time as
``[G*OCB, ICB, R, S, ic_bn, oc_bn]`` and keeps a register tile of ``reg_n`` output pixels x
``oc_bn`` output channels (one vector each) while it runs over the reduction. The epilogue (bias,
ReLU / clip) is applied as the tile is written back to NCHW. Channel counts that are not a multiple
of the block sizes are padded inside the kernel, so every shape takes the vector path.

Knobs (``Conv2dConfig``): ``ic_bn``, ``oc_bn`` (the vector width, from the target), ``reg_n``,
``rows_outside`` (channels-last only: the loop order, see ``fallback_config``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from tvm import te, tirx

from ..common import (
    ceil_div,
    finish,
    kernel_args,
    optional_bias,
    optional_residual,
    padded_width,
    register_tile,
    schedule_register_tile,
    schedule_repack,
    stack_tile_pixels,
    vectorize_channels_last_store,
)
from ..space import grid
from ..target_features import TargetFeatures
from ..workload import Conv2dWorkload


# weights (elements) up to which a channels-last fallback config puts the rows outside: 512 KiB
# of fp32, a quarter of this Emerald Rapids core's L2 (a Zen 3 / 4 core has 0.5 / 1 MiB)
ROWS_OUTSIDE_WEIGHTS = 128 * 1024


@dataclass(frozen=True)
class Conv2dConfig:
    """Blocking of one conv kernel: input / output channel blocks and the register tile width.
    ``rows_outside``: the output rows outside the output channel blocks (each row's channels all
    computed before the next row), else the channel blocks outside (each block's weights
    reused over every row); channels-last workloads only."""

    ic_bn: int
    oc_bn: int
    reg_n: int
    rows_outside: bool = False

    def __post_init__(self) -> None:
        for name in ("ic_bn", "oc_bn", "reg_n"):
            if getattr(self, name) < 1:
                raise ValueError(f"Conv2dConfig.{name} must be >= 1")


def fallback_config(wl: Conv2dWorkload, features: TargetFeatures) -> Conv2dConfig:
    """A good configuration chosen from the shape alone (no tuning).

    The accumulator tile is ``reg_n`` pixels x ``oc_bn`` channels, ``oc_bn`` one or two vectors,
    sized to leave a few of the vector registers for the weight vectors and the broadcast input:
    16 ymm (AVX2), at most 6 x 2 or 14 x 1 vectors, ``ic_bn`` = 8 input channels per block,
    measured on AVX2 (ResNet-50 / MobileNetV2 layers) 1.2-1.4x faster than 16/8/8; 32 zmm, up
    to 14 pixels x 2 vectors (28 accumulators; LLVM keeps such a tile in registers though it is
    over ``STACK_TILE_BYTES``: the reduction loop's only memory operands are the weight vectors
    and the broadcast inputs) and ``ic_bn`` = 16. Emerald Rapids core, 1 thread, every candidate
    timed: ResNet-50's 3x3s 1.12-1.25x faster than 7 x 2 vectors with ``ic_bn`` = 8 (64->64 at
    56x56 1.58 -> 1.30 ms, 256->256 at 14x14 1.57 -> 1.25), its 1x1s within +-10%. ``ic_bn``
    otherwise divides the per-group input channels where it can, so that no padding is
    multiplied (the whole input when it is smaller).

    Channels-last, rows outside the channel blocks where the weights are small
    (``ROWS_OUTSIDE_WEIGHTS``): each row of the output written whole (channel blocks outside, a
    row's pixels are written as ``oc_bn``-channel pieces strided by the whole pixel, once per
    block, and a fused residual read the same way) while the weights stay in cache. Where they
    are large the channel blocks stay outside: rows outside would stream all the weights once
    per row. Emerald Rapids core, 1 thread, fallback tiles, bit-exact: ResNet-50's 64->256 1x1
    with residual at 56x56 0.88 -> 0.73 ms, 128->512 with residual at 28x28 0.67 -> 0.64,
    256->64 at 56x56 0.67 -> 0.64; with 2.4 MB of weights (256->256 3x3 at 14x14) 1.45 -> 1.81,
    so those keep the blocks outside.
    """
    lanes = features.fp32_lanes
    wide = features.vector_registers >= 32
    cg, kg = wl.in_per_group, wl.out_per_group
    block = 16 if wide else 8
    if cg <= block:
        ic_bn = cg
    elif cg % block == 0:
        ic_bn = block
    elif cg % 8 == 0:
        ic_bn = 8
    else:
        divisors = [d for d in range(16, 3, -1) if cg % d == 0]
        ic_bn = divisors[0] if divisors else 8
    if kg >= 2 * lanes:
        oc_bn = 2 * lanes
    else:
        oc_bn = lanes if kg > lanes // 2 else max(4, 1 << (kg - 1).bit_length())
    if wide:
        max_regs = 14
    else:
        max_regs = 6 if oc_bn == 2 * lanes else 14
        max_regs = stack_tile_pixels(oc_bn, max_regs)
    reg_n = register_tile(wl.out_width, max_regs)
    rows_outside = wl.nhwc and math.prod(wl.weight_shape) <= ROWS_OUTSIDE_WEIGHTS
    return Conv2dConfig(ic_bn=ic_bn, oc_bn=oc_bn, reg_n=reg_n, rows_outside=rows_outside)


def packed_weight_shape(wl: Conv2dWorkload, cfg: Conv2dConfig) -> tuple[int, ...]:
    icb = ceil_div(wl.in_per_group, cfg.ic_bn)
    ocb = ceil_div(wl.out_per_group, cfg.oc_bn)
    return (wl.groups * ocb, icb, wl.kernel_h, wl.kernel_w, cfg.ic_bn, cfg.oc_bn)


def pack_weight(weight: np.ndarray, wl: Conv2dWorkload, cfg: Conv2dConfig) -> np.ndarray:
    """OIHW -> ``[G*OCB, ICB, R, S, ic_bn, oc_bn]``, zero padded in both channel dimensions
    (any dtype: fp32 weights, or int8 quantized ones)."""
    if weight.shape != wl.weight_shape:
        raise ValueError(f"weight shape {weight.shape} does not match workload {wl.weight_shape}")
    g, kg, cg = wl.groups, wl.out_per_group, wl.in_per_group
    gk, icb, r, s, ic_bn, oc_bn = packed_weight_shape(wl, cfg)
    ocb = gk // g
    padded = np.zeros((g, ocb * oc_bn, icb * ic_bn, r, s), dtype=weight.dtype)
    padded[:, :kg, :cg] = weight.reshape(g, kg, cg, r, s)
    t = padded.reshape(g, ocb, oc_bn, icb, ic_bn, r, s)
    return np.ascontiguousarray(t.transpose(0, 1, 3, 5, 6, 4, 2).reshape(gk, icb, r, s, ic_bn, oc_bn))


def needs_repack(wl: Conv2dWorkload, cfg: Conv2dConfig) -> bool:
    """Whether the input must be copied into a padded NCHWc buffer first (any zero padding:
    spatial, channels up to ``ic_bn``, or width up to whole register tiles)."""
    return bool(wl.pad_top or wl.pad_left or wl.pad_bottom or wl.pad_right
                or wl.in_per_group % cfg.ic_bn or wl.out_width % cfg.reg_n)


def pack_input(wl: Conv2dWorkload, cfg: Conv2dConfig, data: te.Tensor, pad_value: tirx.PrimExpr,
               dtype: str | None = None, out_height: int | None = None) -> te.Tensor:
    """The input repacked as ``[N, G*ICB, HP, WP, ic_bn]`` (channel blocks innermost).

    Padded with ``pad_value`` spatially (``pad_*``, and on the right up to the whole register
    tiles of the padded output width) and in channels up to a multiple of ``ic_bn`` per group.
    ``dtype`` converts the values (the integer kernels widen uint8 to int16 here).
    ``out_height``: the output rows the conv computes, where more than the output's (rows of
    padding below, as many as they read).
    """
    hp = wl.height + wl.pad_top + wl.pad_bottom
    if out_height:
        hp = max(hp, (out_height - 1) * wl.stride_h + (wl.kernel_h - 1) * wl.dilation_h + 1)
    owp = padded_width(wl.out_width, cfg.reg_n)
    wp = max(wl.width + wl.pad_left + wl.pad_right, (owp - 1) * wl.stride_w + (wl.kernel_w - 1) * wl.dilation_w + 1)
    pack = padded_input(wl, cfg.ic_bn, data, pad_value, dtype)
    return te.compute((wl.batch, wl.groups * ceil_div(wl.in_per_group, cfg.ic_bn), hp, wp, cfg.ic_bn), pack,
                      name="data_pack")


def padded_input(wl: Conv2dWorkload, ic_bn: int, data: te.Tensor, pad_value: tirx.PrimExpr,
                 dtype: str | None = None):  # type: ignore[no-untyped-def]
    """``value(n, gb, h, w, ci)``: the input at channel ``ci`` of block ``gb`` (``ic_bn``
    channels, whole blocks per group), row ``h`` and column ``w`` of the padded image, or
    ``pad_value`` outside the image and the group's channels; converted to ``dtype``."""
    h_, w_ = wl.height, wl.width
    cg = wl.in_per_group
    icb = ceil_div(cg, ic_bn)
    pt, pl = wl.pad_top, wl.pad_left
    dtype = dtype or data.dtype

    def value(n, gb, h, w, ci):  # type: ignore[no-untyped-def]
        grp, blk = gb // icb, gb % icb
        c = blk * ic_bn + ci
        inside = tirx.all(h >= pt, h < h_ + pt, w >= pl, w < w_ + pl)
        if cg % ic_bn:
            inside = tirx.all(inside, c < cg)
        return tirx.if_then_else(inside, load_data(wl, data, n, grp * cg + c, h - pt, w - pl).astype(dtype),
                                 pad_value.astype(dtype))

    return value


def conv_body(wl: Conv2dWorkload, cfg: Conv2dConfig, data: te.Tensor, weight: te.Tensor,
              pad_value: tirx.PrimExpr, acc_dtype: str) -> te.Tensor:
    """The blocked direct convolution ``[N, G, OCB, OH, OWp, oc_bn]`` in ``acc_dtype``.

    Shared by every precision: the input is padded with ``pad_value`` (0.0, or an integer
    input's zero point, which keeps integer padding exact), products are taken in
    ``acc_dtype``.
    """
    g, cg = wl.groups, wl.in_per_group
    gk, icb, r_, s_, ic_bn, oc_bn = packed_weight_shape(wl, cfg)
    ocb = gk // g
    owp = padded_width(wl.out_width, cfg.reg_n)
    sh, sw, dh, dw = wl.stride_h, wl.stride_w, wl.dilation_h, wl.dilation_w
    rc = te.reduce_axis((0, icb), "rc")
    rh = te.reduce_axis((0, r_), "rh")
    rw = te.reduce_axis((0, s_), "rw")
    ri = te.reduce_axis((0, ic_bn), "ri")
    if needs_repack(wl, cfg):
        dpack = pack_input(wl, cfg, data, pad_value)

        def load(n, gi, y, x):  # type: ignore[no-untyped-def]
            return dpack[n, gi * icb + rc, y * sh + rh * dh, x * sw + rw * dw, ri]
    else:
        # no padding anywhere: read the input directly (the broadcast loads are as cheap either way)
        def load(n, gi, y, x):  # type: ignore[no-untyped-def]
            return load_data(wl, data, n, gi * cg + rc * ic_bn + ri, y * sh + rh * dh, x * sw + rw * dw)

    return te.compute(
        (wl.batch, g, ocb, wl.out_height, owp, oc_bn),
        lambda n, gi, b, y, x, ko: te.sum(
            load(n, gi, y, x).astype(acc_dtype) * weight[gi * ocb + b, rc, rh, rw, ri, ko].astype(acc_dtype),
            axis=[rc, rh, rw, ri]),
        name="conv")


def compute(wl: Conv2dWorkload, cfg: Conv2dConfig,
            data: te.Tensor | None = None, weight: te.Tensor | None = None) -> list[te.Tensor]:
    """TE compute: ``[data, packed_weight, (bias,) (residual,) out]``."""
    if data is None:  # (bf16 layers pass rounded inputs and unpacked weights)
        data = te.placeholder(wl.data_shape, "float32", name="data")
    if weight is None:
        weight = te.placeholder(packed_weight_shape(wl, cfg), "float32", name="weight")
    conv = conv_body(wl, cfg, data, weight, tirx.const(0.0, "float32"), "float32")
    return kernel_args(data, weight, *float_epilogue(wl, conv, cfg.oc_bn))


def float_epilogue(wl: Conv2dWorkload, conv: te.Tensor, oc_bn: int) -> tuple:
    """``(bias, residual, out)``: the blocked fp32 accumulators ``[N, G, OCB, OH, OWp, oc_bn]``
    written to NCHW through the workload's epilogue (``common.finish``); bias / residual are
    None where the epilogue has none. Shared by the fp32 and native bf16 direct convs."""
    kg = wl.out_per_group
    bias = optional_bias(wl.epilogue, wl.out_channels)
    residual = optional_residual(wl.epilogue, output_shape(wl))

    def epilogue(n, gi, kk, y, x, index):  # type: ignore[no-untyped-def]
        return finish(conv[n, gi, kk // oc_bn, y, x, kk % oc_bn], bias, gi * kg + kk, wl.epilogue,
                      residual, index)

    return bias, residual, conv_output(wl, epilogue)


def load_data(wl: Conv2dWorkload, data: te.Tensor, n, c, h, w):  # type: ignore[no-untyped-def]
    """``data`` (the workload's layout) at batch ``n``, channel ``c``, row ``h``, column ``w``."""
    return data[n, h, w, c] if wl.nhwc else data[n, c, h, w]


def conv_output(wl: Conv2dWorkload, value, name: str = "out") -> te.Tensor:  # type: ignore[no-untyped-def]
    """The kernel's output buffer (``output_shape``) with ``value(n, g, k, y, x, index)`` at
    group ``g``'s output channel ``k``, ``index`` being that element's index in the buffer
    (a fused residual, shaped like the output, is read there)."""
    if wl.nhwc and wl.groups == 1:
        return te.compute(output_shape(wl), lambda n, y, x, kk: value(n, 0, kk, y, x, (n, y, x, kk)), name=name)
    if wl.nhwc:
        return te.compute(output_shape(wl), lambda n, y, x, gi, kk: value(n, gi, kk, y, x, (n, y, x, gi, kk)),
                          name=name)
    return te.compute(output_shape(wl), lambda n, gi, kk, y, x: value(n, gi, kk, y, x, (n, gi, kk, y, x)),
                      name=name)


def input_shape(wl: Conv2dWorkload, cfg: object = None) -> tuple[int, ...]:
    return wl.data_shape


def output_shape(wl: Conv2dWorkload, cfg: object = None) -> tuple[int, ...]:
    """Shape of the kernel's output buffer: NCHW with the channel axis split as ``[G, K/G]``,
    or NHWC as ``[N, OH, OW, G, K/G]`` (free reshapes of the output; keeping the group axis
    separate keeps every index affine, which the schedule's region analysis needs), NHWC
    itself where there is one group (so that no reshape follows the kernel)."""
    if wl.nhwc and wl.groups == 1:
        return wl.out_shape
    if wl.nhwc:
        return (wl.batch, wl.out_height, wl.out_width, wl.groups, wl.out_per_group)
    return (wl.batch, wl.groups, wl.out_per_group, wl.out_height, wl.out_width)


def reduction_order(wl: Conv2dWorkload, cfg: Conv2dConfig) -> list[tuple[int, int, int]]:
    """The terms ``(input channel within the group, kernel row, kernel column)`` in the order
    each output accumulates them: channel block, row, column, channel within the block (the
    reduction loops of ``conv_body``; the schedule keeps them sequential and in this order).
    Padding channels are left out (they add exact zeros)."""
    ic_bn, cg = cfg.ic_bn, wl.in_per_group
    return [(b * ic_bn + i, r, s) for b in range(ceil_div(cg, ic_bn)) for r in range(wl.kernel_h)
            for s in range(wl.kernel_w) for i in range(ic_bn) if b * ic_bn + i < cg]


def schedule(sch, wl: Conv2dWorkload, cfg: Conv2dConfig, sample: bool = False) -> None:  # type: ignore[no-untyped-def]
    """Register-tiled NCHWc schedule; ``sch`` is a ``tvm.s_tir.Schedule`` of ``compute``.

    The conv block iterates over the padded channel space (no tails); the epilogue is computed
    per register tile (``reverse_compute_at``), which shrinks the accumulator buffer to the tile
    and lets LLVM keep it in registers; channels-last, each pixel's ``oc_bn`` channels are
    stored as one vector (with a fused residual, unrolled scalar code measured 1.25x slower on
    ResNet-50's 64->256 1x1 at 56x56).
    """
    conv_b = sch.get_sblock("conv")
    out_b = sch.get_sblock("out")
    pack_b = sch.get_sblock("data_pack") if needs_repack(wl, cfg) else None
    n, gi, b, y, x, ko, rc, rh, rw, ri = sch.get_loops(conv_b)
    outer = [n, gi, y, b] if cfg.rows_outside and wl.nhwc else [n, gi, b, y]
    schedule_register_tile(sch, conv_b, out_b, outer=outer, x=x,
                           reductions=[rc, rh, rw, ri], lane=ko, reg_n=cfg.reg_n, sample=sample)
    if wl.nhwc:
        vectorize_channels_last_store(sch, out_b, wl.out_per_group, cfg.oc_bn)
    if pack_b is not None:
        schedule_repack(sch, pack_b, wl.in_per_group % cfg.ic_bn == 0)


def candidates(wl: Conv2dWorkload, features: TargetFeatures) -> list[Conv2dConfig]:
    """The tuning candidates: input-channel blocks up to 32, one or two vectors of output
    channels, every ``reg_n`` whose tile fits the vector registers; channels-last, both loop
    orders."""
    lanes = features.fp32_lanes
    regs = features.vector_registers
    ic = [b for b in (4, 8, 16, 32) if b <= wl.in_per_group] or [wl.in_per_group]
    if wl.in_per_group <= 32:
        ic.append(wl.in_per_group)
    oc = [lanes, 2 * lanes] if wl.out_per_group > lanes else [fallback_config(wl, features).oc_bn]

    def make(ic_bn: int, oc_bn: int, reg_n: int, rows_outside: bool) -> Conv2dConfig:
        if reg_n * ceil_div(oc_bn, lanes) > regs - 2:
            raise ValueError("tile does not fit the registers")
        return Conv2dConfig(ic_bn, oc_bn, reg_n, rows_outside)

    return grid(make, ic_bn=ic, oc_bn=oc, reg_n=range(1, min(wl.out_width, regs) + 1),
                rows_outside=(False, True) if wl.nhwc else (False,))
