"""Derived kernels: twins of registered kernels that change one precision and reuse the rest.

* ``int4_weights``: W4A8 from every W8A8 kernel built from TE (int4 weights unpacked
  in-kernel; not those built directly in TIR, ``KernelDef.build_direct``);
* ``bf16_weights``: portable bf16 from every fp32 kernel (bf16 weights and inputs, fp32 sums);
* ``int16_activations``: W8A16 from the W8A8 kernels of the generic, avx2 and avx512 levels.

``derive(base)`` lists the twins of a set of base kernels; ``schedules.registry`` registers
them after the base kernels.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
from tvm import te

from . import bf16, space
from .conv2d import int8_dispatch
from .kernel import KernelDef, KernelKey
from .packing import W4A8Config, pack_int4, packed_shape, unpack_expr
from .target_features import TargetFeatures
from .workload import Workload

# the ISA levels whose W8A8 kernels have an int16-activation twin (``vpmaddwd``: avx2, avx512)
INT16_ISAS = ("generic", "avx2", "avx512")


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
        if base.key.op == "conv2d" and base.key.isa in int8_dispatch.ISA_LEVELS:
            # int4 values fit every instruction: on AVX2 ``vpmaddubsw``, exact on them
            return W4A8Config(int8_dispatch.fallback_config(wl, features, base.key.isa, narrow=True), "call")
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
                     f"int4 weights (two per byte) unpacked in-kernel, then: {base.description}",
                     config_types=base.config_types, prefers=base.prefers)



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



def int16_activations(base: KernelDef) -> KernelDef:
    """The W8A16 twin of a W8A8 kernel: int16 activations (symmetric, zero point 0) instead of
    uint8; weights, accumulation, epilogue and reference unchanged. Products of int16 and int8
    fit ``vpmaddwd``'s exact int32 pair sums; the compiler bounds the activation range so that
    no int32 accumulator can overflow (``RealizeIntegers``)."""
    fallback = base.fallback_config
    if base.key.op == "conv2d" and base.key.isa != "generic":
        fallback = functools.partial(int8_dispatch.fallback_config, isa=base.key.isa, data_dtype="int16")

    def compute(wl: Workload, cfg: Any) -> list:
        return base.compute(wl, cfg, None, "int16")

    return KernelDef(KernelKey(base.key.op, "w8a16", base.key.isa), compute, base.schedule,
                     fallback, base.pack_weight, base.input_shape, base.output_shape,
                     f"int16 activations: {base.description}", config_types=base.config_types)


def derive(base: list[KernelDef]) -> list[KernelDef]:
    """The derived twins of the kernels ``base`` (in key order): W4A8, portable bf16, W8A16."""
    base = sorted(base, key=lambda k: str(k.key))
    return ([int4_weights(k) for k in base if k.key.precision == "w8a8" and k.build_direct is None]
            + [bf16_weights(k) for k in base if k.key.precision == "fp32"]
            + [int16_activations(k) for k in base if k.key.precision == "w8a8" and k.key.isa in INT16_ISAS])
