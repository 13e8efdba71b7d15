"""bf16 dot-product tensor intrinsics: AVX512-BF16 ``vdpbf16ps`` zmm (16 fp32 lanes x 2 bf16) and
AMX-BF16 ``tdpbf16ps`` tiles (``amx_bf16_intrinsics``: up to 16 pixels x 16 fp32 channels x 32
bf16 input channels per instruction, with its zero / store companions; described at the end).

``tvmq_dpbf16ps_16x2`` (registered when this module is imported)::

    C[i] += f32(A[k]) * f32(B[i, k])      i < 16 (fp32 accumulators), k < 2 (a pair of channels)

``A`` is a pair of input channels of one pixel (two uint16 bf16 bit patterns, broadcast to every
lane as one 32-bit value), ``B`` 16 output channels x that pair of weights (uint16 bf16 patterns,
the pair innermost: the layout the instruction reads), ``f32(b) = float32(b << 16)`` (exact).
bf16 values travel as ``uint16`` in TIR: that is how TVM stores bf16 on CPUs.

What the instruction computes, per lane ``i`` (Intel SDM, ``VDPBF16PS``)::

    acc[i] = fma(f32(A[1]), f32(B[i, 1]), acc[i])   # the odd element of the pair first
    acc[i] = fma(f32(A[0]), f32(B[i, 0]), acc[i])   # then the even one

each a float32 fused multiply-add (the product of two bf16 values is exact in fp32 arithmetic
with the wider exponent of the FMA), round to nearest even whatever MXCSR says, bf16 denormal
inputs read as zero (DAZ) and denormal results flushed to zero (FTZ).
``reference.bf16_dot_step`` reproduces one of those two terms in numpy; the native kernels' numpy
references build on it. ``tvmq_dpbf16ps_16x2_emulated`` is the same description implemented
lane by lane with ``llvm.fma.f32`` and explicit DAZ / FTZ (any CPU): the tests run the native
kernels with it where the CPU lacks AVX512-BF16.

How it reaches LLVM: LLVM 22 declares ``llvm.x86.avx512bf16.dpbf16ps.512`` as
``<16 x float> (<16 x float>, <32 x bfloat>, <32 x bfloat>)``, and no TIR value can carry LLVM's
``bfloat`` type on a CPU target: TVM's pipeline legalises every bfloat16 expression to float32
(``BF16ComputeLegalize``) and bfloat16 storage to uint16 (``BF16StorageLegalize``) before code
generation, so passing ``bfloat16x32`` operands (or ``int32x16`` ones, the pre-LLVM-17 signature)
to ``call_llvm_pure_intrin`` fails LLVM's verifier ("Call parameter type does not match function
signature"). The implementation therefore calls a three-line LLVM IR function,
``tvmq_dpbf16ps_512`` (``DPBF16PS_LLVM_IR``: bitcast the ``<16 x i32>`` operands to
``<32 x bfloat>``, call the intrinsic), imported into the module being compiled through TVM's
``pragma_import_llvm`` attribute: LLVM links it ``available_externally`` + ``alwaysinline``, so
the call disappears and the loop body is the ``vdpbf16ps`` instruction itself (checked by
``tests/test_bf16_kernels.py`` on the generated assembly).
"""

from __future__ import annotations

import functools

from tvm import tirx
from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T

from .intrinsics import amx_tile_ops

DPBF16PS_16X2 = "tvmq_dpbf16ps_16x2"
LANES = 16  # fp32 accumulators per instruction (one zmm)
GROUP = 2  # bf16 input channels reduced per lane per instruction

_EXTERN = "tvmq_dpbf16ps_512"
DPBF16PS_LLVM_IR = f"""
define <16 x float> @{_EXTERN}(<16 x float> %acc, <16 x i32> %a, <16 x i32> %b) {{
  %a16 = bitcast <16 x i32> %a to <32 x bfloat>
  %b16 = bitcast <16 x i32> %b to <32 x bfloat>
  %r = call <16 x float> @llvm.x86.avx512bf16.dpbf16ps.512(<16 x float> %acc, <32 x bfloat> %a16, <32 x bfloat> %b16)
  ret <16 x float> %r
}}
declare <16 x float> @llvm.x86.avx512bf16.dpbf16ps.512(<16 x float>, <32 x bfloat>, <32 x bfloat>)
"""


