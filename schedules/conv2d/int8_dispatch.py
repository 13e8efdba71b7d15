"""W8A8 conv2d on a CPU's dot-product instructions: two templates, chosen per workload (the
choice is part of the config), like ``fp32``, and a third the tuner may choose.

* ``int8_pointwise``: 1x1 / stride 1 / unpadded / ungrouped convs as an integer GEMM on NCHW,
  vectorised along pixels.
* ``int8_dot``: everything else as an NCHWc register-tiled direct conv, vectorised along
  output channels (on AMX: tiles of pixels x 16 channels per ``tdpbusd``, one or two side by
  side, the input of a strided conv split by phase).
* ``int8_rows``: ``int8_dot`` with a tile of several output rows (on AMX, blocks of tiles of
  two rows: the fallback where the output height is even, ``_amx_block``).

``dot_family`` (the ISA level's instruction: ``avx2``, ``avx512``, ``avx512_vnni``) picks the
instruction of the templates (``schedules.intrinsics``).
"""

from __future__ import annotations

import functools
from types import ModuleType
from typing import Any

from ..common import TemplateDispatch
from ..kernel import KernelDef, KernelKey
from ..space import ConfigType
from ..intrinsics import AMX_16X64, DOT_PRODUCTS, PIXEL_DOT_PRODUCTS, PMADDUBSW_8X4, PMADDWD_8X2, VNNI_16X4
from ..target_features import TargetFeatures
from ..workload import Conv2dWorkload, DenseWorkload
from . import int8_dot, int8_pointwise, int8_rows

Config = int8_dot.DotConv2dConfig | int8_pointwise.PointwiseDotConfig | int8_rows.DotRowsConv2dConfig


def _template(cfg: Any) -> ModuleType:
    if isinstance(cfg, int8_rows.DotRowsConv2dConfig):
        return int8_rows
    return int8_pointwise if isinstance(cfg, int8_pointwise.PointwiseDotConfig) else int8_dot


