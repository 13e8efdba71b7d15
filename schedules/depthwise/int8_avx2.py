"""W8A8 depthwise 3x3 and 5x5 conv on AVX2: the vertical taps interleaved in int16 pairs for
``vpmaddwd``, channels last.

AVX2 has no exact 4-way u8 x s8 dot product (``vpmaddubsw`` saturates its int16 pair sums: see
``conv2d.int8_dot``), so the widest exact product is ``vpmaddwd``: 16 int16 x int16 products
summed in pairs into 8 int32 lanes. The portable NHWC kernel (``int8_nhwc``) widens each tap to
an int32 lane and gets one product per lane from it (8 per instruction, 9 instructions per
pixel and 8 channels, each with its own widening). Here, per input column the tile reads, two
input rows are interleaved into int16 pairs (``punpcklbw`` + ``vpmovzxbw``: lane ``2j + r`` =
``x[row r][col][c + j]``), and one ``vpmaddwd`` with the weights of one kernel column (lane
``2j + r`` = ``w[c + j, r, rw]``) adds 2 taps for 8 channels. A column of three rows is one
pair and one row with a zero partner (weights ``(w2, 0)``): 6 ``vpmaddwd`` per output pixel and
8 channels instead of 9, and each column's widening is shared by the (up to 3) output columns
that read it. ``rows=2`` (stride 1): four input rows make two pairs shared by two output rows
(weights ``(w0, w1), (w2, 0)`` and ``(0, w0), (w1, w2)``). 5x5: five rows in three pairs (15
``vpmaddwd`` per pixel and 8 channels instead of 25), six for ``rows=2``.

Weights are packed as int16 (they are memory operands of ``vpmaddwd``: 12 weight vectors per block
do not fit AVX2's 16 registers beside the accumulators, and an int8 copy would need a sign
extension per use). The skeleton (tiles, borders, base pointers, epilogue) is ``columns.build``'s;
covered: ``columns.covers`` with channels a multiple of ``cb``, 3x3 or 5x5. Measured on an AMD EPYC Zen 3
(AVX2, 1 thread): MobileNetV2's 3x3 shapes 10-22 GMAC/s (the portable kernel's fallback 8-17), 5x5 at 14x14
22.6 against 11.8. Everything else takes the portable kernel's configurations (``depthwise.int8``),
which this kernel also builds (the template is part of the config).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tvm import te, tirx

from ..common import int8_epilogue
from ..kernel import KernelDef, KernelKey
from ..space import grid
from ..target_features import TargetFeatures
from ..workload import Conv2dWorkload
from . import columns, int8, int8_nhwc
from .columns import i32

__all__ = ["CONFIG_TYPES", "DepthwisePairConfig", "build", "candidates", "compute", "covers",
           "fallback_config", "kernels", "pack_weight"]

HALF = 8  # channels per vpmaddwd (int32 lanes of a ymm)
MAX_ACCUMULATORS = 10  # ymm accumulators per tile (AVX2 has 16: the rest hold the pairs)


@dataclass(frozen=True)
class DepthwisePairConfig:
    """``cb`` channels per block (8 or 16), ``tile`` output columns per register tile (divides
    the output width), ``rows`` output rows per tile (1, or 2 for stride 1), ``tile_outer``: the
    column tiles loop outside the channel blocks."""

    cb: int
    tile: int
    rows: int = 1
    tile_outer: bool = True

    def __post_init__(self) -> None:
        if self.cb not in (8, 16) or self.tile < 1 or self.rows not in (1, 2):
            raise ValueError(f"cb must be 8 or 16, tile >= 1 and rows 1 or 2, got {self}")


SIZES = (3, 5)  # kernel sizes (square)


def covers(wl: Conv2dWorkload, cb: int = HALF) -> bool:
    """Whether the pair template builds ``wl`` with ``cb`` channels per block."""
    return columns.covers(wl, cb, SIZES)


def _check(wl: Conv2dWorkload, cfg: DepthwisePairConfig) -> None:
    if not covers(wl, cfg.cb):
        raise ValueError(f"the AVX2 pair depthwise template does not build {wl} with {cfg}")
    if wl.out_width % cfg.tile:
        raise ValueError(f"{cfg}: tile must divide the output width ({wl.out_width})")
    if cfg.rows == 2 and wl.stride_h != 1:
        raise ValueError(f"{cfg}: two-row tiles need stride 1")
    if cfg.rows * cfg.tile * (cfg.cb // HALF) > MAX_ACCUMULATORS:
        raise ValueError(f"{cfg}: at most {MAX_ACCUMULATORS} accumulators per tile")


def fallback_config(wl: Conv2dWorkload, features: TargetFeatures):  # type: ignore[no-untyped-def]
    """Covered workloads: 8 channels per block, one output row, ``tile`` the largest divisor
    of the output width up to 8 (up to 10 where that is below 4). Measured on a Zen 3 (AVX2,
    1 thread, the 10 MobileNetV2 depthwise shapes): the best or within 7% of the best of 6-9
    configurations each (16-channel blocks and two-row tiles included). Others: the portable
    kernel's configuration."""
    if not covers(wl, HALF):
        return int8.fallback_config(wl, features)
    wo = wl.out_width
    tile = max(t for t in range(1, min(8, wo) + 1) if wo % t == 0)
    if tile < 4:
        tile = max(t for t in range(1, min(MAX_ACCUMULATORS, wo) + 1) if wo % t == 0)
    return DepthwisePairConfig(HALF, tile, 1, True)


