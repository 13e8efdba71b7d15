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

import tvm
from tvm import s_tir, tirx
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
AMX_TILES = 8  # tile registers tmm0..tmm7


def amx_tile_plan(rows: int, cols: int) -> tuple[int, int]:
    """The tile registers of a block of ``rows x cols`` accumulator tiles (``rows`` groups of
    pixels, ``cols`` groups of 16 channels): the accumulators first (tmm ``i * cols + j``), then
    one A tile per row (from the first returned), then one B tile per column (from the second);
    at most ``AMX_TILES`` in all."""
    if rows < 1 or cols < 1 or rows * cols + rows + cols > AMX_TILES:
        raise ValueError(f"a block of {rows} x {cols} AMX tiles needs {rows * cols + rows + cols} "
                         f"tile registers; there are {AMX_TILES}")
    return rows * cols, rows * cols + rows


def _block_buffer(m: int, rows: int, width: int):  # type: ignore[no-untyped-def]
    """A block's buffer: shape ``(m, width)`` for one row of tiles, ``(rows, m, width)`` else;
    its whole region; fresh symbolic strides (the last 1)."""
    shape = (m, width) if rows == 1 else (rows, m, width)
    strides = [*(tirx.Var(f"s{i}", "int32") for i in range(len(shape) - 1)), 1]
    return shape, tuple(slice(0, e) for e in shape), strides


@functools.lru_cache(maxsize=None)
def amx_tile_ops(m: int, acc_dtype: str, rows: int = 1, cols: int = 1):  # type: ignore[no-untyped-def]
    """The accumulator tiles' zero and store intrinsics, for every AMX dot product (``tdpbusd``
    here, ``tdpbf16ps`` in ``intrinsics_bf16``): ``(zero_desc, zero_impl, store_desc,
    store_impl)`` over a block of ``rows x cols`` tiles of ``m`` pixels x 16 channels of
    ``acc_dtype`` (int32 / float32, 4 bytes: 64 bytes a tile row), a buffer ``(m, 16 * cols)``
    (one row of tiles) or ``(rows, m, 16 * cols)``. ``zero`` is the init block (``ldtilecfg``
    of ``amx_tile_plan``'s registers: accumulators and A tiles ``m`` rows, B tiles 16 rows, 64
    bytes each; then ``tilezero`` of each accumulator), ``store`` the ``tilestored`` of each
    accumulator into the block's buffer, which the epilogue reads. Over 80 lines: four
    TVMScript functions over the same block buffer."""
    if not 1 <= m <= 16:
        raise ValueError(f"AMX tiles have 1..16 rows, got {m}")
    first_a, first_b = amx_tile_plan(rows, cols)
    zero = tirx.const(0, acc_dtype)
    flat = rows == 1

    def buffer():  # type: ignore[no-untyped-def]
        return _block_buffer(m, rows, 16 * cols)

    shape, full, st = buffer()

    @T.prim_func(s_tir=True)
    def zero_desc(c: T.handle) -> None:
        C = T.match_buffer(c, shape, acc_dtype, offset_factor=1, strides=st)
        with T.sblock("root"):
            T.reads()
            T.writes(C[full])
            for idx in T.grid(*shape):
                with T.sblock("init"):
                    if flat:
                        vi, vj = T.axis.remap("SS", idx)
                        C[vi, vj] = zero
                    else:
                        vy, vi, vj = T.axis.remap("SSS", idx)
                        C[vy, vi, vj] = zero

    shape, full, st = buffer()

    @T.prim_func(s_tir=True)
    def zero_impl(c: T.handle) -> None:
        C = T.match_buffer(c, shape, acc_dtype, offset_factor=1, strides=st)
        with T.sblock("root"):
            T.reads()
            T.writes(C[full])
            cfg = T.alloc_buffer((64,), "uint8", scope="local")
            for i in range(64):
                cfg[i] = T.uint8(0)
            cfg[0] = T.uint8(1)  # palette 1
            for t in T.unroll(first_b + cols):
                cfg[16 + 2 * t] = T.uint8(64)  # bytes per row of every tile used
                cfg[48 + t] = T.Select(t < first_b, T.uint8(m), T.uint8(16))  # rows: C and A m, B 16
            T.evaluate(T.call_llvm_intrin("void", "llvm.x86.ldtilecfg", T.address_of(cfg[0])))
            for t in T.unroll(rows * cols):
                T.evaluate(T.call_llvm_intrin("void", "llvm.x86.tilezero", T.Cast("uint8", t)))

    shape, full, st = buffer()
    _, _, st_d = buffer()

    @T.prim_func(s_tir=True)
    def store_desc(c: T.handle, d: T.handle) -> None:
        C = T.match_buffer(c, shape, acc_dtype, offset_factor=1, strides=st)
        D = T.match_buffer(d, shape, acc_dtype, offset_factor=1, strides=st_d)
        with T.sblock("root"):
            T.reads(C[full])
            T.writes(D[full])
            for idx in T.grid(*shape):
                with T.sblock("store"):
                    if flat:
                        vi, vj = T.axis.remap("SS", idx)
                        D[vi, vj] = C[vi, vj]
                    else:
                        vy, vi, vj = T.axis.remap("SSS", idx)
                        D[vy, vi, vj] = C[vy, vi, vj]

    shape, full, st = buffer()
    _, _, st_d = buffer()

    @T.prim_func(s_tir=True)
    def store_impl(c: T.handle, d: T.handle) -> None:
        C = T.match_buffer(c, shape, acc_dtype, offset_factor=1, strides=st)
        D = T.match_buffer(d, shape, acc_dtype, offset_factor=1, strides=st_d)
        with T.sblock("root"):
            T.reads(C[full])
            T.writes(D[full])
            for i in T.unroll(rows):
                for j in T.unroll(cols):
                    if flat:
                        T.evaluate(T.call_llvm_intrin("void", "llvm.x86.tilestored64", T.Cast("uint8", j),
                                                      T.address_of(D[0, j * 16]), T.Cast("int64", st_d[0] * 4)))
                    else:
                        T.evaluate(T.call_llvm_intrin(
                            "void", "llvm.x86.tilestored64", T.Cast("uint8", i * cols + j),
                            T.address_of(D[i, 0, j * 16]), T.Cast("int64", st_d[1] * 4)))

    return zero_desc, zero_impl, store_desc, store_impl


