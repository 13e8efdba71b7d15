"""Small helpers shared by the kernel definitions."""

from __future__ import annotations

from tvm import te, tirx
from tvm.tirx import ForKind

from .workload import Epilogue


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def register_tile(width: int, max_regs: int) -> int:
    """Output pixels per register tile (at most ``max_regs``).

    Kernels pad the output width up to a multiple of the tile (computing, then dropping, the
    extra pixels). Cost model: padded pixels x (1 + 2 / tile), the second term being the weight
    loads and loop overhead a narrow tile does not amortise; ties go to the wider tile.
    """
    return min(range(1, max_regs + 1),
               key=lambda r: (ceil_div(width, r) * r * (1 + 2 / r), -r))


def padded_width(width: int, reg_n: int) -> int:
    return ceil_div(width, reg_n) * reg_n


def apply_activation(x: tirx.PrimExpr, ep: Epilogue) -> tirx.PrimExpr:
    """ReLU / clip / a hardswish in fp32, as the epilogue asks (the hardswish forms in the order of
    ``Epilogue``'s, each operation rounded to float32 as the unfused graph's are)."""
    if ep.activation in ("hardswish", "hardswish_mul_div"):
        six = tirx.const(6.0, "float32")
        relu6 = tirx.min(tirx.max(x + tirx.const(3.0, "float32"), tirx.const(0.0, "float32")), six)
        return x * (relu6 / six) if ep.activation == "hardswish" else (x * relu6) / six
    if ep.activation == "relu":
        return tirx.max(x, tirx.const(0.0, "float32"))
    if ep.activation == "clip":
        return tirx.min(tirx.max(x, tirx.const(ep.clip_min, "float32")),
                        tirx.const(ep.clip_max, "float32"))
    return x


def optional_bias(ep: Epilogue, channels: int):  # type: ignore[no-untyped-def]
    """The bias placeholder when the epilogue has one, else None."""
    return te.placeholder((channels,), "float32", name="bias") if ep.bias else None


def optional_residual(ep: Epilogue, shape: tuple[int, ...]):  # type: ignore[no-untyped-def]
    """The residual placeholder (shaped like the kernel's output buffer) when fused, else None."""
    return te.placeholder(shape, "float32", name="residual") if ep.residual else None


def finish(acc: tirx.PrimExpr, bias, channel: tirx.PrimExpr, ep: Epilogue,  # type: ignore[no-untyped-def]
           residual=None, index: tuple = ()) -> tirx.PrimExpr:
    """Accumulator -> stored value: + bias[channel], + residual[index], then the activation."""
    if bias is not None:
        acc = acc + bias[channel]
    if residual is not None:
        acc = acc + residual[index]
    return apply_activation(acc, ep)


def kernel_args(data, weight, bias, residual, out) -> list:  # type: ignore[no-untyped-def]
    """The PrimFunc's parameter order: data, weight, [bias], [residual], out."""
    return [data, weight] + [t for t in (bias, residual) if t is not None] + [out]


