"""W4A8: the nibble packing round trip, and every W4A8 kernel bit-exact against the numpy
reference (the W8A8 reference with weights in -8..7) over hypothesis-generated shapes."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schedules import packing, quant, reference, registry, space
from schedules.conv2d import int8_dispatch
from schedules.workload import Conv2dWorkload, DenseWorkload, Epilogue

from .isa import HOST, PROFILES, can_execute, isa_params, skip_reason
from .test_int8_kernels import CHECKED_BY, compile_for


@given(st.lists(st.integers(1, 5), min_size=1, max_size=4), st.integers(0, 2 ** 16))
def test_pack_unpack_round_trip_any_shape(shape: list[int], seed: int) -> None:
    w = np.random.default_rng(seed).integers(-8, 8, shape).astype(np.int8)
    p = packing.pack_int4(w)
    blocks = 1 if len(shape) == 1 else shape[0]
    assert p.dtype == np.uint8 and p.shape == packing.packed_shape(tuple(shape))
    assert p.size == blocks * ((w.size // blocks + 1) // 2)
    np.testing.assert_array_equal(packing.unpack_int4(p, tuple(shape)), w)


def test_pack_layout_pairs_the_halves_of_each_block() -> None:
    """Byte j of a block: value j in the low nibble, value j + ceil(M / 2) in the high one."""
    assert packing.pack_int4(np.array([1, -2], np.int8)).tolist() == [0xE1]
    assert packing.pack_int4(np.array([-8, 7, 5], np.int8)).tolist() == [0x58, 0x07]
    two_blocks = np.array([[1, 2, 3, 4], [-1, -2, -3, -4]], np.int8)
    assert packing.pack_int4(two_blocks).tolist() == [[0x31, 0x42], [0xDF, 0xCE]]
    with pytest.raises(ValueError, match="int4 values"):
        packing.pack_int4(np.array([8], np.int8))
    with pytest.raises(ValueError, match="cannot hold"):
        packing.unpack_int4(np.zeros(3, np.uint8), (7, 2))


def _kernel(wl, isa: str | None, unpack: str = "call"):  # type: ignore[no-untyped-def]
    features = HOST if isa is None else HOST.with_isa(isa)
    kernel = registry.select(registry.op_of(wl), "w4a8", features)
    base = kernel.fallback_config(wl, features).base
    if unpack == "block" and space.tensorized(base):
        pytest.skip(f"{kernel.key} is tensorized: its W4A8 twin unpacks once per call only")
    cfg = packing.W4A8Config(base, unpack)
    return kernel, cfg, compile_for(kernel, wl, cfg, features)


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


@pytest.mark.parametrize("isa", isa_params("conv2d", "w4a8", CHECKED_BY))
@given(conv_cases(), st.sampled_from(packing.UNPACK_POSITIONS))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_w4a8_conv_and_depthwise_bit_exact(isa: str, case, unpack: str) -> None:  # type: ignore[no-untyped-def]
    _check_w4a8_conv(isa, *case, unpack)


@pytest.mark.parametrize("isa", isa_params("conv2d", "w4a8", CHECKED_BY))
@pytest.mark.parametrize("stride", [1, 2])
def test_w4a8_wide_3x3_conv_on_the_multi_row_tile_bit_exact(isa: str, stride: int) -> None:
    """A 3x3 conv over a 56-wide map: at the VNNI level its fallback is ``int8_rows``' tile
    (``int8_dispatch._wide_window``), at the AMX level a block of two rows of tiles; their W4A8
    twins equal numpy too."""
    wl = Conv2dWorkload(1, 16, 56, 56, 24, 3, 3, stride, stride, 1, 1, 1, 1)
    features = HOST if isa is None else HOST.with_isa(isa)
    base = registry.select("conv2d", "w4a8", features).fallback_config(wl, features).base
    # (AMX: a block of two rows of AMX tiles, strided too, ``int8_dispatch._amx_block``)
    assert (type(base).__name__ == "DotRowsConv2dConfig") == (features.isa in ("avx512_vnni", "amx"))
    assert (getattr(base, "dot", None) == "tvmq_amx") == (features.isa == "amx")
    _check_w4a8_conv(isa, wl, 3, False, "call")


def _check_w4a8_conv(isa: str, wl, seed: int, extreme: bool, unpack: str) -> None:  # type: ignore[no-untyped-def]
    features = HOST if isa is None else HOST.with_isa(isa)
    if unpack == "block" and space.tensorized(registry.select(registry.op_of(wl), "w4a8", features)
                                              .fallback_config(wl, features).base):
        unpack = "call"  # (tensorized kernels unpack once per call)
    rng = np.random.default_rng(seed)
    xq = rng.integers(0, 256, wl.data_shape).astype(np.uint8)
    wq, bias_q, m, s = _operands(wl.weight_shape, wl.out_channels, rng, extreme)
    x_zp, out_zp = int(rng.integers(0, 256)), int(rng.integers(0, 256))
    kernel, cfg, ex = _kernel(wl, isa, unpack)
    packed = kernel.pack_weight(wq, wl, cfg)
    assert packed.dtype == np.uint8
    out = tvm.runtime.empty(kernel.output_shape(wl, cfg), "uint8")
    ex(*[tvm.runtime.tensor(a) for a in (xq.reshape(kernel.input_shape(wl, cfg)), packed, bias_q, m, s,
                                         np.array([x_zp, out_zp, 0, 255], np.int32))], out)
    expected = reference.conv2d_w8a8(xq, wq, bias_q, m, s, x_zp, out_zp, 0, 255, wl)
    np.testing.assert_array_equal(out.numpy().reshape(wl.out_shape), expected)


@pytest.mark.parametrize("isa", isa_params("dense", "w4a8"))
@given(st.integers(1, 2), st.integers(1, 77), st.integers(1, 40), st.integers(0, 2 ** 16), st.booleans(),
       st.sampled_from(packing.UNPACK_POSITIONS))
@settings(max_examples=16, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_w4a8_dense_bit_exact(isa: str, n: int, c: int, k: int, seed: int, extreme: bool, unpack: str) -> None:
    wl = DenseWorkload(n, c, k)
    rng = np.random.default_rng(seed)
    xq = rng.integers(0, 256, (n, c)).astype(np.uint8)
    wq, bias_q, m, s = _operands((k, c), k, rng, extreme)
    kernel, cfg, ex = _kernel(wl, isa, unpack)
    out = tvm.runtime.empty(kernel.output_shape(wl, cfg), "uint8")
    ex(*[tvm.runtime.tensor(a) for a in (xq, kernel.pack_weight(wq, wl, cfg), bias_q, m, s,
                                         np.array([0, 9, 0, 255], np.int32))], out)
    np.testing.assert_array_equal(out.numpy(), reference.dense_w8a8(xq, wq, bias_q, m, s, 9, 0, 255))


@pytest.mark.parametrize("isa", list(PROFILES))
def test_w4a8_weights_take_half_the_bytes(isa: str) -> None:
    """At every ISA level (selection and packing only: no execution)."""
    features = PROFILES[isa]
    wl = Conv2dWorkload(1, 64, 8, 8, 64, 3, 3, 1, 1, 1, 1, 1, 1, epilogue=Epilogue(True, "relu"))
    w = np.random.default_rng(0).integers(-8, 8, wl.weight_shape).astype(np.int8)
    k8 = registry.select("conv2d", "w8a8", features)
    k4 = registry.select("conv2d", "w4a8", features)
    assert k8.key.isa == k4.key.isa == isa
    b8 = k8.pack_weight(w, wl, k8.fallback_config(wl, features)).nbytes
    b4 = k4.pack_weight(w, wl, k4.fallback_config(wl, features)).nbytes
    assert b4 * 2 == b8


@pytest.mark.parametrize("isa", list(PROFILES))
def test_w4a8_unpack_position_is_a_tuning_knob(isa: str) -> None:
    """The W4A8 space is the base kernel's times the unpack positions (once per call, per
    output-channel block), the block position only where the base kernel is not tensorized;
    configurations round-trip through the tuning database's JSON. At every ISA level."""
    features = PROFILES[isa]
    for wl in (DenseWorkload(1, 64, 24), Conv2dWorkload(1, 16, 9, 9, 16, 3, 3, 1, 1, 1, 1, 1, 1, groups=16),
               Conv2dWorkload(1, 16, 9, 9, 24, 1, 1)):
        kernel = registry.select(registry.op_of(wl), "w4a8", features)
        start = kernel.fallback_config(wl, features)
        configs = space.config_space(start, wl, features)
        assert configs[0] == start and all(isinstance(c, packing.W4A8Config) for c in configs)
        want = {"call"} if space.tensorized(start.base) else {"call", "block"}
        assert {c.unpack for c in configs} == want
        assert len(configs) == len(want) * len(space.config_space(start.base, wl, features))
        for c in configs:
            assert space.config_from_json(space.config_to_json(c)) == c
    with pytest.raises(ValueError, match="unpack"):
        packing.W4A8Config(start.base, "tap")


