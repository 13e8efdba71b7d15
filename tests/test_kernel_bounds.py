"""No kernel writes past its output: each runs into a buffer followed by canary bytes, at every
ISA level the host executes, on ragged shapes (output widths that are not whole register tiles).
A write past the end corrupted the heap (a crash later, elsewhere) before it was found here."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import tvm

from schedules import registry
from schedules.workload import Conv2dWorkload, DenseWorkload, Epilogue

from .isa import HOST, isa_params
from .test_int8_kernels import compile_for

CANARY = 77
RAGGED = [
    Conv2dWorkload(1, 24, 16, 20, 24, 5, 5, 2, 2, 1, 1, 1, 1, groups=24),
    Conv2dWorkload(1, 16, 7, 7, 16, 3, 3, 1, 1, 1, 1, 1, 1, groups=16),
    Conv2dWorkload(1, 12, 9, 11, 20, 3, 3, 1, 1, 1, 1, 1, 1),
    Conv2dWorkload(1, 20, 6, 5, 12, 1, 1),
    Conv2dWorkload(1, 16, 13, 13, 24, 3, 3, 2, 2, 1, 1, 1, 1),
]


def _guarded(shape: tuple[int, ...], dtype: str) -> tuple[np.ndarray, np.ndarray, tvm.runtime.Tensor]:
    """(the whole 64-byte aligned buffer, its canary tail, the output tensor over its start)."""
    item = np.dtype(dtype).itemsize
    n = int(np.prod(shape))
    raw = np.full((n + 256) * item + 64, CANARY, np.uint8)
    off = (-raw.ctypes.data) % 64
    whole = raw[off:off + (n + 256) * item]
    return whole, whole[n * item:], tvm.runtime.from_dlpack(whole[:n * item].view(dtype).reshape(shape))


def _operands(kernel, wl, cfg, precision: str) -> list[np.ndarray]:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(0)
    k = wl.out_features if isinstance(wl, DenseWorkload) else wl.out_channels
    if precision == "fp32":
        return [rng.standard_normal(kernel.input_shape(wl, cfg)).astype(np.float32),
                kernel.pack_weight(rng.standard_normal(wl.weight_shape).astype(np.float32), wl, cfg),
                rng.standard_normal(k).astype(np.float32)]
    return [rng.integers(0, 256, kernel.input_shape(wl, cfg)).astype(np.uint8),
            kernel.pack_weight(rng.integers(-127, 128, wl.weight_shape).astype(np.int8), wl, cfg),
            np.zeros(k, np.int32), np.full(k, 2 ** 30, np.int32), np.full(k, 45, np.int32),
            np.array([3, 5, 0, 255], np.int32)]


@pytest.mark.parametrize("isa", isa_params("conv2d", "w8a8"))
@pytest.mark.parametrize("precision", ["w8a8", "fp32"])
@pytest.mark.parametrize("wl", RAGGED + [DenseWorkload(1, 70, 13)] + [replace(w, layout="NHWC") for w in RAGGED],
                         ids=["dw5x5-s2", "dw3x3-7x7", "conv3x3", "pointwise", "conv3x3-s2", "dense",
                              *(f"nhwc-{i}" for i in ("dw5x5-s2", "dw3x3-7x7", "conv3x3", "pointwise", "conv3x3-s2"))])
def test_kernels_write_nothing_past_their_output(wl, precision: str, isa: str) -> None:  # type: ignore[no-untyped-def]
    features = HOST.with_isa(isa)
    kernel = registry.select(registry.op_of(wl), precision, features)
    cfg = kernel.fallback_config(wl, features)
    out_dtype = "float32" if precision == "fp32" else "uint8"
    whole, tail, out = _guarded(kernel.output_shape(wl, cfg), out_dtype)
    compile_for(kernel, wl, cfg, features)(*[tvm.runtime.tensor(a) for a in _operands(kernel, wl, cfg, precision)],
                                           out)
    assert (tail == CANARY).all(), f"{kernel.key} wrote {np.count_nonzero(tail != CANARY)} byte(s) past its output"
    assert not (whole[:-len(tail)] == CANARY).all()  # it wrote its output