def split_tile(sch, loop, inner: int, *, max_inner: int, sample: bool):  # type: ignore[no-untyped-def]
    """Split ``loop`` into (outer, inner) through a MetaSchedule sampling decision.

    With ``sample=False`` the decision is fixed to ``inner`` (the fallback configuration), so a
    plain build is deterministic; with ``sample=True`` the schedule is a search space the tuner
    samples and mutates (any divisor up to ``max_inner``).
    """
    extent = int(sch.get(loop).extent)
    decision = None if sample else [extent // inner, inner]
    factors = sch.sample_perfect_tile(loop, n=2, max_innermost_factor=max(max_inner, inner),
                                      decision=decision)
    return sch.split(loop, factors)


def schedule_register_tile(sch, conv_b, out_b, *, outer: list, x, reductions: list, lane,  # type: ignore[no-untyped-def]
                           reg_n: int, sample: bool = False) -> None:
    """The common direct-conv schedule: a ``reg_n`` x ``lane`` accumulator tile in registers.

    ``outer`` loops run in parallel; ``x`` (output width, a multiple of ``reg_n``) is split by
    ``reg_n`` (a sampling decision: see ``split_tile``); the tile is accumulated over
    ``reductions`` and written back by ``out_b`` per tile.
    """
    xo, xi = split_tile(sch, x, reg_n, max_inner=reg_n, sample=sample)
    sch.reorder(*outer, xo, *reductions, xi, lane)
    sch.parallel(sch.fuse(*outer))
    sch.vectorize(lane)  # before decompose_reduction, which leaves a non-"compact" block
    sch.reverse_compute_at(out_b, xo, preserve_unit_loops=True)
    init = sch.decompose_reduction(conv_b, reductions[0])
    sch.vectorize(sch.get_loops(init)[-1])
    sch.unroll(xi)
    keep_tile_in_registers(sch, init, out_b, xo)


# TVM places a function's constant-size buffers under this many bytes on the stack (an
# ``alloca``, which LLVM promotes to registers) and larger ones in a heap workspace
# (``TVMBackendAllocWorkspace``, ``runtime::kMaxStackAlloca``), whose accumulators can then go to
# memory and back on every reduction step: the integer kernels' register tiles stay below it. Not
# always: the fp32 direct conv's 14 x 2 zmm tile (1792 B) stays in registers, LLVM promoting the
# workspace's loads and stores out of the reduction loop (``fp32_direct.fallback_config``; a test
# reads the assembly)
STACK_TILE_BYTES = 1024


def stack_tile_pixels(channels: int, limit: int, element_bytes: int = 4) -> int:
    """At most ``limit`` pixels per register tile of ``channels`` accumulators, fewer where the
    tile would reach ``STACK_TILE_BYTES`` (at least 1)."""
    return max(1, min(limit, (STACK_TILE_BYTES - 1) // (element_bytes * channels)))


def keep_tile_in_registers(sch, init_b, out_b, tile_loop) -> None:  # type: ignore[no-untyped-def]
    """Unroll every loop inside ``tile_loop`` over the accumulator tile outside the reduction
    (its zeroing and its write-back), vectorised loops aside: one loop with a run-time index
    into the tile and LLVM keeps the whole tile on the stack instead of in vector registers."""
    tile_sref = sch.get_sref(tile_loop)
    for block in (init_b, out_b):
        loops = sch.get_loops(block)
        inside = False
        for loop in loops:
            if inside and sch.get(loop).kind != ForKind.VECTORIZED:
                sch.unroll(loop)
            inside = inside or sch.get_sref(loop).same_as(tile_sref)


def schedule_repack(sch, pack_b, whole_blocks: bool) -> None:  # type: ignore[no-untyped-def]
    """The input repack ``[N, blocks, (phases,) H, W, lanes]``: parallel over everything but the
    columns and lanes; the lanes one vector where they are 16 or more and the channels whole
    blocks of them (``whole_blocks``: no per-lane padding condition), else unrolled. Unrolled,
    LLVM compiled some widths to scalar byte moves: an AMX int8 3x3 at 28x28 (its repack exactly
    as wide as the padded input) 0.142 ms -> 0.084 vectorised, 64->64 at 56x56 0.165 -> 0.084, the
    bf16 AMX 3x3 at 28x28 0.304 -> 0.261 (Emerald Rapids, 1 thread); VNNI, AVX2 and fp32 kernels
    unchanged within 2%. Ragged channels vectorised are slower: MobileNetV2's 144->32 at 28x28
    0.011 -> 0.035 ms."""
    *outer, _, pc = sch.get_loops(pack_b)
    sch.parallel(sch.fuse(*outer))
    if whole_blocks and int(sch.get(pc).extent) >= 16:
        sch.vectorize(pc)
    else:
        sch.unroll(pc)


def has_block(sch, name: str) -> bool:  # type: ignore[no-untyped-def]
    """Whether the scheduled function has a block ``name`` (e.g. an input repack, which a
    kernel reading its input in place does not have)."""
    return any(sch.get(b).name_hint == name for b in sch.get_child_blocks(sch.get_sblock("root")))


def vectorize_channels_last_store(sch, out_b, channels: int, block: int) -> None:  # type: ignore[no-untyped-def]
    """A channels-last output tile stores ``block`` consecutive channels of each pixel: one
    vector store per pixel, where the channels are whole blocks (a ragged last block would be
    a predicated store, which LLVM has compiled unmasked: those stay scalar). Channels that fit
    one block are one loop of exactly that many, with no predicate: vectorised too."""
    if channels % block == 0 or channels < block:
        sch.vectorize(sch.get_loops(out_b)[-1])


def rescale_expr(v: tirx.PrimExpr, mult: tirx.PrimExpr, shift: tirx.PrimExpr) -> tirx.PrimExpr:
    """``((v * m + 2**(shift-1)) >> shift)`` (``quant.rescale``), returned as int32.

    Computed as ``((v * m + 2**(shift-1) + 2**62) >>> shift) - 2**(62-shift)`` with a *logical*
    shift of the unsigned sum: ``|v * m| < 2**62`` (both factors are int32), so the sum is
    non-negative and the logical shift is the floor division the arithmetic one is, exactly;
    ``2**62`` is a multiple of ``2**shift`` (``shift <= 62``), so subtracting its quotient undoes
    the offset. x86 has a per-lane logical 64-bit shift (``vpsrlvq``) but no arithmetic one
    before AVX-512, which LLVM would otherwise emulate in four instructions.
    """
    one = tirx.const(1, "int64")
    s = shift.astype("int64")
    big = tirx.const(1 << 62, "int64")
    biased = (v.astype("int64") * mult.astype("int64") + ((one << (s - one)) + big)).astype("uint64")
    return ((biased >> s.astype("uint64")).astype("int64") - (big >> s)).astype("int32")


def requantize_expr(acc: tirx.PrimExpr, bias_k: tirx.PrimExpr, mult_k: tirx.PrimExpr,
                    shift_k: tirx.PrimExpr, out_zp: tirx.PrimExpr, lo: tirx.PrimExpr,
                    hi: tirx.PrimExpr, out_dtype: str = "uint8", residual=None, rparams=None  # type: ignore[no-untyped-def]
                    ) -> tirx.PrimExpr:
    """The integer-only epilogue of ``schedules.quant``, as TIR:
    ``clip(rescale(acc + bias, m, shift) [+ rescale(r - r_zp, r_m, r_shift)] + out_zp, lo, hi)``
    with ``residual`` the residual value and ``rparams`` the buffer ``(r_zp, r_m, r_shift)``;
    ``bias_k=None`` when the accumulator already holds the bias."""
    q = rescale_expr(acc if bias_k is None else acc + bias_k, mult_k, shift_k) + out_zp
    if residual is not None:
        q = q + rescale_expr(residual.astype("int32") - rparams[0], rparams[1], rparams[2])
    return tirx.min(tirx.max(q, lo), hi).astype(out_dtype)  # the order of np.clip


def round_to_int32(f: tirx.PrimExpr) -> tirx.PrimExpr:
    """``rint(f)`` as int32, one instruction (``llvm.lrint``: ``cvtps2dq`` on x86, which rounds
    to nearest even in the default MXCSR mode, as numpy's ``rint``), where ``nearbyint`` then a
    cast is a round and a truncating convert. ``f`` must lie within int32."""
    return tirx.call_llvm_pure_intrin("int32", "llvm.lrint", f)


def rescale_float_expr(v: tirx.PrimExpr, scale: tirx.PrimExpr) -> tirx.PrimExpr:
    """``quant.rescale_float``: ``rint(clamp(float32(v) * scale, -2**30, 2**30))`` as int32."""
    limit = tirx.const(2.0 ** 30, "float32")
    f = v.astype("float32") * scale
    return round_to_int32(tirx.min(tirx.max(f, -limit), limit))


def requantize_float_expr(acc: tirx.PrimExpr, bias_k: tirx.PrimExpr, scale_k: tirx.PrimExpr,
                          out_zp: tirx.PrimExpr, lo: tirx.PrimExpr, hi: tirx.PrimExpr,
                          out_dtype: str = "uint8", residual=None, r_zp=None, r_scale=None  # type: ignore[no-untyped-def]
                          ) -> tirx.PrimExpr:
    """The float32 epilogue of ``schedules.quant``, as TIR: ``clip(rescale_float(acc + bias, s)
    [+ rescale_float(r - r_zp, r_s)] + out_zp, lo, hi)``; every add in int32. With a residual
    the scales are at most 0.5, ``r_zp`` in [0, 255] and ``|r_s| <= 2**22`` (``schedules.quant``).

    Without a residual the clip moves before the rounding, into float32:
    ``rint(clamp(f, lo - zp, hi - zp)) + zp``, four instructions fewer per vector and the
    same integers: ``lo - zp`` and ``hi - zp`` are integers (exact in float32, inside
    ``+-2**30``) and rounding is monotonic and fixes integers, so ``rint(clamp(f, a, b)) ==
    clamp(rint(f), a, b)``."""
    v = acc if bias_k is None else acc + bias_k
    if residual is None:
        f = v.astype("float32") * scale_k
        f = tirx.min(tirx.max(f, (lo - out_zp).astype("float32")), (hi - out_zp).astype("float32"))
        return (round_to_int32(f) + out_zp).astype(out_dtype)
    # both terms without rescale_float's clamp, which cannot act under the arguments' contract:
    # |scale_k| <= 0.5 keeps any int32 times it inside +-2**30 (quant.FUSED_REQUANT_SCALE_LIMIT),
    # |r - r_zp| <= 255 with |r_scale| <= 2**22 the residual's (quant.RESIDUAL_SCALE_LIMIT)
    q = round_to_int32(v.astype("float32") * scale_k) + out_zp
    q = q + round_to_int32((residual.astype("int32") - r_zp).astype("float32") * r_scale)
    return tirx.min(tirx.max(q, lo), hi).astype(out_dtype)


def int_residual_args(ep: Epilogue, shape: tuple[int, ...]):  # type: ignore[no-untyped-def]
    """``(residual u8 placeholder, rparams s32[3] placeholder)`` when the epilogue fuses one."""
    if not ep.residual:
        return None, None
    return (te.placeholder(shape, "uint8", name="residual"),
            te.placeholder((3,), "int32", name="residual_params"))


def int8_operands(data_shape: tuple[int, ...], weight_shape: tuple[int, ...], weight=None,  # type: ignore[no-untyped-def]
                  data_dtype: str = "uint8"):
    """``(data, weight)`` of an integer kernel's compute. ``weight``: the int8 packed weights as
    a tensor (the W4A8 twin passes the nibbles it unpacks), by default a placeholder (the kernel
    argument); ``data_dtype``: uint8 (W8A8, W4A8, with a zero point) or int16 (W8A16,
    symmetric)."""
    data = te.placeholder(data_shape, data_dtype, name="data")
    if weight is None:
        weight = te.placeholder(weight_shape, "int8", name="weight")
    return data, weight


def int8_epilogue(ep: Epilogue, channels: int, out_shape: tuple[int, ...], *,  # type: ignore[no-untyped-def]
                  bias_in_acc: bool = False):
    """The integer kernels' epilogue arguments and expression.

    ``bias_in_acc``: the kernel starts its accumulators at the bias (``te.sum(..., init=)``),
    so ``fn`` does not add it. Same int32 result (the reference's ``acc + bias`` is int32 too),
    and the accumulator then reaches the requantization as a plain sign-extended int32, which
    lets LLVM use a 32 x 32 -> 64 multiply (``vpmuldq``) instead of a full 64-bit one.

    Returns ``(args, qparams, fn, out_dtype)``: ``args`` the placeholders after the weight,
    ``qparams`` = ``(x_zp, out_zp, lo, hi)`` (its ``x_zp`` pads the input), and
    ``fn(acc, k, index)`` the output value. Requantizing (uint8 or int16 out), ``ep.requant``
    dyadic: ``bias, multiplier, shift, qparams [, residual, residual_params s32[3]]``; float:
    ``bias, scale f32[K], qparams [, residual, residual_zp s32[1], residual_scale f32[1]]``.
    Dequantizing (``ep.out_float``, a model edge):
    ``bias, scale f32[K], qparams`` and ``out = act(float32(acc + bias[k]) * scale[k])``.
    """
    bias = te.placeholder((channels,), "int32", name="bias")
    qp = te.placeholder((4,), "int32", name="qparams")
    if ep.out_float:
        if ep.residual:
            raise ValueError("a dequantizing epilogue does not fuse a residual")
        scale = te.placeholder((channels,), "float32", name="scale")

        def deq(acc, k, index):  # type: ignore[no-untyped-def]
            return apply_activation((acc if bias_in_acc else acc + bias[k]).astype("float32")
                                    * scale[k], ep)

        return [bias, scale, qp], qp, deq, "float32"
    out_dtype = "int16" if ep.out_int16 else "uint8"
    if ep.requant == "float":
        return _float_requant_epilogue(ep, channels, out_shape, bias, qp, out_dtype, bias_in_acc)
    mult = te.placeholder((channels,), "int32", name="multiplier")
    shift = te.placeholder((channels,), "int32", name="shift")
    res, rp = int_residual_args(ep, out_shape)

    def req(acc, k, index):  # type: ignore[no-untyped-def]
        return requantize_expr(acc, None if bias_in_acc else bias[k], mult[k], shift[k], qp[1], qp[2], qp[3], out_dtype,
                               residual=None if res is None else res[index], rparams=rp)

    args = [bias, mult, shift, qp] + ([res, rp] if res is not None else [])
    return args, qp, req, out_dtype


def _float_requant_epilogue(ep: Epilogue, channels: int, out_shape: tuple[int, ...], bias, qp,  # type: ignore[no-untyped-def]
                            out_dtype: str, bias_in_acc: bool):
    """``int8_epilogue`` with ``ep.requant == "float"``."""
    scale = te.placeholder((channels,), "float32", name="scale")
    res = te.placeholder(out_shape, "uint8", name="residual") if ep.residual else None
    r_zp = te.placeholder((1,), "int32", name="residual_zp") if ep.residual else None
    r_scale = te.placeholder((1,), "float32", name="residual_scale") if ep.residual else None

    def req(acc, k, index):  # type: ignore[no-untyped-def]
        return requantize_float_expr(acc, None if bias_in_acc else bias[k], scale[k], qp[1], qp[2], qp[3],
                                     out_dtype, residual=None if res is None else res[index],
                                     r_zp=None if r_zp is None else r_zp[0],
                                     r_scale=None if r_scale is None else r_scale[0])

    args = [bias, scale, qp] + ([res, r_zp, r_scale] if ep.residual else [])
    return args, qp, req, out_dtype


class TemplateDispatch:
    """The kernel functions of an op with several templates, forwarded to the template that
    made the config (``template_of(cfg)``): the choice of template is part of the config."""

    def __init__(self, template_of) -> None:  # type: ignore[no-untyped-def]
        self.template_of = template_of

    def compute(self, wl, cfg, *tensors_and_dtypes):  # type: ignore[no-untyped-def]
        return self.template_of(cfg).compute(wl, cfg, *tensors_and_dtypes)

    def schedule(self, sch, wl, cfg, sample: bool = False) -> None:  # type: ignore[no-untyped-def]
        self.template_of(cfg).schedule(sch, wl, cfg, sample)

    def pack_weight(self, weight, wl, cfg):  # type: ignore[no-untyped-def]
        return self.template_of(cfg).pack_weight(weight, wl, cfg)

    def input_shape(self, wl, cfg):  # type: ignore[no-untyped-def]
        return self.template_of(cfg).input_shape(wl)

    def output_shape(self, wl, cfg):  # type: ignore[no-untyped-def]
        return self.template_of(cfg).output_shape(wl)

    def reduction_order(self, wl, cfg):  # type: ignore[no-untyped-def]
        return self.template_of(cfg).reduction_order(wl, cfg)
