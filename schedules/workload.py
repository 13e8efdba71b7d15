"""Workload descriptions: the shape facts a kernel is compiled for.

A workload is everything that changes the generated code of one layer: shapes, strides, padding,
groups and the fused epilogue. Two layers with equal workloads share one compiled kernel (their
weights are arguments), and the workload's ``key`` is what the tuning database is keyed on.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Literal

Activation = Literal["none", "relu", "clip", "hardswish", "hardswish_mul_div"]
ACTIVATIONS = ("none", "relu", "clip", "hardswish", "hardswish_mul_div")
# the activations an integer epilogue applies (its clamp bounds); hardswish only in float kernels
INTEGER_ACTIVATIONS = ("none", "relu", "clip")
Layout = Literal["NCHW", "NHWC"]
LAYOUTS = ("NCHW", "NHWC")
Requant = Literal["dyadic", "float"]
REQUANT_MODES = ("float", "dyadic")  # the first is the default of a quantized build


@dataclass(frozen=True)
class Epilogue:
    """What a kernel does to its accumulator before it stores it.

    ``bias`` adds a per-output-channel vector; ``residual`` adds a tensor of the output's shape
    (a residual connection); ``activation`` is applied last: ``relu`` is ``max(x, 0)``, ``clip``
    is ``min(max(x, clip_min), clip_max)`` (ReLU6 is ``clip`` with 0 and 6), ``hardswish`` is
    ``x * (min(max(x + 3, 0), 6) / 6)``, four float32 operations in that order (ONNX HardSwish as
    TVM imports it), ``hardswish_mul_div`` ``(x * min(max(x + 3, 0), 6)) / 6`` (as exporters spell
    it out); float kernels only: an integer epilogue refuses them.

    ``requant`` (integer kernels that requantize): ``dyadic``, the integer-only multiplier and
    shift, or ``float``, one float32 scale per output channel (``schedules.quant``). A workload's
    key leaves a ``dyadic`` out (so keys of float kernels and of earlier records stay as they were).
    """

    bias: bool = True
    activation: Activation = "none"
    clip_min: float = 0.0
    clip_max: float = 0.0
    residual: bool = False
    out_float: bool = False  # integer kernels: dequantize to fp32 instead of requantizing
    out_int16: bool = False  # integer kernels: requantize to int16 (symmetric) instead of uint8
    requant: Requant = "dyadic"

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}")
        if self.out_float and self.out_int16:
            raise ValueError("an epilogue dequantizes (out_float) or requantizes to int16, not both")
        if self.activation == "clip" and not self.clip_min <= self.clip_max:
            raise ValueError(f"clip_min {self.clip_min} > clip_max {self.clip_max}")
        if self.requant not in REQUANT_MODES:
            raise ValueError(f"unknown requantization {self.requant!r}; known: {', '.join(REQUANT_MODES)}")

    def to_json(self) -> dict:
        """The fields, ``requant`` only where it is not ``dyadic``."""
        d = dataclasses.asdict(self)
        if d["requant"] == "dyadic":
            del d["requant"]
        return d


@dataclass(frozen=True)
class Conv2dWorkload:
    """A 2-D convolution, OIHW weights as ONNX has them.

    ``groups == 1`` is a dense conv, ``groups == in_channels == out_channels`` a depthwise
    conv, anything between a grouped conv. ``layout`` is the activations' (input, output and a
    fused residual): ``NCHW`` as ONNX has them, or ``NHWC`` (channels last: the layout the
    quantized layers keep end to end, ``tvmq.passes.realize_integers``). A key leaves an
    ``NCHW`` out, so the keys of earlier records stay as they were.
    """

    batch: int
    in_channels: int
    height: int
    width: int
    out_channels: int
    kernel_h: int
    kernel_w: int
    stride_h: int = 1
    stride_w: int = 1
    pad_top: int = 0
    pad_left: int = 0
    pad_bottom: int = 0
    pad_right: int = 0
    dilation_h: int = 1
    dilation_w: int = 1
    groups: int = 1
    epilogue: Epilogue = Epilogue()
    layout: Layout = "NCHW"
    # the int8 weights are known to keep every same-signed pair of input channels within 128 in
    # magnitude (``quant.pairs_fit_int16``): kernels may use ``vpmaddubsw`` (AVX2), exact then
    narrow_weights: bool = False

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"unknown layout {self.layout!r}; known: {', '.join(LAYOUTS)}")
        if not isinstance(self.narrow_weights, bool):
            raise TypeError(f"Conv2dWorkload.narrow_weights must be a bool, got {self.narrow_weights!r}")
        ints = [f.name for f in dataclasses.fields(self) if f.name not in ("epilogue", "layout", "narrow_weights")]
        for name in ints:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"Conv2dWorkload.{name} must be an int, got {value!r}")
        positive = ("batch", "in_channels", "height", "width", "out_channels", "kernel_h",
                    "kernel_w", "stride_h", "stride_w", "dilation_h", "dilation_w", "groups")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"Conv2dWorkload.{name} must be >= 1, got {getattr(self, name)}")
        if self.in_channels % self.groups or self.out_channels % self.groups:
            raise ValueError(f"channels {self.in_channels}->{self.out_channels} not divisible "
                             f"by groups {self.groups}")
        if self.out_height < 1 or self.out_width < 1:
            raise ValueError(f"convolution output would be empty: {self}")

    @property
    def is_depthwise(self) -> bool:
        return self.groups > 1 and self.groups == self.in_channels == self.out_channels

    @property
    def out_height(self) -> int:
        span = (self.kernel_h - 1) * self.dilation_h + 1
        return (self.height + self.pad_top + self.pad_bottom - span) // self.stride_h + 1

    @property
    def out_width(self) -> int:
        span = (self.kernel_w - 1) * self.dilation_w + 1
        return (self.width + self.pad_left + self.pad_right - span) // self.stride_w + 1

    @property
    def in_per_group(self) -> int:
        return self.in_channels // self.groups

    @property
    def out_per_group(self) -> int:
        return self.out_channels // self.groups

    @property
    def macs(self) -> int:
        return (self.batch * self.out_channels * self.out_height * self.out_width
                * self.in_per_group * self.kernel_h * self.kernel_w)

    @property
    def weight_shape(self) -> tuple[int, int, int, int]:
        return (self.out_channels, self.in_per_group, self.kernel_h, self.kernel_w)

    @property
    def nhwc(self) -> bool:
        return self.layout == "NHWC"

    @property
    def data_shape(self) -> tuple[int, int, int, int]:
        if self.nhwc:
            return (self.batch, self.height, self.width, self.in_channels)
        return (self.batch, self.in_channels, self.height, self.width)

    @property
    def out_shape(self) -> tuple[int, int, int, int]:
        if self.nhwc:
            return (self.batch, self.out_height, self.out_width, self.out_channels)
        return (self.batch, self.out_channels, self.out_height, self.out_width)

    def to_json(self) -> dict:
        """The fields, the epilogue's ``to_json``; ``layout`` only where it is not ``NCHW``,
        ``narrow_weights`` only where it is true."""
        d = {**dataclasses.asdict(self), "epilogue": self.epilogue.to_json()}
        if d["layout"] == "NCHW":
            del d["layout"]
        if not d["narrow_weights"]:
            del d["narrow_weights"]
        return d

    def key(self) -> str:
        """A stable string key (JSON of the fields)."""
        return json.dumps(self.to_json(), sort_keys=True)


@dataclass(frozen=True)
class DenseWorkload:
    """``out[n, k] = sum_c data[n, c] * weight[k, c]`` (+ bias, activation)."""

    batch: int
    in_features: int
    out_features: int
    epilogue: Epilogue = Epilogue()

    def __post_init__(self) -> None:
        for name in ("batch", "in_features", "out_features"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"DenseWorkload.{name} must be a positive int, got {value!r}")

    @property
    def macs(self) -> int:
        return self.batch * self.in_features * self.out_features

    @property
    def weight_shape(self) -> tuple[int, int]:
        return (self.out_features, self.in_features)

    @property
    def data_shape(self) -> tuple[int, int]:
        return (self.batch, self.in_features)

    @property
    def out_shape(self) -> tuple[int, int]:
        return (self.batch, self.out_features)

    def as_conv(self) -> Conv2dWorkload:
        """The same layer as the 1x1 conv of ``batch`` one-pixel channels-last images (the
        same integers; ``[N, C]`` and ``[N, 1, 1, C]`` are the same memory)."""
        return Conv2dWorkload(self.batch, self.in_features, 1, 1, self.out_features, 1, 1, epilogue=self.epilogue,
                              layout="NHWC")

    def to_json(self) -> dict:
        return {**dataclasses.asdict(self), "epilogue": self.epilogue.to_json()}

    def key(self) -> str:
        return json.dumps(self.to_json(), sort_keys=True)


Workload = Conv2dWorkload | DenseWorkload