def _is_tile_config(stmt) -> bool:  # type: ignore[no-untyped-def]
    """Whether ``stmt`` is the ``ldtilecfg`` call of ``amx_tile_ops``' zero intrinsic."""
    call = stmt.value if isinstance(stmt, tirx.Evaluate) else None
    return (isinstance(call, tvm.ir.expr.Call) and getattr(call.op, "name", "") == "tirx.call_llvm_intrin"
            and int(call.args[0]) == int(T.llvm_lookup_intrinsic_id("llvm.x86.ldtilecfg")))


def _child(stmt):  # type: ignore[no-untyped-def]
    """The one child statement of a loop, block or block realization (else None)."""
    if isinstance(stmt, (tirx.For, s_tir.SBlock)):
        return stmt.body
    return stmt.block if isinstance(stmt, s_tir.SBlockRealize) else None


def _with_child(stmt, child):  # type: ignore[no-untyped-def]
    """``stmt`` (a loop, block or block realization) with its child statement replaced."""
    if isinstance(stmt, tirx.For):
        return tirx.For(stmt.loop_var, stmt.min, stmt.extent, stmt.kind, child, stmt.thread_binding, stmt.annotations)
    if isinstance(stmt, s_tir.SBlockRealize):
        return s_tir.SBlockRealize(stmt.iter_values, stmt.predicate, child)
    return s_tir.SBlock(stmt.iter_vars, stmt.reads, stmt.writes, stmt.name_hint, child, stmt.init,
                        stmt.alloc_buffers, stmt.match_buffers, stmt.annotations)


