"""Small helpers shared by the kernel definitions."""

from __future__ import annotations

from tvm import tirx

from .workload import Epilogue


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def register_tile(width: int, max_regs: int) -> int:
    """Output pixels per register tile, between ``max_regs/2`` and ``max_regs``.

    Kernels pad the output width up to a multiple of the tile (and compute, then drop, the
    extra pixels), so the choice minimises that padding and prefers wider tiles on ties.
    """
    if width <= max_regs:
        return width
    lo = max(1, max_regs // 2)
    return min(range(lo, max_regs + 1), key=lambda r: (ceil_div(width, r) * r, -r))


def padded_width(width: int, reg_n: int) -> int:
    return ceil_div(width, reg_n) * reg_n


def apply_activation(x: tirx.PrimExpr, ep: Epilogue) -> tirx.PrimExpr:
    """ReLU / clip in fp32, as the epilogue asks."""
    if ep.activation == "relu":
        return tirx.max(x, tirx.const(0.0, "float32"))
    if ep.activation == "clip":
        return tirx.min(tirx.max(x, tirx.const(ep.clip_min, "float32")),
                        tirx.const(ep.clip_max, "float32"))
    return x
