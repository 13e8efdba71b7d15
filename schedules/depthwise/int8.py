"""W8A8 depthwise conv2d, portable: the fp32 template's body and schedule with integer types
(uint8 input padded with its zero point, int8 weights ``[C, R, S]``, int32 accumulation) and the
integer-only requantization epilogue. Arguments as ``conv2d/int8_direct``."""

from __future__ import annotations

from tvm import te

from ..common import int_residual_args, requantize_expr
from ..workload import Conv2dWorkload
from . import fp32
from .fp32 import DepthwiseConfig, fallback_config, input_shape, output_shape, pack_weight

__all__ = ["DepthwiseConfig", "compute", "fallback_config", "input_shape", "output_shape",
           "pack_weight", "schedule"]


def compute(wl: Conv2dWorkload, cfg: DepthwiseConfig) -> list[te.Tensor]:
    data = te.placeholder(wl.data_shape, "uint8", name="data")
    weight = te.placeholder(fp32.packed_weight_shape(wl, cfg), "int8", name="weight")
    bias = te.placeholder((wl.out_channels,), "int32", name="bias")
    mult = te.placeholder((wl.out_channels,), "int32", name="multiplier")
    shift = te.placeholder((wl.out_channels,), "int32", name="shift")
    qp = te.placeholder((4,), "int32", name="qparams")
    conv = fp32.conv_body(wl, cfg, data, weight, qp[0].astype("uint8"), "int32")
    res, rp = int_residual_args(wl.epilogue, wl.out_shape)
    out = te.compute(wl.out_shape, lambda n, c, y, x: requantize_expr(
        conv[n, c, y, x], bias[c], mult[c], shift[c], qp[1], qp[2], qp[3],
        residual=None if res is None else res[n, c, y, x], rparams=rp), name="out")
    return [data, weight, bias, mult, shift, qp] + ([res, rp] if res is not None else []) + [out]


schedule = fp32.schedule