def candidates(wl: Conv2dWorkload, features: TargetFeatures) -> list:
    """Every pair tile that fits (both blocks, one or two rows, both loop orders); then the
    portable NHWC kernel's candidates (the template is a knob too)."""

    def make(cb: int, tile: int, rows: int, tile_outer: bool) -> DepthwisePairConfig:
        cfg = DepthwisePairConfig(cb, tile, rows, tile_outer)
        _check(wl, cfg)
        return cfg

    own = (grid(make, cb=[8, 16], tile=range(1, MAX_ACCUMULATORS + 1), rows=[1, 2], tile_outer=[False, True])
           if covers(wl, HALF) else [])
    return own + int8_nhwc.candidates(wl, features)


def pairs(wl: Conv2dWorkload) -> int:
    """Row pairs per input column: ``rows - 1 + R`` rows (R odd, rows 1 or 2) in pairs."""
    return (wl.kernel_h + 1) // 2


def packed_weight_shape(wl: Conv2dWorkload, cfg: DepthwisePairConfig) -> tuple[int, ...]:
    return (wl.in_channels // cfg.cb, wl.kernel_h * cfg.rows, pairs(wl), 2 * cfg.cb)


def pack_weight(weight: np.ndarray, wl: Conv2dWorkload, cfg: DepthwisePairConfig) -> np.ndarray:
    """``[C, 1, R, R]`` int8 -> int16 ``[C/cb, R*rows, pairs, 2*cb]``: ``[b, R*k + rw, p]`` lane
    ``2*j + i`` = ``w[b*cb + j, 0, 2*p + i - k, rw]`` (0 where that row is outside the kernel):
    output row ``k`` of a tile reads input rows ``k .. k + R - 1`` of the pairs ``(2p, 2p + 1)``."""
    if weight.shape != wl.weight_shape:
        raise ValueError(f"weight shape {weight.shape} does not match workload {wl.weight_shape}")
    c, cb, r = wl.in_channels, cfg.cb, wl.kernel_h
    p = np.zeros((c // cb, cfg.rows, r, pairs(wl), cb, 2), np.int16)
    wr = weight.reshape(c // cb, cb, r, r).astype(np.int16)  # [block, j, row, rw]
    for k in range(cfg.rows):
        for pair in range(pairs(wl)):
            for i in range(2):
                row = 2 * pair + i - k
                if 0 <= row < r:
                    p[:, k, :, pair, :, i] = wr[:, :, row, :].transpose(0, 2, 1)
    return np.ascontiguousarray(p.reshape(packed_weight_shape(wl, cfg)))


def compute(wl: Conv2dWorkload, cfg: DepthwisePairConfig, weight: te.Tensor | None = None,
            data_dtype: str = "uint8") -> list[te.Tensor]:
    """What the pair kernel computes, as TE on its own weight layout (the tuner's task key
    hashes it; the kernel itself is built by ``build``)."""
    _check(wl, cfg)
    data = te.placeholder(wl.data_shape, data_dtype, name="data")
    if weight is None:
        weight = te.placeholder(packed_weight_shape(wl, cfg), "int16", name="weight")
    args, qp, epilogue, _ = int8_epilogue(wl.epilogue, wl.out_channels, wl.out_shape)
    rh = te.reduce_axis((0, wl.kernel_h), "rh")
    rw = te.reduce_axis((0, wl.kernel_w), "rw")

    def tap(n, y, x, c):  # type: ignore[no-untyped-def]
        h = y * wl.stride_h + rh - wl.pad_top
        w = x * wl.stride_w + rw - wl.pad_left
        inside = tirx.all(h >= 0, h < wl.height, w >= 0, w < wl.width)
        value = tirx.if_then_else(inside, data[n, h, w, c], qp[0].astype(data_dtype))
        # kernel row rh sits in pair rh // 2, lane 2 * j + rh % 2 of output row 0's weights
        return value.astype("int32") * weight[c // cfg.cb, rw, rh // 2, 2 * (c % cfg.cb) + rh % 2].astype("int32")

    conv = te.compute(wl.out_shape, lambda n, y, x, c: te.sum(tap(n, y, x, c), axis=[rh, rw]), name="conv")
    out = te.compute(wl.out_shape, lambda n, y, x, c: epilogue(conv[n, y, x, c], c, (n, y, x, c)), name="out")
    return [data, weight, *args, out]


class _PairProduct:
    """``columns.ColumnProduct``: a column's rows interleaved into int16 pairs, one
    ``vpmaddwd`` per (pair, 8 channels, output row, kernel column) that reads it."""

    def __init__(self, lanes: int, size: int) -> None:
        self.lanes = lanes
        self.halves = lanes // HALF
        self.size = size

    def start(self, emit: columns.Emit, weight: tirx.Buffer, cb: tirx.Var, rows: int):  # type: ignore[no-untyped-def]
        return weight, cb  # loaded where used: memory operands of vpmaddwd

    def init(self, emit: columns.Emit, bias: tirx.Expr) -> tuple:
        b = emit.bind("b", f"int32x{self.lanes}", bias)
        if self.halves == 1:
            return (b,)
        return tuple(emit.bind("b", "int32x8", tirx.Shuffle([b], [i32(h * HALF + j) for j in range(HALF)]))
                     for h in range(self.halves))

    def column(self, emit: columns.Emit, state, rows: list, uses: list, acc: dict) -> None:  # type: ignore[no-untyped-def]
        weight, cb = state
        L = self.lanes
        zero = tirx.Broadcast(tirx.IntImm("uint8", 0), L)
        npair = (self.size + 1) // 2
        rows = rows + [zero] * (2 * npair - len(rows))
        v = {}
        for p, (a, b) in enumerate(zip(rows[0::2], rows[1::2])):
            for h in range(self.halves):
                idx = [i32(i) for j in range(HALF) for i in (h * HALF + j, L + h * HALF + j)]
                v[p, h] = emit.bind("p", "int16x16", tirx.Cast("int16x16", tirx.Shuffle([a, b], idx)))
        for k, t, rw in uses:
            halves = list(acc[k, t])
            for h in range(self.halves):
                for p in range(npair):
                    w = tirx.BufferLoad(weight, [cb, i32(self.size * k + rw), i32(p), tirx.Ramp(i32(16 * h), i32(1), 16)])
                    halves[h] = emit.bind("acc", "int32x8", halves[h] + tirx.call_llvm_intrin(
                        "int32x8", "llvm.x86.avx2.pmadd.wd", v[p, h], w))
            acc[k, t] = tuple(halves)

    def finish(self, emit: columns.Emit, out: tirx.Buffer, pixels: list, rq: columns.Requant) -> None:
        """``columns.store_requantized``'s values with fewer instructions: only the upper clamp
        in float (before the conversion, which would wrap above 2^31), the lower one after
        the saturating packs, on bytes; four int32 x 8 chunks per ``vpackssdw`` x 2 +
        ``vpackuswb`` + ``vpmaxub`` + ``vpermd``. Equal: rounding is monotone and keeps the
        integer bounds, the packs clamp below at 0 <= lo and the upper bound holds already."""
        hi = tirx.Broadcast(rq.bound(3), HALF)
        zp = tirx.Broadcast(rq.out_zp, HALF)
        lo = tirx.Broadcast(tirx.Cast("uint8", tirx.BufferLoad(rq.qp, [i32(2)])), 32)
        chunks = [(off + HALF * h, h, value[h]) for off, value in pixels for h in range(self.halves)]
        for g in range(0, len(chunks), 4):
            group = chunks[g:g + 4]
            vals = []
            for _, h, v in group:
                f = tirx.Min(tirx.Cast("float32x8", v) * rq.scales(HALF * h, HALF), hi)
                vals.append(tirx.call_llvm_pure_intrin("int32x8", "llvm.lrint", f) + zp)
            vals += [vals[-1]] * (4 - len(vals))
            s0 = tirx.call_llvm_pure_intrin("int16x16", "llvm.x86.avx2.packssdw", vals[0], vals[1])
            s1 = tirx.call_llvm_pure_intrin("int16x16", "llvm.x86.avx2.packssdw", vals[2], vals[3])
            u = tirx.Max(tirx.call_llvm_pure_intrin("uint8x32", "llvm.x86.avx2.packuswb", s0, s1), lo)
            # bytes 0-15: chunks' lanes 0-3, bytes 16-31: lanes 4-7 -> chunk i at bytes 8i..8i+7
            order = [i32(b + 16 * half + 4 * i) for i in range(4) for half in range(2) for b in range(4)]
            packed = emit.bind("u", "uint8x32", tirx.Shuffle([u], order))
            i = 0
            while i < len(group):
                n = 2 if i + 1 < len(group) and group[i + 1][0] == group[i][0] + HALF else 1
                lanes = [i32(8 * i + b) for b in range(8 * n)]
                emit.stmts.append(tirx.BufferStore(out, tirx.Shuffle([packed], lanes),
                                                   [tirx.Ramp(i32(group[i][0]), i32(1), 8 * n)]))
                i += n


def build(wl: Conv2dWorkload, cfg: DepthwisePairConfig) -> tirx.PrimFunc:
    """The kernel's PrimFunc (``columns.build``'s arguments; weight ``pack_weight``'s int16)."""
    _check(wl, cfg)
    return columns.build(wl, cfg.tile, cfg.rows, cfg.tile_outer, _PairProduct(cfg.cb, wl.kernel_h),
                         packed_weight_shape(wl, cfg), "int16")


CONFIG_TYPES, _KERNEL = columns.column_kernel(
    KernelKey("depthwise_conv2d", "w8a8", "avx2"), DepthwisePairConfig, compute, pack_weight, build, candidates,
    fallback_config,
    "u8 x s8 depthwise 3x3 / 5x5 on vpmaddwd (vertical taps in int16 pairs), float32 "
    "requantization; the portable kernel for other shapes / epilogues",
    lambda f: f.avx2)


def kernels() -> list[KernelDef]:
    return [_KERNEL]
