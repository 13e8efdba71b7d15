"""W8A8 depthwise 3x3 conv on AVX512-VNNI: the vertical taps packed in uint8 quads for
``vpdpbusd``, channels last.

Per tile (``rows`` output rows x 16 channels x ``tile`` output columns): for every input column
the tile reads, the input rows of that column (16 channels each; the input zero point where
padded) are interleaved into one "column quad" zmm, byte ``4*c + r`` = ``x[row r][col][c]``.
One ``vpdpbusd`` of the quad with the weights of one kernel column (byte ``4*c + r`` =
``w[c, r, rw]``, byte 3 zero) adds 3 taps for 16 channels, and each quad feeds the (up to 3)
output columns that read its column: an output pixel costs 3 ``vpdpbusd`` per 16 channels
(the portable NHWC kernel, ``int8_nhwc``: 9 widenings + 9 ``vpdpwssd``). ``rows=2`` (stride 1):
the quad holds four input rows, shared by two output rows (weights ``(w0, w1, w2, 0)`` and
``(0, w0, w1, w2)``). The quad is one TIR ``Shuffle`` (LLVM: 16-byte loads, ``vinserti32x4``,
``vpermt2b`` where the CPU has VBMI). The accumulators start at the bias; the epilogue is the
float32 requantization of ``common.requantize_float_expr`` (no residual).

The TIR is built by ``columns.build`` (straight-line tiles, specialised borders, base
pointers: see there); this module adds the quad product.

Covered (``covers``): ``columns.covers`` with channels a multiple of 16. Everything else takes the portable kernel's configurations
(``depthwise.int8``), which this kernel also builds (the template is part of the config).

Measured (Zen 4, 1 thread, the 10 MobileNetV2 depthwise shapes): 50-64 GMAC/s against 31-37
for ``int8_nhwc``'s best configuration, bit-exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tvm import te, tirx

from ..common import int8_epilogue, int8_operands
from ..kernel import KernelDef, KernelKey
from ..space import grid
from ..target_features import TargetFeatures
from ..workload import Conv2dWorkload
from . import columns, int8, int8_nhwc
from .columns import i32

__all__ = ["CONFIG_TYPES", "DepthwiseQuadConfig", "build", "candidates", "compute", "covers",
           "fallback_config", "kernels", "pack_weight"]

LANES = 16  # channels per vector (zmm of int32 accumulators)
MAX_TILE = 14


@dataclass(frozen=True)
class DepthwiseQuadConfig:
    """``tile`` output columns per register tile (divides the output width), ``rows`` output
    rows per tile (1, or 2 for stride 1: four-row quads), ``tile_outer``: the column tiles loop
    outside the channel blocks (each tile then reads contiguous input rows)."""

    tile: int
    rows: int = 1
    tile_outer: bool = True

    def __post_init__(self) -> None:
        if self.tile < 1 or self.rows not in (1, 2):
            raise ValueError(f"tile must be >= 1 and rows 1 or 2, got {self}")


def covers(wl: Conv2dWorkload) -> bool:
    """Whether the quad template builds ``wl`` (see the module docstring)."""
    return columns.covers(wl, LANES)


def _check(wl: Conv2dWorkload, cfg: DepthwiseQuadConfig) -> None:
    if not covers(wl):
        raise ValueError(f"the VNNI quad depthwise template does not build {wl}")
    if wl.out_width % cfg.tile or cfg.tile > MAX_TILE:
        raise ValueError(f"{cfg}: tile must divide the output width ({wl.out_width}) and be <= {MAX_TILE}")
    if cfg.rows == 2 and wl.stride_h != 1:
        raise ValueError(f"{cfg}: two-row tiles need stride 1")
    if cfg.rows * cfg.tile > 16:
        raise ValueError(f"{cfg}: at most 16 accumulators per tile")


def fallback_config(wl: Conv2dWorkload, features: TargetFeatures):  # type: ignore[no-untyped-def]
    """Covered workloads: ``tile`` the largest divisor of the output width up to 8 (up to 14
    where that is below 4), two-row tiles for stride 1 where the output has 28 rows or more
    (the probe: +1-3% there, -1% at 14x14), column tiles outside the channel blocks (up to +10%
    where the input exceeds L2: 112x112 s2). Others: the portable kernel's configuration."""
    if not covers(wl):
        return int8.fallback_config(wl, features)
    wo = wl.out_width
    tile = max(t for t in range(1, min(8, wo) + 1) if wo % t == 0)
    if tile < 4:
        tile = max(t for t in range(1, min(MAX_TILE, wo) + 1) if wo % t == 0)
    rows = 2 if wl.stride_h == 1 and wl.out_height >= 28 and tile <= 8 else 1
    return DepthwiseQuadConfig(tile, rows, True)


def candidates(wl: Conv2dWorkload, features: TargetFeatures) -> list:
    """Every quad tile that divides the output width (1..14), one or two rows, both loop orders;
    then the portable NHWC kernel's candidates (the template is a knob too)."""

    def make(tile: int, rows: int, tile_outer: bool) -> DepthwiseQuadConfig:
        cfg = DepthwiseQuadConfig(tile, rows, tile_outer)
        _check(wl, cfg)
        return cfg

    quads = grid(make, tile=range(1, MAX_TILE + 1), rows=[1, 2], tile_outer=[False, True]) if covers(wl) else []
    return quads + int8_nhwc.candidates(wl, features)


