"""Small integer-boundary kernels: quantize, dequantize, integer global average pool.

Defined so that numpy computes the very same IEEE float32 operations (``reference``):

* ``quantize``: ``q = clip(floor(x / scale + 0.5) + zp, 0, 255)`` (float32; round half up; NaN
  maps to an unspecified value: calibration and inputs are checked for NaN beforehand)
* ``dequantize``: ``x = float32(q - zp) * scale``
* ``global_avg_pool_u8``: ``(sum + count // 2) // count`` per channel, int32 (scale and zero
  point unchanged: the mean of ``q - zp`` is ``mean(q) - zp``)
* ``max_pool_u8``: max over each window of the uint8 values (exact: quantization is monotonic,
  so the max of the codes is the code of the max; scale and zero point unchanged); padding and
  windows reaching past the edge (``ceil_mode``) contribute 0, the smallest code, which a
  window with at least one real element never returns wrongly
* int16 activations (W8A16 inputs, symmetric, zero point 0): ``quantize_i16``
  ``q = clip(floor(x / scale + 0.5), -qmax, qmax)``; ``requantize_i16_u8`` (an int16 tensor for
  a uint8 consumer) ``clip(rescale(q, m, shift) + zp, 0, 255)`` with ``quant.rescale``'s exact
  rounding; ``widen_u8_i16`` ``q - zp`` (lossless, same scale)

Scales and zero points are run-time arguments (``scale f32[1]``, ``zp s32[1]``).

Layouts: ``shape`` is always the tensor's NCHW shape (as ONNX has it). Where the quantized
layers keep their activations channels-last, the boundaries change the layout as they go:
``quantize(to_nhwc=True)`` writes NHWC, ``dequantize(from_nhwc=True)`` reads NHWC,
``global_avg_pool_u8(nhwc=True)`` reads NHWC (its ``[N, C, 1, 1]`` output is the same bytes in
either layout) and ``max_pool_u8(nhwc=True)`` reads and writes NHWC: no separate transpose.
"""

from __future__ import annotations

import functools

import tvm
from tvm import te, tirx

from . import bf16
from .common import requantize_float_expr, rescale_expr


