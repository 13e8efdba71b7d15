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
``..._px8x2_s16``        8      2    AVX2, int16 activations (W8A16) loaded as they are
``..._px16x2_s16``       16     2    AVX-512BW, int16 activations
=====================  =====  =====  ======================================================
 The pmaddwd forms take the activations already widened to int16 (the kernel's
input repack does it): |u8 * s8| <= 32640, so a pair sum fits in int16 x int16 -> int32 exactly,
unlike ``vpmaddubsw`` (u8 x s8 pairs summed into a *saturating* int16), which onnxruntime and
TVM's ``dot_16x4_avx512`` use and which is not exact for full-range weights. The VNNI form is
TVM's shipped ``dot_16x4_vnni`` with its operands passed as ``64 x i8`` (the shipped one fails
LLVM 22's verifier).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from tvm import tirx
from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T


@dataclass(frozen=True)
class DotProduct:
    name: str
    lanes: int  # output channels per instruction (int32 accumulators)
    group: int  # input channels reduced per instruction
    a_dtype: str  # the activations' storage type in the kernel's repacked input
    isa: str  # the ISA level that has the instruction (``target_features.ISA_LEVELS``)


# --- channel forms: group channels of one pixel (broadcast) . lanes x group weights ----------
def _desc(lanes: int, group: int, a_dtype: str):  # type: ignore[no-untyped-def]
    @T.prim_func(s_tir=True)
    def desc(A: T.Buffer((group,), a_dtype, offset_factor=1),
             B: T.Buffer((lanes, group), "int8", offset_factor=1),
             C: T.Buffer((lanes,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:group], B[0:lanes, 0:group])
            T.writes(C[0:lanes])
            for i in T.serial(0, lanes):
                for k in T.serial(0, group):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")
    return desc


def _pmaddwd_impl(lanes: int, llvm_name: str):  # type: ignore[no-untyped-def]
    """AVX2 (8 lanes) / AVX-512BW (16 lanes) ``vpmaddwd``: the int16 pair broadcast as one
    int32, the int8 weights sign-extended to int16."""
    w16 = f"int16x{2 * lanes}"
    i32 = f"int32x{lanes}"

    @T.prim_func(s_tir=True)
    def impl(A: T.Buffer((2,), "int16", offset_factor=1),
             B: T.Buffer((lanes, 2), "int8", offset_factor=1),
             C: T.Buffer((lanes,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:2], B[0:lanes, 0:2])
            T.writes(C[0:lanes])
            a = T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], "int16x2"), dtype="int32"), lanes),
                              dtype=w16)
            b = T.cast(B.vload([0, 0], f"int8x{2 * lanes}"), w16)
            C[T.ramp(T.int32(0), 1, lanes)] = C.vload([0], i32) + T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id(llvm_name), a, b, dtype=i32)
    return impl


def _pmaddubsw_impl(lanes: int = 8):  # type: ignore[no-untyped-def]
    """AVX2 ``vpmaddubsw`` + ``vpmaddwd`` (by ones) + ``vpaddd``: the four uint8 channels
    broadcast as one int32, u8 x s8 pairs summed into int16 (*saturating*), the two pair sums of
    each lane into int32. Exact only while no pair sum leaves int16: weights whose same-signed
    pairs have ``|w0| + |w1| <= 128`` (``schedules.quant.pairs_fit_int16``), e.g. int4 weights."""
    i32 = f"int32x{lanes}"
    u8 = f"uint8x{4 * lanes}"
    s8 = f"int8x{4 * lanes}"
    s16 = f"int16x{2 * lanes}"

    @T.prim_func(s_tir=True)
    def impl(A: T.Buffer((4,), "uint8", offset_factor=1),
             B: T.Buffer((lanes, 4), "int8", offset_factor=1),
             C: T.Buffer((lanes,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:4], B[0:lanes, 0:4])
            T.writes(C[0:lanes])
            a = T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], "uint8x4"), dtype="int32"), lanes), dtype=u8)
            pairs = T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.ub.sw"),
                                            a, B.vload([0, 0], s8), dtype=s16)
            C[T.ramp(T.int32(0), 1, lanes)] = C.vload([0], i32) + T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"), pairs, T.broadcast(T.int16(1), 2 * lanes),
                dtype=i32)
    return impl