NARROW_CASES = [Conv2dWorkload(1, 32, 8, 12, 24, 1, 1, layout="NHWC"),  # read in place
                Conv2dWorkload(1, 20, 9, 9, 40, 3, 3, 1, 1, 1, 1, 1, 1, layout="NHWC"),  # padded: repacked
                Conv2dWorkload(1, 3, 16, 16, 16, 3, 3, 2, 2, 1, 1, 1, 1, layout="NHWC"),  # a first conv
                Conv2dWorkload(1, 16, 10, 10, 16, 3, 3, 1, 1, 1, 1, 1, 1)]  # NCHW


@pytest.mark.parametrize("wl", NARROW_CASES, ids=["1x1-nhwc", "3x3-nhwc", "first-nhwc", "3x3-nchw"])
def test_avx2_w4a8_conv_takes_vpmaddubsw_exact_at_the_extremes(wl: Conv2dWorkload) -> None:
    """On AVX2, a W4A8 conv runs ``vpmaddubsw`` (u8 x s8 pairs summed in int16): exact on int4
    weights, checked where the pair sums are largest (activations 255 against weights all -8 or
    all 7) and on random operands; cross-compiled, it holds ``vpmaddubsw``."""
    features = PROFILES["avx2"] if not can_execute("avx2") else HOST.with_isa("avx2")
    kernel = registry.select("conv2d", "w4a8", features)
    cfg = kernel.fallback_config(wl, features)
    assert cfg.base.dot == "tvmq_pmaddubsw_8x4"
    asm = tvm.compile(tvm.IRModule({"main": kernel.build_primfunc(wl, cfg)}),
                      target=tvm.target.Target(features.target_json())).mod.inspect_source("s")
    assert "vpmaddubsw" in asm
    if not can_execute("avx2"):
        pytest.skip(skip_reason("avx2"))
    ex = compile_for(kernel, wl, cfg, features)
    rng = np.random.default_rng(7)
    for w_value in (-8, 7, None):
        xq = np.full(wl.data_shape, 255, np.uint8) if w_value is not None else \
            rng.integers(0, 256, wl.data_shape).astype(np.uint8)
        wq = (np.full(wl.weight_shape, w_value, np.int8) if w_value is not None
              else rng.integers(-8, 8, wl.weight_shape).astype(np.int8))
        _, bias_q, m, s = _operands(wl.weight_shape, wl.out_channels, rng, False)
        m, s = quant.quantize_multiplier(np.full(wl.out_channels, 1e-4))  # outputs away from the clamp
        x_zp = 0 if w_value is not None else 3
        out = tvm.runtime.empty(kernel.output_shape(wl, cfg), "uint8")
        ex(*[tvm.runtime.tensor(a) for a in (xq.reshape(kernel.input_shape(wl, cfg)),
                                             kernel.pack_weight(wq, wl, cfg), bias_q, m, s,
                                             np.array([x_zp, 128, 0, 255], np.int32))], out)
        expected = reference.conv2d_w8a8(xq, wq, bias_q, m, s, x_zp, 128, 0, 255, wl)
        np.testing.assert_array_equal(out.numpy().reshape(wl.out_shape), expected)
        assert len(np.unique(expected)) > 1 or w_value is not None


