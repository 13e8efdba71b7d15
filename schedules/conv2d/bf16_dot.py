"""Native bf16 conv2d on AVX512-BF16 ``vdpbf16ps`` or AMX-BF16 ``tdpbf16ps``: NCHWc direct conv.

The structure of ``int8_dot`` with bf16 operands and fp32 accumulators: the float32 NCHW input is
rounded to bf16 (nearest even, ``bf16.bits_expr``) and repacked once per call to
``[N, G*ICB, HP, WP, ic_bn]`` uint16 (zero padded spatially and in channels up to ``ic_bn`` per
group; bf16 +0 is 0x0000), so that a pixel's pair of input channels is one 32-bit broadcast; the
weights are packed ahead of time as uint16 bf16 patterns ``[G*OCB, ICB, R, S, ic_bn/2, oc_bn, 2]``
(input-channel pairs innermost, the layout ``vdpbf16ps`` reads). The register tile is ``reg_n``
pixels x ``oc_bn`` channels (``oc_bn/16`` zmm of fp32 accumulators), accumulated over
``(ICB, R, S, ic_bn/2)``, each innermost step one ``vdpbf16ps`` (``schedules.intrinsics_bf16``);
the epilogue is the fp32 kernels' (``common.finish``: + bias, + residual, then ReLU / clip),
applied as the tile is written back to NCHW. Arguments, input and output shapes are
``fp32_direct``'s (float32 in and out), so the compiler can use this kernel or the portable bf16
one interchangeably.

Every conv with a channel reduction takes this template (1x1 convs too: there is no separate
pointwise-GEMM form of the native kernel); depthwise convs have no channel reduction to pair and
stay on the portable bf16 kernel.

Summation order, per output: channel block, kernel row, kernel column, channel pair; within a
pair the odd channel, then the even one (``dot_order``). ``float_reference`` reproduces it bit
for bit (``reference.conv2d_bf16_dot``).

The AMX form (``dot=TDPBF16PS``, the ``conv2d/bf16/amx`` kernel where the CPU has ``amx_bf16``):
the same compute, packing and epilogue with ``ic_bn=32``, ``oc_bn=16``, ``reg_n <= 16``; one
tile of ``reg_n`` (2..16) pixels x 16 channels, zeroed, accumulated over ``(ICB, R, S)`` in tmm0 by
``tdpbf16ps`` (32 input channels = 16 pairs per op, ``intrinsics_bf16.amx_bf16_intrinsics``),
stored once to an fp32 tile buffer the epilogue reads. Stride 1 only (a tile row load reads
consecutive pixels): strided convs, and one-pixel-wide outputs, keep ``vdpbf16ps`` (``fallback_config``). Each ``tdpbf16ps``
sums its 16 even-channel and its 16 odd-channel products in two fp32 partials, adds them, then
adds that to the accumulator (the SDM's pseudo-code): ``float_reference`` follows it
(``reference.conv2d_bf16_amx``); not checked on an AMX CPU.

Knobs (``Bf16DotConv2dConfig``): ``ic_bn`` (even), ``oc_bn`` (a multiple of 16), ``reg_n``;
``dot`` (``VDPBF16PS`` / ``TDPBF16PS``) names the instruction and is fixed by the kernel.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from tvm import te, tirx

from .. import bf16, reference
from ..common import (
    ceil_div,
    keep_tile_in_registers,
    kernel_args,
    register_tile,
    schedule_repack,
    split_tile,
)
from ..intrinsics_bf16 import (
    AMX_K,
    AMX_N,
    AMX_ROWS,
    DPBF16PS_16X2,
    GROUP,
    LANES,
    amx_bf16_intrinsics,
    bf16_value,
)
from ..kernel import KernelDef, KernelKey
from ..space import ConfigType
from ..target_features import TargetFeatures
from ..workload import Conv2dWorkload
from .fp32_direct import float_epilogue, input_shape, output_shape, pack_input
from .int8_dot import dot_conv_body, schedule_amx_tiles

__all__ = ["CONFIG_TYPES", "DOTS", "TDPBF16PS", "VDPBF16PS", "Bf16DotConv2dConfig", "compute", "config_space",
           "dot_order", "fallback_config", "float_reference", "input_shape", "kernels", "output_shape",
           "pack_weight", "schedule"]


VDPBF16PS = "vdpbf16ps"  # AVX512-BF16, zmm register tiles
TDPBF16PS = "tdpbf16ps"  # AMX-BF16 tiles
DOTS = (VDPBF16PS, TDPBF16PS)


@dataclass(frozen=True)
class Bf16DotConv2dConfig:
    """Blocking of the native bf16 conv: input / output channel blocks, register (or AMX tile)
    width, and the instruction (``dot``)."""

    ic_bn: int
    oc_bn: int
    reg_n: int
    dot: str = VDPBF16PS

    def __post_init__(self) -> None:
        if self.dot not in DOTS:
            raise ValueError(f"unknown bf16 dot product {self.dot!r}; known: {', '.join(DOTS)}")
        # (a one-row tile, reg_n=1, does not tensorize: the unit pixel loop is dropped)
        if self.dot == TDPBF16PS and (self.ic_bn != AMX_K or self.oc_bn != AMX_N
                                      or not 2 <= self.reg_n <= AMX_ROWS):
            raise ValueError(f"AMX-BF16 tiles need ic_bn={AMX_K}, oc_bn={AMX_N}, "
                             f"2<=reg_n<={AMX_ROWS}, got {self}")
        if self.ic_bn < 1 or self.ic_bn % GROUP:
            raise ValueError(f"ic_bn={self.ic_bn} must be a positive multiple of {GROUP} (bf16 pairs)")
        if self.oc_bn < 1 or self.oc_bn % LANES:
            raise ValueError(f"oc_bn={self.oc_bn} must be a positive multiple of {LANES} (zmm lanes)")
        if self.reg_n < 1:
            raise ValueError("reg_n must be >= 1")


def fallback_config(wl: Conv2dWorkload, features: TargetFeatures, dot: str = VDPBF16PS) -> Bf16DotConv2dConfig:
    """From the shape alone: ``oc_bn`` one or two zmm of accumulators, ``reg_n`` pixels so that
    the tile, the weight vectors and the broadcast input fit the 32 zmm registers; ``ic_bn`` 16
    input channels (the group's input channels rounded up to a pair when fewer).

    ``dot=TDPBF16PS`` (the AMX kernel): one tile of ``reg_n`` pixels (16 down to 7 dividing the
    output width, else as many as fit in 16) x 16 channels x 32 input channels, for convs of
    stride 1 at least two pixels wide; a strided conv gets the ``vdpbf16ps`` configuration
    above (a tile row load reads consecutive pixels), and so does a one-pixel-wide one."""
    if dot not in DOTS:
        raise ValueError(f"unknown bf16 dot product {dot!r}; known: {', '.join(DOTS)}")
    if dot == TDPBF16PS and wl.stride_w == 1 and wl.out_width >= 2:
        reg_n = max((m for m in range(AMX_ROWS, 6, -1) if wl.out_width % m == 0),
                    default=min(AMX_ROWS, wl.out_width))
        return Bf16DotConv2dConfig(ic_bn=AMX_K, oc_bn=AMX_N, reg_n=reg_n, dot=TDPBF16PS)
    vecs = 2 if wl.out_per_group > LANES else 1
    max_regs = (32 - 2 - vecs) // vecs
    reg_n = register_tile(wl.out_width, max_regs)
    ic_bn = min(16, ceil_div(wl.in_per_group, GROUP) * GROUP)
    return Bf16DotConv2dConfig(ic_bn=ic_bn, oc_bn=vecs * LANES, reg_n=reg_n)


def packed_weight_shape(wl: Conv2dWorkload, cfg: Bf16DotConv2dConfig) -> tuple[int, ...]:
    return (wl.groups * ceil_div(wl.out_per_group, cfg.oc_bn), ceil_div(wl.in_per_group, cfg.ic_bn),
            wl.kernel_h, wl.kernel_w, cfg.ic_bn // GROUP, cfg.oc_bn, GROUP)


def pack_weight(weight: np.ndarray, wl: Conv2dWorkload, cfg: Bf16DotConv2dConfig) -> np.ndarray:
    """OIHW float32 -> uint16 bf16 patterns (nearest even) ``[G*OCB, ICB, R, S, ic_bn/2, oc_bn, 2]``,
    zero padded in both channel axes."""
    if weight.shape != wl.weight_shape:
        raise ValueError(f"weight shape {weight.shape} does not match workload {wl.weight_shape}")
    g, kg, cg = wl.groups, wl.out_per_group, wl.in_per_group
    gk, icb, r, s, icq, oc_bn, grp = packed_weight_shape(wl, cfg)
    ocb = gk // g
    padded = np.zeros((g, ocb * oc_bn, icb * cfg.ic_bn, r, s), dtype=np.uint16)
    padded[:, :kg, :cg] = bf16.to_bf16_bits(weight.astype(np.float32)).reshape(g, kg, cg, r, s)
    t = padded.reshape(g, ocb, oc_bn, icb, icq, grp, r, s)
    # -> g, ocb, icb, r, s, icq, oc_bn, grp
    return np.ascontiguousarray(t.transpose(0, 1, 3, 6, 7, 4, 2, 5).reshape(gk, icb, r, s, icq, oc_bn, grp))


def compute(wl: Conv2dWorkload, cfg: Bf16DotConv2dConfig) -> list[te.Tensor]:
    """TE compute: ``[data f32, packed_weight u16, (bias,) (residual,) out f32]``."""
    data = te.placeholder(wl.data_shape, "float32", name="data")
    weight = te.placeholder(packed_weight_shape(wl, cfg), "uint16", name="weight")
    # rounded to bf16 on the fly by the repack (inlined into it by the schedule)
    bits = te.compute(wl.data_shape, lambda *i: bf16.bits_expr(data[i]), name="data_bf16")
    dpack = pack_input(wl, cfg, bits, tirx.const(0, "uint16"))  # type: ignore[arg-type]
    conv = dot_conv_body(wl, packed_weight_shape(wl, cfg), cfg.reg_n, dpack, weight, bf16_value)
    return kernel_args(data, weight, *float_epilogue(wl, conv, cfg.oc_bn))


def schedule(sch, wl: Conv2dWorkload, cfg: Bf16DotConv2dConfig, sample: bool = False,  # type: ignore[no-untyped-def]
             intrin: str = DPBF16PS_16X2, emulated_amx: bool = False) -> None:
    """Register tile ``reg_n`` x ``oc_bn`` accumulated over ``(ICB, R, S, ic_bn/2)``, the
    innermost ``16 x 2`` step tensorized to ``vdpbf16ps`` (``intrin``: another registration of
    the same description, for tests); epilogue per tile, the rounding repack parallel by rows.
    AMX configurations: ``_schedule_amx`` (``emulated_amx``: the tile intrinsics' emulation,
    for tests)."""
    if cfg.dot == TDPBF16PS:
        _schedule_amx(sch, wl, cfg, emulated_amx)
        return
    conv_b = sch.get_sblock("conv")
    out_b = sch.get_sblock("out")
    sch.compute_inline(sch.get_sblock("data_bf16"))
    n, gi, b, y, x, ko, rc, rh, rw, rq, rg = sch.get_loops(conv_b)
    xo, xi = split_tile(sch, x, cfg.reg_n, max_inner=cfg.reg_n, sample=sample)
    ko_o, ko_i = sch.split(ko, [None, LANES])
    sch.reorder(n, gi, b, y, xo, rc, rh, rw, rq, xi, ko_o, ko_i, rg)
    sch.parallel(sch.fuse(n, gi, b, y))
    sch.reverse_compute_at(out_b, xo, preserve_unit_loops=True)
    init = sch.decompose_reduction(conv_b, rc)
    sch.vectorize(sch.get_loops(init)[-1])
    sch.unroll(xi)
    sch.unroll(ko_o)
    sch.tensorize(ko_i, intrin)
    keep_tile_in_registers(sch, init, out_b, xo)
    schedule_repack(sch, sch.get_sblock("data_pack"), wl.in_per_group % cfg.ic_bn == 0)


def _schedule_amx(sch, wl: Conv2dWorkload, cfg: Bf16DotConv2dConfig, emulated: bool) -> None:  # type: ignore[no-untyped-def]
    """One AMX tile per (row, ``reg_n`` pixels, 16 channels): zeroed, accumulated over
    ``(ICB, R, S)`` in tmm0 by ``tdpbf16ps`` (32 input channels per op), stored once to an fp32
    tile buffer that the epilogue reads (``int8_dot.schedule_amx_tiles``). The tile size
    is fixed by the intrinsics, so ``reg_n`` is not sampled."""
    sch.compute_inline(sch.get_sblock("data_bf16"))
    schedule_amx_tiles(sch, wl, cfg.reg_n, amx_bf16_intrinsics(cfg.reg_n, emulated))


def dot_order(wl: Conv2dWorkload, cfg: Bf16DotConv2dConfig) -> list[tuple[int, int, int]]:
    """The terms ``(input channel within the group, kernel row, kernel column)`` in the order
    each output accumulates them: channel block, kernel row, kernel column, channel pair (the
    reduction loops of ``compute``, kept sequential by ``schedule``), and within a pair the odd
    channel, then the even one (``vdpbf16ps``'s order). Padding channels (zero products) are
    left out. AMX configurations have no single sequential order (``tdpbf16ps`` sums even and
    odd channels apart): ``ValueError``; ``float_reference`` covers both."""
    if cfg.dot == TDPBF16PS:
        raise ValueError("tdpbf16ps sums the even and the odd channels of a tile op in two partials: "
                         "no single sequential order (see reference.conv2d_bf16_amx)")
    ic_bn, cg = cfg.ic_bn, wl.in_per_group
    return [(ch, r, s) for blk in range(ceil_div(cg, ic_bn)) for r in range(wl.kernel_h)
            for s in range(wl.kernel_w) for q in range(ic_bn // GROUP)
            for ch in (blk * ic_bn + GROUP * q + 1, blk * ic_bn + GROUP * q) if ch < cg]


def float_reference(wl: Conv2dWorkload, cfg: Bf16DotConv2dConfig, data: np.ndarray, weight: np.ndarray,
                    bias: np.ndarray | None = None, residual: np.ndarray | None = None) -> np.ndarray:
    """What the kernel computes, bit for bit: ``reference.conv2d_bf16_dot`` (bf16-rounded
    operands, one FMA per term in ``dot_order``, DAZ / FTZ); for AMX configurations
    ``reference.conv2d_bf16_amx`` (``tdpbf16ps`` by the SDM's pseudo-code, per 32-channel block,
    kernel row and column; unverified on hardware: no AMX CPU here)."""
    if cfg.dot == TDPBF16PS:
        return reference.conv2d_bf16_amx(bf16.round_bf16(data), bf16.round_bf16(weight), bias, wl,
                                         cfg.ic_bn, residual)
    return reference.conv2d_bf16_dot(bf16.round_bf16(data), bf16.round_bf16(weight), bias, wl,
                                     dot_order(wl, cfg), residual)


def config_space(start: Bf16DotConv2dConfig, wl: Conv2dWorkload,
                 features: TargetFeatures | None = None) -> list[Bf16DotConv2dConfig]:
    """Candidate configurations for the tuner, ``start`` first: ``ic_bn`` even channel blocks
    up to 64, ``oc_bn`` one or two zmm, every ``reg_n`` whose tile fits the 32 zmm registers
    (with the weight vectors and the broadcast input). The tuning space of ``CONFIG_TYPES``.
    An AMX start: every tile height ``reg_n`` (2..16, at most the output width), the rest fixed."""
    if start.dot == TDPBF16PS:
        tiles = [Bf16DotConv2dConfig(AMX_K, AMX_N, r, TDPBF16PS) for r in range(2, min(AMX_ROWS, wl.out_width) + 1)]
        return [start] + [c for c in tiles if c != start]
    top = min(64, ceil_div(wl.in_per_group, GROUP) * GROUP)
    ics = sorted({b for b in (2, 4, 8, 16, 32, 64) if b <= top} | {top})
    ocs = [LANES, 2 * LANES] if wl.out_per_group > LANES else [LANES]
    out = [Bf16DotConv2dConfig(ic, oc, r) for ic in ics for oc in ocs
           for r in range(1, min(wl.out_width, 32) + 1) if r * (oc // LANES) <= 32 - 2 - oc // LANES]
    return [start] + [c for c in out if c != start]


CONFIG_TYPES = (ConfigType(Bf16DotConv2dConfig, config_space),)
_WHAT = "NCHWc direct conv (every conv with a channel reduction)"


def kernels() -> list[KernelDef]:
    """Native bf16 on ``vdpbf16ps``: at the avx512_vnni level (every AVX512-BF16 CPU has VNNI)
    and only where the target has avx512_bf16; elsewhere ``select`` falls back to the portable
    bf16 kernel (``schedules.derived.bf16_weights``). On AMX-BF16 tiles (``tdpbf16ps``), where
    the target has amx_bf16: convs of stride 1 (a tile of up to 16 pixels x 16 channels x 32
    input channels per op); strided convs get the ``vdpbf16ps`` configuration
    (``fallback_config``), hence avx512_bf16 too (every AMX-BF16 CPU has it). Without amx_bf16
    ``select`` walks down to the ``vdpbf16ps`` kernel."""
    vnni = KernelDef(KernelKey("conv2d", "bf16", "avx512_vnni"), compute, schedule, fallback_config,
                     pack_weight, input_shape, output_shape,
                     f"native bf16 on AVX512-BF16 vdpbf16ps (bf16 pairs, fp32 accumulation): {_WHAT}",
                     dot_order, requires=lambda f: f.avx512_bf16, float_reference_fn=float_reference)
    amx = KernelDef(KernelKey("conv2d", "bf16", "amx"), compute, schedule,
                    functools.partial(fallback_config, dot=TDPBF16PS), pack_weight, input_shape, output_shape,
                    "native bf16 on AMX-BF16 tdpbf16ps tiles (stride 1; strided convs: vdpbf16ps), fp32 "
                    f"accumulation: {_WHAT}",
                    dot_order, requires=lambda f: f.amx_bf16 and f.avx512_bf16,
                    float_reference_fn=float_reference)
    return [vnni, amx]
