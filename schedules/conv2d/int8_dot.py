"""W8A8 conv2d on the CPU's integer dot-product instructions (AVX2 / AVX-512 ``vpmaddwd``,
AVX512-VNNI ``vpdpbusd``): uint8 activations x int8 weights -> int32, requantized to uint8.

The NCHWc direct convolution of ``fp32_direct`` with its innermost step replaced by one
instruction (``schedules.intrinsics``): ``lanes`` output channels x ``group`` input channels of
one pixel. The input is always repacked to ``[N, G*ICB, HP, WP, ic_bn]`` (padded with the input
zero point, exact; widened to int16 for ``vpmaddwd``) so that the ``group`` channels of a pixel
are adjacent and broadcast in one load; the weights are packed
``[G*OCB, ICB, R, S, ic_bn/group, oc_bn, group]``. The register tile is ``reg_n`` pixels x
``oc_bn`` channels (``oc_bn/lanes`` vectors) of int32 accumulators; the epilogue, arguments and
output layout are ``int8_portable``'s (``common.int8_epilogue``).

Knobs (``DotConv2dConfig``): ``ic_bn`` (a multiple of ``group``), ``oc_bn`` (a multiple of
``lanes``), ``reg_n``, ``blocks_inside`` (the loop order: output channel blocks outside the rows,
or inside each tile of pixels); ``dot`` names the instruction and is fixed by the kernel's ISA.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tvm import te

from ..common import (
    ceil_div,
    has_block,
    int8_epilogue,
    int8_operands,
    keep_tile_in_registers,
    padded_width,
    register_tile,
    schedule_repack,
    split_tile,
    stack_tile_pixels,
    vectorize_channels_last_store,
)
from ..intrinsics import AMX_16X64, DOT_PRODUCTS, PMADDUBSW_8X4, PMADDWD_8X2, DotProduct, amx_intrinsics
from ..quant import pairs_fit_int16
from ..space import grid
from ..target_features import TargetFeatures
from ..workload import Conv2dWorkload
from .fp32_direct import conv_output, input_shape, output_shape, pack_input, padded_input

__all__ = ["AMX_OC_BN", "DotConv2dConfig", "candidates", "channel_blocks", "compute", "fallback_config", "input_shape",
           "output_shape", "pack_weight", "schedule"]


# AMX: output channels per block, one or two tiles of 16 (``intrinsics.amx_intrinsics``' cols)
AMX_OC_BN = (16, 32)


@dataclass(frozen=True)
class DotConv2dConfig:
    """Blocking of one dot-product conv kernel (``dot``: a ``schedules.intrinsics`` name)."""

    ic_bn: int
    oc_bn: int
    reg_n: int
    dot: str
    # the output channel blocks looped inside each tile of pixels (parallel over rows only):
    # every pixel's channels written by one task, at the price of cycling all the weights
    # through the cache per tile
    blocks_inside: bool = False

    def __post_init__(self) -> None:
        if self.dot not in DOT_PRODUCTS:
            raise ValueError(f"unknown dot product {self.dot!r}; known: {', '.join(DOT_PRODUCTS)}")
        d = DOT_PRODUCTS[self.dot]
        if self.ic_bn < 1 or self.ic_bn % d.group:
            raise ValueError(f"ic_bn={self.ic_bn} must be a positive multiple of {d.group} ({d.name})")
        if self.oc_bn < 1 or self.oc_bn % d.lanes:
            raise ValueError(f"oc_bn={self.oc_bn} must be a positive multiple of {d.lanes} ({d.name})")
        if self.reg_n < 1:
            raise ValueError("reg_n must be >= 1")
        if d is AMX_16X64 and (self.ic_bn != 64 or self.oc_bn not in AMX_OC_BN or not 2 <= self.reg_n <= 16
                               or self.blocks_inside):
            # (a one-row tile does not tensorize: TVM drops the unit pixel loop the intrinsic
            # description has)
            raise ValueError(f"AMX tiles need ic_bn=64, oc_bn in {AMX_OC_BN}, 2<=reg_n<=16, got {self}")

    @property
    def dot_product(self) -> DotProduct:
        return DOT_PRODUCTS[self.dot]


def fallback_config(wl: Conv2dWorkload, features: TargetFeatures, dot: str) -> DotConv2dConfig:
    """From the shape alone: ``oc_bn`` one or two vectors of accumulators (two where the group's
    output channels are whole pairs of vectors, or fit in one block: no ragged last block),
    ``reg_n`` pixels so that the tile, the weight vectors and the broadcast input fit the vector
    registers and the tile stays under ``STACK_TILE_BYTES`` (``keep_tile_in_registers``);
    ``ic_bn`` 16 input channels (the group's input channels rounded up to ``group`` when fewer).
    """
    d = DOT_PRODUCTS[dot]
    if d is AMX_16X64:  # one tile: reg_n pixels (<= 16 rows) x 16 channels, 64 input channels deep
        reg_n = max((m for m in range(16, 6, -1) if wl.out_width % m == 0), default=min(16, wl.out_width))
        return DotConv2dConfig(ic_bn=64, oc_bn=16, reg_n=reg_n, dot=dot)
    registers = features.vector_registers
    k = wl.out_per_group
    vecs = 2 if k > d.lanes and (k % (2 * d.lanes) == 0 or k < 2 * d.lanes) else 1
    # vpmaddubsw also holds a vector of ones and the int16 pair sums in registers,
    # and two products in flight (5 pixels x 2 vectors spill on AVX2: 4 measured 1.1-1.5x faster)
    spare = 5 if d is PMADDUBSW_8X4 else 2
    max_regs = stack_tile_pixels(vecs * d.lanes, (registers - spare - vecs) // vecs)
    reg_n = register_tile(wl.out_width, max_regs)
    if d in (PMADDUBSW_8X4, PMADDWD_8X2) and max_regs < wl.out_width <= 7 and wl.kernel_h * wl.kernel_w > 1:
        # a whole row of at most 7 pixels beats the padded 4-pixel tiles despite its spills:
        # ResNet-50's 3x3 512->512 at 7 pixels 92 vs 82 GMAC/s (Zen 3 core, interleaved, 9 rounds),
        # while at 14 pixels and more a 7-pixel tile ties or loses; on vpmaddwd (exact 8-bit
        # weights) its two 7-pixel 3x3s -15% and -23% (Zen 3, 5 rounds)
        reg_n = wl.out_width
    ic_bn = min(32 if d is PMADDUBSW_8X4 else 16, ceil_div(wl.in_per_group, d.group) * d.group)
    unpadded = not (wl.pad_top or wl.pad_left or wl.pad_bottom or wl.pad_right)
    if wl.nhwc and unpadded and wl.in_per_group % d.group == 0:
        # a tile that divides the width and a channel block that divides the channels: the
        # conv reads its input in place (``reads_input_directly``), no repack
        ic_bn = next(b for b in (64, 32, 16, 8, 4, 2, 1) if wl.in_per_group % b == 0 and b % d.group == 0)
        divisors = [r for r in range(min(max_regs, wl.out_width), 0, -1) if wl.out_width % r == 0]
        if divisors[0] >= min(4, wl.out_width):
            reg_n = divisors[0]
    # channel blocks outside the rows: the order inside each tile measured within 1% on
    # MobileNetV2 and 9% slower on ResNet-50 end to end (Zen 4); the tuner may pick it per layer.
    # AVX2, channels-last: inside. Each task then writes whole pixels; outside, two threads write
    # 16-byte channel blocks of the same cache lines (false sharing). Measured per layer on a Zen 3
    # core pair (1 | 2 threads, outside / inside): MobileNetV2's 96->576 1.32 | 1.74, 16->96 1.08 |
    # 1.12, 576->96 2.04 | 1.35, first conv 0.76 | 1.60; ResNet-50's 64->256 1.41 | 1.09,
    # 1024->256 0.95 | 1.67, 3x3s 0.91-1.16 | 1.01
    inside = wl.nhwc and d.isa == "avx2"
    return DotConv2dConfig(ic_bn=ic_bn, oc_bn=vecs * d.lanes, reg_n=reg_n, dot=dot, blocks_inside=inside)


def packed_weight_shape(wl: Conv2dWorkload, cfg: DotConv2dConfig) -> tuple[int, ...]:
    grp = cfg.dot_product.group
    return (wl.groups * ceil_div(wl.out_per_group, cfg.oc_bn), ceil_div(wl.in_per_group, cfg.ic_bn),
            wl.kernel_h, wl.kernel_w, cfg.ic_bn // grp, cfg.oc_bn, grp)


def pack_weight(weight: np.ndarray, wl: Conv2dWorkload, cfg: DotConv2dConfig) -> np.ndarray:
    """OIHW int8 -> ``[G*OCB, ICB, R, S, ic_bn/group, oc_bn, group]``, zero padded."""
    if weight.shape != wl.weight_shape:
        raise ValueError(f"weight shape {weight.shape} does not match workload {wl.weight_shape}")
    g, kg, cg = wl.groups, wl.out_per_group, wl.in_per_group
    gk, icb, r, s, icq, oc_bn, grp = packed_weight_shape(wl, cfg)
    ocb = gk // g
    padded = np.zeros((g, ocb * oc_bn, icb * cfg.ic_bn, r, s), dtype=weight.dtype)
    padded[:, :kg, :cg] = weight.reshape(g, kg, cg, r, s)
    t = padded.reshape(g, ocb, oc_bn, icb, icq, grp, r, s)
    # -> g, ocb, icb, r, s, icq, oc_bn, grp
    packed = np.ascontiguousarray(t.transpose(0, 1, 3, 6, 7, 4, 2, 5).reshape(gk, icb, r, s, icq, oc_bn, grp))
    check_narrow(packed, cfg.dot_product)
    return packed


def check_narrow(packed: np.ndarray, d: DotProduct) -> None:
    """``vpmaddubsw`` (``PMADDUBSW_8X4``) only for weights it is exact on (``pairs_fit_int16``,
    the instruction's input-channel groups on the last axis): int4 weights, never full-range
    int8 ones; anything else is refused here, before a kernel could compute a wrong sum."""
    if d is PMADDUBSW_8X4 and not pairs_fit_int16(packed):
        raise ValueError(f"{d.name} (vpmaddubsw) would saturate on these weights: a same-signed pair of "
                         "input channels sums past 128 in magnitude; use tvmq_pmaddwd_8x2")


def dot_conv_body(wl: Conv2dWorkload, wshape: tuple[int, ...], reg_n: int, dpack: te.Tensor,
                  weight: te.Tensor, value, direct: bool = False,  # type: ignore[no-untyped-def]
                  height: int | None = None) -> te.Tensor:
    """The blocked conv ``[N, G, OCB, OH, OWp, oc_bn]`` over weights packed ``wshape`` =
    ``[G*OCB, ICB, R, S, ic_bn/grp, oc_bn, grp]`` (a dot-product instruction's channel groups
    innermost) and the repacked input ``dpack`` (``direct``: the NHWC input itself, see
    ``reads_input_directly``; a 7-dimensional ``dpack``: ``pack_phases``' layout); ``value``
    maps each loaded operand to the accumulation type (int32 here; bf16 bits to float32 in
    ``bf16_dot``); ``height``: output rows computed (default the output height; more: rows of
    padding, ``padded_height``)."""
    gk, icb, r_, s_, icq, oc_bn, grp = wshape
    ocb = gk // wl.groups
    sh, sw, dh, dw = wl.stride_h, wl.stride_w, wl.dilation_h, wl.dilation_w
    if direct:
        cg, ic_bn = wl.in_per_group, icq * grp

        def load(n, gi, c_blk, c_grp, c_in, y, rh, x, rw):  # type: ignore[no-untyped-def]
            return dpack[n, y * sh + rh * dh, x * sw + rw * dw, gi * cg + c_blk * ic_bn + c_grp * grp + c_in]
    elif len(dpack.shape) == 7:
        def load(n, gi, c_blk, c_grp, c_in, y, rh, x, rw):  # type: ignore[no-untyped-def]
            th, tw = rh * dh, rw * dw
            return dpack[n, gi * icb + c_blk, th % sh, tw % sw, y + th // sh, x + tw // sw, c_grp * grp + c_in]
    else:
        def load(n, gi, c_blk, c_grp, c_in, y, rh, x, rw):  # type: ignore[no-untyped-def]
            return dpack[n, gi * icb + c_blk, y * sh + rh * dh, x * sw + rw * dw, c_grp * grp + c_in]
    rc = te.reduce_axis((0, icb), "rc")
    rh = te.reduce_axis((0, r_), "rh")
    rw = te.reduce_axis((0, s_), "rw")
    rq = te.reduce_axis((0, icq), "rq")
    rg = te.reduce_axis((0, grp), "rg")
    return te.compute(
        (wl.batch, wl.groups, ocb, height or wl.out_height, padded_width(wl.out_width, reg_n), oc_bn),
        lambda n, gi, b, y, x, ko: te.sum(
            value(load(n, gi, rc, rq, rg, y, rh, x, rw))
            * value(weight[gi * ocb + b, rc, rh, rw, rq, ko, rg]),
            axis=[rc, rh, rw, rq, rg]),
        name="conv")


def pack_phases(wl: Conv2dWorkload, cfg: DotConv2dConfig, data: te.Tensor, pad_value,  # type: ignore[no-untyped-def]
                dtype: str | None = None) -> te.Tensor:
    """A strided conv's input for AMX tiles, ``[N, G*ICB, SH, SW, HP/SH, WP/SW, ic_bn]``: the
    padded input (``fp32_direct.padded_input``) split by the phase of each row and column
    modulo the stride, so that the pixels one tile row of output reads (every ``stride``-th
    column) are consecutive, as a tile load wants them, and the rows of a block of output rows
    too. Only the phases the taps read (a 1x1's first: a quarter of a stride-2 input)."""
    sh, sw = wl.stride_h, wl.stride_w
    th, tw = (wl.kernel_h - 1) * wl.dilation_h, (wl.kernel_w - 1) * wl.dilation_w
    hph = padded_height(wl, cfg) + th // sh
    wph = padded_width(wl.out_width, cfg.reg_n) + tw // sw
    value = padded_input(wl, cfg.ic_bn, data, pad_value, dtype)
    return te.compute((wl.batch, wl.groups * ceil_div(wl.in_per_group, cfg.ic_bn), min(sh, th + 1), min(sw, tw + 1),
                       hph, wph, cfg.ic_bn),
                      lambda n, gb, ph, pw, hh, wh, ci: value(n, gb, hh * sh + ph, wh * sw + pw, ci),
                      name="data_pack")


def padded_height(wl: Conv2dWorkload, cfg) -> int:  # type: ignore[no-untyped-def]
    """The output rows an AMX block of ``cfg.rows`` rows computes: the output height rounded up
    to whole blocks (the rows past it are computed from padding and never stored), so that an
    odd height (ResNet-50's 7x7 maps) takes blocks of two rows too. Other kernels: the output
    height (``int8_rows`` requires a divisor there)."""
    rows = getattr(cfg, "rows", 1)
    return ceil_div(wl.out_height, rows) * rows if cfg.dot_product is AMX_16X64 else wl.out_height


def reads_input_directly(wl: Conv2dWorkload, cfg: DotConv2dConfig, data_dtype: str = "uint8") -> bool:
    """Whether the conv reads a channels-last input in place, with no repack: nothing to pad
    (spatially, channels up to ``ic_bn``, width up to whole tiles) and the instruction takes
    the input's type as it is (VNNI's uint8, or int16 for ``vpmaddwd``). Then the ``group``
    channels of a pixel are adjacent in memory, as the instruction's broadcast wants them. An AMX
    tile loads its pixels' 64 channels with the input's pixel stride: stride 1, no row of padding
    (``padded_height``), and where it measured faster than the repack (outputs at least 28 pixels
    wide from at most 512 channels). Per layer on an Emerald Rapids core (1 thread, medians of 5
    interleaved rounds), repack -> in place: ResNet-50's 256->64 at 56x56 0.104 -> 0.063 ms,
    256->128 0.169 -> 0.124, 512->128 at 28x28 0.054 -> 0.046, its 14x14 1x1s from 256 and 1024
    channels 7-12% slower (the tile rows 1 KB apart)."""
    d = cfg.dot_product
    if (not wl.nhwc or d.a_dtype != data_dtype or wl.pad_top or wl.pad_left or wl.pad_bottom or wl.pad_right
            or wl.in_per_group % cfg.ic_bn or wl.out_width % cfg.reg_n):
        return False
    return d is not AMX_16X64 or (wl.stride_h == wl.stride_w == 1 and padded_height(wl, cfg) == wl.out_height
                                  and wl.out_width >= 28 and wl.in_channels <= 512)


def compute(wl: Conv2dWorkload, cfg: DotConv2dConfig,
            weight: te.Tensor | None = None,
            data_dtype: str = "uint8") -> list[te.Tensor]:
    """``weight``, ``data_dtype``: as ``common.int8_operands``."""
    d = cfg.dot_product
    data, weight = int8_operands(wl.data_shape, packed_weight_shape(wl, cfg), weight, data_dtype)
    args, qp, epilogue, _ = int8_epilogue(wl.epilogue, wl.out_channels, output_shape(wl))
    if reads_input_directly(wl, cfg, data_dtype):
        conv = dot_conv_body(wl, packed_weight_shape(wl, cfg), cfg.reg_n, data, weight,
                             lambda v: v.astype("int32"), direct=True)
    else:
        height = padded_height(wl, cfg)
        if d is AMX_16X64 and (wl.stride_h > 1 or wl.stride_w > 1):
            dpack = pack_phases(wl, cfg, data, qp[0], d.a_dtype)
        else:
            dpack = pack_input(wl, cfg, data, qp[0], d.a_dtype, out_height=height)
        conv = dot_conv_body(wl, packed_weight_shape(wl, cfg), cfg.reg_n, dpack, weight,
                             lambda v: v.astype("int32"), height=height)
    oc_bn, kg = cfg.oc_bn, wl.out_per_group
    out = conv_output(wl, lambda n, gi, kk, y, x, index: epilogue(
        conv[n, gi, kk // oc_bn, y, x, kk % oc_bn], gi * kg + kk, index))
    return [data, weight, *args, out]


def schedule(sch, wl: Conv2dWorkload, cfg: DotConv2dConfig, sample: bool = False) -> None:  # type: ignore[no-untyped-def]
    """Register tile ``reg_n`` x ``oc_bn`` accumulated over ``(ICB, R, S, ic_bn/group)``, the
    innermost ``lanes x group`` step tensorized; epilogue per tile, repack parallel by rows."""
    d = cfg.dot_product
    if d is AMX_16X64:
        _schedule_amx(sch, wl, cfg, sample)
        return
    conv_b = sch.get_sblock("conv")
    out_b = sch.get_sblock("out")
    n, gi, b, y, x, ko, rc, rh, rw, rq, rg = sch.get_loops(conv_b)
    xo, xi = split_tile(sch, x, cfg.reg_n, max_inner=cfg.reg_n, sample=sample)
    ko_o, ko_i = sch.split(ko, [None, d.lanes])
    if cfg.blocks_inside:
        sch.reorder(n, gi, y, xo, b, rc, rh, rw, rq, xi, ko_o, ko_i, rg)
        sch.parallel(sch.fuse(n, gi, y))
        tile = b
    else:
        sch.reorder(n, gi, b, y, xo, rc, rh, rw, rq, xi, ko_o, ko_i, rg)
        sch.parallel(sch.fuse(n, gi, b, y))
        tile = xo
    sch.reverse_compute_at(out_b, tile, preserve_unit_loops=True)
    init = sch.decompose_reduction(conv_b, rc)
    sch.vectorize(sch.get_loops(init)[-1])
    sch.unroll(xi)
    sch.unroll(ko_o)
    sch.tensorize(ko_i, d.name)
    finish_dot_schedule(sch, wl, cfg, init, out_b, tile)


def finish_dot_schedule(sch, wl: Conv2dWorkload, cfg, init, out_b, xo) -> None:  # type: ignore[no-untyped-def]
    """The tile's write-back (channels-last: one vector store per pixel), kept in registers,
    and the input repack where there is one (``reads_input_directly``)."""
    if wl.nhwc:
        vectorize_channels_last_store(sch, out_b, wl.out_per_group, cfg.oc_bn)
    keep_tile_in_registers(sch, init, out_b, xo)
    if has_block(sch, "data_pack"):
        schedule_repack(sch, sch.get_sblock("data_pack"), wl.in_per_group % cfg.ic_bn == 0)


def _schedule_amx(sch, wl: Conv2dWorkload, cfg: DotConv2dConfig, sample: bool) -> None:  # type: ignore[no-untyped-def]
    """One block of AMX tiles per (row, ``reg_n`` pixels, ``oc_bn`` channels): one or two
    accumulators side by side, zeroed, accumulated over ``(ICB, R, S)`` by ``tdpbusd`` (64
    input channels per op), stored once to an int32 buffer that the epilogue reads. The tile
    size is fixed by the intrinsics, so ``reg_n`` is not sampled."""
    schedule_amx_tiles(sch, wl, cfg.reg_n, amx_intrinsics(cfg.reg_n, 1, cfg.oc_bn // 16), oc_bn=cfg.oc_bn)


def schedule_amx_tiles(sch, wl: Conv2dWorkload, reg_n: int, intrinsics: tuple[str, str, str],  # type: ignore[no-untyped-def]
                       rows: int = 1, oc_bn: int = 16) -> None:
    """The AMX tile schedule of a ``dot_conv_body`` conv, whatever the tile instruction
    (``tdpbusd`` here, ``tdpbf16ps`` in ``bf16_dot``): a block of ``rows`` output rows x
    ``reg_n`` pixels x ``oc_bn`` channels (``rows x oc_bn/16`` tiles of ``reg_n`` x 16),
    ``intrinsics`` = (zero, dot, store) tensor intrinsic names for that block. A channels-last
    epilogue reads each pixel's accumulators (one row of the block buffer) as one vector and
    stores its channels at once; left to LLVM it vectorised along the pixels instead, with
    gathers and a scalar store per byte (MobileNetV2's 16->96 1x1 at 112x112: 7.8x slower than
    VNNI)."""
    zero, dot, store = intrinsics
    conv_b = sch.get_sblock("conv")
    out_b = sch.get_sblock("out")
    n, gi, b, y, x, ko, rc, rh, rw, rq, rg = sch.get_loops(conv_b)
    xo, xi = sch.split(x, [None, reg_n])
    if rows > 1:
        yo, yi = sch.split(y, [None, rows])
        sch.reorder(n, gi, b, yo, xo, rc, rh, rw, yi, xi, ko, rq, rg)
        pixels, outer = yi, yo
    else:
        sch.reorder(n, gi, b, y, xo, rc, rh, rw, xi, ko, rq, rg)
        pixels, outer = xi, y
    tile = sch.cache_write(conv_b, 0, "global")
    sch.reverse_compute_at(tile, xo, preserve_unit_loops=True)
    sch.reverse_compute_at(out_b, xo, preserve_unit_loops=True)
    blocks = int(sch.get(outer).extent)
    inner = serial_row_blocks(blocks, int(sch.get(n).extent) * int(sch.get(gi).extent) * int(sch.get(b).extent))
    if inner > 1:  # (a split of the fused loop would not blockize: split the row blocks first)
        outer = sch.split(outer, [None, inner])[0]
    sch.parallel(sch.fuse(n, gi, b, outer))
    init = sch.decompose_reduction(conv_b, rc)
    depth = 2 if rows == 1 else 3  # the block's loops: (rows,) pixels, channels
    sch.tensorize(sch.get_loops(init)[-depth], zero)
    sch.tensorize(pixels, dot)
    sch.tensorize(sch.get_loops(tile)[-depth], store)
    if wl.nhwc:
        vectorize_channels_last_store(sch, out_b, wl.out_per_group, oc_bn)
    if has_block(sch, "data_pack"):  # (not where the conv reads its input in place)
        lanes = int(sch.get(sch.get_loops(sch.get_sblock("data_pack"))[-1]).extent)
        schedule_repack(sch, sch.get_sblock("data_pack"), wl.in_per_group % lanes == 0)


def serial_row_blocks(blocks: int, others: int, tasks: int = 16) -> int:
    """How many of an AMX kernel's ``blocks`` row blocks each parallel task runs in a row (a
    divisor of ``blocks``; ``others``: the parallel iterations of the loops outside them): as many
    as leave at least ``tasks`` tasks for the threads. Each task configures the tiles once
    (``intrinsics.hoist_tile_config``) and then runs its blocks."""
    return max(d for d in range(1, blocks + 1) if blocks % d == 0 and others * (blocks // d) >= min(tasks, others * blocks))


def channel_blocks(channels: int, group: int, limit: int) -> list[int]:
    """Input-channel block sizes: multiples of ``group`` up to the channels (rounded up to the
    group) and ``limit``."""
    top = min(limit, ceil_div(channels, group) * group)
    blocks = (group, 2 * group, 4 * group, 8 * group, 16 * group, 32, 64)
    return [b for b in blocks if b <= top and b % group == 0] or [top]


def candidates(wl: Conv2dWorkload, features: TargetFeatures, dot: str) -> list[DotConv2dConfig]:
    """The tuning candidates on instruction ``dot``: channel blocks and every ``reg_n`` whose
    tile fits the vector registers; on AMX every tile height (2..16)."""
    d = DOT_PRODUCTS[dot]
    if d is AMX_16X64:
        return grid(lambda oc_bn, reg_n: DotConv2dConfig(64, oc_bn, reg_n, dot),
                    oc_bn=AMX_OC_BN, reg_n=range(2, min(16, wl.out_width) + 1))
    regs = features.vector_registers
    oc = [d.lanes, 2 * d.lanes] if wl.out_per_group > d.lanes else [d.lanes]

    def make(ic_bn: int, oc_bn: int, reg_n: int, inside: bool) -> DotConv2dConfig:
        if reg_n * (oc_bn // d.lanes) > regs - 3:
            raise ValueError("tile does not fit the registers")
        return DotConv2dConfig(ic_bn, oc_bn, reg_n, dot, inside)

    return grid(make, ic_bn=channel_blocks(wl.in_per_group, d.group, 64), oc_bn=oc,
                reg_n=range(1, min(wl.out_width, regs) + 1), inside=(False, True))
