"""The tuning space of every kernel template: which configurations the tuner may try.

A kernel's configuration (``Conv2dConfig``, ``PointwiseDotConfig``, ...) is the whole set of its
knobs: block sizes that change the packed weight layout as well as the register tiles the
schedule uses. ``config_space(kernel_config, workload, features)`` lists the candidates around a
starting configuration (the kernel's fallback), first the fallback itself, then every valid
combination of the knob values below, in a fixed order (the tuner's seed decides what it
samples, not this list). Where two templates implement the same op (a 1x1 conv: the pointwise
GEMM or the NCHWc direct conv), both templates' spaces are offered: the template is a knob too.

Configurations serialise to JSON (``config_to_json`` / ``config_from_json``) with their type
name, which is how the tuning database stores them.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

from .common import ceil_div
from .conv2d import bf16_dot as conv2d_bf16_dot
from .conv2d import fp32_direct, fp32_pointwise, int8_dot, int8_pointwise
from .dense import bf16_dot as dense_bf16_dot
from .dense.fp32 import DenseConfig
from .depthwise.fp32 import DepthwiseConfig
from .intrinsics import AMX_16X64, DOT_PRODUCTS, PIXEL_DOT_PRODUCTS
from .packing import UNPACK_POSITIONS, W4A8Config
from .target_features import TargetFeatures
from .workload import Conv2dWorkload, DenseWorkload, Workload

CONFIG_TYPES: dict[str, type] = {t.__name__: t for t in (
    fp32_direct.Conv2dConfig, fp32_pointwise.PointwiseConfig, int8_dot.DotConv2dConfig,
    int8_pointwise.PointwiseDotConfig, DepthwiseConfig, DenseConfig, conv2d_bf16_dot.Bf16DotConv2dConfig,
    dense_bf16_dot.Bf16DenseConfig)}


def tensorized(cfg: Any) -> bool:
    """Whether the kernel of ``cfg`` runs a dot-product tensor intrinsic (its W4A8 twin then
    unpacks once per call: TVM's ``compute_at`` cannot move a producer into a loop that holds
    a tensorized block)."""
    return isinstance(cfg, (int8_dot.DotConv2dConfig, int8_pointwise.PointwiseDotConfig))


def config_to_json(cfg: Any) -> dict[str, Any]:
    if isinstance(cfg, W4A8Config):  # the base kernel's configuration, nested
        return {"type": "W4A8Config", "unpack": cfg.unpack, "base": config_to_json(cfg.base)}
    if type(cfg).__name__ not in CONFIG_TYPES:
        raise TypeError(f"not a kernel configuration: {cfg!r}")
    return {"type": type(cfg).__name__, **dataclasses.asdict(cfg)}


def config_from_json(d: dict[str, Any]) -> Any:
    """Inverse of ``config_to_json``; ``ValueError`` on an unknown type or bad fields."""
    d = dict(d)
    name = d.pop("type", None)
    if name == "W4A8Config":
        if not isinstance(d.get("base"), dict):
            raise ValueError(f"bad W4A8Config fields {d}: no base configuration")
        return W4A8Config(config_from_json(d["base"]), d.get("unpack", "call"))
    if name not in CONFIG_TYPES:
        raise ValueError(f"unknown configuration type {name!r}; known: {', '.join(CONFIG_TYPES)}")
    try:
        return CONFIG_TYPES[name](**d)
    except TypeError as e:
        raise ValueError(f"bad {name} fields {d}: {e}") from None


def _grid(make, **choices) -> list[Any]:  # type: ignore[no-untyped-def]
    """Every combination of ``choices`` that ``make`` accepts (it raises ValueError otherwise)."""
    out = []
    names = list(choices)
    for values in itertools.product(*(sorted(set(choices[n])) for n in names)):
        try:
            out.append(make(**dict(zip(names, values))))
        except ValueError:
            continue
    return out


def _channel_blocks(channels: int, group: int, limit: int) -> list[int]:
    """Input-channel block sizes: multiples of ``group`` up to the channels (rounded up to the
    group) and ``limit``."""
    top = min(limit, ceil_div(channels, group) * group)
    return [b for b in (group, 2 * group, 4 * group, 8 * group, 16 * group, 32, 64) if b <= top and b % group == 0] or [top]


def _fp32_direct(wl: Conv2dWorkload, features: TargetFeatures) -> list[Any]:
    lanes = features.fp32_lanes
    regs = features.vector_registers
    ic = [b for b in (4, 8, 16, 32) if b <= wl.in_per_group] or [wl.in_per_group]
    if wl.in_per_group <= 32:
        ic.append(wl.in_per_group)
    oc = [lanes, 2 * lanes] if wl.out_per_group > lanes else [fp32_direct.fallback_config(wl, features).oc_bn]

    def make(ic_bn: int, oc_bn: int, reg_n: int) -> Any:
        if reg_n * ceil_div(oc_bn, lanes) > regs - 2:
            raise ValueError("tile does not fit the registers")
        return fp32_direct.Conv2dConfig(ic_bn, oc_bn, reg_n)

    return _grid(make, ic_bn=ic, oc_bn=oc, reg_n=range(1, min(wl.out_width, regs) + 1))


def _fp32_pointwise(wl: Conv2dWorkload, features: TargetFeatures) -> list[Any]:
    lanes = features.fp32_lanes
    regs = features.vector_registers

    def make(k_tile: int, vecs: int) -> Any:
        if k_tile * vecs > regs - 2:
            raise ValueError("tile does not fit the registers")
        return fp32_pointwise.PointwiseConfig(k_tile=k_tile, p_tile=vecs * lanes, lanes=lanes)

    return _grid(make, k_tile=(2, 3, 4, 6, 7, 8, 12, 14, 16, 24, 28), vecs=(1, 2, 3, 4))


def _int8_dot(wl: Conv2dWorkload, features: TargetFeatures, dot: str) -> list[Any]:
    d = DOT_PRODUCTS[dot]
    if d is AMX_16X64:
        return _grid(lambda reg_n: int8_dot.DotConv2dConfig(64, 16, reg_n, dot),
                     reg_n=range(2, min(16, wl.out_width) + 1))
    regs = features.vector_registers
    oc = [d.lanes, 2 * d.lanes] if wl.out_per_group > d.lanes else [d.lanes]

    def make(ic_bn: int, oc_bn: int, reg_n: int) -> Any:
        if reg_n * (oc_bn // d.lanes) > regs - 3:
            raise ValueError("tile does not fit the registers")
        return int8_dot.DotConv2dConfig(ic_bn, oc_bn, reg_n, dot)

    return _grid(make, ic_bn=_channel_blocks(wl.in_per_group, d.group, 64), oc_bn=oc,
                 reg_n=range(1, min(wl.out_width, regs) + 1))


def _int8_pointwise(wl: Conv2dWorkload, features: TargetFeatures, dot: str) -> list[Any]:
    lanes = PIXEL_DOT_PRODUCTS[dot].lanes
    regs = features.vector_registers

    def make(k_tile: int, vecs: int) -> Any:
        if k_tile * vecs > regs + (8 if regs > 16 else -2):
            raise ValueError("tile does not fit the registers")
        return int8_pointwise.PointwiseDotConfig(k_tile=k_tile, p_tile=vecs * lanes, dot=dot)

    return _grid(make, k_tile=(2, 3, 4, 6, 8, 12, 16, 24), vecs=(1, 2, 3, 4))


def _depthwise(wl: Conv2dWorkload, start: DepthwiseConfig) -> list[Any]:
    return _grid(lambda vecs, pad_vectorize: DepthwiseConfig(start.lanes, start.lanes * vecs, pad_vectorize),
                 vecs=(1, 2, 3, 4, 6), pad_vectorize=(False, True))


def _dense(wl: DenseWorkload, start: DenseConfig, features: TargetFeatures) -> list[Any]:
    lanes = features.fp32_lanes
    unroll = [u for u in (1, 2, 4, 8, 16) if wl.in_features % u == 0]
    return _grid(DenseConfig, oc_bn=(lanes, 2 * lanes, 4 * lanes), unroll_c=unroll)


def config_space(start: Any, wl: Workload, features: TargetFeatures) -> list[Any]:
    """The candidate configurations of the kernel whose fallback configuration is ``start``,
    ``start`` first (every candidate is a valid configuration of the same kernel; the
    instruction a dot-product config names is kept). A W4A8 kernel's space is its base
    kernel's times the unpack positions."""
    if isinstance(start, W4A8Config):
        space = [W4A8Config(c, u) for c in config_space(start.base, wl, features) for u in UNPACK_POSITIONS
                 if u == "call" or not tensorized(c)]
    elif isinstance(start, conv2d_bf16_dot.Bf16DotConv2dConfig):  # native AVX512-BF16 kernels
        space = conv2d_bf16_dot.config_space(start, wl)  # type: ignore[arg-type]
    elif isinstance(start, dense_bf16_dot.Bf16DenseConfig):
        space = dense_bf16_dot.config_space(start, wl)  # type: ignore[arg-type]
    elif isinstance(start, DenseConfig):
        space = _dense(wl, start, features)  # type: ignore[arg-type]
    elif isinstance(start, DepthwiseConfig):
        space = _depthwise(wl, start)  # type: ignore[arg-type]
    elif isinstance(start, (fp32_direct.Conv2dConfig, fp32_pointwise.PointwiseConfig)):
        space = _fp32_direct(wl, features)  # type: ignore[arg-type]
        if fp32_pointwise.applies(wl):  # type: ignore[arg-type]
            space = _fp32_pointwise(wl, features) + space  # type: ignore[arg-type]
    elif isinstance(start, (int8_dot.DotConv2dConfig, int8_pointwise.PointwiseDotConfig)):
        space = []
        if isinstance(start, int8_pointwise.PointwiseDotConfig):
            space += _int8_pointwise(wl, features, start.dot)  # type: ignore[arg-type]
            pixel = start.dot_product
            # the direct conv on the channel form of the same ISA level's instruction
            same = [d.name for d in DOT_PRODUCTS.values() if d.isa == pixel.isa]
            if same:
                space += _int8_dot(wl, features, same[0])  # type: ignore[arg-type]
        else:
            space += _int8_dot(wl, features, start.dot)  # type: ignore[arg-type]
    else:
        raise TypeError(f"no tuning space for configuration {start!r}")
    return [start] + [c for c in space if c != start]
