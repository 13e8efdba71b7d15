"""The kernel registry: ``KernelKey(op, precision, isa) -> KernelDef``.

Each ``KernelDef`` bundles what it takes to run one kind of layer: the TE compute, the schedule
template, the fallback configuration (chosen from the shape, no tuning), the weight packing and
the shape of the kernel's output buffer. ``select`` picks the best kernel the target's features
allow, walking down the ISA levels to the portable one; a miss names the keys that exist.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from tvm import s_tir, te

from . import bf16, reference, space
from .conv2d import bf16_dot as conv2d_bf16_dot
from .conv2d import fp32 as conv2d_fp32
from .conv2d import int8_dispatch as conv2d_w8a8_isa
from .conv2d import int8_portable as conv2d_w8a8
from .dense import bf16_dot as dense_bf16_dot
from .dense import fp32 as dense_fp32
from .dense import int8 as dense_w8a8
from .depthwise import fp32 as depthwise_fp32
from .depthwise import int8 as depthwise_w8a8
from .packing import W4A8Config, pack_int4, packed_shape, unpack_expr
from .target_features import ISA_LEVELS, TargetFeatures
from .workload import Conv2dWorkload, DenseWorkload, Workload

OPS = ("conv2d", "depthwise_conv2d", "dense")


@dataclass(frozen=True)
class KernelKey:
    op: str
    precision: str
    isa: str

    def __str__(self) -> str:
        return f"{self.op}/{self.precision}/{self.isa}"

    @classmethod
    def parse(cls, text: str) -> KernelKey:
        """Inverse of ``str``: ``"conv2d/w8a8/avx2"`` -> ``KernelKey``."""
        parts = text.split("/")
        if len(parts) != 3:
            raise ValueError(f"not a kernel key (op/precision/isa): {text!r}")
        return cls(*parts)


@dataclass(frozen=True)
class KernelDef:
    key: KernelKey
    compute: Callable[[Any, Any], list]
    schedule: Callable[..., None]  # (sch, workload, config, sample=False)
    fallback_config: Callable[[Any, TargetFeatures], Any]
    pack_weight: Callable[[np.ndarray, Any, Any], np.ndarray]
    input_shape: Callable[[Any, Any], tuple[int, ...]]  # a reshape of the layer's data tensor
    output_shape: Callable[[Any, Any], tuple[int, ...]]  # a reshape of the layer's output
    description: str = ""
    # float kernels: the order in which each output sums its terms (see ``float_reference``)
    reduction_order: Callable[[Any, Any], list] | None = None
    # what the target must have beyond the ISA level of the key (``select`` skips the kernel
    # where it returns False: Cascade Lake is avx512_vnni without AVX512-BF16)
    requires: Callable[[TargetFeatures], bool] | None = None
    # float kernels whose arithmetic is not one multiply-add per term in ``reduction_order``
    # (the native bf16 kernels' ``vdpbf16ps``): ``(wl, cfg, data, weight, bias, residual)`` ->
    # the exact output, which ``float_reference`` returns instead
    float_reference_fn: Callable[..., np.ndarray] | None = None

    def float_reference(self, wl: Workload, cfg: Any, data: np.ndarray, weight: np.ndarray,
                        bias: np.ndarray | None = None, residual: np.ndarray | None = None, *,
                        fma: bool) -> np.ndarray:
        """What this float kernel computes, bit for bit, when compiled for a target with
        (``fma=True``) or without FMA: the same terms summed in the same order with the same
        roundings (``reference.conv2d_in_order`` / ``dense_in_order``); bf16 kernels round
        ``data`` and ``weight`` to bf16 first, as they do. ``data`` is NCHW / ``[N, C]``,
        ``weight`` OIHW / ``[K, C]`` float32 (unpacked); returns ``wl.out_shape``. Kernels with
        a ``float_reference_fn`` (native bf16: ``vdpbf16ps`` fuses every term, FMA or not) use it."""
        if self.float_reference_fn is not None:  # (independent of FMA contraction)
            return self.float_reference_fn(wl, cfg, data, weight, bias, residual)
        if self.reduction_order is None:
            raise TypeError(f"{self.key} is not a float kernel")
        if self.key.precision == "bf16":
            data, weight = bf16.round_bf16(data), bf16.round_bf16(weight)
        order = self.reduction_order(wl, cfg)
        fn = reference.dense_in_order if isinstance(wl, DenseWorkload) else reference.conv2d_in_order
        return fn(data, weight, bias, wl, order, residual, fma)  # type: ignore[arg-type]

    def build_primfunc(self, workload: Workload, config: Any, *, sample_seed: int | None = None):  # type: ignore[no-untyped-def]
        """The scheduled ``PrimFunc`` (attribute ``tirx.is_scheduled`` set).

        The schedule's knobs are MetaSchedule sampling decisions; by default they take the
        config's values. With ``sample_seed`` they are drawn at random instead (one point of the
        search space the tuner explores).
        """
        func = te.create_prim_func(self.compute(workload, config))
        sch = s_tir.Schedule(func, seed=sample_seed)
        self.schedule(sch, workload, config, sample_seed is not None)
        return sch.mod["main"].with_attr("tirx.is_scheduled", True)

    def design_space(self, workload: Workload, config: Any) -> Callable[[Any], None]:
        """The schedule template as a MetaSchedule ``ScheduleFn`` body (knobs sampled)."""
        return lambda sch: self.schedule(sch, workload, config, True)


class KernelNotFound(LookupError):
    pass


_REGISTRY: dict[KernelKey, KernelDef] = {}


def register(kernel: KernelDef) -> KernelDef:
    if kernel.key in _REGISTRY:
        raise ValueError(f"kernel {kernel.key} registered twice")
    _REGISTRY[kernel.key] = kernel
    return kernel


def registered_keys() -> list[KernelKey]:
    return sorted(_REGISTRY, key=str)


def get(key: KernelKey) -> KernelDef:
    try:
        return _REGISTRY[key]
    except KeyError:
        known = ", ".join(str(k) for k in registered_keys())
        raise KernelNotFound(f"no kernel {key}; registered: {known}") from None


def op_of(workload: Workload) -> str:
    if isinstance(workload, DenseWorkload):
        return "dense"
    if isinstance(workload, Conv2dWorkload):
        return "depthwise_conv2d" if workload.is_depthwise else "conv2d"
    raise TypeError(f"not a workload: {workload!r}")


def select(op: str, precision: str, features: TargetFeatures) -> KernelDef:
    """The best registered kernel for ``op``/``precision`` that ``features`` can run."""
    start = ISA_LEVELS.index(features.isa)
    for isa in ISA_LEVELS[start:]:
        kernel = _REGISTRY.get(KernelKey(op, precision, isa))
        if kernel is not None and (kernel.requires is None or kernel.requires(features)):
            return kernel
    known = ", ".join(str(k) for k in registered_keys())
    raise KernelNotFound(f"no {op}/{precision} kernel runs on a {features.isa} target; "
                         f"registered: {known}")


for _op, _mod, _desc in (
    ("conv2d", conv2d_fp32, "pointwise GEMM on NCHW, or NCHWc register-tiled direct conv"),
    ("depthwise_conv2d", depthwise_fp32, "channel-vectorised NCHWc depthwise conv"),
    ("dense", dense_fp32, "packed-weight GEMV/GEMM"),
):
    # fp32 kernels are written once for every ISA: the vector width comes from the config
    register(KernelDef(KernelKey(_op, "fp32", "generic"), _mod.compute, _mod.schedule,
                       _mod.fallback_config, _mod.pack_weight, _mod.input_shape, _mod.output_shape,
                       _desc, _mod.reduction_order))
for _op, _mod, _desc in (
    ("conv2d", conv2d_w8a8, "portable u8 x s8 -> s32 direct conv, dyadic requantization"),
    ("depthwise_conv2d", depthwise_w8a8, "portable u8 x s8 -> s32 depthwise conv, dyadic requantization"),
    ("dense", dense_w8a8, "portable u8 x s8 -> s32 dense, dyadic requantization"),
):
    register(KernelDef(KernelKey(_op, "w8a8", "generic"), _mod.compute, _mod.schedule,
                       _mod.fallback_config, _mod.pack_weight, _mod.input_shape, _mod.output_shape,
                       _desc))
for _isa in conv2d_w8a8_isa.ISA_LEVELS:
    # the dot-product convs, one per ISA level that has an integer dot-product instruction
    register(KernelDef(KernelKey("conv2d", "w8a8", _isa), conv2d_w8a8_isa.compute,
                       conv2d_w8a8_isa.schedule,
                       functools.partial(conv2d_w8a8_isa.fallback_config, isa=_isa),
                       conv2d_w8a8_isa.pack_weight, conv2d_w8a8_isa.input_shape,
                       conv2d_w8a8_isa.output_shape,
                       f"u8 x s8 -> s32 on the {_isa} dot-product instruction (exact): pointwise "
                       "GEMM along pixels, or NCHWc direct conv; dyadic requantization"))


def _parallel_stage(sch, name: str, vector: int = 0) -> None:  # type: ignore[no-untyped-def]
    """A wrapper's elementwise stage (weight unpack, input rounding): its outer loops fused and
    parallel, the innermost vectorised by ``vector`` lanes where they divide it."""
    loops = sch.get_loops(sch.get_sblock(name))
    if len(loops) > 1:
        sch.parallel(sch.fuse(*loops[:-1]))
    if vector and int(sch.get(loops[-1]).extent) % vector == 0:
        sch.vectorize(sch.split(loops[-1], [None, vector])[1])


def int4_weights(base: KernelDef) -> KernelDef:
    """The W4A8 twin of an integer kernel: its weight argument is the base kernel's packed int8
    layout with two nibbles per byte (``schedules.packing``: the two halves of each
    output-channel block share bytes), unpacked to int8 inside the kernel by a
    ``weight_unpack`` stage, then the base kernel runs unchanged: same compute, schedule,
    epilogue and numpy reference. The configuration is a ``W4A8Config``: the base kernel's and
    where the unpack runs (once per call, or per output-channel block inside the kernel's
    parallel loop), a tuning knob like the others."""

    def int8_shape(wl: Workload, cfg: Any) -> tuple[int, ...]:
        return base.pack_weight(np.zeros(wl.weight_shape, np.int8), wl, cfg.base).shape

    def fallback_config(wl: Workload, features: TargetFeatures) -> W4A8Config:
        return W4A8Config(base.fallback_config(wl, features), "call")

    def compute(wl: Workload, cfg: W4A8Config) -> list:
        shape = int8_shape(wl, cfg)
        half = packed_shape(shape)[-1]
        packed = te.placeholder(packed_shape(shape), "uint8", name="weight")
        strides = [int(np.prod(shape[i + 1:])) for i in range(1, len(shape))]

        def unpack(b, *rest):  # type: ignore[no-untyped-def]
            flat = sum(r * st for r, st in zip(rest, strides))  # row-major index within the block
            return unpack_expr(packed[b, flat % half], flat // half)

        unpacked = te.compute(shape, unpack, name="weight_unpack")
        tensors = base.compute(wl, cfg.base, unpacked)
        return [tensors[0], packed, *tensors[2:]]

    def schedule(sch, wl: Workload, cfg: W4A8Config, sample: bool = False) -> None:  # type: ignore[no-untyped-def]
        base.schedule(sch, wl, cfg.base, sample)
        block = sch.get_sblock("weight_unpack")
        if cfg.unpack == "block" and space.tensorized(cfg.base):
            raise ValueError(f"{base.key}: a tensorized kernel's W4A8 twin unpacks once per call "
                             f"(W4A8Config.unpack='call')")
        if cfg.unpack == "block":  # right before its block is used, inside the parallel loop
            # (the kernel's top-level block that reads the weights: ``get_consumers`` can return
            # a block that tensorize replaced)
            consumer = next(c for c in sch.get_child_blocks(sch.get_sblock("root"))
                            if any(getattr(r.source, "name", None) == "weight_unpack" for r in sch.get(c).reads))
            sch.compute_at(block, sch.get_loops(consumer)[0], preserve_unit_loops=True)
        loops = sch.get_loops(block)
        n_rest = len(int8_shape(wl, cfg)) - 1
        inner = sch.fuse(*loops[-n_rest:]) if n_rest > 1 else loops[-1]
        # two runs per block: bytes j -> values j (low nibbles) and j + half (high nibbles)
        half = packed_shape(int8_shape(wl, cfg))[-1]
        h, j = sch.split(inner, [None, half])
        sch.unroll(h)
        if cfg.unpack == "call":
            outer = loops[0]
            if int(sch.get(outer).extent) > 1:
                sch.parallel(outer)

    def pack_weight(weight: np.ndarray, wl: Workload, cfg: W4A8Config) -> np.ndarray:
        return pack_int4(base.pack_weight(weight, wl, cfg.base))

    return KernelDef(KernelKey(base.key.op, "w4a8", base.key.isa), compute, schedule, fallback_config,
                     pack_weight, lambda wl, cfg: base.input_shape(wl, cfg.base),
                     lambda wl, cfg: base.output_shape(wl, cfg.base),
                     f"int4 weights (two per byte) unpacked in-kernel, then: {base.description}")


for _key in [k for k in registered_keys() if k.precision == "w8a8"]:
    register(int4_weights(_REGISTRY[_key]))


def bf16_weights(base: KernelDef) -> KernelDef:
    """The bf16 twin of an fp32 kernel (``schedules.bf16``): the weight argument is the base
    kernel's packed layout as uint16 bf16 patterns, unpacked to float32 in the kernel; the input
    is rounded to bf16 in a first stage; then the fp32 kernel runs unchanged."""

    def compute(wl: Workload, cfg: Any) -> list:
        wshape = base.pack_weight(np.zeros(wl.weight_shape, np.float32), wl, cfg).shape
        data = te.placeholder(base.input_shape(wl, cfg), "float32", name="data")
        packed = te.placeholder(wshape, "uint16", name="weight")
        rounded = te.compute(data.shape, lambda *i: bf16.round_expr(data[i]), name="data_bf16")
        weight = te.compute(wshape, lambda *i: bf16.unpack_expr(packed[i]), name="weight_unpack")
        tensors = base.compute(wl, cfg, rounded, weight)
        return [data, packed, *tensors[2:]]

    def schedule(sch, wl: Workload, cfg: Any, sample: bool = False) -> None:  # type: ignore[no-untyped-def]
        base.schedule(sch, wl, cfg, sample)
        for name in ("data_bf16", "weight_unpack"):
            _parallel_stage(sch, name, vector=8)

    def pack_weight(weight: np.ndarray, wl: Workload, cfg: Any) -> np.ndarray:
        return bf16.to_bf16_bits(base.pack_weight(weight.astype(np.float32), wl, cfg))

    return KernelDef(KernelKey(base.key.op, "bf16", base.key.isa), compute, schedule,
                     base.fallback_config, pack_weight, base.input_shape, base.output_shape,
                     f"bf16 weights and inputs, fp32 accumulation (portable): {base.description}",
                     base.reduction_order)


for _key in [k for k in registered_keys() if k.precision == "fp32"]:
    register(bf16_weights(_REGISTRY[_key]))
for _op, _mod, _desc in (
    ("conv2d", conv2d_bf16_dot, "NCHWc direct conv (every conv with a channel reduction)"),
    ("dense", dense_bf16_dot, "packed-weight GEMV/GEMM"),
):
    # native bf16 (``vdpbf16ps``): at the avx512_vnni level (every AVX512-BF16 CPU has VNNI) and
    # only where the target has avx512_bf16; elsewhere ``select`` falls back to the portable
    # bf16 kernel above. Depthwise convs have no channel pairs to reduce: portable only.
    register(KernelDef(KernelKey(_op, "bf16", "avx512_vnni"), _mod.compute, _mod.schedule,
                       _mod.fallback_config, _mod.pack_weight, _mod.input_shape, _mod.output_shape,
                       f"native bf16 on AVX512-BF16 vdpbf16ps (bf16 pairs, fp32 accumulation): {_desc}",
                       _mod.dot_order, requires=lambda f: f.avx512_bf16,
                       float_reference_fn=_mod.float_reference))
# native bf16 on AMX-BF16 tiles (``tdpbf16ps``), where the target has amx_bf16: convs of stride 1
# (a tile of up to 16 pixels x 16 channels x 32 input channels per op); strided convs get the
# ``vdpbf16ps`` configuration of the same module (``fallback_config``), hence avx512_bf16 too
# (every AMX-BF16 CPU has it). Without amx_bf16 ``select`` walks down to the kernels above.
register(KernelDef(KernelKey("conv2d", "bf16", "amx"), conv2d_bf16_dot.compute, conv2d_bf16_dot.schedule,
                   functools.partial(conv2d_bf16_dot.fallback_config, dot=conv2d_bf16_dot.TDPBF16PS),
                   conv2d_bf16_dot.pack_weight, conv2d_bf16_dot.input_shape, conv2d_bf16_dot.output_shape,
                   "native bf16 on AMX-BF16 tdpbf16ps tiles (stride 1; strided convs: vdpbf16ps), fp32 "
                   "accumulation: NCHWc direct conv (every conv with a channel reduction)",
                   conv2d_bf16_dot.dot_order, requires=lambda f: f.amx_bf16 and f.avx512_bf16,
                   float_reference_fn=conv2d_bf16_dot.float_reference))


def int16_activations(base: KernelDef) -> KernelDef:
    """The W8A16 twin of a W8A8 kernel: int16 activations (symmetric, zero point 0) instead of
    uint8; weights, accumulation, epilogue and reference unchanged. Products of int16 and int8
    fit ``vpmaddwd``'s exact int32 pair sums; the compiler bounds the activation range so that
    no int32 accumulator can overflow (``RealizeIntegers``)."""
    fallback = base.fallback_config
    if base.key.op == "conv2d" and base.key.isa != "generic":
        fallback = functools.partial(conv2d_w8a8_isa.fallback_config, isa=base.key.isa, data_dtype="int16")

    def compute(wl: Workload, cfg: Any) -> list:
        return base.compute(wl, cfg, None, "int16")

    return KernelDef(KernelKey(base.key.op, "w8a16", base.key.isa), compute, base.schedule,
                     fallback, base.pack_weight, base.input_shape, base.output_shape,
                     f"int16 activations: {base.description}")


for _key in [k for k in registered_keys() if k.precision == "w8a8" and k.isa in ("generic", "avx2", "avx512")]:
    register(int16_activations(_REGISTRY[_key]))
