"""W8A8 dense, portable: uint8 x int8 -> int32 with the integer-only requantization epilogue.

Arguments: ``data u8 [N, C]``, ``weight s8 [K/oc_bn, C, oc_bn]``, ``bias s32 [K]``,
``multiplier s32 [K]``, ``shift s32 [K]``, ``qparams s32 [4]`` = ``(x_zp, out_zp, lo, hi)``
(``x_zp`` unused here: a dense layer has no padding; its correction is folded into the bias),
``out u8 [N, K]``.
"""

from __future__ import annotations

from tvm import te

from ..common import int8_epilogue, int8_operands
from ..kernel import KernelDef, KernelKey
from ..workload import DenseWorkload
from . import fp32
from .fp32 import DenseConfig, fallback_config, input_shape, output_shape, pack_weight

__all__ = ["CONFIG_TYPES", "DenseConfig", "compute", "fallback_config", "input_shape", "kernels",
           "output_shape", "pack_weight", "schedule"]

CONFIG_TYPES = ()  # fp32's DenseConfig


def compute(wl: DenseWorkload, cfg: DenseConfig,
            weight: te.Tensor | None = None,
            data_dtype: str = "uint8") -> list[te.Tensor]:
    """``weight``, ``data_dtype``: as ``common.int8_operands``."""
    data, weight = int8_operands(wl.data_shape, fp32.packed_weight_shape(wl, cfg), weight, data_dtype)
    args, _, epilogue, _ = int8_epilogue(wl.epilogue, wl.out_features, wl.out_shape)
    acc = fp32.dense_body(wl, cfg, data, weight, "int32")
    oc_bn = cfg.oc_bn
    out = te.compute(wl.out_shape, lambda n, k: epilogue(acc[n, k // oc_bn, k % oc_bn], k, (n, k)),
                     name="out")
    return [data, weight, *args, out]


schedule = fp32.schedule


def kernels() -> list[KernelDef]:
    return [KernelDef(KernelKey("dense", "w8a8", "generic"), compute, schedule, fallback_config, pack_weight,
                      input_shape, output_shape, "portable u8 x s8 -> s32 dense, float32 or dyadic requantization")]
