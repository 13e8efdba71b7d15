"""W8A8 conv2d on the dot-product instructions with a two-dimensional register tile.

The ``int8_dot`` direct conv (same packed weights ``[G*OCB, ICB, R, S, ic_bn/group, oc_bn,
group]``, input repack, instruction, epilogue and numpy reference), but each register tile is
``rows`` output rows x ``reg_n`` pixels x ``oc_bn`` channels of int32 accumulators, so each
weight vector loaded for a step serves ``rows * reg_n`` pixels instead of ``reg_n``. Where the
output is narrow (ResNet-50's 7x7 maps), ``int8_dot``'s one-row tile holds at most
``out_width`` pixels and leaves most of AVX-512's 32 vector registers idle; this template is a
tuning candidate of the W8A8 conv kernels beside ``int8_dot`` (``int8_dispatch``), and their
fallback for VNNI kxk convs over wide maps and AVX2 ``vpmaddubsw`` convs on 14-pixel maps
(``int8_dispatch.fallback_config``).

Knobs (``DotRowsConv2dConfig``): ``int8_dot``'s ``ic_bn``, ``oc_bn``, ``reg_n`` and ``dot``, and
``rows`` (a divisor of the output height, at least 2). On AMX (``dot`` ``tvmq_amx``) the block
is ``rows`` x ``oc_bn/16`` accumulator tiles of ``reg_n`` pixels (``int8_dot.schedule_amx_tiles``,
``intrinsics.amx_intrinsics``), as many as the eight tile registers hold with their A and B tiles;
AMX convs take two rows of two tiles where the output height is even (``int8_dispatch._amx_block``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tvm import te

from ..common import split_tile
from ..intrinsics import AMX_16X64, AMX_TILES, DOT_PRODUCTS, DotProduct, amx_intrinsics, amx_tile_plan
from ..space import grid
from ..target_features import TargetFeatures
from ..workload import Conv2dWorkload
from . import int8_dot
from .int8_dot import DotConv2dConfig, input_shape, output_shape

__all__ = ["DotRowsConv2dConfig", "candidates", "compute", "input_shape", "output_shape", "pack_weight",
           "schedule"]


@dataclass(frozen=True)
class DotRowsConv2dConfig:
    """``int8_dot``'s blocking with a tile of ``rows`` output rows."""

    ic_bn: int
    oc_bn: int
    reg_n: int
    rows: int
    dot: str

    def __post_init__(self) -> None:
        DotConv2dConfig(self.ic_bn, self.oc_bn, self.reg_n, self.dot)  # the same checks
        if self.rows < 2:
            raise ValueError(f"rows must be >= 2 (one row is int8_dot's tile), got {self.rows}")
        if DOT_PRODUCTS[self.dot] is AMX_16X64:
            amx_tile_plan(self.rows, self.oc_bn // 16)  # the block fits the tile registers

    @property
    def dot_product(self) -> DotProduct:
        return DOT_PRODUCTS[self.dot]


def _check(wl: Conv2dWorkload, cfg: DotRowsConv2dConfig) -> None:
    if wl.out_height % cfg.rows and cfg.dot_product is not AMX_16X64:  # (AMX pads: ``int8_dot.padded_height``)
        raise ValueError(f"rows={cfg.rows} does not divide the output height {wl.out_height}")


def compute(wl: Conv2dWorkload, cfg: DotRowsConv2dConfig, weight: te.Tensor | None = None,
            data_dtype: str = "uint8") -> list[te.Tensor]:
    """``int8_dot.compute`` (the tile is a matter of schedule)."""
    _check(wl, cfg)
    return int8_dot.compute(wl, cfg, weight, data_dtype)  # type: ignore[arg-type]


def pack_weight(weight: np.ndarray, wl: Conv2dWorkload, cfg: DotRowsConv2dConfig) -> np.ndarray:
    return int8_dot.pack_weight(weight, wl, cfg)  # type: ignore[arg-type]


def schedule(sch, wl: Conv2dWorkload, cfg: DotRowsConv2dConfig, sample: bool = False) -> None:  # type: ignore[no-untyped-def]
    """Register tile ``rows`` x ``reg_n`` x ``oc_bn`` accumulated over ``(ICB, R, S,
    ic_bn/group)``, the innermost ``lanes x group`` step tensorized; epilogue per tile, tiles
    parallel over (batch, channel blocks, row blocks), repack parallel by rows."""
    _check(wl, cfg)
    d = cfg.dot_product
    if d is AMX_16X64:
        int8_dot.schedule_amx_tiles(sch, wl, cfg.reg_n, amx_intrinsics(cfg.reg_n, cfg.rows, cfg.oc_bn // 16),
                                    rows=cfg.rows, oc_bn=cfg.oc_bn)
        return
    conv_b = sch.get_sblock("conv")
    out_b = sch.get_sblock("out")
    n, gi, b, y, x, ko, rc, rh, rw, rq, rg = sch.get_loops(conv_b)
    yo, yi = sch.split(y, [None, cfg.rows])
    xo, xi = split_tile(sch, x, cfg.reg_n, max_inner=cfg.reg_n, sample=sample)
    ko_o, ko_i = sch.split(ko, [None, d.lanes])
    sch.reorder(n, gi, b, yo, xo, rc, rh, rw, rq, yi, xi, ko_o, ko_i, rg)
    sch.parallel(sch.fuse(n, gi, b, yo))
    sch.reverse_compute_at(out_b, xo, preserve_unit_loops=True)
    init = sch.decompose_reduction(conv_b, rc)
    sch.vectorize(sch.get_loops(init)[-1])
    sch.unroll(yi)
    sch.unroll(xi)
    sch.unroll(ko_o)
    sch.tensorize(ko_i, d.name)
    int8_dot.finish_dot_schedule(sch, wl, cfg, init, out_b, xo)


def candidates(wl: Conv2dWorkload, features: TargetFeatures, dot: str) -> list[DotRowsConv2dConfig]:
    """The tuning candidates on instruction ``dot``: ``int8_dot``'s channel blocks, every row
    count from 2 that divides the output height, and every ``reg_n`` whose ``rows * reg_n`` tile
    fits the vector registers (none where the output has one row); on AMX blocks of 2 or 3 rows
    (any height: ``int8_dot.padded_height``) of one or two tiles of 2..16 pixels."""
    d = DOT_PRODUCTS[dot]
    rows = [r for r in range(2, wl.out_height + 1) if wl.out_height % r == 0]
    if d is AMX_16X64:  # blocks of tiles that fit the tile registers, each tile 2..16 pixels

        def block(oc_bn: int, rows: int, reg_n: int) -> DotRowsConv2dConfig:
            return DotRowsConv2dConfig(64, oc_bn, reg_n, rows, dot)

        return grid(block, oc_bn=int8_dot.AMX_OC_BN, rows=range(2, min(wl.out_height, AMX_TILES // 2 - 1) + 1),
                    reg_n=range(2, min(16, wl.out_width) + 1))
    regs = features.vector_registers
    oc = [d.lanes, 2 * d.lanes] if wl.out_per_group > d.lanes else [d.lanes]

    def make(ic_bn: int, oc_bn: int, rows: int, reg_n: int) -> DotRowsConv2dConfig:
        if rows * reg_n * (oc_bn // d.lanes) > regs - 3:
            raise ValueError("tile does not fit the registers")
        return DotRowsConv2dConfig(ic_bn, oc_bn, reg_n, rows, dot)

    rows = [r for r in rows if r <= regs]
    return grid(make, ic_bn=int8_dot.channel_blocks(wl.in_per_group, d.group, 64), oc_bn=oc, rows=rows,
                reg_n=range(1, min(wl.out_width, regs) + 1))
