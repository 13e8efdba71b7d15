"""fp32 conv2d: two templates, chosen per workload (the choice is part of the config).

* ``fp32_pointwise``: 1x1 / stride 1 / unpadded / ungrouped convs as a GEMM on the NCHW tensors,
  vectorised along pixels (no repack).
* ``fp32_direct``: everything else (any kernel size, stride, padding, dilation, groups) as an
  NCHWc register-tiled direct conv.

Measured on AVX2 (same run, MobileNetV2 / ResNet-50 1x1 layers): the pointwise template is
1.1-1.7x faster than the direct one where it applies; on AVX-512 only on large maps with few input
channels (``pointwise_pays``).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from ..common import TemplateDispatch
from ..kernel import KernelDef, KernelKey
from ..space import ConfigType
from ..target_features import TargetFeatures
from ..workload import Conv2dWorkload
from . import fp32_direct, fp32_pointwise

Config = fp32_direct.Conv2dConfig | fp32_pointwise.PointwiseConfig


def _template(cfg: Any) -> ModuleType:
    return fp32_pointwise if isinstance(cfg, fp32_pointwise.PointwiseConfig) else fp32_direct


def pointwise_pays(wl: Conv2dWorkload, features: TargetFeatures) -> bool:
    """Whether the fallback takes the pointwise template: wherever it applies on AVX2 (above); on
    32-register targets only on large maps with few input channels, where it re-reads little of
    the input per output block. Emerald Rapids core, 1 thread, fallback configs, bit-exact,
    pointwise / direct: 56x56 64->256 0.72 / 0.89 ms, 144->24 0.28 / 0.33, 112x112 16->96 0.40 /
    0.56; but 56x56 256->128 2.86 / 2.26, 28x28 128->512 1.36 / 0.77, 32->192 0.156 / 0.091,
    14x14 1024->256 0.75 / 0.65, 7x7 160->960 0.146 / 0.108."""
    if not fp32_pointwise.applies(wl):
        return False
    return features.vector_registers < 32 or (wl.height * wl.width >= 56 * 56 and wl.in_channels <= 160)


def fallback_config(wl: Conv2dWorkload, features: TargetFeatures) -> Config:
    template = fp32_pointwise if pointwise_pays(wl, features) else fp32_direct
    return template.fallback_config(wl, features)


_dispatch = TemplateDispatch(_template)
compute = _dispatch.compute  # ``compute(wl, cfg, data=None, weight=None)``
schedule = _dispatch.schedule
pack_weight = _dispatch.pack_weight
input_shape = _dispatch.input_shape
output_shape = _dispatch.output_shape
reduction_order = _dispatch.reduction_order


def config_space(start: Config, wl: Conv2dWorkload, features: TargetFeatures) -> list[Config]:
    """Both templates' candidates where the pointwise one applies (pointwise first), else the
    direct conv's."""
    direct = fp32_direct.candidates(wl, features)
    return fp32_pointwise.candidates(wl, features) + direct if fp32_pointwise.applies(wl) else direct


CONFIG_TYPES = (ConfigType(fp32_direct.Conv2dConfig, config_space),
                ConfigType(fp32_pointwise.PointwiseConfig, config_space))


def kernels() -> list[KernelDef]:
    # fp32 kernels are written once for every ISA: the vector width comes from the config
    return [KernelDef(KernelKey("conv2d", "fp32", "generic"), compute, schedule, fallback_config, pack_weight,
                      input_shape, output_shape,
                      "pointwise GEMM on NCHW, or NCHWc register-tiled direct conv", reduction_order)]