# --- AVX512-VNNI vpdpbusd, 16 lanes x 4 -------------------------------------------------------
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
def _px_desc(lanes: int, group: int, a_dtype: str = "uint8"):  # type: ignore[no-untyped-def]
    @T.prim_func(s_tir=True)
    def desc(A: T.Buffer((lanes, group), a_dtype, offset_factor=1),
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


def _px_pmaddwd_impl(lanes: int, llvm_name: str, a_dtype: str = "uint8"):  # type: ignore[no-untyped-def]
    w16 = f"int16x{2 * lanes}"
    i32 = f"int32x{lanes}"
    a_vec = f"{a_dtype}x{2 * lanes}"

    @T.prim_func(s_tir=True)
    def impl(A: T.Buffer((lanes, 2), a_dtype, offset_factor=1),
             B: T.Buffer((2,), "int8", offset_factor=1),
             C: T.Buffer((lanes,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:lanes, 0:2], B[0:2])
            T.writes(C[0:lanes])
            a = T.cast(A.vload([0, 0], a_vec), w16)
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


# --- AMX tiles: tdpbusd, M pixels x 16 channels x 64 input channels per instruction ---------
@functools.lru_cache(maxsize=None)
def amx_tile_ops(m: int, acc_dtype: str):  # type: ignore[no-untyped-def]
    """The accumulator tile's zero and store intrinsics, for every AMX dot product (``tdpbusd``
    here, ``tdpbf16ps`` in ``intrinsics_bf16``): ``(zero_desc, zero_impl, store_desc,
    store_impl)`` over an ``m x 16`` tile of ``acc_dtype`` (int32 / float32, 4 bytes: 64 bytes
    a row). ``zero`` is the init block (``ldtilecfg``: tmm0 = C with ``m`` rows, tmm1 = A with
    ``m`` rows, tmm2 = B with 16 rows, 64 bytes each; then ``tilezero`` tmm0), ``store`` the
    ``tilestored`` of tmm0 into the tile's buffer, which the epilogue reads."""
    if not 1 <= m <= 16:
        raise ValueError(f"AMX tiles have 1..16 rows, got {m}")
    zero = tirx.const(0, acc_dtype)

    @T.prim_func(s_tir=True)
    def zero_desc(c: T.handle) -> None:
        sc = T.int32()
        C = T.match_buffer(c, (m, 16), acc_dtype, offset_factor=1, strides=[sc, 1])
        with T.sblock("root"):
            T.reads()
            T.writes(C[0:m, 0:16])
            for i, j in T.grid(m, 16):
                with T.sblock("init"):
                    vi, vj = T.axis.remap("SS", [i, j])
                    C[vi, vj] = zero

    @T.prim_func(s_tir=True)
    def zero_impl(c: T.handle) -> None:
        sc = T.int32()
        C = T.match_buffer(c, (m, 16), acc_dtype, offset_factor=1, strides=[sc, 1])
        with T.sblock("root"):
            T.reads()
            T.writes(C[0:m, 0:16])
            cfg = T.alloc_buffer((64,), "uint8", scope="local")
            for i in range(64):
                cfg[i] = T.uint8(0)
            cfg[0] = T.uint8(1)  # palette 1
            for t in range(3):
                cfg[16 + 2 * t] = T.uint8(64)  # bytes per row of tmm0..2
            cfg[48] = T.uint8(m)  # rows: tmm0 (C)
            cfg[49] = T.uint8(m)  # tmm1 (A)
            cfg[50] = T.uint8(16)  # tmm2 (B)
            T.evaluate(T.call_llvm_intrin("void", "llvm.x86.ldtilecfg", T.address_of(cfg[0])))
            T.evaluate(T.call_llvm_intrin("void", "llvm.x86.tilezero", T.uint8(0)))

    @T.prim_func(s_tir=True)
    def store_desc(c: T.handle, d: T.handle) -> None:
        sc = T.int32()
        sd = T.int32()
        C = T.match_buffer(c, (m, 16), acc_dtype, offset_factor=1, strides=[sc, 1])
        D = T.match_buffer(d, (m, 16), acc_dtype, offset_factor=1, strides=[sd, 1])
        with T.sblock("root"):
            T.reads(C[0:m, 0:16])
            T.writes(D[0:m, 0:16])
            for i, j in T.grid(m, 16):
                with T.sblock("store"):
                    vi, vj = T.axis.remap("SS", [i, j])
                    D[vi, vj] = C[vi, vj]

    @T.prim_func(s_tir=True)
    def store_impl(c: T.handle, d: T.handle) -> None:
        sc = T.int32()
        sd = T.int32()
        C = T.match_buffer(c, (m, 16), acc_dtype, offset_factor=1, strides=[sc, 1])
        D = T.match_buffer(d, (m, 16), acc_dtype, offset_factor=1, strides=[sd, 1])
        with T.sblock("root"):
            T.reads(C[0:m, 0:16])
            T.writes(D[0:m, 0:16])
            T.evaluate(T.call_llvm_intrin("void", "llvm.x86.tilestored64", T.uint8(0),
                                          T.address_of(D[0, 0]), T.Cast("int64", sd * 4)))

    return zero_desc, zero_impl, store_desc, store_impl


def amx_intrinsics(m: int) -> tuple[str, str, str]:
    """Register (once) and name the three AMX intrinsics for ``m`` tile rows (output pixels).

    tmm0 = the ``m x 16`` int32 accumulator, tmm1 = activations (``m`` rows of 64 uint8 input
    channels, row stride = the pixel stride), tmm2 = weights (16 rows of 16 output channels x 4,
    VNNI-packed). ``zero`` and ``store``: ``amx_tile_ops``; ``dot`` (the update: two
    ``tileloadd`` + ``tdpbusd``; the accumulator stays in tmm0 between calls). Correct because a
    thread finishes one output tile before it starts the next (the schedule's loop order).
    Every process must request AMX permission first (``tvmq.runtime`` does).
    """
    zero_desc, zero_impl, store_desc, store_impl = amx_tile_ops(m, "int32")

    @T.prim_func(s_tir=True)
    def dot_desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        sa = T.int32()
        sc = T.int32()
        A = T.match_buffer(a, (m, 64), "uint8", offset_factor=1, strides=[sa, 1])
        B = T.match_buffer(b, (16, 16, 4), "int8", offset_factor=1)
        C = T.match_buffer(c, (m, 16), "int32", offset_factor=1, strides=[sc, 1])
        with T.sblock("root"):
            T.reads(C[0:m, 0:16], A[0:m, 0:64], B[0:16, 0:16, 0:4])
            T.writes(C[0:m, 0:16])
            for i, j, kf, ks in T.grid(m, 16, 16, 4):
                with T.sblock("update"):
                    vi, vj, vkf, vks = T.axis.remap("SSRR", [i, j, kf, ks])
                    C[vi, vj] = C[vi, vj] + T.cast(A[vi, vkf * 4 + vks], "int32") * T.cast(B[vkf, vj, vks], "int32")

    @T.prim_func(s_tir=True)
    def dot_impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        sa = T.int32()
        sc = T.int32()
        A = T.match_buffer(a, (m, 64), "uint8", offset_factor=1, strides=[sa, 1])
        B = T.match_buffer(b, (16, 16, 4), "int8", offset_factor=1)
        C = T.match_buffer(c, (m, 16), "int32", offset_factor=1, strides=[sc, 1])
        with T.sblock("root"):
            T.reads(C[0:m, 0:16], A[0:m, 0:64], B[0:16, 0:16, 0:4])
            T.writes(C[0:m, 0:16])
            T.evaluate(T.call_llvm_intrin("void", "llvm.x86.tileloadd64", T.uint8(1),
                                          T.address_of(A[0, 0]), T.Cast("int64", sa)))
            T.evaluate(T.call_llvm_intrin("void", "llvm.x86.tileloadd64", T.uint8(2),
                                          T.address_of(B[0, 0, 0]), T.int64(64)))
            T.evaluate(T.call_llvm_intrin("void", "llvm.x86.tdpbusd", T.uint8(0), T.uint8(1), T.uint8(2)))

    names = (f"tvmq_amx_zero_{m}", f"tvmq_amx_dot_{m}x16x64", f"tvmq_amx_store_{m}")
    for name, desc, impl in zip(names, (zero_desc, dot_desc, store_desc), (zero_impl, dot_impl, store_impl)):
        TensorIntrin.register(name, desc, impl, override=True)
    return names


PMADDWD_8X2 = DotProduct("tvmq_pmaddwd_8x2", 8, 2, "int16", "avx2")
PMADDWD_16X2 = DotProduct("tvmq_pmaddwd_16x2", 16, 2, "int16", "avx512")
VNNI_16X4 = DotProduct("tvmq_vnni_16x4", 16, 4, "uint8", "avx512_vnni")
# exact only for weights whose pairs fit int16 (``_pmaddubsw_impl``): never a default
PMADDUBSW_8X4 = DotProduct("tvmq_pmaddubsw_8x4", 8, 4, "uint8", "avx2")
# AMX: 16 output channels x 64 input channels (as 16 x 4) per tile op, ``m`` pixels at a time
AMX_16X64 = DotProduct("tvmq_amx", 16, 4, "uint8", "amx")
DOT_PRODUCTS = {d.name: d for d in (PMADDWD_8X2, PMADDWD_16X2, VNNI_16X4, AMX_16X64, PMADDUBSW_8X4)}
# pixel forms, by the ISA level that has them (A is always uint8 here)
PX_PMADDWD_8X2 = DotProduct("tvmq_pmaddwd_px8x2", 8, 2, "uint8", "avx2")
PX_PMADDWD_16X2 = DotProduct("tvmq_pmaddwd_px16x2", 16, 2, "uint8", "avx512")
PX_VNNI_16X4 = DotProduct("tvmq_vnni_px16x4", 16, 4, "uint8", "avx512_vnni")
# int16 activations (W8A16): the pixel vectors are loaded as they are, no widening
PX_PMADDWD_8X2_S16 = DotProduct("tvmq_pmaddwd_px8x2_s16", 8, 2, "int16", "avx2")
PX_PMADDWD_16X2_S16 = DotProduct("tvmq_pmaddwd_px16x2_s16", 16, 2, "int16", "avx512")
PIXEL_DOT_PRODUCTS = {d.name: d for d in (PX_PMADDWD_8X2, PX_PMADDWD_16X2, PX_VNNI_16X4,
                                          PX_PMADDWD_8X2_S16, PX_PMADDWD_16X2_S16)}

for _dot, _impl in ((PMADDWD_8X2, _pmaddwd_impl(8, "llvm.x86.avx2.pmadd.wd")),
                   (PMADDWD_16X2, _pmaddwd_impl(16, "llvm.x86.avx512.pmaddw.d.512")),
                   (VNNI_16X4, _vnni_16x4_impl), (PMADDUBSW_8X4, _pmaddubsw_impl(8))):
    TensorIntrin.register(_dot.name, _desc(_dot.lanes, _dot.group, _dot.a_dtype), _impl, override=True)
for _dot, _impl in ((PX_PMADDWD_8X2, _px_pmaddwd_impl(8, "llvm.x86.avx2.pmadd.wd")),
                    (PX_PMADDWD_16X2, _px_pmaddwd_impl(16, "llvm.x86.avx512.pmaddw.d.512")),
                    (PX_VNNI_16X4, _px_vnni_16x4_impl)):
    TensorIntrin.register(_dot.name, _px_desc(_dot.lanes, _dot.group), _impl, override=True)
for _dot, _llvm in ((PX_PMADDWD_8X2_S16, "llvm.x86.avx2.pmadd.wd"),
                    (PX_PMADDWD_16X2_S16, "llvm.x86.avx512.pmaddw.d.512")):
    TensorIntrin.register(_dot.name, _px_desc(_dot.lanes, 2, "int16"),
                          _px_pmaddwd_impl(_dot.lanes, _llvm, "int16"), override=True)
