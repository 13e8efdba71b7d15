"""W4A8: the nibble packing round trip, and every W4A8 kernel bit-exact against the numpy
reference (the W8A8 reference with weights in -8..7) over hypothesis-generated shapes."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schedules import packing, quant, reference, registry
from schedules.workload import Conv2dWorkload, DenseWorkload, Epilogue

from .test_int8_kernels import CONV_ISAS, HOST, TARGET


@given(st.lists(st.integers(-8, 7), min_size=1, max_size=41), st.integers(1, 3))
def test_pack_unpack_round_trip_any_length(values: list[int], rows: int) -> None:
    w = np.array([values] * rows, np.int8)
    p = packing.pack_int4(w)
    assert p.dtype == np.uint8 and p.shape == (rows, (len(values) + 1) // 2)
    np.testing.assert_array_equal(packing.unpack_int4(p, len(values)), w)


def test_pack_layout_is_low_nibble_first() -> None:
    assert packing.pack_int4(np.array([1, -2], np.int8)).tolist() == [0xE1]
    assert packing.pack_int4(np.array([-8, 7, 5], np.int8)).tolist() == [0x78, 0x05]
    with pytest.raises(ValueError, match="int4 values"):
        packing.pack_int4(np.array([8], np.int8))


def _kernel(wl, isa: str | None):  # type: ignore[no-untyped-def]
    features = HOST if isa is None else HOST.with_isa(isa)
    kernel = registry.select(registry.op_of(wl), "w4a8", features)
    cfg = kernel.fallback_config(wl, features)
    return kernel, cfg, tvm.compile(tvm.IRModule({"main": kernel.build_primfunc(wl, cfg)}), target=TARGET)


def _operands(shape_w, c_out: int, rng, extreme: bool):  # type: ignore[no-untyped-def]
    wq = rng.integers(-8, 8, shape_w).astype(np.int8)
    if extreme:
        wq = np.where(rng.random(shape_w) < 0.5, -8, 7).astype(np.int8)
    bias_q = rng.integers(-2 ** 18, 2 ** 18, c_out).astype(np.int32)
    m, s = quant.quantize_multiplier(10.0 ** rng.uniform(-6, -1, c_out))
    return wq, bias_q, m, s


@st.composite
def conv_cases(draw):  # type: ignore[no-untyped-def]
    groups = draw(st.sampled_from([1, 1, 2]))
    cg, kg = draw(st.integers(1, 19)), draw(st.integers(1, 21))
    k = draw(st.sampled_from([1, 1, 3]))
    stride = draw(st.integers(1, 2))
    pad = draw(st.integers(0, k // 2))
    hw = draw(st.integers(max(1, k - 2 * pad), 10))
    depthwise = draw(st.booleans()) and k == 3
    if depthwise:
        c = cg + 1
        wl = Conv2dWorkload(1, c, hw, hw, c, k, k, stride, stride, pad, pad, pad, pad, groups=c)
    else:
        wl = Conv2dWorkload(1, cg * groups, hw, hw + 1, kg * groups, k, k, stride, stride,
                            pad, pad, pad, pad, groups=groups)
    return wl, draw(st.integers(0, 2 ** 16)), draw(st.booleans())


@pytest.mark.parametrize("isa", CONV_ISAS)
@given(conv_cases())
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_w4a8_conv_and_depthwise_bit_exact(isa: str, case) -> None:  # type: ignore[no-untyped-def]
    wl, seed, extreme = case
    rng = np.random.default_rng(seed)
    xq = rng.integers(0, 256, wl.data_shape).astype(np.uint8)
    wq, bias_q, m, s = _operands(wl.weight_shape, wl.out_channels, rng, extreme)
    x_zp, out_zp = int(rng.integers(0, 256)), int(rng.integers(0, 256))
    kernel, cfg, ex = _kernel(wl, isa)
    packed = kernel.pack_weight(wq, wl, cfg)
    assert packed.dtype == np.uint8
    out = tvm.runtime.empty(kernel.output_shape(wl, cfg), "uint8")
    ex(*[tvm.runtime.tensor(a) for a in (xq.reshape(kernel.input_shape(wl, cfg)), packed, bias_q, m, s,
                                         np.array([x_zp, out_zp, 0, 255], np.int32))], out)
    expected = reference.conv2d_w8a8(xq, wq, bias_q, m, s, x_zp, out_zp, 0, 255, wl)
    np.testing.assert_array_equal(out.numpy().reshape(wl.out_shape), expected)


@given(st.integers(1, 2), st.integers(1, 77), st.integers(1, 40), st.integers(0, 2 ** 16), st.booleans())
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_w4a8_dense_bit_exact(n: int, c: int, k: int, seed: int, extreme: bool) -> None:
    wl = DenseWorkload(n, c, k)
    rng = np.random.default_rng(seed)
    xq = rng.integers(0, 256, (n, c)).astype(np.uint8)
    wq, bias_q, m, s = _operands((k, c), k, rng, extreme)
    kernel, cfg, ex = _kernel(wl, None)
    out = tvm.runtime.empty(kernel.output_shape(wl, cfg), "uint8")
    ex(*[tvm.runtime.tensor(a) for a in (xq, kernel.pack_weight(wq, wl, cfg), bias_q, m, s,
                                         np.array([0, 9, 0, 255], np.int32))], out)
    np.testing.assert_array_equal(out.numpy(), reference.dense_w8a8(xq, wq, bias_q, m, s, 9, 0, 255))


def test_w4a8_weights_take_half_the_bytes() -> None:
    wl = Conv2dWorkload(1, 64, 8, 8, 64, 3, 3, 1, 1, 1, 1, 1, 1, epilogue=Epilogue(True, "relu"))
    w = np.random.default_rng(0).integers(-8, 8, wl.weight_shape).astype(np.int8)
    k8 = registry.select("conv2d", "w8a8", HOST)
    k4 = registry.select("conv2d", "w4a8", HOST)
    b8 = k8.pack_weight(w, wl, k8.fallback_config(wl, HOST)).nbytes
    b4 = k4.pack_weight(w, wl, k4.fallback_config(wl, HOST)).nbytes
    assert b4 * 2 == b8