def _take_tile_config(stmt):  # type: ignore[no-untyped-def]
    """``(stmt without its tile configuration, the configuration's statements or None)``: the
    statements of the sequence that ends with the first ``ldtilecfg`` under ``stmt`` (the
    configuration buffer, its bytes, the call), cut out of it."""
    if isinstance(stmt, tirx.SeqStmt):
        seq = list(stmt.seq)
        for i, s in enumerate(seq):
            if _is_tile_config(s):
                rest = seq[i + 1:]
                return (rest[0] if len(rest) == 1 else tirx.SeqStmt(rest)), seq[:i + 1]
            inner, taken = _take_tile_config(s)
            if taken:
                return tirx.SeqStmt(seq[:i] + [inner] + seq[i + 1:]), taken
        return stmt, None
    child = _child(stmt)
    inner, taken = (stmt, None) if child is None else _take_tile_config(child)
    return (_with_child(stmt, inner), taken) if taken else (stmt, None)


def hoist_tile_config(func):  # type: ignore[no-untyped-def]
    """``func`` (a scheduled kernel) with the AMX tile configuration (``ldtilecfg``, ~50 ns
    on an Emerald Rapids core, as much as four ``tdpbusd``) moved from the zero intrinsic of
    every block of tiles to the start of each parallel task: the kernel's parallel loop is
    wrapped in TVM's ``pragma_parallel_launch_point``, whose body every task (one per thread)
    runs once, splitting the loop's iterations among them as a plain parallel loop would.
    Correct because the configuration is one per kernel (every block has the same tiles) and a
    task runs on one thread, whose tile state it is.

    Each task saves the thread's tile configuration first (``sttilecfg``) and loads it back at
    its end: other AMX code in the process may keep its own configured between calls
    (onnxruntime's int8 GEMM loads one per thread, once; after a tvmq kernel had changed it on
    that thread, its next ``tdpbusd`` raised #UD: SIGILL). Once per task instead of once per
    loop iteration: ResNet-50's AMX layers (Emerald Rapids, 1 thread) 5.66 -> 5.23 ms. Kernels
    without AMX tiles are returned as they are."""

    def visit(stmt):  # type: ignore[no-untyped-def]
        if isinstance(stmt, tirx.For) and stmt.kind == tirx.ForKind.PARALLEL:
            body, taken = _take_tile_config(stmt.body)
            if not taken:
                return stmt, False
            saved = tirx.decl_buffer((64,), "uint8", name="saved_tile_config", scope="local")

            def config(name: str) -> tirx.Stmt:
                return tirx.Evaluate(tirx.call_llvm_intrin("void", f"llvm.x86.{name}",
                                                           tirx.address_of(tirx.BufferLoad(saved, [0]))))

            # every byte written first: lowering sizes the buffer by the region accessed, which
            # the two instructions' address alone makes one byte (``sttilecfg`` stores 64)
            i = tirx.Var("i", "int32")
            clear = tirx.For(i, 0, 64, tirx.ForKind.SERIAL, tirx.BufferStore(saved, tirx.const(0, "uint8"), [i]))
            tiles = tirx.SeqStmt([tirx.AllocBuffer(saved), clear, config("sttilecfg"), *taken, _with_child(stmt, body),
                                  config("ldtilecfg")])
            block = s_tir.SBlockRealize([], True, s_tir.SBlock([], [], [], "amx_tiles", tiles))
            if isinstance(stmt.extent, tirx.IntImm) and stmt.extent.value == 1:
                return block, True  # (lowering drops the loop: it runs on the calling thread)
            return tirx.AttrStmt(tirx.IntImm("int32", 0), "pragma_parallel_launch_point", tirx.IntImm("int32", 0), block), True
        if isinstance(stmt, tirx.SeqStmt):
            seq, changed = zip(*(visit(s) for s in stmt.seq))
            return (tirx.SeqStmt(list(seq)), True) if any(changed) else (stmt, False)
        child = _child(stmt)
        inner, changed = (stmt, False) if child is None else visit(child)
        return (_with_child(stmt, inner), True) if changed else (stmt, False)

    body, changed = visit(func.body)
    return func.with_body(body) if changed else func


