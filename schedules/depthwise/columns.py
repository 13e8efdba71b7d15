"""The skeleton of the directly built depthwise kernels (``int8_vnni`` 3x3, ``int8_avx2`` 3x3 and
5x5): a tile of ``rows`` output rows x ``tile`` output columns x one block of channels, channels
last, walked input column by input column.

Per tile, every input column the tile reads is loaded once (the input rows of that column, one
vector of the block's channels each; the input zero point where the tap falls on padding) and
handed to the kernel's ``ColumnProduct``, which combines the rows into the vectors its instruction
takes (VNNI: one uint8 quad; AVX2: int16 pairs) and adds them into the accumulators of the (up to
kernel width) output columns that read that input column. Then the float32 requantization
(``common.requantize_float_expr`` without a residual: the bias is the accumulators' start) stores
the block's channels of each output pixel as one vector.

The TIR is built directly (no TE compute / schedule): straight-line code per tile, the border tiles
(the first and last row group and column tile, and any other that reads padding: 5x5 with padding
2) statically specialised so that the interior has no tests. Every tile addresses its input and
output through a base pointer (a ``DeclBuffer`` over ``address_of``), every load / store is base +
constant (with ``data[0, h, w, c]`` indices LLVM spilled ~40 offsets per tile: -35% on Zen 4). The
base offsets are ``Bind`` variables computed from other ``Bind`` variables, so that no expression
inside a ``DeclBuffer`` is shared with later statements: TVM 0.27's TIR CSE
(``tirx.CommonSubexprElim``) hoists such a shared expression (``cb * 16`` in the address and in the
bias / scale loads) into a ``Bind`` it places *after* the ``DeclBuffer``s it also rewrote
("variable cse_v2 has been used before definition"). Products are ``call_llvm_intrin`` (not pure):
TIR's simplifier otherwise inlines each accumulator's chain into its users (the expression size
grows with the chain).

Covered (``covers``): NHWC, batch 1, depthwise multiplier 1, channels a multiple of the block,
a square kernel of the product's sizes, stride 1 or 2 (both axes), dilation 1, each padding at
most half the kernel, float32 requantization to uint8 without a residual.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import tvm
from tvm import tirx

from ..common import TemplateDispatch
from ..kernel import KernelDef, KernelKey
from ..space import ConfigType
from ..workload import Conv2dWorkload
from . import int8, int8_nhwc

__all__ = ["ColumnProduct", "Emit", "Requant", "build", "column_kernel", "covers", "i32", "store_requantized"]


def i32(v: int) -> tirx.IntImm:
    return tirx.IntImm("int32", v)


def covers(wl: Conv2dWorkload, lanes: int, sizes: tuple[int, ...] = (3,)) -> bool:
    """Whether the column skeleton builds ``wl`` with ``lanes`` channels per block and square
    kernels of ``sizes`` (each side padded by at most half the kernel)."""
    ep = wl.epilogue
    k = wl.kernel_h
    return (wl.nhwc and wl.is_depthwise and wl.batch == 1 and wl.in_channels == wl.out_channels
            and wl.in_channels % lanes == 0 and k == wl.kernel_w and k in sizes
            and wl.stride_h == wl.stride_w and wl.stride_h in (1, 2)
            and wl.dilation_h == wl.dilation_w == 1
            and all(0 <= p <= k // 2 for p in (wl.pad_top, wl.pad_left, wl.pad_bottom, wl.pad_right))
            and ep.requant == "float" and not ep.residual and not ep.out_float and not ep.out_int16)


@dataclass
class Emit:
    """Statements of one tile under construction, with fresh ``Bind`` variables."""

    stmts: list
    counter: list

    def bind(self, name: str, dtype: str, value: Any) -> tirx.Var:
        self.counter[0] += 1
        v = tirx.Var(f"{name}{self.counter[0]}", tvm.ir.PrimType(dtype))
        self.stmts.append(tirx.Bind(v, value))
        return v


class ColumnProduct(Protocol):
    """What a column kernel adds to the skeleton (``lanes`` channels per block)."""

    lanes: int

    def start(self, emit: Emit, weight: tirx.Buffer, cb: tirx.Var, rows: int) -> Any:
        """Per tile, first: the weights of channel block ``cb`` it keeps (any state)."""

    def init(self, emit: Emit, bias: tirx.Expr) -> Any:
        """The accumulators' start value from ``bias`` (``int32 x lanes``)."""

    def column(self, emit: Emit, state: Any, rows: list[tirx.Expr],
               uses: list[tuple[int, int, int]], acc: dict[tuple[int, int], Any]) -> None:
        """Add input column ``rows`` (``rows - 1 + R`` uint8 vectors, ``R`` the kernel size) into
        ``acc[k, t]`` for each ``(k, t, rw)`` of ``uses``: output row ``k`` of the tile, output
        column ``t``, kernel column ``rw``."""

    def finish(self, emit: Emit, out: tirx.Buffer, pixels: list[tuple[int, Any]], rq: Requant) -> None:
        """Requantize and store the tile: accumulator ``value`` of each ``(offset, value)`` of
        ``pixels`` to ``out[offset : offset + lanes]`` (``store_requantized``: one vector each)."""


