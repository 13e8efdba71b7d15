"""Boundary kernels (quantize, dequantize, integer average pool) bit-exact against numpy."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import te

from schedules import elementwise, reference
from schedules.target_features import detect_host
from tvmq.passes.schedule_generic import schedule_primfunc

HOST = detect_host()


def _build(tensors):  # type: ignore[no-untyped-def]
    func = schedule_primfunc(te.create_prim_func(tensors), HOST.fp32_lanes)  # as in a model build
    return tvm.compile(tvm.IRModule({"main": func}), target=tvm.target.Target(HOST.target_json()))


def test_quantize_dequantize_bit_exact() -> None:
    rng = np.random.default_rng(0)
    shape = (1, 5, 7, 9)
    x = (rng.standard_normal(shape) * 3).astype(np.float32)
    scale, zp = np.float32(0.0371), 117
    x.reshape(-1)[:4] = [(0 - zp + 0.5) * scale, 2.5 * scale, -1e9, 1e9]  # near-ties and clamps
    out = tvm.runtime.empty(shape, "uint8")
    _build(elementwise.quantize(shape))(tvm.runtime.tensor(x), tvm.runtime.tensor(np.array([scale])),
                                        tvm.runtime.tensor(np.array([zp], np.int32)), out)
    np.testing.assert_array_equal(out.numpy(), reference.quantize_u8(x, scale, zp))
    back = tvm.runtime.empty(shape, "float32")
    _build(elementwise.dequantize(shape))(out, tvm.runtime.tensor(np.array([scale])),
                                          tvm.runtime.tensor(np.array([zp], np.int32)), back)
    np.testing.assert_array_equal(back.numpy(), reference.dequantize_u8(out.numpy(), scale, zp))


def test_integer_global_average_pool_bit_exact() -> None:
    rng = np.random.default_rng(1)
    for shape in [(1, 32, 7, 7), (2, 3, 4, 4), (1, 64, 14, 14)]:
        q = rng.integers(0, 256, shape).astype(np.uint8)
        q[0, 0] = 255  # the largest sum
        out = tvm.runtime.empty((shape[0], shape[1], 1, 1), "uint8")
        _build(elementwise.global_avg_pool_u8(shape))(tvm.runtime.tensor(q), out)
        np.testing.assert_array_equal(out.numpy(), reference.global_avg_pool_u8(q))
