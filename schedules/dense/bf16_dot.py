"""Native bf16 dense on AVX512-BF16 ``vdpbf16ps``: ``out[n, k] = act(sum_c x[n, c] * w[k, c] + bias[k])``.

The float32 input is rounded to bf16 (nearest even) and repacked once per call to
``[N, C/2, 2]`` uint16 (a pair of features per 32-bit broadcast; an odd feature count is padded
with a zero); the weights are packed ahead of time as uint16 bf16 patterns
``[K/oc_bn, C/2, oc_bn, 2]`` (feature pairs innermost, as ``vdpbf16ps`` reads them), so the
reduction streams one contiguous zmm of 16 output channels x 2 features per instruction. fp32
accumulators, ``common.finish`` epilogue, float32 in and out, the input / output shapes of the
fp32 dense (``dense.fp32``).

Summation order, per output: feature pairs in order, the odd feature then the even one
(``dot_order``); ``float_reference`` reproduces it bit for bit (``reference.dense_bf16_dot``).

Knobs (``Bf16DenseConfig``): ``oc_bn`` (a multiple of 16), ``unroll_c`` (feature pairs per
unrolled step).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tvm import te, tirx

from .. import bf16, reference
from ..common import ceil_div, finish, kernel_args, optional_bias, optional_residual, split_tile
from ..intrinsics_bf16 import DPBF16PS_16X2, GROUP, LANES, bf16_value
from ..kernel import KernelDef, KernelKey
from ..space import ConfigType
from ..target_features import TargetFeatures
from ..workload import DenseWorkload
from .fp32 import input_shape, output_shape

__all__ = ["CONFIG_TYPES", "Bf16DenseConfig", "compute", "config_space", "dot_order", "fallback_config",
           "float_reference", "input_shape", "kernels", "output_shape", "pack_weight", "schedule"]


@dataclass(frozen=True)
class Bf16DenseConfig:
    oc_bn: int
    unroll_c: int

    def __post_init__(self) -> None:
        if self.oc_bn < 1 or self.oc_bn % LANES:
            raise ValueError(f"oc_bn={self.oc_bn} must be a positive multiple of {LANES} (zmm lanes)")
        if self.unroll_c < 1:
            raise ValueError("unroll_c must be >= 1")


def fallback_config(wl: DenseWorkload, features: TargetFeatures) -> Bf16DenseConfig:
    pairs = ceil_div(wl.in_features, GROUP)
    unroll = max(d for d in (1, 2, 4, 8) if pairs % d == 0)
    return Bf16DenseConfig(oc_bn=2 * LANES if wl.out_features > LANES else LANES, unroll_c=unroll)


def packed_weight_shape(wl: DenseWorkload, cfg: Bf16DenseConfig) -> tuple[int, ...]:
    return (ceil_div(wl.out_features, cfg.oc_bn), ceil_div(wl.in_features, GROUP), cfg.oc_bn, GROUP)


def pack_weight(weight: np.ndarray, wl: DenseWorkload, cfg: Bf16DenseConfig) -> np.ndarray:
    """``[K, C]`` float32 -> uint16 bf16 patterns ``[K/oc_bn, C/2, oc_bn, 2]``, zero padded."""
    if weight.shape != wl.weight_shape:
        raise ValueError(f"weight shape {weight.shape} does not match workload {wl.weight_shape}")
    kb, cq, oc_bn, grp = packed_weight_shape(wl, cfg)
    padded = np.zeros((kb * oc_bn, cq * grp), dtype=np.uint16)
    padded[: wl.out_features, : wl.in_features] = bf16.to_bf16_bits(weight.astype(np.float32))
    return np.ascontiguousarray(padded.reshape(kb, oc_bn, cq, grp).transpose(0, 2, 1, 3))


def compute(wl: DenseWorkload, cfg: Bf16DenseConfig) -> list[te.Tensor]:
    """TE compute: ``[data f32, packed_weight u16, (bias,) (residual,) out f32]``."""
    n_, c_ = wl.data_shape
    kb, cq, oc_bn, grp = packed_weight_shape(wl, cfg)
    data = te.placeholder(wl.data_shape, "float32", name="data")
    weight = te.placeholder((kb, cq, oc_bn, grp), "uint16", name="weight")

    def pack(n, q, j):  # type: ignore[no-untyped-def]
        c = q * grp + j
        bits = bf16.bits_expr(data[n, tirx.min(c, c_ - 1)])
        return bits if c_ % grp == 0 else tirx.if_then_else(c < c_, bits, tirx.const(0, "uint16"))

    xpack = te.compute((n_, cq, grp), pack, name="data_pack")
    rq = te.reduce_axis((0, cq), "rq")
    rg = te.reduce_axis((0, grp), "rg")
    acc = te.compute((n_, kb, oc_bn), lambda n, b, ko: te.sum(
        bf16_value(xpack[n, rq, rg]) * bf16_value(weight[b, rq, ko, rg]), axis=[rq, rg]), name="dense")
    bias = optional_bias(wl.epilogue, wl.out_features)
    residual = optional_residual(wl.epilogue, wl.out_shape)

    def epilogue(n, k):  # type: ignore[no-untyped-def]
        return finish(acc[n, k // oc_bn, k % oc_bn], bias, k, wl.epilogue, residual, (n, k))

    out = te.compute(wl.out_shape, epilogue, name="out")
    return kernel_args(data, weight, bias, residual, out)


def schedule(sch, wl: DenseWorkload, cfg: Bf16DenseConfig, sample: bool = False,  # type: ignore[no-untyped-def]
             intrin: str = DPBF16PS_16X2) -> None:
    """Parallel over (batch row, output block); the feature pairs split by ``unroll_c`` (a
    sampling decision) and unrolled; each ``16 x 2`` step tensorized to ``vdpbf16ps``
    (``intrin``: another registration of the same description, for tests)."""
    acc_b = sch.get_sblock("dense")
    out_b = sch.get_sblock("out")
    n, b, ko, rq, rg = sch.get_loops(acc_b)
    rqo, rqi = split_tile(sch, rq, cfg.unroll_c, max_inner=8, sample=sample)
    ko_o, ko_i = sch.split(ko, [None, LANES])
    sch.reorder(n, b, rqo, rqi, ko_o, ko_i, rg)
    outer = sch.fuse(n, b)
    sch.parallel(outer)
    sch.reverse_compute_at(out_b, outer, preserve_unit_loops=True)
    init = sch.decompose_reduction(acc_b, rqo)
    sch.vectorize(sch.get_loops(init)[-1])
    sch.unroll(rqi)
    sch.unroll(ko_o)
    sch.tensorize(ko_i, intrin)
    pack_b = sch.get_sblock("data_pack")
    pn, _, pj = sch.get_loops(pack_b)
    sch.parallel(pn)
    sch.unroll(pj)


def dot_order(wl: DenseWorkload, cfg: Bf16DenseConfig) -> list[int]:
    """The features in the order each output accumulates them: pairs in order, the odd feature
    then the even one (``vdpbf16ps``); the padding feature of an odd count left out."""
    c_ = wl.in_features
    return [c for q in range(ceil_div(c_, GROUP)) for c in (GROUP * q + 1, GROUP * q) if c < c_]


def float_reference(wl: DenseWorkload, cfg: Bf16DenseConfig, data: np.ndarray, weight: np.ndarray,
                    bias: np.ndarray | None = None, residual: np.ndarray | None = None) -> np.ndarray:
    """What the kernel computes, bit for bit: ``reference.dense_bf16_dot``."""
    return reference.dense_bf16_dot(bf16.round_bf16(data), bf16.round_bf16(weight), bias, wl,
                                    dot_order(wl, cfg), residual)


def config_space(start: Bf16DenseConfig, wl: DenseWorkload,
                 features: TargetFeatures | None = None) -> list[Bf16DenseConfig]:
    """Candidate configurations for the tuner, ``start`` first: one, two or four zmm of output
    channels, every unroll of the feature pairs up to 16 that divides them. The tuning space of
    ``CONFIG_TYPES``."""
    pairs = ceil_div(wl.in_features, GROUP)
    out = [Bf16DenseConfig(oc, u) for oc in (LANES, 2 * LANES, 4 * LANES)
           for u in (1, 2, 4, 8, 16) if pairs % u == 0]
    return [start] + [c for c in out if c != start]


CONFIG_TYPES = (ConfigType(Bf16DenseConfig, config_space),)


def kernels() -> list[KernelDef]:
    """Native bf16 on ``vdpbf16ps`` where the target has avx512_bf16 (as ``conv2d.bf16_dot``)."""
    return [KernelDef(KernelKey("dense", "bf16", "avx512_vnni"), compute, schedule, fallback_config,
                      pack_weight, input_shape, output_shape,
                      "native bf16 on AVX512-BF16 vdpbf16ps (bf16 pairs, fp32 accumulation): "
                      "packed-weight GEMV/GEMM",
                      dot_order, requires=lambda f: f.avx512_bf16, float_reference_fn=float_reference)]