def fallback_config(wl: Conv2dWorkload, features: TargetFeatures, isa: str,
                    data_dtype: str = "uint8", narrow: bool = False) -> Config:
    """``data_dtype``: int16 (W8A16) takes the int16 pixel forms and never VNNI / AMX (whose
    instructions multiply unsigned bytes). ``narrow``: the weights are known to fit
    ``vpmaddubsw`` (int4 values, ``quant.pairs_fit_int16``): on AVX2 the direct conv then takes
    ``PMADDUBSW_8X4`` (32 products per instruction instead of ``vpmaddwd``'s 16, and the uint8
    input read in place)."""
    pixel_dots = [d.name for d in PIXEL_DOT_PRODUCTS.values() if d.isa == isa and d.a_dtype == data_dtype]
    if int8_pointwise.applies(wl) and pixel_dots:  # (AMX has no pixel form: tiles do both)
        return int8_pointwise.fallback_config(wl, features, pixel_dots[0])
    if data_dtype == "int16" and isa not in ("avx2", "avx512"):
        raise ValueError(f"int16 activations have no {isa} dot-product kernel (vpmaddwd: avx2, avx512)")
    if isa == "amx" and not amx_fits(wl):
        isa = "avx512_vnni"
    dot = next(d.name for d in DOT_PRODUCTS.values() if d.isa == isa)
    if (narrow or wl.narrow_weights) and isa == PMADDUBSW_8X4.isa and data_dtype == "uint8":
        dot = PMADDUBSW_8X4.name
    if data_dtype == "uint8" and _wide_window(wl, isa):
        return int8_rows.DotRowsConv2dConfig(ic_bn=min(64, -(-wl.in_per_group // 4) * 4), oc_bn=16, reg_n=3,
                                             rows=4, dot=dot)
    base = int8_dot.fallback_config(wl, features, dot)
    if dot == AMX_16X64.name:
        return _amx_block(wl, base)
    return _small_map_tile(wl, base) if dot == PMADDUBSW_8X4.name else base


def _amx_block(wl: Conv2dWorkload, base: int8_dot.DotConv2dConfig) -> Config:
    """AMX convs: a block of 2 output rows x 2 tiles of 16 channels (four accumulators, two A
    and two B tiles: all eight tile registers) where the output height is even, else one row x
    2 tiles; 1 tile of 16 channels where the group's channels are not whole blocks of 32 (or one
    block of 17-31): a ragged last block stores its channels one by one, MobileNetV2's 24->144
    at 56x56 1.4x slower than one tile. Measured per layer on an
    Emerald Rapids core (1 thread, medians of 5 interleaved rounds), against ``base``'s one tile
    per output block: ResNet-50's convs 0.43-1.01x (3x3 64->64 at 56x56 0.223 -> 0.160 ms,
    1024->256 at 14x14 0.068 -> 0.049, 64->256 at 56x56 0.476 -> 0.211; strided convs, which
    took VNNI, 0.25-0.75x of it); the sum of its layers 12.1 -> 7.7 ms, 6.5 with ``amx_pays``'
    VNNI layers."""
    k = wl.out_per_group
    cols = 2 if k % 32 == 0 or 16 < k < 32 else 1
    if wl.out_height % 2 == 0 or wl.out_height >= 7:  # (an odd height computes one row of padding)
        return int8_rows.DotRowsConv2dConfig(ic_bn=64, oc_bn=16 * cols, reg_n=base.reg_n, rows=2, dot=base.dot)
    return int8_dot.DotConv2dConfig(ic_bn=64, oc_bn=16 * cols, reg_n=base.reg_n, dot=base.dot)


def _small_map_tile(wl: Conv2dWorkload, base: int8_dot.DotConv2dConfig) -> Config:
    """AVX2 ``vpmaddubsw`` convs whose output width the one-row tile does not divide (its 4
    pixels on 14- and 7-pixel maps: padded columns, and the input repacked instead of read in
    place): a 2 x 2 pixel tile of 16 channels where the width and height are even, a whole row
    of 8 channels for 1x1s at most 7 pixels wide. Measured per layer on a Zen 3 core (1 thread, 5
    interleaved rounds, ``base`` -> this): ResNet-50's 14-pixel 1x1s and 3x3s -10 to -14% (its
    1024->512 +2%), its 7-pixel 1x1s -7 to -9%; MobileNetV2's 14-pixel 1x1s -13 to -27% (two
    within +2%), its 7-pixel 1x1s -3 to -14% (320->1280 +3%). Whole-row kxk tiles keep ``base``."""
    width, height = wl.out_width, wl.out_height
    if width % base.reg_n == 0:
        return base
    if width % 2 == 0 and height % 2 == 0 and wl.out_per_group % 16 == 0:
        return int8_rows.DotRowsConv2dConfig(ic_bn=base.ic_bn, oc_bn=16, reg_n=2, rows=2, dot=base.dot)
    if wl.kernel_h == wl.kernel_w == 1 and width <= 7 and wl.out_per_group % 8 == 0:
        return int8_dot.DotConv2dConfig(ic_bn=base.ic_bn, oc_bn=8, reg_n=width, dot=base.dot, blocks_inside=True)
    return base


def amx_fits(wl: Conv2dWorkload) -> bool:
    """An AMX tile loads at least two rows of pixels (a strided conv's input is split by
    phase, ``int8_dot.pack_phases``, so that they are consecutive): one-pixel-wide outputs take
    the VNNI form."""
    return wl.out_width > 1


def amx_pays(wl: Conv2dWorkload) -> bool:
    """Whether a layer is compiled with the AMX kernel rather than the VNNI one
    (``registry.select_for``): AMX tiles fit (``amx_fits``), the group has at least 64 input
    channels (a tile step takes 64: fewer are padded, a first conv's 3 to 64) and at least 32
    output channels (one block of two tiles). Measured per layer on an Emerald Rapids core (1
    thread, medians of 5 interleaved rounds, ``_amx_block``'s tiles / VNNI): ResNet-50's convs
    0.29-0.76 but its 64-channel 1x1s 1.0 and its first conv 3.5; MobileNetV2's 1x1s from 192
    or more channels 0.35-0.83, from 64 / 96 / 160 channels 0.8-1.2, from 16-32 channels or to 24
    channels 1.3-2.5. The tuner measures both forms per layer."""
    return amx_fits(wl) and wl.in_per_group >= 64 and wl.out_per_group >= 32


def _wide_window(wl: Conv2dWorkload, isa: str) -> bool:
    """A kxk conv over a wide map (VNNI): ``int8_rows``' tile of 4 rows x 3 pixels x 16 channels
    lets each input pixel a step of the window broadcasts serve every row it overlaps.
    Measured on a Zen 4 core (interleaved minima): ResNet-50's 64-channel 3x3 at 56x56 0.580 ->
    0.521 ms, its 128-channel 3x3 stride 2 from 56x56 0.653 -> 0.551; equal at 28x28 and 14x14
    (where ``int8_dot`` already runs at 92-98% of ``vpdpbusd``'s peak); slower on 3-channel
    first convs (kept on ``int8_dot``)."""
    return (isa == "avx512_vnni" and wl.groups == 1 and wl.kernel_h >= 3 and wl.in_per_group >= 16
            and wl.out_width >= 28 and wl.out_height % 4 == 0)


_dispatch = TemplateDispatch(_template)
compute = _dispatch.compute  # ``compute(wl, cfg, weight=None, data_dtype="uint8")``
schedule = _dispatch.schedule
pack_weight = _dispatch.pack_weight
input_shape = _dispatch.input_shape
output_shape = _dispatch.output_shape


ISA_LEVELS = sorted({d.isa for d in DOT_PRODUCTS.values()})


def data_dtype_of(cfg: Config) -> str:
    """The activations' type of a configuration's instruction (uint8, or int16 for ``vpmaddwd``)."""
    return cfg.dot_product.a_dtype


def config_space(start: Config, wl: Conv2dWorkload, features: TargetFeatures) -> list[Config]:
    """A pointwise start: the pointwise candidates on its instruction, then the direct conv's
    on the channel form of the same ISA level's instruction; a direct start: the direct conv's
    on its instruction. After the direct conv's candidates, those of its multi-row tile
    (``int8_rows``) on the same instruction. A dense layer's (``dense.int8_dot``): one-pixel
    direct convs."""
    if isinstance(wl, DenseWorkload):
        return _one_pixel_space(start, wl, features)
    if isinstance(start, int8_pointwise.PointwiseDotConfig):
        space: list[Config] = list(int8_pointwise.candidates(wl, features, start.dot))
        same = [d.name for d in DOT_PRODUCTS.values() if d.isa == start.dot_product.isa]
        dots = same[:1]
    else:
        space, dots = [], [start.dot]
        if start.dot == PMADDUBSW_8X4.name:  # narrow weights: vpmaddwd is exact on them too
            dots.append(PMADDWD_8X2.name)
    if features.amx_int8 and data_dtype_of(start) == "uint8":
        # on an AMX target: AMX tiles and the VNNI forms, measured against each other per layer
        # (neither wins everywhere: ``amx_pays``), whichever kernel the layer was given
        both = [d.name for d in (AMX_16X64, VNNI_16X4) if d is not AMX_16X64 or amx_fits(wl)]
        dots += [d for d in both if d not in dots]
    for dot in dots:
        space += int8_dot.candidates(wl, features, dot) + int8_rows.candidates(wl, features, dot)
    return space


def _one_pixel_space(start: int8_dot.DotConv2dConfig, wl: DenseWorkload,
                     features: TargetFeatures) -> list[int8_dot.DotConv2dConfig]:
    """A dense layer's candidates (``dense.int8_dot``): the direct conv's channel blocks on the
    start's instruction with one pixel, and one to eight vectors of output channels."""
    lanes = start.dot_product.lanes
    out = [start]
    for c in int8_dot.candidates(wl.as_conv(), features, start.dot):
        for vecs in (1, 2, 4, 8):
            cfg = int8_dot.DotConv2dConfig(c.ic_bn, vecs * lanes, 1, c.dot)
            if cfg not in out:
                out.append(cfg)
    return out


CONFIG_TYPES = (ConfigType(int8_dot.DotConv2dConfig, config_space, tensorized=True),
                ConfigType(int8_pointwise.PointwiseDotConfig, config_space, tensorized=True),
                ConfigType(int8_rows.DotRowsConv2dConfig, config_space, tensorized=True))


def kernels() -> list[KernelDef]:
    """The dot-product convs, one per ISA level that has an integer dot-product instruction."""
    return [KernelDef(KernelKey("conv2d", "w8a8", isa), compute, schedule,
                      functools.partial(fallback_config, isa=isa), pack_weight, input_shape, output_shape,
                      f"u8 x s8 -> s32 on the {isa} dot-product instruction (exact): pointwise "
                      "GEMM along pixels, or NCHWc direct conv; float32 or dyadic requantization",
                      prefers=amx_pays if isa == "amx" else None)
            for isa in ISA_LEVELS]
