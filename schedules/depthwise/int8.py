"""W8A8 depthwise conv2d, portable: the fp32 template's body and schedule with integer types
(uint8 input padded with its zero point, int8 weights ``[C, R, S]``, int32 accumulation) and the
integer-only requantization epilogue. Arguments as ``conv2d/int8_portable``."""

from __future__ import annotations

from dataclasses import replace

from tvm import te

from ..common import int8_epilogue, int8_operands
from ..kernel import KernelDef, KernelKey
from ..target_features import TargetFeatures
from ..workload import Conv2dWorkload
from . import fp32
from .fp32 import DepthwiseConfig, input_shape, output_shape, pack_weight


def fallback_config(wl: Conv2dWorkload, features: TargetFeatures) -> DepthwiseConfig:
    """fp32's, with the padded-plane copy always vectorised: for integer inputs (padded with a
    run-time zero point) that is faster on every MobileNetV2 shape measured (AVX2: 112x112 s1
    0.79 -> 0.63 ms, 112x112 s2 1.24 -> 0.82, 28x28 s2 0.138 -> 0.120), unlike fp32."""
    return replace(fp32.fallback_config(wl, features), pad_vectorize=True)

__all__ = ["CONFIG_TYPES", "DepthwiseConfig", "compute", "fallback_config", "input_shape", "kernels",
           "output_shape", "pack_weight", "schedule"]

CONFIG_TYPES = ()  # fp32's DepthwiseConfig


def compute(wl: Conv2dWorkload, cfg: DepthwiseConfig,
            weight: te.Tensor | None = None,
            data_dtype: str = "uint8") -> list[te.Tensor]:
    """``weight``, ``data_dtype``: as ``common.int8_operands``."""
    data, weight = int8_operands(wl.data_shape, fp32.packed_weight_shape(wl, cfg), weight, data_dtype)
    args, qp, epilogue, out_dtype = int8_epilogue(wl.epilogue, wl.out_channels, wl.out_shape)
    conv = fp32.conv_body(wl, cfg, data, weight, qp[0].astype(data_dtype), "int32")
    out = te.compute(wl.out_shape, lambda n, c, y, x: epilogue(conv[n, c, y, x], c, (n, c, y, x)),
                     name="out")
    return [data, weight, *args, out]


def schedule(sch, wl: Conv2dWorkload, cfg: DepthwiseConfig, sample: bool = False) -> None:  # type: ignore[no-untyped-def]
    """fp32's, except that a ragged output tile (output width not whole tiles) is stored
    scalar: vectorised, its predicated uint8 store was compiled unmasked for 16 lanes
    (skylake-avx512, znver4) and wrote past the end of the output (a canary test shows it)."""
    fp32.schedule(sch, wl, cfg, sample, vectorize_ragged_out=False)


def kernels() -> list[KernelDef]:
    return [KernelDef(KernelKey("depthwise_conv2d", "w8a8", "generic"), compute, schedule, fallback_config,
                      pack_weight, input_shape, output_shape,
                      "portable u8 x s8 -> s32 depthwise conv, float32 or dyadic requantization")]
