"""W8A8 dense on the dot-product instructions: a batch-``N`` dense layer is the 1x1 conv of ``N``
one-pixel channels-last images (``DenseWorkload.as_conv``), so it runs on the direct conv's
register tile (``conv2d.int8_dot``: ``oc_bn`` output channels of one pixel per step, the input's
channels broadcast ``group`` at a time), with its exact instructions, packed weights, epilogue
and numpy reference (``reference.dense_w8a8`` is that conv). One kernel per ISA level with an
integer dot product (``avx2``/``avx512`` ``vpmaddwd``, ``avx512_vnni`` ``vpdpbusd``; an AMX
target takes VNNI: a tile needs at least two pixels). The portable kernel (``dense.int8``)
stays the fallback.

Arguments: ``data u8 [N, 1, 1, C]``, ``weight`` (``int8_dot.pack_weight`` of the ``[K, C, 1,
1]`` weights), the epilogue's (``common.int8_epilogue``), ``out [N, 1, 1, K]``: free views of
the layer's ``[N, C]`` and ``[N, K]``.
"""

from __future__ import annotations

import numpy as np
from tvm import te

from ..conv2d import int8_dot
from ..conv2d.int8_dot import DotConv2dConfig
from ..intrinsics import DOT_PRODUCTS
from ..kernel import KernelDef, KernelKey
from ..target_features import TargetFeatures
from ..workload import DenseWorkload

__all__ = ["CONFIG_TYPES", "ISA_LEVELS", "compute", "fallback_config", "input_shape", "kernels",
           "output_shape", "pack_weight", "schedule"]

CONFIG_TYPES = ()  # conv2d.int8_dot's DotConv2dConfig (its space knows dense workloads)
ISA_LEVELS = ("avx2", "avx512", "avx512_vnni")
ACCUMULATORS = 4  # vectors of output channels per step: independent dot-product chains


def fallback_config(wl: DenseWorkload, features: TargetFeatures, isa: str) -> DotConv2dConfig:
    """``ACCUMULATORS`` vectors of output channels (fewer where the layer has fewer), input
    channels in blocks of up to 64 read in place where they divide the input (VNNI)."""
    dot = next(d for d in DOT_PRODUCTS.values() if d.isa == isa)
    base = int8_dot.fallback_config(wl.as_conv(), features, dot.name)
    vecs = max(1, min(ACCUMULATORS, -(-wl.out_features // dot.lanes)))
    return DotConv2dConfig(ic_bn=base.ic_bn, oc_bn=vecs * dot.lanes, reg_n=1, dot=dot.name)


def compute(wl: DenseWorkload, cfg: DotConv2dConfig, weight: te.Tensor | None = None,
            data_dtype: str = "uint8") -> list[te.Tensor]:
    return int8_dot.compute(wl.as_conv(), cfg, weight, data_dtype)


def schedule(sch, wl: DenseWorkload, cfg: DotConv2dConfig, sample: bool = False) -> None:  # type: ignore[no-untyped-def]
    int8_dot.schedule(sch, wl.as_conv(), cfg, sample)


def pack_weight(weight: np.ndarray, wl: DenseWorkload, cfg: DotConv2dConfig) -> np.ndarray:
    """``[K, C]`` int8 -> the direct conv's packing of the ``[K, C, 1, 1]`` weights."""
    if weight.shape != wl.weight_shape:
        raise ValueError(f"weight shape {weight.shape} does not match workload {wl.weight_shape}")
    return int8_dot.pack_weight(weight.reshape(*weight.shape, 1, 1), wl.as_conv(), cfg)


def input_shape(wl: DenseWorkload, cfg: object = None) -> tuple[int, ...]:
    return wl.as_conv().data_shape


def output_shape(wl: DenseWorkload, cfg: object = None) -> tuple[int, ...]:
    return wl.as_conv().out_shape


def kernels() -> list[KernelDef]:
    return [KernelDef(KernelKey("dense", "w8a8", isa), compute, schedule,
                      lambda wl, features, isa=isa: fallback_config(wl, features, isa), pack_weight,
                      input_shape, output_shape,
                      f"u8 x s8 -> s32 dense as a one-pixel 1x1 conv on the {isa} dot-product instruction "
                      "(exact); float32 or dyadic requantization")
            for isa in ISA_LEVELS]
