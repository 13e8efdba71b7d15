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

The TIR is built directly (no TE compute / schedule): straight-line code per tile, generated
here, the border tiles (first / last row group, first / last column tile) statically
specialised so that the interior has no tests. Every tile addresses its input and output
through a base pointer (a ``DeclBuffer`` over ``address_of``), every load / store is base +
constant (with ``data[0, h, w, c]`` indices LLVM spilled ~40 offsets per tile: -35%). The base
offsets are ``Bind`` variables computed from other ``Bind`` variables, so that no expression
inside a ``DeclBuffer`` is shared with later statements: TVM 0.27's TIR CSE
(``tirx.CommonSubexprElim``) hoists such a shared expression (``cb * 16`` in the address and in
the bias / scale loads) into a ``Bind`` it places *after* the ``DeclBuffer``s it also rewrote
("variable cse_v2 has been used before definition"). The ``vpdpbusd`` calls are
``call_llvm_intrin`` (not pure): TIR's simplifier otherwise inlines each accumulator's chain
into its users (the expression size grows with the chain); LLVM sees the same intrinsic.

Covered (``covers``): NHWC, batch 1, depthwise multiplier 1, channels a multiple of 16, 3x3,
stride 1 or 2 (both axes), dilation 1, every padding 0 or 1, float32 requantization to uint8
without a residual. Everything else takes the portable kernel's configurations
(``depthwise.int8``), which this kernel also builds (the template is part of the config).

Measured (Zen 4, 1 thread, the 10 MobileNetV2 depthwise shapes): 50-64 GMAC/s against 31-37
for ``int8_nhwc``'s best configuration, bit-exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import te, tirx

from ..common import TemplateDispatch, int8_epilogue, int8_operands
from ..kernel import KernelDef, KernelKey
from ..space import ConfigType, grid
from ..target_features import TargetFeatures
from ..workload import Conv2dWorkload
from . import int8, int8_nhwc

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
    ep = wl.epilogue
    return (wl.nhwc and wl.is_depthwise and wl.batch == 1 and wl.in_channels == wl.out_channels
            and wl.in_channels % LANES == 0 and (wl.kernel_h, wl.kernel_w) == (3, 3)
            and wl.stride_h == wl.stride_w and wl.stride_h in (1, 2)
            and wl.dilation_h == wl.dilation_w == 1
            and all(p in (0, 1) for p in (wl.pad_top, wl.pad_left, wl.pad_bottom, wl.pad_right))
            and ep.requant == "float" and not ep.residual and not ep.out_float and not ep.out_int16)


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


def schedule(sch, wl: Conv2dWorkload, cfg: DepthwiseQuadConfig, sample: bool = False) -> None:  # type: ignore[no-untyped-def]
    raise TypeError(f"{cfg} is built directly in TIR (int8_vnni.build), not scheduled from TE")


def _i32(v: int) -> tirx.IntImm:
    return tirx.IntImm("int32", v)