def test_vpmaddubsw_refuses_weights_it_would_saturate_on() -> None:
    """``pairs_fit_int16`` is the exactness condition of ``vpmaddubsw``: int4 weights and pairs
    up to 128 in magnitude pass, full-range int8 weights (127 + 2) are refused when packed, so
    no W8A8 layer can run the saturating instruction; W8A8 keeps ``vpmaddwd`` on AVX2."""
    assert quant.pairs_fit_int16(np.array([[64, 64, -64, -64]]))
    assert quant.pairs_fit_int16(np.array([[127, -127, -127, 127]]))  # opposite signs never saturate
    assert not quant.pairs_fit_int16(np.array([[127, 2, 0, 0]]))
    assert not quant.pairs_fit_int16(np.array([[0, 0, -100, -29]]))
    wl = Conv2dWorkload(1, 8, 4, 4, 8, 1, 1, layout="NHWC")
    cfg = int8_dispatch.fallback_config(wl, PROFILES["avx2"], "avx2", narrow=True)
    assert cfg.dot == "tvmq_pmaddubsw_8x4"
    w = np.zeros(wl.weight_shape, np.int8)
    int8_dispatch.pack_weight(w + 8, wl, cfg)
    w[3, 0], w[3, 1] = 127, 2
    with pytest.raises(ValueError, match="saturate"):
        int8_dispatch.pack_weight(w, wl, cfg)
    assert registry.select("conv2d", "w8a8", PROFILES["avx2"]).fallback_config(wl, PROFILES["avx2"]).dot \
        == "tvmq_pmaddwd_8x2"
