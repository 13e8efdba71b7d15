"""fp32 dense: ``out[n, k] = act(sum_c data[n, c] * weight[k, c] + bias[k])``.

Weights are packed ``[K/oc_bn, C, oc_bn]`` so the reduction streams one contiguous vector of
output channels per input feature (batch-1 inference is a weight-bandwidth-bound GEMV). The output
channel tail is padded inside the kernel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tvm import te

from ..common import ceil_div, finish, kernel_args, optional_bias, optional_residual, split_tile
from ..kernel import KernelDef, KernelKey
from ..space import ConfigType, grid
from ..target_features import TargetFeatures
from ..workload import DenseWorkload


@dataclass(frozen=True)
class DenseConfig:
    oc_bn: int
    unroll_c: int


def fallback_config(wl: DenseWorkload, features: TargetFeatures) -> DenseConfig:
    unroll = max(d for d in (1, 2, 4, 8) if wl.in_features % d == 0)
    return DenseConfig(oc_bn=features.fp32_lanes * 2, unroll_c=unroll)


def packed_weight_shape(wl: DenseWorkload, cfg: DenseConfig) -> tuple[int, ...]:
    return (ceil_div(wl.out_features, cfg.oc_bn), wl.in_features, cfg.oc_bn)


def pack_weight(weight: np.ndarray, wl: DenseWorkload, cfg: DenseConfig) -> np.ndarray:
    if weight.shape != wl.weight_shape:
        raise ValueError(f"weight shape {weight.shape} does not match workload {wl.weight_shape}")
    kb, c, oc_bn = packed_weight_shape(wl, cfg)
    padded = np.zeros((kb * oc_bn, c), dtype=weight.dtype)
    padded[: wl.out_features] = weight
    return np.ascontiguousarray(padded.reshape(kb, oc_bn, c).transpose(0, 2, 1))


def input_shape(wl: DenseWorkload, cfg: object = None) -> tuple[int, ...]:
    return wl.data_shape


def output_shape(wl: DenseWorkload, cfg: object = None) -> tuple[int, ...]:
    return wl.out_shape


def reduction_order(wl: DenseWorkload, cfg: DenseConfig) -> list[int]:
    """Each output accumulates the input features in order (the split reduction loop keeps it)."""
    return list(range(wl.in_features))


def dense_body(wl: DenseWorkload, cfg: DenseConfig, data: te.Tensor, weight: te.Tensor,
               acc_dtype: str) -> te.Tensor:
    """``[N, K/oc_bn, oc_bn]`` accumulators in ``acc_dtype`` (shared by every precision)."""
    kb, c_, oc_bn = packed_weight_shape(wl, cfg)
    rc = te.reduce_axis((0, c_), "rc")
    return te.compute((wl.batch, kb, oc_bn),
                      lambda n, b, ko: te.sum(data[n, rc].astype(acc_dtype)
                                              * weight[b, rc, ko].astype(acc_dtype), axis=[rc]),
                      name="dense")


def compute(wl: DenseWorkload, cfg: DenseConfig,
            data: te.Tensor | None = None, weight: te.Tensor | None = None) -> list[te.Tensor]:
    oc_bn = cfg.oc_bn
    if data is None:  # (bf16 layers pass rounded inputs and unpacked weights)
        data = te.placeholder(wl.data_shape, "float32", name="data")
    if weight is None:
        weight = te.placeholder(packed_weight_shape(wl, cfg), "float32", name="weight")
    acc = dense_body(wl, cfg, data, weight, "float32")
    bias = optional_bias(wl.epilogue, wl.out_features)
    residual = optional_residual(wl.epilogue, wl.out_shape)

    def epilogue(n, k):  # type: ignore[no-untyped-def]
        return finish(acc[n, k // oc_bn, k % oc_bn], bias, k, wl.epilogue, residual, (n, k))

    out = te.compute(wl.out_shape, epilogue, name="out")
    return kernel_args(data, weight, bias, residual, out)


def schedule(sch, wl: DenseWorkload, cfg: DenseConfig, sample: bool = False) -> None:  # type: ignore[no-untyped-def]
    acc_b = sch.get_sblock("dense")
    out_b = sch.get_sblock("out")
    n, b, ko, rc = sch.get_loops(acc_b)
    rco, rci = split_tile(sch, rc, cfg.unroll_c, max_inner=8, sample=sample)
    sch.reorder(n, b, rco, rci, ko)
    outer = sch.fuse(n, b)
    sch.parallel(outer)
    sch.vectorize(ko)
    sch.reverse_compute_at(out_b, outer, preserve_unit_loops=True)
    init = sch.decompose_reduction(acc_b, rco)
    sch.vectorize(sch.get_loops(init)[-1])
    sch.unroll(rci)


def config_space(start: DenseConfig, wl: DenseWorkload, features: TargetFeatures) -> list[DenseConfig]:
    """The tuning candidates: one, two or four vectors of output channels, every unroll of the
    input features up to 16 that divides them."""
    lanes = features.fp32_lanes
    unroll = [u for u in (1, 2, 4, 8, 16) if wl.in_features % u == 0]
    return grid(DenseConfig, oc_bn=(lanes, 2 * lanes, 4 * lanes), unroll_c=unroll)


CONFIG_TYPES = (ConfigType(DenseConfig, config_space),)


def kernels() -> list[KernelDef]:
    return [KernelDef(KernelKey("dense", "fp32", "generic"), compute, schedule, fallback_config, pack_weight,
                      input_shape, output_shape, "packed-weight GEMV/GEMM", reduction_order)]
