"""W8A8 conv2d, portable: uint8 activations x int8 weights -> int32, requantized to uint8.

The same blocked direct convolution as the fp32 template (``fp32_direct.conv_body``, same
schedule), with integer types: the input is padded with its zero point (exact), products and
sums are int32, and the epilogue is integer-only (``schedules.quant``)::

    out = clamp(((acc + bias_q[k]) * m[k] + 2**(shift[k]-1)) >> shift[k]) + out_zp, lo, hi)

so ReLU / ReLU6 are the clamp bounds. Runs on any CPU (LLVM widens to 32-bit lanes); the VNNI
and AMX variants (u8 x s8 dot products in hardware) share this reference and this interface.

Kernel arguments: ``data u8 [N,C,H,W]``, ``weight s8 [G*OCB, ICB, R, S, ic_bn, oc_bn]``,
``bias s32 [K]``, ``multiplier s32 [K]``, ``shift s32 [K]``, ``qparams s32 [4]`` =
``(x_zp, out_zp, lo, hi)``, then, with a fused residual, ``residual u8 [N, G, K/G, OH, OW]`` and ``residual_params s32 [3]`` =
``(r_zp, r_m, r_shift)``, and ``out u8 [N, G, K/G, OH, OW]`` (``common.int8_epilogue``; at a model
edge the epilogue dequantizes to fp32 instead). Zero points and multipliers are run-time
arguments, so layers of equal shapes share one compiled kernel.
"""

from __future__ import annotations

from tvm import te

from ..common import int8_epilogue, int8_operands
from ..kernel import KernelDef, KernelKey
from ..workload import Conv2dWorkload
from . import fp32_direct
from .fp32_direct import (
    Conv2dConfig,
    conv_output,
    fallback_config,
    input_shape,
    output_shape,
    pack_weight,
    packed_weight_shape,
)

__all__ = ["CONFIG_TYPES", "Conv2dConfig", "compute", "fallback_config", "input_shape", "kernels",
           "output_shape", "pack_weight", "schedule"]

CONFIG_TYPES = ()  # fp32_direct's Conv2dConfig (``conv2d.fp32``)


def compute(wl: Conv2dWorkload, cfg: Conv2dConfig,
            weight: te.Tensor | None = None,
            data_dtype: str = "uint8") -> list[te.Tensor]:
    """``weight``, ``data_dtype``: as ``common.int8_operands``."""
    data, weight = int8_operands(wl.data_shape, packed_weight_shape(wl, cfg), weight, data_dtype)
    args, qp, epilogue, out_dtype = int8_epilogue(wl.epilogue, wl.out_channels, output_shape(wl))
    conv = fp32_direct.conv_body(wl, cfg, data, weight, qp[0].astype(data_dtype), "int32")
    oc_bn, kg = cfg.oc_bn, wl.out_per_group
    out = conv_output(wl, lambda n, gi, kk, y, x, index: epilogue(
        conv[n, gi, kk // oc_bn, y, x, kk % oc_bn], gi * kg + kk, index))
    return [data, weight, *args, out]


schedule = fp32_direct.schedule


def kernels() -> list[KernelDef]:
    return [KernelDef(KernelKey("conv2d", "w8a8", "generic"), compute, schedule, fallback_config, pack_weight,
                      input_shape, output_shape,
                      "portable u8 x s8 -> s32 direct conv, float32 or dyadic requantization",
                      config_types=(Conv2dConfig,))]
