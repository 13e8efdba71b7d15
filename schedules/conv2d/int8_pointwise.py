"""W8A8 pointwise conv (1x1, stride 1, no padding, ungrouped) as an integer GEMM on NCHW,
vectorised along pixels, on the CPU's dot-product instructions.

``acc[n, k, p] = sum_c int32(weight[k, c]) * int32(data[n, c, p])`` with ``p`` the flattened
pixel index. The input is repacked once to ``[N, C/group, P', group]`` (``group`` channels of a
pixel interleaved, the pixels padded to whole tiles) so that one instruction
(``schedules.intrinsics`` pixel forms) multiplies ``lanes`` pixels x ``group`` channels by
``group`` broadcast weights; weights are packed ``[K/k_tile, C/group, k_tile, group]``. The
register tile is ``k_tile`` channels x ``p_tile`` pixels of int32; the requantizing epilogue
(``common.int8_epilogue``) runs on whole pixel vectors with the channel's multiplier and shift
broadcast, and stores contiguous rows of the NCHW output: unlike the NCHWc direct kernel, whose
tile is channel-major and whose epilogue scatters bytes across channel planes, which dominated
its run time on expansion layers (16 -> 96 channels at 112x112: 1.8 ms, most of it epilogue).

Knobs (``PointwiseDotConfig``): ``k_tile``, ``p_tile`` (a multiple of ``lanes``); ``dot`` names
the instruction and is fixed by the kernel's ISA.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tvm import te, tirx

from ..common import ceil_div, int8_epilogue, int8_operands, keep_tile_in_registers, padded_width, split_tile
from ..intrinsics import PIXEL_DOT_PRODUCTS, DotProduct
from ..space import grid
from ..target_features import TargetFeatures
from ..workload import Conv2dWorkload
from .fp32_pointwise import applies, input_shape, output_shape

__all__ = ["PointwiseDotConfig", "applies", "candidates", "compute", "fallback_config", "input_shape",
           "output_shape", "pack_weight", "schedule"]


@dataclass(frozen=True)
class PointwiseDotConfig:
    k_tile: int  # output channels per register tile
    p_tile: int  # pixels per register tile (a multiple of the instruction's lanes)
    dot: str  # a ``schedules.intrinsics.PIXEL_DOT_PRODUCTS`` name

    def __post_init__(self) -> None:
        if self.dot not in PIXEL_DOT_PRODUCTS:
            raise ValueError(f"unknown pixel dot product {self.dot!r}; known: "
                             f"{', '.join(PIXEL_DOT_PRODUCTS)}")
        lanes = PIXEL_DOT_PRODUCTS[self.dot].lanes
        if self.k_tile < 1 or self.p_tile < 1 or self.p_tile % lanes:
            raise ValueError(f"k_tile >= 1 and p_tile a positive multiple of {lanes} required, "
                             f"got {self.k_tile}, {self.p_tile}")

    @property
    def dot_product(self) -> DotProduct:
        return PIXEL_DOT_PRODUCTS[self.dot]


def fallback_config(wl: Conv2dWorkload, features: TargetFeatures, dot: str) -> PointwiseDotConfig:
    """Two pixel vectors unless that mostly pads a small image; channels fill the registers
    that are left (the activation vectors and one broadcast weight pair)."""
    lanes = PIXEL_DOT_PRODUCTS[dot].lanes
    pixels = wl.height * wl.width
    accumulators = 24 if features.vector_registers >= 32 else 12
    vecs = 2 if padded_width(pixels, 2 * lanes) <= 1.15 * pixels or pixels >= 32 * lanes else 1
    return PointwiseDotConfig(k_tile=accumulators // vecs, p_tile=vecs * lanes, dot=dot)


def packed_weight_shape(wl: Conv2dWorkload, cfg: PointwiseDotConfig) -> tuple[int, ...]:
    grp = cfg.dot_product.group
    return (ceil_div(wl.out_channels, cfg.k_tile), ceil_div(wl.in_channels, grp), cfg.k_tile, grp)


def pack_weight(weight: np.ndarray, wl: Conv2dWorkload, cfg: PointwiseDotConfig) -> np.ndarray:
    """OIHW int8 -> ``[K/k_tile, C/group, k_tile, group]``, zero padded in both channel axes."""
    if weight.shape != wl.weight_shape:
        raise ValueError(f"weight shape {weight.shape} does not match workload {wl.weight_shape}")
    kb, cq, kt, grp = packed_weight_shape(wl, cfg)
    padded = np.zeros((kb * kt, cq * grp), dtype=weight.dtype)
    padded[: wl.out_channels, : wl.in_channels] = weight[:, :, 0, 0]
    return np.ascontiguousarray(padded.reshape(kb, kt, cq, grp).transpose(0, 2, 1, 3))


def compute(wl: Conv2dWorkload, cfg: PointwiseDotConfig,
            weight: te.Tensor | None = None,
            data_dtype: str = "uint8") -> list[te.Tensor]:
    """``weight``, ``data_dtype``: as ``common.int8_operands``."""
    n_, c_, p_ = input_shape(wl)
    kb, cq, kt, grp = packed_weight_shape(wl, cfg)
    pp = padded_width(p_, cfg.p_tile)
    data, weight = int8_operands((n_, c_, p_), (kb, cq, kt, grp), weight, data_dtype)
    args, qp, epilogue, _ = int8_epilogue(wl.epilogue, wl.out_channels, output_shape(wl),
                                          bias_in_acc=True)
    bias = args[0]

    def pack(n, q, p, j):  # type: ignore[no-untyped-def]
        c = q * grp + j
        inside = p < p_ if pp != p_ else None
        if c_ % grp:
            inside = c < c_ if inside is None else tirx.all(inside, c < c_)
        # padded channels meet zero weights and padded pixels are dropped: any value is exact
        return data[n, c, p] if inside is None else tirx.if_then_else(
            inside, data[n, c, p], tirx.const(0, data_dtype))

    xpack = te.compute((n_, cq, pp, grp), pack, name="data_pack")
    rq = te.reduce_axis((0, cq), "rq")
    rg = te.reduce_axis((0, grp), "rg")
    acc = te.compute((n_, kb, kt, pp), lambda n, b, ki, p: te.sum(
        xpack[n, rq, p, rg].astype("int32") * weight[b, rq, ki, rg].astype("int32"), axis=[rq, rg]),
        name="conv")
    # the bias added in a stage of its own: the requantization then multiplies a loaded int32
    # (see ``int8_epilogue(bias_in_acc=)``)
    acc_b = te.compute((n_, wl.out_channels, p_), lambda n, k, p: acc[n, k // kt, k % kt, p] + bias[k],
                       name="conv_bias")
    out = te.compute(output_shape(wl), lambda n, k, p: epilogue(acc_b[n, k, p], k, (n, k, p)),
                     name="out")
    return [data, weight, *args, out]


def schedule(sch, wl: Conv2dWorkload, cfg: PointwiseDotConfig, sample: bool = False) -> None:  # type: ignore[no-untyped-def]
    """Tile ``k_tile`` x ``p_tile`` accumulated over the channel groups, the innermost
    ``lanes x group`` step tensorized; the epilogue per tile on pixel vectors."""
    d = cfg.dot_product
    conv_b = sch.get_sblock("conv")
    out_b = sch.get_sblock("out")
    n, b, ki, p, rq, rg = sch.get_loops(conv_b)
    pvecs, pl = sch.split(p, [None, d.lanes])
    po, pv = split_tile(sch, pvecs, cfg.p_tile // d.lanes, max_inner=4, sample=sample)
    sch.reorder(n, b, po, rq, ki, pv, pl, rg)
    sch.parallel(sch.fuse(n, b, po))
    outer = sch.get_loops(conv_b)[0]
    bias_b = sch.get_sblock("conv_bias")
    sch.reverse_compute_at(bias_b, outer, preserve_unit_loops=True)
    sch.reverse_compute_at(out_b, outer, preserve_unit_loops=True)
    init = sch.decompose_reduction(conv_b, rq)
    sch.vectorize(sch.get_loops(init)[-1])
    sch.unroll(ki)
    sch.unroll(pv)
    sch.tensorize(pl, d.name)
    if wl.out_height * wl.out_width % cfg.p_tile == 0:
        for block in (bias_b, out_b):
            _, ov = sch.split(sch.get_loops(block)[-1], [None, d.lanes])
            sch.vectorize(ov)
    keep_tile_in_registers(sch, init, out_b, outer)
    keep_tile_in_registers(sch, init, bias_b, outer)
    pack_b = sch.get_sblock("data_pack")
    pn, pc, pp, pj = sch.get_loops(pack_b)
    sch.parallel(sch.fuse(pn, pc))
    sch.unroll(pj)


def candidates(wl: Conv2dWorkload, features: TargetFeatures, dot: str) -> list[PointwiseDotConfig]:
    """The tuning candidates on pixel instruction ``dot``: every register tile of ``k_tile``
    channels x 1-4 vectors of pixels that fits the vector registers."""
    lanes = PIXEL_DOT_PRODUCTS[dot].lanes
    regs = features.vector_registers

    def make(k_tile: int, vecs: int) -> PointwiseDotConfig:
        if k_tile * vecs > regs + (8 if regs > 16 else -2):
            raise ValueError("tile does not fit the registers")
        return PointwiseDotConfig(k_tile=k_tile, p_tile=vecs * lanes, dot=dot)

    return grid(make, k_tile=(2, 3, 4, 6, 8, 12, 16, 24), vecs=(1, 2, 3, 4))
