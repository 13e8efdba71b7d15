"""x86 integer dot-product tensor intrinsics: ``C[i] += sum_k int32(A[k]) * int32(B[i, k])``.

One ``DotProduct`` per instruction family; each is a TVM ``TensorIntrin`` (a description the
scheduler matches, an implementation that emits the instruction) registered under ``name`` when
this module is imported, so tuning records that use it can be replayed:

=================  =====  =====  ========  ====================================================
name               lanes  group  A dtype   instruction (all exact: no saturation anywhere)
=================  =====  =====  ========  ====================================================
``tvmq_pmaddwd_8x2``  8      2   int16     AVX2 ``vpmaddwd`` ymm: 16 x i16*i16 -> 8 x i32 pairs
``tvmq_pmaddwd_16x2`` 16     2   int16     AVX-512BW ``vpmaddwd`` zmm
``tvmq_vnni_16x4``    16     4   uint8     AVX512-VNNI ``vpdpbusd`` zmm: u8*s8 quads -> i32
=================  =====  =====  ========  ====================================================

``A`` (``group`` input channels of one pixel) is broadcast to every lane, ``B`` is ``lanes``
output channels x ``group`` input channels of int8 weights (sign-extended to int16 for
``vpmaddwd``). The *pixel* forms (``..._px``, for the pointwise GEMM) swap the roles: ``lanes``
pixels x ``group`` interleaved input channels of uint8 activations (zero-extended in the
register) against ``group`` weights broadcast, ``C[i] += sum_k int32(A[i, k]) * int32(B[k])``:

=====================  =====  =====  ======================================================
``tvmq_pmaddwd_px8x2``   8      2    AVX2 ``vpmovzxbw`` + ``vpmaddwd`` ymm
``tvmq_pmaddwd_px16x2``  16     2    AVX-512BW, zmm
``tvmq_vnni_px16x4``     16     4    AVX512-VNNI ``vpdpbusd`` zmm (activations unsigned)
=====================  =====  =====  ======================================================
 The pmaddwd forms take the activations already widened to int16 (the kernel's
input repack does it): |u8 * s8| <= 32640, so a pair sum fits in int16 x int16 -> int32 exactly,
unlike ``vpmaddubsw`` (u8 x s8 pairs summed into a *saturating* int16), which onnxruntime and
TVM's ``dot_16x4_avx512`` use and which is not exact for full-range weights. The VNNI form is
TVM's shipped ``dot_16x4_vnni`` with its operands passed as ``64 x i8`` (the shipped one fails
LLVM 22's verifier).
"""

from __future__ import annotations

from dataclasses import dataclass

from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T


@dataclass(frozen=True)
class DotProduct:
    name: str
    lanes: int  # output channels per instruction (int32 accumulators)
    group: int  # input channels reduced per instruction
    a_dtype: str  # the activations' storage type in the kernel's repacked input
    isa: str  # the ISA level that has the instruction (``target_features.ISA_LEVELS``)


# --- AVX2 vpmaddwd, 8 lanes x 2 ---------------------------------------------------------------
@T.prim_func(s_tir=True)
def _pmaddwd_8x2_desc(A: T.Buffer((2,), "int16", offset_factor=1),
                      B: T.Buffer((8, 2), "int8", offset_factor=1),
                      C: T.Buffer((8,), "int32", offset_factor=1)) -> None:
    with T.sblock("root"):
        T.reads(C[0:8], A[0:2], B[0:8, 0:2])
        T.writes(C[0:8])
        for i in T.serial(0, 8):
            for k in T.serial(0, 2):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")


@T.prim_func(s_tir=True)
def _pmaddwd_8x2_impl(A: T.Buffer((2,), "int16", offset_factor=1),
                      B: T.Buffer((8, 2), "int8", offset_factor=1),
                      C: T.Buffer((8,), "int32", offset_factor=1)) -> None:
    with T.sblock("root"):
        T.reads(C[0:8], A[0:2], B[0:8, 0:2])
        T.writes(C[0:8])
        a = T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], "int16x2"), dtype="int32"), 8),
                          dtype="int16x16")
        b = T.cast(B.vload([0, 0], "int8x16"), "int16x16")
        C[T.ramp(T.int32(0), 1, 8)] = C.vload([0], "int32x8") + T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"), a, b, dtype="int32x8")


# --- AVX-512BW vpmaddwd, 16 lanes x 2 ---------------------------------------------------------
@T.prim_func(s_tir=True)
def _pmaddwd_16x2_desc(A: T.Buffer((2,), "int16", offset_factor=1),
                       B: T.Buffer((16, 2), "int8", offset_factor=1),
                       C: T.Buffer((16,), "int32", offset_factor=1)) -> None:
    with T.sblock("root"):
        T.reads(C[0:16], A[0:2], B[0:16, 0:2])
        T.writes(C[0:16])
        for i in T.serial(0, 16):
            for k in T.serial(0, 2):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")


@T.prim_func(s_tir=True)
def _pmaddwd_16x2_impl(A: T.Buffer((2,), "int16", offset_factor=1),
                       B: T.Buffer((16, 2), "int8", offset_factor=1),
                       C: T.Buffer((16,), "int32", offset_factor=1)) -> None:
    with T.sblock("root"):
        T.reads(C[0:16], A[0:2], B[0:16, 0:2])
        T.writes(C[0:16])
        a = T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], "int16x2"), dtype="int32"), 16),
                          dtype="int16x32")
        b = T.cast(B.vload([0, 0], "int8x32"), "int16x32")
        C[T.ramp(T.int32(0), 1, 16)] = C.vload([0], "int32x16") + T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.x86.avx512.pmaddw.d.512"), a, b, dtype="int32x16")