def bf16_value(bits):  # type: ignore[no-untyped-def]
    """TIR: the float32 value of a uint16 bf16 pattern, the expression the kernels' computes and
    the intrinsic's description share (tensorize matches them structurally)."""
    return tirx.reinterpret("float32", bits.astype("uint32") << tirx.const(16, "uint32"))


@T.prim_func(s_tir=True)
def _desc(A: T.Buffer((2,), "uint16", offset_factor=1),
          B: T.Buffer((16, 2), "uint16", offset_factor=1),
          C: T.Buffer((16,), "float32", offset_factor=1)) -> None:
    with T.sblock("root"):
        T.reads(C[0:16], A[0:2], B[0:16, 0:2])
        T.writes(C[0:16])
        for i in T.serial(0, 16):
            for k in T.serial(0, 2):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    C[vi] = C[vi] + T.reinterpret("float32", T.shift_left(T.Cast("uint32", A[vk]), T.uint32(16))) \
                        * T.reinterpret("float32", T.shift_left(T.Cast("uint32", B[vi, vk]), T.uint32(16)))


@T.prim_func(s_tir=True)
def _impl(A: T.Buffer((2,), "uint16", offset_factor=1),
          B: T.Buffer((16, 2), "uint16", offset_factor=1),
          C: T.Buffer((16,), "float32", offset_factor=1)) -> None:
    with T.sblock("root"):
        T.reads(C[0:16], A[0:2], B[0:16, 0:2])
        T.writes(C[0:16])
        with T.attr(0, "pragma_import_llvm", DPBF16PS_LLVM_IR):
            a = T.broadcast(T.reinterpret(A.vload([0], "uint16x2"), dtype="int32"), 16)
            b = T.reinterpret(B.vload([0, 0], "uint16x32"), dtype="int32x16")
            C[T.ramp(T.int32(0), 1, 16)] = T.call_extern("float32x16", _EXTERN, C.vload([0], "float32x16"), a, b)


# --- the same instruction emulated with scalar fp32 FMAs (any CPU) --------------------------
DPBF16PS_16X2_EMULATED = "tvmq_dpbf16ps_16x2_emulated"


@T.prim_func(s_tir=True)
def _emulated_impl(A: T.Buffer((2,), "uint16", offset_factor=1),
                   B: T.Buffer((16, 2), "uint16", offset_factor=1),
                   C: T.Buffer((16,), "float32", offset_factor=1)) -> None:
    """``vdpbf16ps``'s definition, lane by lane: odd pair element, then even, one
    ``llvm.fma.f32`` each (a single rounding, as the instruction), DAZ on the bf16 inputs and
    FTZ on each result (a denormal becomes a zero of its sign: ``r * 0``)."""
    with T.sblock("root"):
        T.reads(C[0:16], A[0:2], B[0:16, 0:2])
        T.writes(C[0:16])
        for i in T.serial(16):
            for j in T.serial(2):
                k = 1 - j
                a = T.reinterpret("float32", T.shift_left(T.Cast("uint32", A[k]), T.uint32(16)))
                b = T.reinterpret("float32", T.shift_left(T.Cast("uint32", B[i, k]), T.uint32(16)))
                a0 = T.Select(T.fabs(a) < T.float32(1.1754943508222875e-38), a * T.float32(0), a)
                b0 = T.Select(T.fabs(b) < T.float32(1.1754943508222875e-38), b * T.float32(0), b)
                r = T.call_llvm_pure_intrin("float32", "llvm.fma.f32", a0, b0, C[i])
                C[i] = T.Select(T.fabs(r) < T.float32(1.1754943508222875e-38), r * T.float32(0), r)


TensorIntrin.register(DPBF16PS_16X2, _desc, _impl, override=True)
# Not used by any registered kernel: the native kernels' schedules take it (``intrin=``) in the
# tests, which run the kernels' packing, repack, loop order and epilogue on CPUs without
# AVX512-BF16 against the same bit-exact reference.
TensorIntrin.register(DPBF16PS_16X2_EMULATED, _desc, _emulated_impl, override=True)


# --- AMX-BF16 tiles: tdpbf16ps, M pixels x 16 channels x 32 input channels per instruction ------
AMX_ROWS = 16  # the most rows (output pixels) a tile holds
AMX_N = 16  # fp32 output channels per tile row (64 bytes)
AMX_K = 32  # bf16 input channels per tile op (16 pairs: 64 bytes per row of A)
_F32_MIN_NORMAL = 1.1754943508222875e-38


