"""The AVX512-BF16 dot-product tensor intrinsic: ``vdpbf16ps`` zmm, 16 fp32 lanes x 2 bf16.

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

from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T

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
    from tvm import tirx

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