@dataclass(frozen=True)
class Requant:
    """The float32 requantization's operands for one tile: ``scale`` f32[C] and ``qp`` s32[4]
    ``(x_zp, out_zp, lo, hi)`` buffers, ``c0`` the tile's first channel."""

    scale: tirx.Buffer
    c0: tirx.Var
    qp: tirx.Buffer

    def scales(self, first: int, lanes: int) -> tirx.Expr:
        """The scales of channels ``c0 + first ...`` (``lanes`` of them)."""
        start = self.c0 + first if first else self.c0
        return tirx.BufferLoad(self.scale, [tirx.Ramp(start, i32(1), lanes)])

    @property
    def out_zp(self) -> tirx.Expr:
        return tirx.BufferLoad(self.qp, [i32(1)])

    def bound(self, which: int) -> tirx.Expr:
        """``lo`` (2) or ``hi`` (3) relative to the output zero point, as float32."""
        return tirx.Cast("float32", tirx.BufferLoad(self.qp, [i32(which)]) - self.out_zp)


def store_requantized(emit: Emit, out: tirx.Buffer, pixels: list[tuple[int, tirx.Expr]], rq: Requant,
                      lanes: int) -> None:
    """``common.requantize_float_expr`` without a residual (the bias is in the accumulator):
    each ``int32 x lanes`` accumulator scaled, clamped in float to ``[lo, hi] - out_zp``,
    rounded to nearest even, ``out_zp`` added, stored as ``lanes`` bytes."""
    L = lanes
    for off, value in pixels:
        f = tirx.Cast(f"float32x{L}", value) * rq.scales(0, L)
        f = tirx.Min(tirx.Max(f, tirx.Broadcast(rq.bound(2), L)), tirx.Broadcast(rq.bound(3), L))
        v = tirx.call_llvm_pure_intrin(f"int32x{L}", "llvm.lrint", f) + tirx.Broadcast(rq.out_zp, L)
        emit.stmts.append(tirx.BufferStore(out, tirx.Cast(f"uint8x{L}", v), [tirx.Ramp(i32(off), i32(1), L)]))