def _amx_bf16_descs(m: int):  # type: ignore[no-untyped-def]
    """The three descriptions (what tensorize matches): zero the ``m x 16`` fp32 tile and store
    it (``intrinsics.amx_tile_ops``), and accumulate ``m`` pixels x 16 channels over 16
    input-channel pairs."""
    zero_desc, _, store_desc, _ = amx_tile_ops(m, "float32")

    @T.prim_func(s_tir=True)
    def dot_desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        sa = T.int32()
        sc = T.int32()
        A = T.match_buffer(a, (m, 32), "uint16", offset_factor=1, strides=[sa, 1])
        B = T.match_buffer(b, (16, 16, 2), "uint16", offset_factor=1)
        C = T.match_buffer(c, (m, 16), "float32", offset_factor=1, strides=[sc, 1])
        with T.sblock("root"):
            T.reads(C[0:m, 0:16], A[0:m, 0:32], B[0:16, 0:16, 0:2])
            T.writes(C[0:m, 0:16])
            for i, j, kf, ks in T.grid(m, 16, 16, 2):
                with T.sblock("update"):
                    vi, vj, vkf, vks = T.axis.remap("SSRR", [i, j, kf, ks])
                    C[vi, vj] = C[vi, vj] \
                        + T.reinterpret("float32", T.shift_left(T.Cast("uint32", A[vi, vkf * 2 + vks]), T.uint32(16))) \
                        * T.reinterpret("float32", T.shift_left(T.Cast("uint32", B[vkf, vj, vks]), T.uint32(16)))

    return zero_desc, dot_desc, store_desc


def _amx_bf16_impls(m: int):  # type: ignore[no-untyped-def]
    """The AMX implementations: ``ldtilecfg`` + ``tilezero`` tmm0; two ``tileloadd`` (tmm1: the
    ``m`` pixel rows of 32 bf16, row stride = the pixel stride in bytes; tmm2: the 16 pair rows
    of 16 channels x 2 bf16, 64 bytes each) + ``tdpbf16ps tmm0, tmm1, tmm2``; ``tilestored``
    tmm0 into the fp32 tile buffer."""
    _, zero_impl, _, store_impl = amx_tile_ops(m, "float32")

    @T.prim_func(s_tir=True)
    def dot_impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        sa = T.int32()
        sc = T.int32()
        A = T.match_buffer(a, (m, 32), "uint16", offset_factor=1, strides=[sa, 1])
        B = T.match_buffer(b, (16, 16, 2), "uint16", offset_factor=1)
        C = T.match_buffer(c, (m, 16), "float32", offset_factor=1, strides=[sc, 1])
        with T.sblock("root"):
            T.reads(C[0:m, 0:16], A[0:m, 0:32], B[0:16, 0:16, 0:2])
            T.writes(C[0:m, 0:16])
            T.evaluate(T.call_llvm_intrin("void", "llvm.x86.tileloadd64", T.uint8(1),
                                          T.address_of(A[0, 0]), T.Cast("int64", sa * 2)))
            T.evaluate(T.call_llvm_intrin("void", "llvm.x86.tileloadd64", T.uint8(2),
                                          T.address_of(B[0, 0, 0]), T.int64(64)))
            T.evaluate(T.call_llvm_intrin("void", "llvm.x86.tdpbf16ps", T.uint8(0), T.uint8(1), T.uint8(2)))

    return zero_impl, dot_impl, store_impl