# --- AVX512-VNNI vpdpbusd, 16 lanes x 4 -------------------------------------------------------
@T.prim_func(s_tir=True)
def _vnni_16x4_desc(A: T.Buffer((4,), "uint8", offset_factor=1),
                    B: T.Buffer((16, 4), "int8", offset_factor=1),
                    C: T.Buffer((16,), "int32", offset_factor=1)) -> None:
    with T.sblock("root"):
        T.reads(C[0:16], A[0:4], B[0:16, 0:4])
        T.writes(C[0:16])
        for i in T.serial(0, 16):
            for k in T.serial(0, 4):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")


@T.prim_func(s_tir=True)
def _vnni_16x4_impl(A: T.Buffer((4,), "uint8", offset_factor=1),
                    B: T.Buffer((16, 4), "int8", offset_factor=1),
                    C: T.Buffer((16,), "int32", offset_factor=1)) -> None:
    with T.sblock("root"):
        T.reads(C[0:16], A[0:4], B[0:16, 0:4])
        T.writes(C[0:16])
        a = T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], "uint8x4"), dtype="int32"), 16),
                          dtype="uint8x64")
        C[T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"),
            C.vload([0], "int32x16"), a, B.vload([0, 0], "int8x64"), dtype="int32x16")


# --- pixel forms: lanes pixels x group channels (uint8) . group weights (broadcast) ----------
def _px_desc(lanes: int, group: int):  # type: ignore[no-untyped-def]
    @T.prim_func(s_tir=True)
    def desc(A: T.Buffer((lanes, group), "uint8", offset_factor=1),
             B: T.Buffer((group,), "int8", offset_factor=1),
             C: T.Buffer((lanes,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:lanes, 0:group], B[0:group])
            T.writes(C[0:lanes])
            for i in T.serial(0, lanes):
                for k in T.serial(0, group):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        C[vi] = C[vi] + T.cast(A[vi, vk], "int32") * T.cast(B[vk], "int32")
    return desc


def _px_pmaddwd_impl(lanes: int, llvm_name: str):  # type: ignore[no-untyped-def]
    w16 = f"int16x{2 * lanes}"
    i32 = f"int32x{lanes}"

    @T.prim_func(s_tir=True)
    def impl(A: T.Buffer((lanes, 2), "uint8", offset_factor=1),
             B: T.Buffer((2,), "int8", offset_factor=1),
             C: T.Buffer((lanes,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:lanes, 0:2], B[0:2])
            T.writes(C[0:lanes])
            a = T.cast(A.vload([0, 0], f"uint8x{2 * lanes}"), w16)
            b = T.cast(T.reinterpret(T.broadcast(T.reinterpret(B.vload([0], "int8x2"), dtype="int16"),
                                                 lanes), dtype=f"int8x{2 * lanes}"), w16)
            C[T.ramp(T.int32(0), 1, lanes)] = C.vload([0], i32) + T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id(llvm_name), a, b, dtype=i32)
    return impl


@T.prim_func(s_tir=True)
def _px_vnni_16x4_impl(A: T.Buffer((16, 4), "uint8", offset_factor=1),
                       B: T.Buffer((4,), "int8", offset_factor=1),
                       C: T.Buffer((16,), "int32", offset_factor=1)) -> None:
    with T.sblock("root"):
        T.reads(C[0:16], A[0:16, 0:4], B[0:4])
        T.writes(C[0:16])
        b = T.reinterpret(T.broadcast(T.reinterpret(B.vload([0], "int8x4"), dtype="int32"), 16),
                          dtype="int8x64")
        C[T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"),
            C.vload([0], "int32x16"), A.vload([0, 0], "uint8x64"), b, dtype="int32x16")


PMADDWD_8X2 = DotProduct("tvmq_pmaddwd_8x2", 8, 2, "int16", "avx2")
PMADDWD_16X2 = DotProduct("tvmq_pmaddwd_16x2", 16, 2, "int16", "avx512")
VNNI_16X4 = DotProduct("tvmq_vnni_16x4", 16, 4, "uint8", "avx512_vnni")
DOT_PRODUCTS = {d.name: d for d in (PMADDWD_8X2, PMADDWD_16X2, VNNI_16X4)}
# pixel forms, by the ISA level that has them (A is always uint8 here)
PX_PMADDWD_8X2 = DotProduct("tvmq_pmaddwd_px8x2", 8, 2, "uint8", "avx2")
PX_PMADDWD_16X2 = DotProduct("tvmq_pmaddwd_px16x2", 16, 2, "uint8", "avx512")
PX_VNNI_16X4 = DotProduct("tvmq_vnni_px16x4", 16, 4, "uint8", "avx512_vnni")
PIXEL_DOT_PRODUCTS = {d.name: d for d in (PX_PMADDWD_8X2, PX_PMADDWD_16X2, PX_VNNI_16X4)}

for _dot, _desc, _impl in ((PMADDWD_8X2, _pmaddwd_8x2_desc, _pmaddwd_8x2_impl),
                           (PMADDWD_16X2, _pmaddwd_16x2_desc, _pmaddwd_16x2_impl),
                           (VNNI_16X4, _vnni_16x4_desc, _vnni_16x4_impl)):
    TensorIntrin.register(_dot.name, _desc, _impl, override=True)
for _dot, _impl in ((PX_PMADDWD_8X2, _px_pmaddwd_impl(8, "llvm.x86.avx2.pmadd.wd")),
                    (PX_PMADDWD_16X2, _px_pmaddwd_impl(16, "llvm.x86.avx512.pmaddw.d.512")),
                    (PX_VNNI_16X4, _px_vnni_16x4_impl)):
    TensorIntrin.register(_dot.name, _px_desc(_dot.lanes, _dot.group), _impl, override=True)
