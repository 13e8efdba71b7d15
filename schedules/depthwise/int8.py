"""W8A8 depthwise conv2d, portable, two templates chosen by the workload's layout (the choice
is part of the config):

* NCHW: the fp32 template's body and schedule with integer types (uint8 input padded with its
  zero point, int8 weights ``[C, R, S]``, int32 accumulation), vectorised along rows;
* NHWC: ``int8_nhwc``, vectorised over channels (the layout the quantized layers keep).

Both take the integer epilogue (float32 or dyadic requantization). Arguments as
``conv2d/int8_portable``."""

from __future__ import annotations

from dataclasses import replace

from tvm import te

from ..common import TemplateDispatch, int8_epilogue, int8_operands
from ..kernel import KernelDef, KernelKey
from ..space import ConfigType
from ..target_features import TargetFeatures
from ..workload import Conv2dWorkload
from . import fp32, int8_nhwc
from .fp32 import DepthwiseConfig
from .int8_nhwc import ChannelsLastDepthwiseConfig

Config = DepthwiseConfig | ChannelsLastDepthwiseConfig


def fallback_config(wl: Conv2dWorkload, features: TargetFeatures) -> Config:
    """NHWC: ``int8_nhwc``'s. NCHW: fp32's, with the padded-plane copy always vectorised: for
    integer inputs (padded with a run-time zero point) that is faster on every MobileNetV2
    shape measured (AVX2: 112x112 s1 0.79 -> 0.63 ms, 112x112 s2 1.24 -> 0.82, 28x28 s2
    0.138 -> 0.120), unlike fp32."""
    if wl.nhwc:
        return int8_nhwc.fallback_config(wl, features)
    return replace(fp32.fallback_config(wl, features), pad_vectorize=True)

__all__ = ["CONFIG_TYPES", "Config", "compute", "fallback_config", "input_shape", "kernels",
           "output_shape", "pack_weight", "schedule"]

# fp32's DepthwiseConfig (NCHW), and the channels-last template's
CONFIG_TYPES = (ConfigType(ChannelsLastDepthwiseConfig,
                           lambda start, wl, features: int8_nhwc.candidates(wl, features)),)


def _nchw_compute(wl: Conv2dWorkload, cfg: DepthwiseConfig,
                  weight: te.Tensor | None = None,
                  data_dtype: str = "uint8") -> list[te.Tensor]:
    """``weight``, ``data_dtype``: as ``common.int8_operands``."""
    data, weight = int8_operands(wl.data_shape, fp32.packed_weight_shape(wl, cfg), weight, data_dtype)
    args, qp, epilogue, out_dtype = int8_epilogue(wl.epilogue, wl.out_channels, wl.out_shape)
    conv = fp32.conv_body(wl, cfg, data, weight, qp[0].astype(data_dtype), "int32")
    out = te.compute(wl.out_shape, lambda n, c, y, x: epilogue(conv[n, c, y, x], c, (n, c, y, x)),
                     name="out")
    return [data, weight, *args, out]


def _nchw_schedule(sch, wl: Conv2dWorkload, cfg: DepthwiseConfig, sample: bool = False) -> None:  # type: ignore[no-untyped-def]
    """fp32's, except that a ragged output tile (output width not whole tiles) is stored
    scalar: vectorised, its predicated uint8 store was compiled unmasked for 16 lanes
    (skylake-avx512, znver4) and wrote past the end of the output (a canary test shows it)."""
    fp32.schedule(sch, wl, cfg, sample, vectorize_ragged_out=False)


class _NCHW:
    compute = staticmethod(_nchw_compute)
    schedule = staticmethod(_nchw_schedule)
    pack_weight = staticmethod(fp32.pack_weight)
    input_shape = staticmethod(fp32.input_shape)
    output_shape = staticmethod(fp32.output_shape)


_dispatch = TemplateDispatch(lambda cfg: int8_nhwc if isinstance(cfg, ChannelsLastDepthwiseConfig) else _NCHW)
compute = _dispatch.compute  # ``compute(wl, cfg, weight=None, data_dtype="uint8")``
schedule = _dispatch.schedule
pack_weight = _dispatch.pack_weight
input_shape = _dispatch.input_shape
output_shape = _dispatch.output_shape


def kernels() -> list[KernelDef]:
    return [KernelDef(KernelKey("depthwise_conv2d", "w8a8", "generic"), compute, schedule, fallback_config,
                      pack_weight, input_shape, output_shape,
                      "portable u8 x s8 -> s32 depthwise conv, float32 or dyadic requantization")]