def packed_weight_shape(wl: Conv2dWorkload, cfg: DepthwiseQuadConfig) -> tuple[int, ...]:
    return (wl.in_channels // LANES, 3 * cfg.rows, 4 * LANES)


def pack_weight(weight: np.ndarray, wl: Conv2dWorkload, cfg: DepthwiseQuadConfig) -> np.ndarray:
    """``[C, 1, 3, 3]`` int8 -> ``[C/16, 3*rows, 64]``: ``[:, rw]`` byte ``4*c + r`` =
    ``w[c, 0, r, rw]`` (byte 3 zero); ``rows=2`` adds ``[:, 3 + rw]`` byte ``4*c + 1 + r`` =
    ``w[c, 0, r, rw]`` (byte 0 zero)."""
    if weight.shape != wl.weight_shape:
        raise ValueError(f"weight shape {weight.shape} does not match workload {wl.weight_shape}")
    c = wl.in_channels
    p = np.zeros((c // LANES, 3 * cfg.rows, LANES, 4), np.int8)
    wr = weight.reshape(c // LANES, LANES, 3, 3).transpose(0, 3, 1, 2)  # [cb, rw, lane, r]
    p[:, 0:3, :, 0:3] = wr
    if cfg.rows == 2:
        p[:, 3:6, :, 1:4] = wr
    return np.ascontiguousarray(p.reshape(packed_weight_shape(wl, cfg)))


def compute(wl: Conv2dWorkload, cfg: DepthwiseQuadConfig, weight: te.Tensor | None = None,
            data_dtype: str = "uint8") -> list[te.Tensor]:
    """What the quad kernel computes, as TE on its own weight layout (the tuner's task key
    hashes it; the kernel itself is built by ``build``)."""
    _check(wl, cfg)
    data, weight = int8_operands(wl.data_shape, packed_weight_shape(wl, cfg), weight, data_dtype)
    args, qp, epilogue, _ = int8_epilogue(wl.epilogue, wl.out_channels, wl.out_shape)
    rh = te.reduce_axis((0, 3), "rh")
    rw = te.reduce_axis((0, 3), "rw")

    def tap(n, y, x, c):  # type: ignore[no-untyped-def]
        h = y * wl.stride_h + rh - wl.pad_top
        w = x * wl.stride_w + rw - wl.pad_left
        inside = tirx.all(h >= 0, h < wl.height, w >= 0, w < wl.width)
        value = tirx.if_then_else(inside, data[n, h, w, c], qp[0].astype(data_dtype))
        return value.astype("int32") * weight[c // LANES, rw, 4 * (c % LANES) + rh].astype("int32")

    conv = te.compute(wl.out_shape, lambda n, y, x, c: te.sum(tap(n, y, x, c), axis=[rh, rw]), name="conv")
    out = te.compute(wl.out_shape, lambda n, y, x, c: epilogue(conv[n, y, x, c], c, (n, y, x, c)), name="out")
    return [data, weight, *args, out]


class _QuadProduct:
    """``columns.ColumnProduct``: the input rows of a column interleaved into one uint8 quad,
    one ``vpdpbusd`` per (output row, kernel column) that reads it."""

    lanes = LANES

    def start(self, emit: columns.Emit, weight: tirx.Buffer, cb: tirx.Var, rows: int) -> dict:
        return {(k, rw): emit.bind("w", "int8x64", tirx.BufferLoad(
            weight, [cb, i32(3 * k + rw), tirx.Ramp(i32(0), i32(1), 4 * LANES)]))
            for k in range(rows) for rw in range(3)}

    def init(self, emit: columns.Emit, bias: tirx.Expr) -> tirx.Var:
        return emit.bind("b", "int32x16", bias)

    def column(self, emit: columns.Emit, wv, rows: list, uses: list, acc: dict) -> None:  # type: ignore[no-untyped-def]
        zero16 = tirx.Broadcast(tirx.IntImm("uint8", 0), LANES)
        four = len(rows) == 4
        idx = []
        for lane in range(LANES):
            idx += [i32(lane), i32(16 + lane), i32(64 + lane), i32((80 if four else 64) + lane)]
        q = emit.bind("q", "uint8x64", tirx.Shuffle(
            [rows[0], rows[1], zero16, zero16, rows[2], rows[3] if four else zero16, zero16, zero16], idx))
        for k, t, rw in uses:
            acc[k, t] = emit.bind("acc", "int32x16", tirx.call_llvm_intrin(
                "int32x16", "llvm.x86.avx512.vpdpbusd.512", acc[k, t], q, wv[k, rw]))

    def finish(self, emit: columns.Emit, out: tirx.Buffer, pixels: list, rq: columns.Requant) -> None:
        columns.store_requantized(emit, out, pixels, rq, LANES)


def build(wl: Conv2dWorkload, cfg: DepthwiseQuadConfig) -> tirx.PrimFunc:
    """The kernel's PrimFunc (``columns.build``'s arguments; weight ``pack_weight``'s int8)."""
    _check(wl, cfg)
    return columns.build(wl, cfg.tile, cfg.rows, cfg.tile_outer, _QuadProduct(),
                         packed_weight_shape(wl, cfg), "int8")


CONFIG_TYPES, _KERNEL = columns.column_kernel(
    KernelKey("depthwise_conv2d", "w8a8", "avx512_vnni"), DepthwiseQuadConfig, compute, pack_weight, build, candidates,
    fallback_config,
    "u8 x s8 depthwise 3x3 on vpdpbusd (vertical taps in u8 quads), float32 "
    "requantization; the portable kernel for other shapes / epilogues",
    lambda f: f.avx512_vnni)


def kernels() -> list[KernelDef]:
    return [_KERNEL]
