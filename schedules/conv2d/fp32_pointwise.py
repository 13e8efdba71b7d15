"""fp32 pointwise (1x1, stride 1, no padding, ungrouped) conv as a GEMM on NCHW.

``out[n, k, p] = sum_c weight[k, c] * data[n, c, p]`` with ``p`` the flattened pixel index, so
the NCHW tensors are used as they are (``[N, C, H*W]`` views, no repack). The register tile is
``k_tile`` output channels (weights broadcast from scalars, packed ``[K/k_tile, C, k_tile]``) x
``p_tile`` pixels (whole vectors, loaded straight from the input rows); results are stored as
whole vectors into NCHW. A pixel count that is not a multiple of ``p_tile`` is handled by a
zero-padded copy of the input; the output channel tail by zero weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tvm import te

from ..common import (
    ceil_div,
    finish,
    keep_tile_in_registers,
    kernel_args,
    optional_bias,
    optional_residual,
    padded_width,
    split_tile,
)
from ..space import grid
from ..target_features import TargetFeatures
from ..workload import Conv2dWorkload


@dataclass(frozen=True)
class PointwiseConfig:
    k_tile: int  # output channels per register tile
    p_tile: int  # pixels per register tile (a multiple of lanes)
    lanes: int


def applies(wl: Conv2dWorkload) -> bool:
    """A 1x1, stride 1, unpadded, ungrouped conv on NCHW (a GEMM along pixels)."""
    return (not wl.nhwc and wl.kernel_h == wl.kernel_w == 1 and wl.stride_h == wl.stride_w == 1 and wl.groups == 1
            and not (wl.pad_top or wl.pad_left or wl.pad_bottom or wl.pad_right))


def fallback_config(wl: Conv2dWorkload, features: TargetFeatures) -> PointwiseConfig:
    lanes = features.fp32_lanes
    pixels = wl.height * wl.width
    accumulators = 28 if features.vector_registers >= 32 else 12
    # two vectors of pixels unless that mostly pads a small image
    vecs = 2 if padded_width(pixels, 2 * lanes) <= 1.15 * pixels or pixels >= 32 * lanes else 1
    return PointwiseConfig(k_tile=accumulators // vecs, p_tile=vecs * lanes, lanes=lanes)


def packed_weight_shape(wl: Conv2dWorkload, cfg: PointwiseConfig) -> tuple[int, ...]:
    return (ceil_div(wl.out_channels, cfg.k_tile), wl.in_channels, cfg.k_tile)


def pack_weight(weight: np.ndarray, wl: Conv2dWorkload, cfg: PointwiseConfig) -> np.ndarray:
    if weight.shape != wl.weight_shape:
        raise ValueError(f"weight shape {weight.shape} does not match workload {wl.weight_shape}")
    kb, c, kt = packed_weight_shape(wl, cfg)
    padded = np.zeros((kb * kt, c), dtype=np.float32)
    padded[: wl.out_channels] = weight[:, :, 0, 0]
    return np.ascontiguousarray(padded.reshape(kb, kt, c).transpose(0, 2, 1))


def input_shape(wl: Conv2dWorkload, cfg: object = None) -> tuple[int, ...]:
    return (wl.batch, wl.in_channels, wl.height * wl.width)


def output_shape(wl: Conv2dWorkload, cfg: object = None) -> tuple[int, ...]:
    return (wl.batch, wl.out_channels, wl.out_height * wl.out_width)


def reduction_order(wl: Conv2dWorkload, cfg: PointwiseConfig) -> list[tuple[int, int, int]]:
    """Each output accumulates the input channels in order (the single reduction loop)."""
    return [(c, 0, 0) for c in range(wl.in_channels)]


def compute(wl: Conv2dWorkload, cfg: PointwiseConfig,
            data: te.Tensor | None = None, weight: te.Tensor | None = None) -> list[te.Tensor]:
    n_, c_, p_ = input_shape(wl)
    kb, _, kt = packed_weight_shape(wl, cfg)
    pp = padded_width(p_, cfg.p_tile)
    if data is None:  # (bf16 layers pass rounded inputs and unpacked weights)
        data = te.placeholder((n_, c_, p_), "float32", name="data")
    if weight is None:
        weight = te.placeholder((kb, c_, kt), "float32", name="weight")
    if pp != p_:
        src = te.compute((n_, c_, pp), lambda n, c, p: te.if_then_else(
            p < p_, data[n, c, p], te.const(0.0, "float32")), name="data_pack")
    else:
        src = data
    rc = te.reduce_axis((0, c_), "rc")
    acc = te.compute((n_, kb, kt, pp),
                     lambda n, b, ki, p: te.sum(weight[b, rc, ki] * src[n, rc, p], axis=[rc]),
                     name="conv")
    bias = optional_bias(wl.epilogue, wl.out_channels)
    residual = optional_residual(wl.epilogue, output_shape(wl))
    out = te.compute((n_, wl.out_channels, p_),
                     lambda n, k, p: finish(acc[n, k // kt, k % kt, p], bias, k, wl.epilogue,
                                            residual, (n, k, p)),
                     name="out")
    return kernel_args(data, weight, bias, residual, out)


def schedule(sch, wl: Conv2dWorkload, cfg: PointwiseConfig, sample: bool = False) -> None:  # type: ignore[no-untyped-def]
    conv_b = sch.get_sblock("conv")
    out_b = sch.get_sblock("out")
    n, b, ki, p, rc = sch.get_loops(conv_b)
    pvecs, pl = sch.split(p, [None, cfg.lanes])
    po, pv = split_tile(sch, pvecs, cfg.p_tile // cfg.lanes, max_inner=4, sample=sample)
    sch.reorder(n, b, po, rc, ki, pv, pl)
    sch.parallel(sch.fuse(n, b, po))
    sch.vectorize(pl)
    outer = sch.get_loops(conv_b)[0]
    sch.reverse_compute_at(out_b, outer, preserve_unit_loops=True)
    init = sch.decompose_reduction(conv_b, rc)
    sch.vectorize(sch.get_loops(init)[-1])
    sch.unroll(ki)
    sch.unroll(pv)
    if wl.out_height * wl.out_width % cfg.p_tile == 0:
        _, ov = sch.split(sch.get_loops(out_b)[-1], [None, cfg.lanes])
        sch.vectorize(ov)
    keep_tile_in_registers(sch, init, out_b, outer)
    try:
        pack_b = sch.get_sblock("data_pack")
    except Exception:
        return
    pn, pc, pp = sch.get_loops(pack_b)
    sch.parallel(sch.fuse(pn, pc))


def candidates(wl: Conv2dWorkload, features: TargetFeatures) -> list[PointwiseConfig]:
    """The tuning candidates: every register tile of ``k_tile`` channels x 1-4 vectors of pixels
    that fits the vector registers."""
    lanes = features.fp32_lanes
    regs = features.vector_registers

    def make(k_tile: int, vecs: int) -> PointwiseConfig:
        if k_tile * vecs > regs - 2:
            raise ValueError("tile does not fit the registers")
        return PointwiseConfig(k_tile=k_tile, p_tile=vecs * lanes, lanes=lanes)

    return grid(make, k_tile=(2, 3, 4, 6, 7, 8, 12, 14, 16, 24, 28), vecs=(1, 2, 3, 4))