def nhwc(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The channels-last form of an NCHW shape."""
    n, c, h, w = shape
    return (n, h, w, c)


def quantize(shape: tuple[int, ...], to_nhwc: bool = False) -> list[te.Tensor]:
    x = te.placeholder(shape, "float32", name="x")
    scale = te.placeholder((1,), "float32", name="scale")
    zp = te.placeholder((1,), "int32", name="zp")

    def q(*idx):  # type: ignore[no-untyped-def]
        if to_nhwc:
            n, h, w, c = idx
            idx = (n, c, h, w)
        f = tirx.floor(x[idx] / scale[0] + tirx.const(0.5, "float32"))
        # bound before the int cast (huge inputs would overflow int32); exact: |f| > 512 clamps anyway
        f = tirx.min(tirx.max(f, tirx.const(-512.0, "float32")), tirx.const(512.0, "float32"))
        v = f.astype("int32") + zp[0]
        return tirx.min(tirx.max(v, 0), 255).astype("uint8")

    return [x, scale, zp, te.compute(nhwc(shape) if to_nhwc else shape, q, name="quantize")]


FQ_OFF, FQ_AFFINE, FQ_BF16 = 0.0, 1.0, 2.0  # ``fake_quantize`` modes


def fake_quantize(shape: tuple[int, ...]) -> list[te.Tensor]:
    """Float ``x`` through the quantization a layer's input would get, chosen at run time by
    ``fq = [mode, scale, zero_point, qmin, qmax]`` (float32): ``FQ_OFF`` passes ``x``,
    ``FQ_AFFINE`` is ``(clip(floor(x / scale + 1/2) + zp, qmin, qmax) - zp) * scale`` (the
    rounding of ``quantize``), ``FQ_BF16`` rounds to bfloat16. Sensitivity analysis switches
    layers between precisions with it without recompiling."""
    x = te.placeholder(shape, "float32", name="x")
    fq = te.placeholder((5,), "float32", name="fq")

    def f(*i):  # type: ignore[no-untyped-def]
        v = x[i]
        q = tirx.floor(v / fq[1] + tirx.const(0.5, "float32")) + fq[2]
        q = tirx.min(tirx.max(q, fq[3]), fq[4])
        affine = (q - fq[2]) * fq[1]
        return tirx.if_then_else(fq[0] == tirx.const(FQ_AFFINE, "float32"), affine,
                                 tirx.if_then_else(fq[0] == tirx.const(FQ_BF16, "float32"),
                                                   bf16.round_expr(v), v))

    return [x, fq, te.compute(shape, f, name="fake_quantize")]


def dequantize(shape: tuple[int, ...], dtype: str = "uint8", from_nhwc: bool = False) -> list[te.Tensor]:
    q = te.placeholder(nhwc(shape) if from_nhwc else shape, dtype, name="q")
    scale = te.placeholder((1,), "float32", name="scale")
    zp = te.placeholder((1,), "int32", name="zp")

    def deq(*i):  # type: ignore[no-untyped-def]
        v = q[i[0], i[2], i[3], i[1]] if from_nhwc else q[i]
        return (v.astype("int32") - zp[0]).astype("float32") * scale[0]

    return [q, scale, zp, te.compute(shape, deq, name="dequantize")]


def lookup_u8(shape: tuple[int, ...], from_nhwc: bool = False, to_nhwc: bool = False,
              out_dtype: str = "float32", per_channel: bool = False) -> list[te.Tensor]:
    """``out = table[q]``: any elementwise function of a uint8 tensor (its 256 values computed
    at compile time), float32 or uint8 out, NCHW ``shape`` (``q`` / ``out`` NHWC if
    ``from_nhwc`` / ``to_nhwc``); ``per_channel``: one table per channel (axis 1), ``[C, 256]``."""
    q = te.placeholder(nhwc(shape) if from_nhwc else shape, "uint8", name="q")
    table = te.placeholder((shape[1] if per_channel else 1, 256), out_dtype, name="table")

    def look(*o):  # type: ignore[no-untyped-def]
        i = (o[0], o[3], o[1], o[2]) if to_nhwc else o  # the NCHW index of this output
        code = (q[i[0], i[2], i[3], i[1]] if from_nhwc else q[i]).astype("int32")
        return table[i[1] if per_channel else 0, code]

    return [q, table, te.compute(nhwc(shape) if to_nhwc else shape, look, name="lookup")]


def lookup_u8_shuffle(shape: tuple[int, ...]) -> tirx.PrimFunc:
    """``lookup_u8`` for one uint8 -> uint8 table, input and output in the same layout (any
    ``shape``), on AVX2 ``vpshufb``: per 32 bytes, the low nibbles index each 16-entry slice of
    the table (``vpshufb``, the slice in both 128-bit lanes) and the high nibble picks the slice
    (``vpcmpeqb`` + ``vpblendvb``): 16 x 3 vector instructions per 32 elements instead of a
    scalar load per element (LLVM's vectorised form of ``table[q]`` extracts, loads and inserts
    each byte: ~2.3 cycles per element on a Zen 3). The elements past the last whole 32 take the
    scalar ``table[q]``. Built directly in TIR (no schedule); the same values as ``lookup_u8``."""
    size = 1
    for d in shape:
        size *= int(d)
    lanes, i32 = 32, (lambda v: tirx.IntImm("int32", v))  # noqa: E731
    q = tirx.decl_buffer(shape, "uint8", "q")
    table = tirx.decl_buffer((1, 256), "uint8", "table")
    out = tirx.decl_buffer(shape, "uint8", "lookup")
    qf = tirx.decl_buffer((size,), "uint8", "q_flat", data=q.data)
    tf = tirx.decl_buffer((256,), "uint8", "table_flat", data=table.data)
    of = tirx.decl_buffer((size,), "uint8", "out_flat", data=out.data)
    bcast = lambda v: tirx.Broadcast(tirx.IntImm("uint8", v), lanes)  # noqa: E731
    i, j = tirx.Var("i", "int32"), tirx.Var("j", "int32")
    x = tirx.Var("x", tvm.ir.PrimType("uint8x32"))
    lo, hi = tirx.Var("lo", tvm.ir.PrimType("uint8x32")), tirx.Var("hi", tvm.ir.PrimType("uint8x32"))
    res: tirx.PrimExpr = bcast(0)
    for c in range(16):
        half = tirx.BufferLoad(tf, [tirx.Ramp(i32(16 * c), i32(1), 16)])
        piece = tirx.Shuffle([half, half], [i32(k) for k in range(lanes)])  # in both 128-bit lanes
        looked = tirx.call_llvm_pure_intrin("uint8x32", "llvm.x86.avx2.pshuf.b", piece, lo)
        res = tirx.Select(hi == bcast(c), looked, res) if c else looked
    body = tirx.SeqStmt([
        tirx.Bind(x, tirx.BufferLoad(qf, [tirx.Ramp(i * lanes, i32(1), lanes)])),
        tirx.Bind(lo, tirx.bitwise_and(x, bcast(15))),
        tirx.Bind(hi, tirx.shift_right(x, bcast(4))),
        tirx.BufferStore(of, res, [tirx.Ramp(i * lanes, i32(1), lanes)])])
    stmts = [tirx.DeclBuffer(qf, data=q.data), tirx.DeclBuffer(tf, data=table.data), tirx.DeclBuffer(of, data=out.data)]
    whole = size // lanes
    if whole:
        stmts.append(tirx.For(i, i32(0), i32(whole), tirx.ForKind.PARALLEL if whole >= 64 else tirx.ForKind.SERIAL,
                              body))
    if size % lanes:
        stmts.append(tirx.For(j, i32(whole * lanes), i32(size % lanes), tirx.ForKind.SERIAL, tirx.BufferStore(
            of, tirx.BufferLoad(tf, [tirx.Cast("int32", tirx.BufferLoad(qf, [j]))]), [j])))
    attrs = tvm.ir.make_node("ir.DictAttrs", **{"global_symbol": "main", "tirx.noalias": True, "tirx.is_scheduled": True})
    return tirx.PrimFunc([q, table, out], tirx.SeqStmt(stmts), attrs=attrs)


def global_avg_pool_u8(shape: tuple[int, int, int, int], nhwc_in: bool = False) -> list[te.Tensor]:
    n_, c_, h_, w_ = shape
    q = te.placeholder(nhwc(shape) if nhwc_in else shape, "uint8", name="q")
    rh = te.reduce_axis((0, h_), "rh")
    rw = te.reduce_axis((0, w_), "rw")

    def at(n, c, y, x):  # type: ignore[no-untyped-def]
        return q[n, y, x, c] if nhwc_in else q[n, c, y, x]

    total = te.compute((n_, c_), lambda n, c: te.sum(at(n, c, rh, rw).astype("int32"), axis=[rh, rw]),
                       name="sum")
    count = h_ * w_
    out = te.compute((n_, c_, 1, 1), lambda n, c, i, j: tirx.floordiv(
        total[n, c] + count // 2, count).astype("uint8"), name="mean")
    return [q, out]


def global_avg_pool_requant_u8(shape: tuple[int, int, int, int], nhwc_in: bool = False) -> list[te.Tensor]:
    """Global average pooling into another quantization (the consumer's): ``params s32[2] =
    (-count * zp_in, zp_out)``, ``scale f32[1] = s_in / (count * s_out)``; out ``[N, C, 1, 1]``
    = ``clip(rint(float32(sum - count * zp_in) * scale) + zp_out, 0, 255)``, every add in int32
    (``common.requantize_float_expr``; numpy: ``reference.global_avg_pool_requant_u8``)."""
    n_, c_, h_, w_ = shape
    q = te.placeholder(nhwc(shape) if nhwc_in else shape, "uint8", name="q")
    params = te.placeholder((2,), "int32", name="params")
    scale = te.placeholder((1,), "float32", name="scale")
    rh = te.reduce_axis((0, h_), "rh")
    rw = te.reduce_axis((0, w_), "rw")
    total = te.compute((n_, c_), lambda n, c: te.sum(
        (q[n, rh, rw, c] if nhwc_in else q[n, c, rh, rw]).astype("int32"), axis=[rh, rw]), name="sum")
    out = te.compute((n_, c_, 1, 1), lambda n, c, i, j: requantize_float_expr(
        total[n, c], params[0], scale[0], params[1], tirx.const(0, "int32"), tirx.const(255, "int32")), name="mean")
    return [q, params, scale, out]


def multiply_u8(a_shape: tuple[int, ...], b_shape: tuple[int, ...]) -> list[te.Tensor]:
    """The product of two uint8 tensors into a third quantization, ``b`` broadcast over its
    size-1 dimensions (shapes as stored, same rank): ``params s32[3] = (a_zp, b_zp, out_zp)``,
    ``scale f32[1] = s_a * s_b / s_out``; ``clip(rint(float32((a - a_zp) * (b - b_zp)) *
    scale) + out_zp, 0, 255)`` (``common.requantize_float_expr``; numpy:
    ``reference.multiply_u8``). A squeeze-and-excitation block's rescaling of its map."""
    a = te.placeholder(a_shape, "uint8", name="a")
    b = te.placeholder(b_shape, "uint8", name="b")
    params = te.placeholder((3,), "int32", name="params")
    scale = te.placeholder((1,), "float32", name="scale")

    def mul(*i):  # type: ignore[no-untyped-def]
        bi = [0 if d == 1 else x for x, d in zip(i, b_shape)]
        prod = (a[i].astype("int32") - params[0]) * (b[tuple(bi)].astype("int32") - params[1])
        return requantize_float_expr(prod, None, scale[0], params[2], tirx.const(0, "int32"),
                                     tirx.const(255, "int32"))

    return [a, b, params, scale, te.compute(a_shape, mul, name="multiply")]


UNROLLED_WINDOW = 49  # max pool windows up to 7x7 are one expression of their taps


def max_pool_u8(shape: tuple[int, int, int, int], out_hw: tuple[int, int], pool: tuple[int, int],
                strides: tuple[int, int], dilation: tuple[int, int],
                pad_top_left: tuple[int, int], nhwc_io: bool = False) -> list[te.Tensor]:
    n_, c_, h_, w_ = shape
    (ph, pw), (kh, kw), (sh, sw), (dh, dw) = pad_top_left, pool, strides, dilation
    q = te.placeholder(nhwc(shape) if nhwc_io else shape, "uint8", name="q")

    def tap(n, c, y, x, rh, rw):  # type: ignore[no-untyped-def]
        iy, ix = y * sh + rh * dh - ph, x * sw + rw * dw - pw
        inside = tirx.all(iy >= 0, iy < h_, ix >= 0, ix < w_)
        cy, cx = tirx.max(tirx.min(iy, h_ - 1), 0), tirx.max(tirx.min(ix, w_ - 1), 0)
        return tirx.if_then_else(inside, q[n, cy, cx, c] if nhwc_io else q[n, c, cy, cx],
                                 tirx.const(0, "uint8"))

    def window(n, c, y, x):  # type: ignore[no-untyped-def]
        if kh * kw > UNROLLED_WINDOW:
            rh, rw = te.reduce_axis((0, kh), "rh"), te.reduce_axis((0, kw), "rw")
            return te.max(tap(n, c, y, x, rh, rw), axis=[rh, rw])
        # a small window as one expression: a spatial block, whose innermost loop (the channels,
        # channels-last) ScheduleGeneric vectorises (one vector max per tap)
        taps = [tap(n, c, y, x, i, j) for i in range(kh) for j in range(kw)]
        return functools.reduce(tirx.max, taps)

    if nhwc_io:
        return [q, te.compute((n_, *out_hw, c_), lambda n, y, x, c: window(n, c, y, x), name="max_pool")]
    return [q, te.compute((n_, c_, *out_hw), window, name="max_pool")]


def avg_pool_u8(shape: tuple[int, int, int, int], out_hw: tuple[int, int], pool: tuple[int, int],
                strides: tuple[int, int], pad_top_left: tuple[int, int], count_include_pad: bool,
                nhwc_io: bool = False) -> list[te.Tensor]:
    """The window mean of uint8 codes (same scale and zero point), rounded half up: a padded
    tap reads ``zp`` (``params s32[1]``) and counts where ``count_include_pad``, else neither
    (the count is the window's taps inside the input)."""
    n_, c_, h_, w_ = shape
    (ph, pw), (kh, kw), (sh, sw) = pad_top_left, pool, strides
    q = te.placeholder(nhwc(shape) if nhwc_io else shape, "uint8", name="q")
    zp = te.placeholder((1,), "int32", name="zp")

    def tap(n, c, y, x, i, j):  # type: ignore[no-untyped-def]
        iy, ix = y * sh + i - ph, x * sw + j - pw
        inside = tirx.all(iy >= 0, iy < h_, ix >= 0, ix < w_)
        cy, cx = tirx.max(tirx.min(iy, h_ - 1), 0), tirx.max(tirx.min(ix, w_ - 1), 0)
        v = (q[n, cy, cx, c] if nhwc_io else q[n, c, cy, cx]).astype("int32")
        return tirx.if_then_else(inside, v, zp[0] if count_include_pad else tirx.const(0, "int32"))

    def window(n, c, y, x):  # type: ignore[no-untyped-def]
        total = functools.reduce(lambda a, b: a + b, [tap(n, c, y, x, i, j) for i in range(kh) for j in range(kw)])
        if count_include_pad:
            count = tirx.const(kh * kw, "int32")
        else:
            y0, x0 = y * sh - ph, x * sw - pw
            count = ((tirx.min(y0 + kh, h_) - tirx.max(y0, 0)) * (tirx.min(x0 + kw, w_) - tirx.max(x0, 0)))
        return tirx.floordiv(total + tirx.floordiv(count, 2), count).astype("uint8")

    if nhwc_io:
        return [q, zp, te.compute((n_, *out_hw, c_), lambda n, y, x, c: window(n, c, y, x), name="avg_pool")]
    return [q, zp, te.compute((n_, c_, *out_hw), window, name="avg_pool")]


def quantize_i16(shape: tuple[int, ...], qmax: int) -> list[te.Tensor]:
    x = te.placeholder(shape, "float32", name="x")
    scale = te.placeholder((1,), "float32", name="scale")

    def q(*idx):  # type: ignore[no-untyped-def]
        f = tirx.floor(x[idx] / scale[0] + tirx.const(0.5, "float32"))
        f = tirx.min(tirx.max(f, tirx.const(-qmax, "float32")), tirx.const(qmax, "float32"))
        return f.astype("int32").astype("int16")

    return [x, scale, te.compute(shape, q, name="quantize_i16")]


def requantize_i16_u8(shape: tuple[int, ...]) -> list[te.Tensor]:
    """``params s32[3] = (m, shift, zp)``."""
    q = te.placeholder(shape, "int16", name="q")
    params = te.placeholder((3,), "int32", name="params")
    out = te.compute(shape, lambda *i: tirx.min(tirx.max(
        rescale_expr(q[i].astype("int32"), params[0], params[1]) + params[2], 0), 255).astype("uint8"),
        name="requantize_i16_u8")
    return [q, params, out]


def widen_u8_i16(shape: tuple[int, ...]) -> list[te.Tensor]:
    q = te.placeholder(shape, "uint8", name="q")
    zp = te.placeholder((1,), "int32", name="zp")
    return [q, zp, te.compute(shape, lambda *i: (q[i].astype("int32") - zp[0]).astype("int16"),
                              name="widen_u8_i16")]
