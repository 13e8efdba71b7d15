"""W8A16 kernels (int16 activations) and int16 outputs (a producer feeding a W8A16 layer),
bit-exact against the numpy reference over hypothesis-generated shapes, int16 edges included."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st

from schedules import quant, reference, registry
from schedules.workload import Conv2dWorkload, DenseWorkload, Epilogue

from .test_int4_kernels import conv_cases
from .isa import HOST, isa_params
from .test_int8_kernels import CHECKED_BY, compile_for

PARAMS = isa_params("conv2d", "w8a16")


def _run(wl, precision: str, isa: str, x, w, b, m, s, qp, out_dtype: str) -> np.ndarray:  # type: ignore[no-untyped-def]
    features = HOST.with_isa(isa)
    kernel = registry.select(registry.op_of(wl), precision, features)
    cfg = kernel.fallback_config(wl, features)
    ex = compile_for(kernel, wl, cfg, features)
    out = tvm.runtime.empty(kernel.output_shape(wl, cfg), out_dtype)
    ex(*[tvm.runtime.tensor(a) for a in (x.reshape(kernel.input_shape(wl, cfg)), kernel.pack_weight(w, wl, cfg),
                                         b, m, s, np.array(qp, np.int32))], out)
    return out.numpy()


@pytest.mark.parametrize("isa", PARAMS)
@given(conv_cases(), st.booleans())
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_w8a16_conv_bit_exact(isa: str, case, out16: bool) -> None:  # type: ignore[no-untyped-def]
    wl, seed, extreme = case
    from dataclasses import replace

    wl = replace(wl, epilogue=Epilogue(True, "none", out_int16=out16))
    rng = np.random.default_rng(seed)
    x = rng.integers(-32768, 32768, wl.data_shape).astype(np.int16)
    w = rng.integers(-128, 128, wl.weight_shape).astype(np.int8)
    if extreme:  # int16 and int8 edges everywhere
        x = np.where(rng.random(wl.data_shape) < 0.5, -32768, 32767).astype(np.int16)
        w = np.where(rng.random(wl.weight_shape) < 0.5, -128, 127).astype(np.int8)
    b = rng.integers(-2 ** 20, 2 ** 20, wl.out_channels).astype(np.int32)
    m, s = quant.quantize_multiplier(10.0 ** rng.uniform(-9, -4, wl.out_channels))
    lo, hi, zp = (-32768, 32767, 0) if out16 else (0, 255, int(rng.integers(0, 256)))
    try:
        want = reference.conv2d_w8a8(x, w, b, m, s, 0, zp, lo, hi, wl,
                                     out_dtype=np.int16 if out16 else np.uint8)
    except OverflowError:  # the compiler never builds such a layer (it bounds the input range)
        reject()
    got = _run(wl, "w8a16", isa, x, w, b, m, s, [0, zp, lo, hi], "int16" if out16 else "uint8")
    np.testing.assert_array_equal(got.reshape(wl.out_shape), want)


@pytest.mark.parametrize("isa", isa_params("dense", "w8a16"))
@given(st.integers(1, 3), st.integers(1, 90), st.integers(1, 40), st.integers(0, 2 ** 16))
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_w8a16_dense_bit_exact(isa: str, n: int, c: int, k: int, seed: int) -> None:
    wl = DenseWorkload(n, c, k, Epilogue(True, "relu", out_int16=True))
    rng = np.random.default_rng(seed)
    x = rng.integers(-32768, 32768, (n, c)).astype(np.int16)
    w = rng.integers(-128, 128, (k, c)).astype(np.int8)
    b = rng.integers(-2 ** 20, 2 ** 20, k).astype(np.int32)
    m, s = quant.quantize_multiplier(10.0 ** rng.uniform(-8, -4, k))
    want = reference.dense_w8a8(x, w, b, m, s, 0, 0, 32767, out_dtype=np.int16)
    got = _run(wl, "w8a16", isa, x, w, b, m, s, [0, 0, 0, 32767], "int16")
    np.testing.assert_array_equal(got.reshape(wl.out_shape), want)


@pytest.mark.parametrize("isa", isa_params("conv2d", "w8a8", CHECKED_BY))
def test_w8a8_kernel_with_int16_output(isa: str) -> None:
    """A uint8-input layer whose consumer is W8A16 requantizes straight into int16 (every W8A8
    conv kernel: the requantizing epilogue is shared)."""
    wl = Conv2dWorkload(1, 16, 8, 8, 24, 3, 3, 1, 1, 1, 1, 1, 1, epilogue=Epilogue(True, "relu", out_int16=True))
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, wl.data_shape).astype(np.uint8)
    w = rng.integers(-128, 128, wl.weight_shape).astype(np.int8)
    b = rng.integers(-2 ** 16, 2 ** 16, wl.out_channels).astype(np.int32)
    m, s = quant.quantize_multiplier(10.0 ** rng.uniform(-3, -1, wl.out_channels))
    want = reference.conv2d_w8a8(x, w, b, m, s, 17, 0, 0, 32767, wl, out_dtype=np.int16)
    got = _run(wl, "w8a8", isa, x, w, b, m, s, [17, 0, 0, 32767], "int16")
    np.testing.assert_array_equal(got.reshape(wl.out_shape), want)
    assert want.max() > 255  # really beyond uint8