def build(wl: Conv2dWorkload, tile_cols: int, rows: int, tile_outer: bool, product: ColumnProduct,
          weight_shape: tuple[int, ...], weight_dtype: str) -> tirx.PrimFunc:
    """The kernel's PrimFunc. Arguments: data ``[1, H, W, C]`` u8, weight (``weight_shape``,
    ``weight_dtype``), bias s32[C], scale f32[C], qparams s32[4] ``(x_zp, out_zp, lo, hi)``,
    out ``[1, Ho, Wo, C]`` u8.

    Over 80 lines: one TIR program written out with ``tirx.ir_builder``, in the order the
    loops nest; pieces of it would pass a dozen buffers and loop variables to each other."""
    L = product.lanes
    R = wl.kernel_h  # = kernel_w
    H, W, C, s = wl.height, wl.width, wl.in_channels, wl.stride_h
    pt, pl = wl.pad_top, wl.pad_left
    Ho, Wo, T, ro = wl.out_height, wl.out_width, tile_cols, rows
    ntile = Wo // T
    ncols = (T - 1) * s + R  # input columns a tile reads
    data = tirx.decl_buffer(wl.data_shape, "uint8", "data")
    weight = tirx.decl_buffer(weight_shape, weight_dtype, "weight")
    bias = tirx.decl_buffer((C,), "int32", "bias")
    scale = tirx.decl_buffer((C,), "float32", "scale")
    qp = tirx.decl_buffer((4,), "int32", "qparams")
    out = tirx.decl_buffer(wl.out_shape, "uint8", "out")
    # flat views: a tile's base offset is one Bind variable (see the module docstring: CSE)
    ptr: Callable[[str], tirx.Var] = lambda n: tirx.Var(n, tvm.ir.PointerType(tvm.ir.PrimType("uint8")))  # noqa: E731
    dflat = tirx.decl_buffer((H * W * C,), "uint8", "data_flat", data=ptr("data_flat_p"))
    oflat = tirx.decl_buffer((Ho * Wo * C,), "uint8", "out_flat", data=ptr("out_flat_p"))
    yv, cb, xo = tirx.Var("y", "int32"), tirx.Var("cb", "int32"), tirx.Var("xo", "int32")
    counter = [0]
    zpv = tirx.Broadcast(tirx.Cast("uint8", tirx.BufferLoad(qp, [i32(0)])), L)

    def row_inside(y0: int | None, r: int) -> bool:
        """Input row ``r`` of a tile at output row ``y0`` (None: an interior group) is inside."""
        return y0 is None or 0 <= y0 * s - pt + r < H

    def col_inside(x0: int | None, col: int) -> bool:
        return x0 is None or 0 <= x0 * T * s - pl + col < W

    def tile(y0: int | None, x0: int | None, nro: int) -> tirx.Stmt:
        """``nro`` output rows from ``y0``, columns of tile ``x0``; a None coordinate is the
        loop variable's (an interior tile: every row / column it reads is inside)."""
        ye = yv * ro if y0 is None else i32(y0)
        xe = xo if x0 is None else i32(x0)
        emit = Emit([], counter)
        c0 = emit.bind("c0_", "int32", cb * L)
        state = product.start(emit, weight, cb, nro)
        xoff = emit.bind("xoff", "int32", (ye * (s * W) + xe * (T * s)) * C + c0)
        ooff = emit.bind("ooff", "int32", (ye * Wo + xe * T) * C + c0)
        xb = tirx.decl_buffer((H * W * C,), "uint8", "xv", data=ptr("xp"))
        ob = tirx.decl_buffer((Ho * Wo * C,), "uint8", "ov", data=ptr("op"))
        emit.stmts.append(tirx.DeclBuffer(xb, data=tirx.address_of(tirx.BufferLoad(dflat, [xoff]))))
        emit.stmts.append(tirx.DeclBuffer(ob, data=tirx.address_of(tirx.BufferLoad(oflat, [ooff]))))
        init = product.init(emit, tirx.BufferLoad(bias, [tirx.Ramp(c0, i32(1), L)]))
        acc = {(k, t): init for k in range(nro) for t in range(T)}
        for col in range(ncols):
            uses = [(k, (col - rw) // s, rw) for rw in range(R) for k in range(nro)
                    if (col - rw) % s == 0 and 0 <= (col - rw) // s < T]
            if not uses:
                continue
            loaded = []
            for r in range(nro - 1 + R):
                if row_inside(y0, r) and col_inside(x0, col):
                    off = ((r - pt) * W + (col - pl)) * C  # from the base (row y0*s, column x0*T*s)
                    loaded.append(tirx.BufferLoad(xb, [tirx.Ramp(i32(off), i32(1), L)]))
                else:
                    loaded.append(zpv)
            product.column(emit, state, loaded, uses, acc)
        pixels = [((k * Wo + t) * C, acc[k, t]) for k in range(nro) for t in range(T)]
        product.finish(emit, ob, pixels, Requant(scale, c0, qp))
        return tirx.SeqStmt(emit.stmts)

    def specialised(count: int, var: tirx.Var, inside: Callable[[int], bool],
                    make: Callable[[int | None], tirx.Stmt]) -> tirx.Stmt:
        """The body of a loop ``var`` over ``count`` indices: the first and the last and any
        other whose tile would read padding (``not inside(i)``) each its own statically
        specialised body, the rest one body on the loop variable (``make(None)``)."""
        border = sorted({0, count - 1} | {i for i in range(count) if not inside(i)})
        body = make(None) if len(border) < count else None
        for i in reversed(border):
            b = make(i)
            body = b if body is None else tirx.IfThenElse(var == i, b, body)
        return body

    def tiles(y0: int | None, nro: int) -> tirx.Stmt:
        """The column tiles (and channel blocks) of the row group at ``y0``."""
        body = specialised(ntile, xo, lambda x: all(col_inside(x, c) for c in range(ncols)),
                           lambda x0: tile(y0, x0, nro))
        cl = tirx.For(cb, i32(0), i32(C // L), tirx.ForKind.SERIAL, body)
        if tile_outer:
            return tirx.For(xo, i32(0), i32(ntile), tirx.ForKind.SERIAL, cl)
        xl = tirx.For(xo, i32(0), i32(ntile), tirx.ForKind.SERIAL, body)
        return tirx.For(cb, i32(0), i32(C // L), tirx.ForKind.SERIAL, xl)

    ngroup = Ho // ro  # full groups of ``ro`` output rows; an odd last row (ro=2) gets a 1-row body
    rowbody = specialised(ngroup, yv, lambda g: all(row_inside(g * ro, r) for r in range(ro - 1 + R)),
                          lambda g: tiles(None if g is None else g * ro, ro))
    body = tirx.For(yv, i32(0), i32(ngroup), tirx.ForKind.PARALLEL, rowbody)
    if Ho % ro:
        body = tirx.SeqStmt([body, tiles(Ho - 1, 1)])
    body = tirx.SeqStmt([tirx.DeclBuffer(dflat, data=data.data), tirx.DeclBuffer(oflat, data=out.data), body])
    attrs = tvm.ir.make_node("ir.DictAttrs", **{"global_symbol": "main", "tirx.noalias": True})
    return tirx.PrimFunc([data, weight, bias, scale, qp, out], body, attrs=attrs)


def column_kernel(key: KernelKey, config_cls: type, compute: Callable, pack_weight: Callable,
                  build_fn: Callable, candidates: Callable, fallback_config: Callable, description: str,
                  requires: Callable) -> tuple[tuple[ConfigType, ...], KernelDef]:
    """A column kernel's registration: its configurations (``config_cls``) built directly by
    ``build_fn(wl, cfg)``, every other configuration by the portable kernel
    (``depthwise.int8``'s templates: the template is part of the config). Returns the module's
    ``CONFIG_TYPES`` and its ``KernelDef``."""

    def schedule(sch, wl, cfg, sample=False):  # type: ignore[no-untyped-def]
        raise TypeError(f"{cfg} is built directly in TIR, not scheduled from TE")

    class Template:
        pass

    Template.compute = staticmethod(compute)  # type: ignore[attr-defined]
    Template.schedule = staticmethod(schedule)  # type: ignore[attr-defined]
    Template.pack_weight = staticmethod(pack_weight)  # type: ignore[attr-defined]
    Template.input_shape = staticmethod(int8_nhwc.input_shape)  # type: ignore[attr-defined]
    Template.output_shape = staticmethod(int8_nhwc.output_shape)  # type: ignore[attr-defined]
    dispatch = TemplateDispatch(lambda cfg: Template if isinstance(cfg, config_cls) else int8._dispatch.template_of(cfg))

    def build_direct(wl, cfg):  # type: ignore[no-untyped-def]
        return build_fn(wl, cfg) if isinstance(cfg, config_cls) else None

    kernel = KernelDef(key, dispatch.compute, dispatch.schedule, fallback_config, dispatch.pack_weight,
                       dispatch.input_shape, dispatch.output_shape, description, requires=requires,
                       build_direct=build_direct)
    return (ConfigType(config_cls, lambda start, wl, features: candidates(wl, features)),), kernel