def build(wl: Conv2dWorkload, cfg: DepthwiseQuadConfig) -> tirx.PrimFunc:
    """The kernel's PrimFunc. Arguments: data ``[1, H, W, C]`` u8, weight (``pack_weight``),
    bias s32[C], scale f32[C], qparams s32[4] ``(x_zp, out_zp, lo, hi)``, out ``[1, Ho, Wo, C]`` u8."""
    _check(wl, cfg)
    H, W, C, s = wl.height, wl.width, wl.in_channels, wl.stride_h
    pt, pl = wl.pad_top, wl.pad_left
    Ho, Wo, T, ro = wl.out_height, wl.out_width, cfg.tile, cfg.rows
    ntile = Wo // T
    data = tirx.decl_buffer(wl.data_shape, "uint8", "data")
    weight = tirx.decl_buffer(packed_weight_shape(wl, cfg), "int8", "weight")
    bias = tirx.decl_buffer((C,), "int32", "bias")
    scale = tirx.decl_buffer((C,), "float32", "scale")
    qp = tirx.decl_buffer((4,), "int32", "qparams")
    out = tirx.decl_buffer(wl.out_shape, "uint8", "out")
    # flat views: a tile's base offset is one Bind variable (see the module docstring: CSE)
    ptr = lambda n: tirx.Var(n, tvm.ir.PointerType(tvm.ir.PrimType("uint8")))  # noqa: E731
    dflat = tirx.decl_buffer((H * W * C,), "uint8", "data_flat", data=ptr("data_flat_p"))
    oflat = tirx.decl_buffer((Ho * Wo * C,), "uint8", "out_flat", data=ptr("out_flat_p"))
    yv, cb, xo = tirx.Var("y", "int32"), tirx.Var("cb", "int32"), tirx.Var("xo", "int32")
    counter = [0]

    def fresh(name: str, dtype: str) -> tirx.Var:
        counter[0] += 1
        return tirx.Var(f"{name}{counter[0]}", tvm.ir.PrimType(dtype))

    zpv = tirx.Broadcast(tirx.Cast("uint8", tirx.BufferLoad(qp, [_i32(0)])), LANES)
    zero16 = tirx.Broadcast(tirx.IntImm("uint8", 0), LANES)

    def row_inside(y0: int | None, r: int) -> bool:
        """Input row ``r`` of a tile at output row ``y0`` (None: an interior group) is inside."""
        return y0 is None or 0 <= y0 * s - pt + r < H

    def col_inside(x0: int | None, col: int) -> bool:
        return x0 is None or 0 <= x0 * T * s - pl + col < W

    def tile(y0: int | None, x0: int | None, nro: int) -> tirx.Stmt:
        """``nro`` output rows from ``y0``, columns of tile ``x0``; a None coordinate is the
        loop variable's (an interior tile: every row / column it reads is inside)."""
        ye = yv * ro if y0 is None else _i32(y0)
        xe = xo if x0 is None else _i32(x0)
        stmts: list = []
        c0 = fresh("c0_", "int32")
        stmts.append(tirx.Bind(c0, cb * LANES))
        wv = {}
        for k in range(nro):
            for rw in range(3):
                v = fresh("w", "int8x64")
                stmts.append(tirx.Bind(v, tirx.BufferLoad(
                    weight, [cb, _i32(3 * k + rw), tirx.Ramp(_i32(0), _i32(1), 4 * LANES)])))
                wv[k, rw] = v
        xoff, ooff = fresh("xoff", "int32"), fresh("ooff", "int32")
        stmts.append(tirx.Bind(xoff, (ye * (s * W) + xe * (T * s)) * C + c0))
        stmts.append(tirx.Bind(ooff, (ye * Wo + xe * T) * C + c0))
        xb = tirx.decl_buffer((H * W * C,), "uint8", "xv", data=ptr("xp"))
        ob = tirx.decl_buffer((Ho * Wo * C,), "uint8", "ov", data=ptr("op"))
        stmts.append(tirx.DeclBuffer(xb, data=tirx.address_of(tirx.BufferLoad(dflat, [xoff]))))
        stmts.append(tirx.DeclBuffer(ob, data=tirx.address_of(tirx.BufferLoad(oflat, [ooff]))))
        init = fresh("b", "int32x16")
        stmts.append(tirx.Bind(init, tirx.BufferLoad(bias, [tirx.Ramp(c0, _i32(1), LANES)])))
        acc = {(k, t): init for k in range(nro) for t in range(T)}
        nrows = nro + 2
        for col in range((T - 1) * s + 3):
            rows = []
            for r in range(nrows):
                if row_inside(y0, r) and col_inside(x0, col):
                    off = ((r - pt) * W + (col - pl)) * C  # from the base (row y0*s, column x0*T*s)
                    rows.append(tirx.BufferLoad(xb, [tirx.Ramp(_i32(off), _i32(1), LANES)]))
                else:
                    rows.append(zpv)
            r3 = rows[3] if nrows == 4 else zero16
            idx = []
            for lane in range(LANES):
                idx += [_i32(lane), _i32(16 + lane), _i32(64 + lane), _i32((80 if nrows == 4 else 64) + lane)]
            q = fresh("q", "uint8x64")
            stmts.append(tirx.Bind(q, tirx.Shuffle(
                [rows[0], rows[1], zero16, zero16, rows[2], r3, zero16, zero16], idx)))
            for rw in range(3):
                if (col - rw) % s:
                    continue
                t = (col - rw) // s
                if not 0 <= t < T:
                    continue
                for k in range(nro):
                    a = fresh("acc", "int32x16")
                    stmts.append(tirx.Bind(a, tirx.call_llvm_intrin(
                        "int32x16", "llvm.x86.avx512.vpdpbusd.512", acc[k, t], q, wv[k, rw])))
                    acc[k, t] = a
        ch = tirx.Ramp(c0, _i32(1), LANES)
        out_zp = tirx.BufferLoad(qp, [_i32(1)])
        lo = tirx.Cast("float32", tirx.BufferLoad(qp, [_i32(2)]) - out_zp)
        hi = tirx.Cast("float32", tirx.BufferLoad(qp, [_i32(3)]) - out_zp)
        for k in range(nro):
            for t in range(T):
                # common.requantize_float_expr without a residual (the bias is in the accumulator)
                f = tirx.Cast("float32x16", acc[k, t]) * tirx.BufferLoad(scale, [ch])
                f = tirx.Min(tirx.Max(f, tirx.Broadcast(lo, LANES)), tirx.Broadcast(hi, LANES))
                v = tirx.call_llvm_pure_intrin("int32x16", "llvm.lrint", f) + tirx.Broadcast(out_zp, LANES)
                stmts.append(tirx.BufferStore(ob, tirx.Cast("uint8x16", v),
                                              [tirx.Ramp(_i32((k * Wo + t) * C), _i32(1), LANES)]))
        return tirx.SeqStmt(stmts)

    def interior_ok(y0: int | None, nro: int, x0: int | None) -> None:
        """An interior coordinate's extremes read no padding (else the tile would need tests)."""
        for r in range(nro + 2):
            assert y0 is None or row_inside(y0, r), (wl, cfg, "row", y0, r)
        for col in range((T - 1) * s + 3):
            assert x0 is None or col_inside(x0, col), (wl, cfg, "column", x0, col)

    def tiles(y0: int | None, nro: int) -> tirx.Stmt:
        """The column tiles (and channel blocks) of the row group at ``y0``."""
        cases = [(0, _i32(0))] if ntile == 1 else [(0, xo == 0), (ntile - 1, xo == ntile - 1)]
        body = None
        if ntile > 2:
            for x in (1, ntile - 2):
                interior_ok(None, nro, x)
            body = tile(y0, None, nro)
        for x0, cond in reversed(cases):
            b = tile(y0, x0, nro)
            body = b if body is None else tirx.IfThenElse(cond, b, body)
        cl = tirx.For(cb, _i32(0), _i32(C // LANES), tirx.ForKind.SERIAL, body)
        if cfg.tile_outer:
            return tirx.For(xo, _i32(0), _i32(ntile), tirx.ForKind.SERIAL, cl)
        xl = tirx.For(xo, _i32(0), _i32(ntile), tirx.ForKind.SERIAL, body)
        return tirx.For(cb, _i32(0), _i32(C // LANES), tirx.ForKind.SERIAL, xl)

    ngroup = Ho // ro  # full groups of ``ro`` output rows; an odd last row (ro=2) gets a 1-row body
    if ngroup == 1:
        rowbody = tiles(0, ro)
    else:
        rowbody = None
        if ngroup > 2:
            for g in (1, ngroup - 2):
                for r in range(ro + 2):
                    assert row_inside(g * ro, r), (wl, cfg, "row", g, r)
            rowbody = tiles(None, ro)
        for g in (ngroup - 1, 0):
            b = tiles(g * ro, ro)
            rowbody = b if rowbody is None else tirx.IfThenElse(yv == g, b, rowbody)
    body = tirx.For(yv, _i32(0), _i32(ngroup), tirx.ForKind.PARALLEL, rowbody)
    if Ho % ro:
        body = tirx.SeqStmt([body, tiles(Ho - 1, 1)])
    body = tirx.SeqStmt([tirx.DeclBuffer(dflat, data=data.data), tirx.DeclBuffer(oflat, data=out.data), body])
    attrs = tvm.ir.make_node("ir.DictAttrs", **{"global_symbol": "main", "tirx.noalias": True})
    return tirx.PrimFunc([data, weight, bias, scale, qp, out], body, attrs=attrs)


class _Quad:
    compute = staticmethod(compute)
    schedule = staticmethod(schedule)
    pack_weight = staticmethod(pack_weight)
    input_shape = staticmethod(int8_nhwc.input_shape)
    output_shape = staticmethod(int8_nhwc.output_shape)


_dispatch = TemplateDispatch(lambda cfg: _Quad if isinstance(cfg, DepthwiseQuadConfig)
                             else int8._dispatch.template_of(cfg))


def _build_direct(wl: Conv2dWorkload, cfg) -> tirx.PrimFunc | None:  # type: ignore[no-untyped-def]
    return build(wl, cfg) if isinstance(cfg, DepthwiseQuadConfig) else None


CONFIG_TYPES = (ConfigType(DepthwiseQuadConfig, lambda start, wl, features: candidates(wl, features)),)


def kernels() -> list[KernelDef]:
    return [KernelDef(KernelKey("depthwise_conv2d", "w8a8", "avx512_vnni"), _dispatch.compute,
                      _dispatch.schedule, fallback_config, _dispatch.pack_weight, _dispatch.input_shape,
                      _dispatch.output_shape,
                      "u8 x s8 depthwise 3x3 on vpdpbusd (vertical taps in u8 quads), float32 "
                      "requantization; the portable kernel for other shapes / epilogues",
                      requires=lambda f: f.avx512_vnni, build_direct=_build_direct)]