def _amx_bf16_emulated_impls(m: int):  # type: ignore[no-untyped-def]
    """The same three operations on memory (any CPU), ``tdpbf16ps`` by the SDM's pseudo-code:
    the tile is the fp32 buffer itself (zeroed, accumulated in place, copied out), and each
    output of one instruction sums its even-element products and its odd-element products in
    two separate fp32 partials from +0 (one ``llvm.fma.f32`` per pair, in pair order), then
    adds the two partials and adds that to the accumulator; DAZ on the bf16 inputs, FTZ after
    every operation (a denormal becomes a zero of its sign: ``r * 0``)."""

    @T.prim_func(s_tir=True)
    def zero_impl(c: T.handle) -> None:
        sc = T.int32()
        C = T.match_buffer(c, (m, 16), "float32", offset_factor=1, strides=[sc, 1])
        with T.sblock("root"):
            T.reads()
            T.writes(C[0:m, 0:16])
            for i, j in T.grid(m, 16):
                C[i, j] = T.float32(0)

    @T.prim_func(s_tir=True)
    def dot_impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        sa = T.int32()
        sc = T.int32()
        A = T.match_buffer(a, (m, 32), "uint16", offset_factor=1, strides=[sa, 1])
        B = T.match_buffer(b, (16, 16, 2), "uint16", offset_factor=1)
        C = T.match_buffer(c, (m, 16), "float32", offset_factor=1, strides=[sc, 1])
        with T.sblock("root"):
            T.reads(C[0:m, 0:16], A[0:m, 0:32], B[0:16, 0:16, 0:2])
            T.writes(C[0:m, 0:16])
            part = T.alloc_buffer((2,), "float32", scope="local")
            for i, j in T.grid(m, 16):
                part[0] = T.float32(0)
                part[1] = T.float32(0)
                for k, e in T.grid(16, 2):
                    x = T.reinterpret("float32", T.shift_left(T.Cast("uint32", A[i, k * 2 + e]), T.uint32(16)))
                    w = T.reinterpret("float32", T.shift_left(T.Cast("uint32", B[k, j, e]), T.uint32(16)))
                    x0 = T.Select(T.fabs(x) < T.float32(_F32_MIN_NORMAL), x * T.float32(0), x)
                    w0 = T.Select(T.fabs(w) < T.float32(_F32_MIN_NORMAL), w * T.float32(0), w)
                    r = T.call_llvm_pure_intrin("float32", "llvm.fma.f32", x0, w0, part[e])
                    part[e] = T.Select(T.fabs(r) < T.float32(_F32_MIN_NORMAL), r * T.float32(0), r)
                s = part[0] + part[1]
                s0 = T.Select(T.fabs(s) < T.float32(_F32_MIN_NORMAL), s * T.float32(0), s)
                t = C[i, j] + s0
                C[i, j] = T.Select(T.fabs(t) < T.float32(_F32_MIN_NORMAL), t * T.float32(0), t)

    @T.prim_func(s_tir=True)
    def store_impl(c: T.handle, d: T.handle) -> None:
        sc = T.int32()
        sd = T.int32()
        C = T.match_buffer(c, (m, 16), "float32", offset_factor=1, strides=[sc, 1])
        D = T.match_buffer(d, (m, 16), "float32", offset_factor=1, strides=[sd, 1])
        with T.sblock("root"):
            T.reads(C[0:m, 0:16])
            T.writes(D[0:m, 0:16])
            for i, j in T.grid(m, 16):
                D[i, j] = C[i, j]

    return zero_impl, dot_impl, store_impl


@functools.cache
def amx_bf16_intrinsics(m: int, emulated: bool = False) -> tuple[str, str, str]:
    """Register (once) and name the three AMX-BF16 intrinsics for ``m`` tile rows (output
    pixels), the bf16 twin of ``schedules.intrinsics.amx_intrinsics``.

    tmm0 = the ``m x 16`` fp32 accumulator, tmm1 = activations (``m`` rows of 32 bf16 input
    channels = 16 pairs, row stride = the pixel stride), tmm2 = weights (16 rows, one per input
    channel pair, of 16 output channels x 2 bf16: the native kernels' ``[.., ic/2, oc, 2]``
    packing with ``oc_bn=16``). ``zero`` (the init block: ``ldtilecfg`` + ``tilezero``), ``dot``
    (the update: two ``tileloadd`` + ``tdpbf16ps``; the accumulator stays in tmm0 between
    calls), ``store`` (``tilestored`` into the fp32 tile buffer the epilogue reads). Correct
    because a thread finishes one output tile before it starts the next (the schedule's loop
    order). Every process must request AMX permission first (``tvmq.runtime`` does: the one
    XTILEDATA permission covers AMX-INT8 and AMX-BF16).

    What ``tdpbf16ps`` computes is not what ``vdpbf16ps`` computes (see ``reference.
    bf16_amx_step``). ``emulated``: the same descriptions implemented on memory by that
    definition (``_amx_bf16_emulated_impls``, any CPU), for the tests.
    """
    if not 1 <= m <= AMX_ROWS:
        raise ValueError(f"AMX tiles have 1..{AMX_ROWS} rows, got {m}")
    impls = _amx_bf16_emulated_impls(m) if emulated else _amx_bf16_impls(m)
    tag = "_emulated" if emulated else ""
    names = (f"tvmq_amx_bf16_zero_{m}{tag}", f"tvmq_amx_bf16_dot_{m}x16x32{tag}", f"tvmq_amx_bf16_store_{m}{tag}")
    for name, desc, impl in zip(names, _amx_bf16_descs(m), impls):
        TensorIntrin.register(name, desc, impl, override=True)
    return names