@functools.lru_cache(maxsize=None)
def amx_intrinsics(m: int, rows: int = 1, cols: int = 1) -> tuple[str, str, str]:
    """Register (once) and name the three AMX intrinsics for a block of ``rows x cols`` tiles
    of ``m`` pixels x 16 output channels (``amx_tile_plan``'s registers).

    The accumulators are ``m x 16`` int32 tiles; an A tile holds ``m`` pixels of 64 uint8
    input channels (row stride = the pixel stride), a B tile the weights of 16 output channels
    (16 rows of 16 channels x 4 input channels, VNNI-packed; row stride 64 bytes per column of
    tiles). ``zero`` and ``store``: ``amx_tile_ops``; ``dot`` (the update: ``rows + cols``
    ``tileloadd`` and ``rows * cols`` ``tdpbusd``; the accumulators stay in their registers
    between calls). Independent accumulators keep several ``tdpbusd`` in flight (a chain on one
    tile waits out the instruction's latency at every step) and each loaded tile serves
    ``rows`` or ``cols`` of them. Correct because a thread finishes one block before it starts
    the next (the schedule's loop order). Every process must request AMX permission first
    (``tvmq.runtime`` does).
    """
    zero_desc, zero_impl, store_desc, store_impl = amx_tile_ops(m, "int32", rows, cols)
    first_a, first_b = amx_tile_plan(rows, cols)
    flat = rows == 1
    width = 16 * cols

    def buffers():  # type: ignore[no-untyped-def]
        return _block_buffer(m, rows, 64), _block_buffer(m, rows, width)

    (a_shape, a_full, a_st), (c_shape, c_full, c_st) = buffers()

    @T.prim_func(s_tir=True)
    def dot_desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, a_shape, "uint8", offset_factor=1, strides=a_st)
        B = T.match_buffer(b, (16, width, 4), "int8", offset_factor=1)
        C = T.match_buffer(c, c_shape, "int32", offset_factor=1, strides=c_st)
        with T.sblock("root"):
            T.reads(C[c_full], A[a_full], B[0:16, 0:width, 0:4])
            T.writes(C[c_full])
            for idx in T.grid(*c_shape, 16, 4):
                with T.sblock("update"):
                    if flat:
                        vi, vj, vkf, vks = T.axis.remap("SSRR", idx)
                        C[vi, vj] = C[vi, vj] + T.cast(A[vi, vkf * 4 + vks], "int32") \
                            * T.cast(B[vkf, vj, vks], "int32")
                    else:
                        vy, vi, vj, vkf, vks = T.axis.remap("SSSRR", idx)
                        C[vy, vi, vj] = C[vy, vi, vj] + T.cast(A[vy, vi, vkf * 4 + vks], "int32") \
                            * T.cast(B[vkf, vj, vks], "int32")

    (a_shape, a_full, a_st), (c_shape, c_full, c_st) = buffers()

    @T.prim_func(s_tir=True)
    def dot_impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, a_shape, "uint8", offset_factor=1, strides=a_st)
        B = T.match_buffer(b, (16, width, 4), "int8", offset_factor=1)
        C = T.match_buffer(c, c_shape, "int32", offset_factor=1, strides=c_st)
        with T.sblock("root"):
            T.reads(C[c_full], A[a_full], B[0:16, 0:width, 0:4])
            T.writes(C[c_full])
            for j in T.unroll(cols):
                T.evaluate(T.call_llvm_intrin("void", "llvm.x86.tileloadd64", T.Cast("uint8", first_b + j),
                                              T.address_of(B[0, j * 16, 0]), T.int64(64 * cols)))
            for i in T.unroll(rows):
                if flat:
                    T.evaluate(T.call_llvm_intrin("void", "llvm.x86.tileloadd64", T.Cast("uint8", first_a),
                                                  T.address_of(A[0, 0]), T.Cast("int64", a_st[0])))
                else:
                    T.evaluate(T.call_llvm_intrin("void", "llvm.x86.tileloadd64", T.Cast("uint8", first_a + i),
                                                  T.address_of(A[i, 0, 0]), T.Cast("int64", a_st[1])))
                for j in T.unroll(cols):
                    T.evaluate(T.call_llvm_intrin("void", "llvm.x86.tdpbusd", T.Cast("uint8", i * cols + j),
                                                  T.Cast("uint8", first_a + i), T.Cast("uint8", first_b + j)))

    block = "" if rows == cols == 1 else f"_{rows}x{cols}"
    names = (f"tvmq_amx_zero_{m}{block}", f"tvmq_amx_dot_{m}x16x64{block}", f"tvmq_amx_store_{m}{block}")
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
