"""W8A8 kernels bit-exact against the numpy integer reference (hypothesis-generated cases)."""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np
import pytest
import tvm
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schedules import quant, reference, registry, space
from schedules.conv2d import int8_dot
from schedules.workload import Conv2dWorkload, DenseWorkload, Epilogue

from .isa import HOST, PROFILES, can_execute, isa_params, skip_reason

_CACHE: dict = {}
CHECKED_BY = ("the kernel's compilation is checked here by "
              "test_dot_product_kernels_compile_to_their_instruction")
CONV_ISAS = isa_params("conv2d", "w8a8", CHECKED_BY)


def compile_for(kernel, wl, cfg, features):  # type: ignore[no-untyped-def]
    """``kernel``'s PrimFunc for ``wl`` / ``cfg``, compiled for ``features`` once per run."""
    key = (kernel.key, wl, cfg, features.mcpu)
    if key not in _CACHE:
        _CACHE[key] = tvm.compile(tvm.IRModule({"main": kernel.build_primfunc(wl, cfg)}),
                                  target=tvm.target.Target(features.target_json()))
    return _CACHE[key]


def _kernel(wl, isa: str | None = None, precision: str = "w8a8"):  # type: ignore[no-untyped-def]
    """The kernel for ``wl`` at ``isa`` (default: the best the host runs), compiled once."""
    features = HOST if isa is None else HOST.with_isa(isa)
    kernel = registry.select(registry.op_of(wl), precision, features)
    cfg = kernel.fallback_config(wl, features)
    return kernel, cfg, compile_for(kernel, wl, cfg, features)


def _run(wl, xq, wq, bias_q, m, s, x_zp, out_zp, lo, hi, isa=None) -> np.ndarray:  # type: ignore[no-untyped-def]
    kernel, cfg, ex = _kernel(wl, isa)
    args = [tvm.runtime.tensor(a) for a in (
        xq.reshape(kernel.input_shape(wl, cfg)), kernel.pack_weight(wq, wl, cfg), bias_q.astype(np.int32), m, s,
        np.array([x_zp, out_zp, lo, hi], np.int32))]
    out = tvm.runtime.empty(kernel.output_shape(wl, cfg), "uint8")
    ex(*args, out)
    return out.numpy().reshape(wl.out_shape)


@st.composite
def cases(draw):  # type: ignore[no-untyped-def]
    groups = draw(st.sampled_from([1, 1, 1, 2, 3]))
    cg = draw(st.integers(1, 13))
    kg = draw(st.integers(1, 21))
    k = draw(st.sampled_from([1, 3, 5]))
    stride = draw(st.integers(1, 2))
    pad = draw(st.integers(0, k // 2 + 1))
    hw = draw(st.integers(max(1, k - 2 * pad), 12))
    wl = Conv2dWorkload(1, cg * groups, hw, hw + draw(st.integers(0, 3)), kg * groups, k, k,
                        stride, stride, pad, pad, pad, pad, groups=groups,
                        epilogue=Epilogue(True, "none"))
    seed = draw(st.integers(0, 2 ** 16))
    return wl, seed


def _operands(wl: Conv2dWorkload, seed: int, extreme: bool = False):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    xq = rng.integers(0, 256, wl.data_shape).astype(np.uint8)
    wq = rng.integers(-128, 128, wl.weight_shape).astype(np.int8)
    if extreme:  # the int8 edges, everywhere
        wq = np.where(rng.random(wl.weight_shape) < 0.5, -128, 127).astype(np.int8)
        xq = np.where(rng.random(wl.data_shape) < 0.5, 0, 255).astype(np.uint8)
    bias_q = rng.integers(-2 ** 20, 2 ** 20, wl.out_channels).astype(np.int32)
    # per-channel scales spanning 6 orders of magnitude
    real = 10.0 ** rng.uniform(-7, -1, wl.out_channels)
    m, s = quant.quantize_multiplier(real)
    x_zp = int(rng.integers(0, 256))
    out_zp = int(rng.integers(0, 256))
    return xq, wq, bias_q, m, s, x_zp, out_zp


@pytest.mark.parametrize("isa", CONV_ISAS)
@given(cases())
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_w8a8_conv2d_bit_exact(isa: str, case) -> None:  # type: ignore[no-untyped-def]
    wl, seed = case
    xq, wq, bias_q, m, s, x_zp, out_zp = _operands(wl, seed)
    expected = reference.conv2d_w8a8(xq, wq, bias_q, m, s, x_zp, out_zp, 0, 255, wl)
    np.testing.assert_array_equal(_run(wl, xq, wq, bias_q, m, s, x_zp, out_zp, 0, 255, isa), expected)


@st.composite
def depthwise_cases(draw):  # type: ignore[no-untyped-def]
    c = draw(st.integers(2, 40))  # (one channel is an ordinary conv)
    k = draw(st.sampled_from([3, 5]))
    stride = draw(st.integers(1, 2))
    pad = draw(st.integers(0, k // 2))
    hw = draw(st.integers(k, 16))
    wl = Conv2dWorkload(1, c, hw, hw + draw(st.integers(0, 5)), c, k, k, stride, stride,
                        pad, pad, pad, pad, groups=c)
    return wl, draw(st.integers(0, 2 ** 16))


@pytest.mark.parametrize("narrow", [True, False], ids=["vpmaddubsw", "vpmaddwd"])
@pytest.mark.parametrize("width", [5, 7])
def test_w8a8_whole_row_tile_bit_exact(width: int, narrow: bool) -> None:
    """AVX2, pair-fitted weights (``vpmaddubsw``) or exact ones (``vpmaddwd``): a kxk conv whose
    output row is at most 7 pixels takes one tile of the whole row (``int8_dot.fallback_config``), exact."""
    wl = Conv2dWorkload(1, 37, width, width, 32, 3, 3, 1, 1, 1, 1, 1, 1, epilogue=Epilogue(True, "none"),
                        narrow_weights=narrow)
    xq, wq, bias_q, m, s, x_zp, out_zp = _operands(wl, width)
    if narrow:
        w = np.random.default_rng(width).standard_normal(wl.weight_shape)
        wq = np.round(w / quant.pair_fit_scales(w)[:, None, None, None]).astype(np.int8)
    features = HOST.with_isa("avx2") if can_execute("avx2") else PROFILES["avx2"]
    kernel = registry.select(registry.op_of(wl), "w8a8", features)
    cfg = kernel.fallback_config(wl, features)
    assert (cfg.dot, cfg.reg_n) == ("tvmq_pmaddubsw_8x4" if narrow else "tvmq_pmaddwd_8x2", width)
    compile_for(kernel, wl, cfg, features)  # (compiles on any host)
    if not can_execute("avx2"):
        pytest.skip(skip_reason("avx2"))
    expected = reference.conv2d_w8a8(xq, wq, bias_q, m, s, x_zp, out_zp, 0, 255, wl)
    np.testing.assert_array_equal(_run(wl, xq, wq, bias_q, m, s, x_zp, out_zp, 0, 255, "avx2"), expected)


@pytest.mark.parametrize("wl, tile", [
    (Conv2dWorkload(1, 40, 14, 14, 32, 1, 1, layout="NHWC", narrow_weights=True), ("DotRowsConv2dConfig", 2, 16)),
    (Conv2dWorkload(1, 24, 14, 14, 48, 3, 3, 1, 1, 1, 1, 1, 1, layout="NHWC", narrow_weights=True),
     ("DotRowsConv2dConfig", 2, 16)),
    (Conv2dWorkload(1, 64, 7, 7, 24, 1, 1, layout="NHWC", narrow_weights=True), ("DotConv2dConfig", 7, 8)),
    (Conv2dWorkload(1, 32, 14, 14, 40, 1, 1, 2, 2, layout="NHWC", narrow_weights=True), ("DotConv2dConfig", 7, 8)),
], ids=["1x1-14px", "3x3-14px", "1x1-7px", "1x1-s2-7px"])
def test_w8a8_narrow_weights_small_map_tiles_bit_exact(wl: Conv2dWorkload, tile: tuple[str, int, int]) -> None:
    """Pair-fitted weights on AVX2: on maps whose width a 4-pixel tile does not divide, the
    fallback takes a 2 x 2 pixel tile of 16 channels (even maps) or a whole row of 8 channels
    (1x1s up to 7 pixels; ``int8_dispatch._small_map_tile``), exact."""
    xq, _, bias_q, m, s, x_zp, out_zp = _operands(wl, wl.out_width)
    w = np.random.default_rng(wl.in_channels).standard_normal(wl.weight_shape)
    wq = np.round(w / quant.pair_fit_scales(w)[:, None, None, None]).astype(np.int8)
    features = HOST.with_isa("avx2") if can_execute("avx2") else PROFILES["avx2"]
    kernel = registry.select(registry.op_of(wl), "w8a8", features)
    cfg = kernel.fallback_config(wl, features)
    assert (type(cfg).__name__, cfg.reg_n, cfg.oc_bn, cfg.dot) == (*tile, "tvmq_pmaddubsw_8x4")
    compile_for(kernel, wl, cfg, features)  # (compiles on any host)
    if not can_execute("avx2"):
        pytest.skip(skip_reason("avx2"))
    expected = reference.conv2d_w8a8(xq, wq, bias_q, m, s, x_zp, out_zp, 0, 255, wl)
    np.testing.assert_array_equal(_run(wl, xq, wq, bias_q, m, s, x_zp, out_zp, 0, 255, "avx2"), expected)


@pytest.mark.parametrize("isa", isa_params("depthwise_conv2d", "w8a8"))
@given(depthwise_cases())
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_w8a8_depthwise_bit_exact(isa: str, case) -> None:  # type: ignore[no-untyped-def]
    wl, seed = case
    assert registry.op_of(wl) == "depthwise_conv2d"
    xq, wq, bias_q, m, s, x_zp, out_zp = _operands(wl, seed)
    expected = reference.conv2d_w8a8(xq, wq, bias_q, m, s, x_zp, out_zp, 0, 255, wl)
    np.testing.assert_array_equal(_run(wl, xq, wq, bias_q, m, s, x_zp, out_zp, 0, 255, isa), expected)


@pytest.mark.parametrize("isa", CONV_ISAS)
@pytest.mark.parametrize("wl", [
    Conv2dWorkload(1, 64, 8, 8, 32, 3, 3, 1, 1, 1, 1, 1, 1),
    Conv2dWorkload(1, 24, 9, 9, 24, 3, 3, 2, 2, 1, 1, 1, 1, groups=24),
    Conv2dWorkload(1, 17, 9, 9, 16, 1, 1),
    Conv2dWorkload(1, 33, 5, 7, 70, 1, 1),
    Conv2dWorkload(1, 16, 7, 7, 24, 3, 3, 2, 2, 1, 1, 1, 1, groups=4),
], ids=["3x3", "depthwise-s2", "1x1", "1x1-odd", "grouped-s2"])
def test_w8a8_edges_ties_and_clamps(wl: Conv2dWorkload, isa: str) -> None:
    xq, wq, bias_q, m, s, x_zp, out_zp = _operands(wl, 0, extreme=True)
    # rounding ties: M = 0.5 exactly on every channel, odd accumulators land on .5
    m_half = np.full(wl.out_channels, 2 ** 30, np.int32)
    s_half = np.full(wl.out_channels, 31 + 12, np.int32)  # M = 2**-13: acc up to ~2**21 -> +-256
    relu_lo = min(out_zp, 150)  # ReLU: the zero point; ReLU6-like: a bound below 255
    for mm, ss, lo, hi in ((m, s, 0, 255), (m_half, s_half, relu_lo, 255), (m_half, s_half, relu_lo, 200)):
        expected = reference.conv2d_w8a8(xq, wq, bias_q, mm, ss, x_zp, out_zp, lo, hi, wl)
        got = _run(wl, xq, wq, bias_q, mm, ss, x_zp, out_zp, lo, hi, isa)
        np.testing.assert_array_equal(got, expected)
    assert len(np.unique(expected)) > 2  # not everything clamped


@pytest.mark.parametrize("isa", CONV_ISAS)
@pytest.mark.parametrize("wl", [
    Conv2dWorkload(1, 16, 14, 14, 96, 1, 1, layout="NHWC"),  # read in place (no repack)
    Conv2dWorkload(1, 24, 7, 9, 40, 1, 1, 2, 2, layout="NHWC"),  # strided 1x1
    Conv2dWorkload(1, 3, 16, 16, 32, 3, 3, 2, 2, 1, 1, 1, 1, layout="NHWC"),  # a first conv
    Conv2dWorkload(1, 20, 9, 9, 24, 3, 3, 1, 1, 1, 1, 1, 1, layout="NHWC"),  # padded: repacked
    Conv2dWorkload(1, 16, 7, 7, 24, 3, 3, 2, 2, 1, 1, 1, 1, groups=4, layout="NHWC"),
], ids=["1x1-direct", "1x1-s2", "first-conv", "3x3", "grouped-s2"])
def test_w8a8_channels_last_conv_bit_exact(wl: Conv2dWorkload, isa: str) -> None:
    """NHWC activations in and out, the same integers as the NCHW reference transposed."""
    xq, wq, bias_q, m, s, x_zp, out_zp = _operands(wl, 3)
    expected = reference.conv2d_w8a8(xq, wq, bias_q, m, s, x_zp, out_zp, 0, 255, wl)
    nchw = reference.conv2d_w8a8(xq.transpose(0, 3, 1, 2), wq, bias_q, m, s, x_zp, out_zp, 0, 255,
                                 Conv2dWorkload(*[getattr(wl, f) for f in (
                                     "batch", "in_channels", "height", "width", "out_channels", "kernel_h",
                                     "kernel_w", "stride_h", "stride_w", "pad_top", "pad_left", "pad_bottom",
                                     "pad_right")], groups=wl.groups))
    np.testing.assert_array_equal(expected, nchw.transpose(0, 2, 3, 1))  # the reference itself
    np.testing.assert_array_equal(_run(wl, xq, wq, bias_q, m, s, x_zp, out_zp, 0, 255, isa), expected)


@pytest.mark.parametrize("isa", isa_params("depthwise_conv2d", "w8a8"))
@given(depthwise_cases(), st.integers(1, 3))
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_w8a8_channels_last_depthwise_bit_exact(isa: str, case, channel_factor: int) -> None:  # type: ignore[no-untyped-def]
    """The NHWC depthwise template (vectorised over channels, zero-point padding by condition)."""
    wl, seed = case
    c = wl.in_channels * channel_factor  # 2..120: whole vectors of channels, and odd counts
    wl = replace(wl, in_channels=c, out_channels=c, groups=c, layout="NHWC")
    xq, wq, bias_q, m, s, x_zp, out_zp = _operands(wl, seed)
    expected = reference.conv2d_w8a8(xq, wq, bias_q, m, s, x_zp, out_zp, 0, 255, wl)
    np.testing.assert_array_equal(_run(wl, xq, wq, bias_q, m, s, x_zp, out_zp, 0, 255, isa), expected)


@pytest.mark.parametrize("isa", CONV_ISAS)
def test_w8a8_zero_point_padding_is_exact(isa: str) -> None:
    """A constant input equal to its zero point is 'all zeros': padding must not leak."""
    wl = Conv2dWorkload(1, 5, 6, 6, 7, 3, 3, 1, 1, 2, 2, 2, 2)
    xq = np.full(wl.data_shape, 77, np.uint8)
    wq = np.random.default_rng(1).integers(-128, 128, wl.weight_shape).astype(np.int8)
    bias_q = np.zeros(7, np.int32)
    m, s = quant.quantize_multiplier(np.full(7, 0.01))
    got = _run(wl, xq, wq, bias_q, m, s, 77, 9, 0, 255, isa)
    np.testing.assert_array_equal(got, reference.conv2d_w8a8(xq, wq, bias_q, m, s, 77, 9, 0, 255, wl))


@pytest.mark.parametrize("isa", CONV_ISAS)
def test_w8a8_rounding_ties_round_half_up(isa: str) -> None:
    """M = 0.5 on a 1x1 identity conv: every odd accumulator is a tie (x.5 -> x+1)."""
    wl = Conv2dWorkload(1, 1, 4, 16, 2, 1, 1)
    xq = np.arange(64, dtype=np.uint8).reshape(wl.data_shape) * 3
    wq = np.array([1, -1], np.int8).reshape(wl.weight_shape)
    bias_q = np.zeros(2, np.int32)
    m, s = np.full(2, 2 ** 30, np.int32), np.full(2, 31, np.int32)
    got = _run(wl, xq, wq, bias_q, m, s, 0, 128, 0, 255, isa)
    acc = xq.astype(np.int64).reshape(-1)
    assert np.array_equal(got[0, 0].reshape(-1), np.floor(acc / 2 + 0.5).astype(np.int64) + 128)
    assert np.array_equal(got[0, 1].reshape(-1), np.floor(-acc / 2 + 0.5).astype(np.int64) + 128)
    assert np.any(acc % 2 == 1)


@pytest.mark.parametrize("isa", isa_params("dense", "w8a8"))
@given(st.integers(1, 3), st.integers(1, 300), st.integers(1, 70), st.integers(0, 2 ** 16))
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_w8a8_dense_bit_exact(isa: str, n: int, c: int, k: int, seed: int) -> None:
    wl = DenseWorkload(n, c, k)
    rng = np.random.default_rng(seed)
    xq = rng.integers(0, 256, (n, c)).astype(np.uint8)
    wq = rng.integers(-128, 128, (k, c)).astype(np.int8)
    bias_q = rng.integers(-2 ** 20, 2 ** 20, k).astype(np.int32)
    m, s = quant.quantize_multiplier(10.0 ** rng.uniform(-7, -2, k))
    out_zp = int(rng.integers(0, 256))
    kernel, cfg, ex = _kernel(wl, isa)
    out = tvm.runtime.empty(kernel.output_shape(wl, cfg), "uint8")
    # (the dot-product kernels take [N, 1, 1, C] and give [N, 1, 1, K]: views of [N, C], [N, K])
    ex(*[tvm.runtime.tensor(a) for a in (xq.reshape(kernel.input_shape(wl, cfg)), kernel.pack_weight(wq, wl, cfg),
                                         bias_q, m, s, np.array([0, out_zp, 0, 255], np.int32))], out)
    np.testing.assert_array_equal(out.numpy().reshape(n, k),
                                  reference.dense_w8a8(xq, wq, bias_q, m, s, out_zp, 0, 255))


@pytest.mark.parametrize("isa", CONV_ISAS)
@pytest.mark.parametrize("wl", [
    Conv2dWorkload(1, 12, 9, 9, 20, 3, 3, 1, 1, 1, 1, 1, 1, epilogue=Epilogue(True, "none", residual=True)),
    Conv2dWorkload(1, 20, 6, 5, 12, 1, 1, epilogue=Epilogue(True, "none", residual=True)),
    Conv2dWorkload(1, 16, 8, 8, 16, 3, 3, 1, 1, 1, 1, 1, 1, groups=16,
                   epilogue=Epilogue(True, "none", residual=True)),
    Conv2dWorkload(1, 24, 6, 6, 40, 1, 1, groups=2, epilogue=Epilogue(True, "none", residual=True)),
], ids=["conv", "pointwise", "depthwise", "grouped"])
def test_w8a8_fused_integer_residual(wl: Conv2dWorkload, isa: str) -> None:
    xq, wq, bias_q, m, s, x_zp, out_zp = _operands(wl, 3)
    rng = np.random.default_rng(4)
    r = rng.integers(0, 256, wl.out_shape).astype(np.uint8)
    r_zp = 131
    (r_m,), (r_s,) = quant.quantize_multiplier(0.73)
    lo = out_zp  # ReLU after the add
    expected = reference.conv2d_w8a8(xq, wq, bias_q, m, s, x_zp, out_zp, lo, 255, wl,
                                     residual=(r, r_zp, int(r_m), int(r_s)))
    kernel, cfg, ex = _kernel(wl, isa)
    args = [tvm.runtime.tensor(a) for a in (
        xq.reshape(kernel.input_shape(wl, cfg)), kernel.pack_weight(wq, wl, cfg), bias_q, m, s,
        np.array([x_zp, out_zp, lo, 255], np.int32),
        r.reshape(kernel.output_shape(wl, cfg)), np.array([r_zp, r_m, r_s], np.int32))]
    out = tvm.runtime.empty(kernel.output_shape(wl, cfg), "uint8")
    ex(*args, out)
    np.testing.assert_array_equal(out.numpy().reshape(wl.out_shape), expected)
    assert len(np.unique(expected)) > 10


@pytest.mark.parametrize("isa, instruction", [("avx2", "vpmaddwd"), ("avx512", "vpmaddwd"),
                                              ("avx512_vnni", "vpdpbusd"), ("amx", "tdpbusd")])
@pytest.mark.parametrize("wl", [Conv2dWorkload(1, 32, 14, 14, 64, 1, 1),
                                Conv2dWorkload(1, 40, 14, 14, 24, 3, 3, 1, 1, 1, 1, 1, 1),
                                Conv2dWorkload(1, 32, 14, 14, 64, 3, 3, 2, 2, 1, 1, 1, 1)],
                         ids=["pointwise", "3x3", "3x3-s2"])
def test_dot_product_kernels_compile_to_their_instruction(wl: Conv2dWorkload, isa: str,
                                                          instruction: str) -> None:
    """Every ISA's kernel cross-compiles (whatever this CPU is) and its inner loop is the
    instruction it was written for; running it is the bit-exact tests' job, where the CPU can."""
    features = PROFILES[isa]
    kernel = registry.select("conv2d", "w8a8", features)
    assert kernel.key.isa == isa
    cfg = kernel.fallback_config(wl, features)
    lib = tvm.compile(tvm.IRModule({"main": kernel.build_primfunc(wl, cfg)}),
                      target=tvm.target.Target(features.target_json()))
    asm = lib.mod.inspect_source("s")
    assert instruction in asm
    if isa not in ("avx2", "amx"):  # (AMX: the tile registers; an NCHW epilogue may stay scalar)
        assert "zmm" in asm


@pytest.mark.parametrize("precision", ["w8a8", "w4a8"])
def test_a_model_build_gives_amx_only_the_layers_it_pays_for(precision: str) -> None:
    """``registry.select_for``: on an AMX target, convs from 64 channels or more to 32 or more
    take the AMX kernel (strided ones too), shallow ones (a first conv), narrow outputs and
    one-pixel-wide ones the VNNI kernel; ``select`` alone stays AMX."""
    features = PROFILES["amx"]
    deep = [Conv2dWorkload(1, 64, 56, 56, 64, 3, 3, 1, 1, 1, 1, 1, 1), Conv2dWorkload(1, 512, 28, 28, 128, 1, 1),
            Conv2dWorkload(1, 512, 7, 7, 2048, 1, 1), Conv2dWorkload(1, 256, 28, 28, 256, 3, 3, 2, 2, 1, 1, 1, 1)]
    shallow = [Conv2dWorkload(1, 24, 56, 56, 144, 1, 1), Conv2dWorkload(1, 144, 56, 56, 24, 1, 1),
               Conv2dWorkload(1, 3, 224, 224, 64, 7, 7, 2, 2, 3, 3, 3, 3),
               Conv2dWorkload(1, 16, 56, 56, 24, 3, 3, 1, 1, 1, 1, 1, 1), Conv2dWorkload(1, 256, 4, 1, 256, 1, 1)]
    for wl in deep + shallow:
        assert registry.select("conv2d", precision, features).key.isa == "amx"
        assert registry.select_for(wl, precision, features).key.isa == ("amx" if wl in deep else "avx512_vnni")


def test_the_amx_channels_last_epilogue_is_one_vector_per_pixel() -> None:
    """The AMX conv's channels-last epilogue reads each pixel's 16 accumulators as one vector and
    stores 16 bytes at once: no gathers, no byte-by-byte stores (it had both, vectorised along
    the pixels by LLVM). Cross-compiled, on any host."""
    features = PROFILES["amx"]
    wl = Conv2dWorkload(1, 64, 8, 16, 32, 1, 1, epilogue=Epilogue(True, "relu", requant="float"), layout="NHWC")
    kernel = registry.select("conv2d", "w8a8", features)
    cfg = kernel.fallback_config(wl, features)
    assert cfg.dot == "tvmq_amx"
    asm = tvm.compile(tvm.IRModule({"main": kernel.build_primfunc(wl, cfg)}),
                      target=tvm.target.Target(features.target_json())).mod.inspect_source("s")
    assert "tdpbusd" in asm and ("vpmovusdb" in asm or "vpmovdb" in asm)
    assert "vpgather" not in asm and "vpextrb" not in asm


@pytest.mark.parametrize("width", [1, 2])
def test_amx_kernel_space_compiles_for_narrow_outputs(width: int) -> None:
    """AMX tiles need at least two pixel rows: a one-pixel-wide output takes the VNNI form, and
    every configuration the tuning space offers cross-compiles (reg_n = 1 did not tensorize)."""
    features = PROFILES["amx"]
    wl = Conv2dWorkload(1, 64, 4, width, 32, 3, 3, 1, 1, 1, 1, 1, 1)
    kernel = registry.select("conv2d", "w8a8", features)
    start = kernel.fallback_config(wl, features)
    assert (start.dot == "tvmq_amx") == (width > 1)
    configs = space.config_space(start, wl, features)
    assert all(c.reg_n >= 2 for c in configs if c.dot == "tvmq_amx")
    for cfg in configs[:4]:
        tvm.compile(tvm.IRModule({"main": kernel.build_primfunc(wl, cfg)}),
                    target=tvm.target.Target(features.target_json()))


@pytest.mark.parametrize("precision, instruction", [("w8a8", "tdpbusd"), ("w4a8", "tdpbusd"), ("bf16", "tdpbf16ps")])
@pytest.mark.parametrize("wl", [Conv2dWorkload(1, 4, 1, 2, 16, 1, 1), Conv2dWorkload(1, 1, 1, 3, 1, 1, 1),
                                Conv2dWorkload(1, 4, 1, 4, 16, 1, 1, epilogue=Epilogue(True, "relu"))],
                         ids=["2-pixels", "1-channel", "4-pixels"])
def test_amx_kernels_compile_when_the_output_is_one_tile(wl: Conv2dWorkload, precision: str, instruction: str) -> None:
    """A conv whose whole output is one AMX tile: TVM's StorageRewrite gives the accumulator the
    memory of the packed input, dead by then, so a tile load / store names a buffer of another
    dtype. The tile intrinsics address memory by element (``address_of``), which survives that;
    ``tvm_access_ptr`` did not (seen on an AMX Xeon: "tvm_access_ptr element type must match the
    source buffer"). Cross-compiled, on any host."""
    features = PROFILES["amx"]
    kernel = registry.select("conv2d", precision, features)
    assert kernel.key.isa == "amx"
    cfg = kernel.fallback_config(wl, features)
    lib = tvm.compile(tvm.IRModule({"main": kernel.build_primfunc(wl, cfg)}),
                      target=tvm.target.Target(features.target_json()))
    asm = lib.mod.inspect_source("s")
    assert instruction in asm and "tilestored" in asm


AMX_BLOCK_WORKLOADS = [
    Conv2dWorkload(1, 128, 6, 28, 48, 1, 1, layout="NHWC"),  # read in place where the tile divides the width
    Conv2dWorkload(1, 70, 6, 9, 40, 3, 3, 1, 1, 1, 1, 1, 1, layout="NHWC"),  # padded; channels ragged
    Conv2dWorkload(1, 64, 13, 13, 48, 3, 3, 2, 2, 1, 1, 1, 1, layout="NHWC"),  # strided, 7 x 7 out
    Conv2dWorkload(1, 130, 12, 12, 32, 1, 1, 2, 2, layout="NHWC"),  # strided 1x1: phases, no padding
    Conv2dWorkload(1, 64, 6, 10, 32, 3, 3, 1, 1, 2, 2, 2, 2, dilation_h=2, dilation_w=2),  # dilated, NCHW
    Conv2dWorkload(1, 24, 13, 12, 20, 5, 5, 2, 2, 2, 1, 2, 1, epilogue=Epilogue(True, "relu"), layout="NHWC"),
]


def _amx_blocks(wl: Conv2dWorkload) -> list:  # type: ignore[type-arg]
    """Every block of AMX tiles (1-3 rows x 16 or 32 channels) that fits the tile registers
    (rows that do not divide the output height: padded), tiles of 2..3 pixels (several per row)."""
    from schedules.conv2d.int8_dot import DotConv2dConfig
    from schedules.conv2d.int8_rows import DotRowsConv2dConfig

    out = []
    for oc_bn in (16, 32):
        out.append(DotConv2dConfig(64, oc_bn, 3, "tvmq_amx"))
        for rows in (2, 3):
            if rows * (oc_bn // 16) + rows + oc_bn // 16 <= 8:
                out.append(DotRowsConv2dConfig(64, oc_bn, 2 + rows % 2, rows, "tvmq_amx"))
    return out


@pytest.mark.parametrize("wl", AMX_BLOCK_WORKLOADS, ids=["1x1-in-place", "3x3", "3x3-s2", "1x1-s2", "dilated-nchw",
                                                     "5x5-s2"])
def test_amx_tile_blocks_bit_exact(wl: Conv2dWorkload) -> None:
    """AMX blocks of several accumulator tiles (``intrinsics.amx_intrinsics(m, rows, cols)``:
    output rows x 16-channel tiles, each loaded A and B tile serving several ``tdpbusd``) and
    strided convs on the phase-split input (``int8_dot.pack_phases``), odd heights in blocks of
    rows (``int8_dot.padded_height``), against the numpy reference; the extreme int8 values, every block the registers hold. Executed where the CPU
    has AMX-INT8, cross-compiled (asm checked for ``tdpbusd``) elsewhere."""
    features = HOST.with_isa("amx") if can_execute("amx") else PROFILES["amx"]
    kernel = registry.select("conv2d", "w8a8", features)
    xq, wq, bias_q, m, s, x_zp, out_zp = _operands(wl, 7, extreme=True)
    bias_q = (bias_q // 64).astype(np.int32)
    expected = reference.conv2d_w8a8(xq, wq, bias_q, m, s, x_zp, out_zp, 0, 255, wl)
    blocks = _amx_blocks(wl)
    assert len(blocks) >= 3
    in_place = [int8_dot.reads_input_directly(wl, replace(c, reg_n=14)) for c in blocks]
    assert all(in_place) == (wl.kernel_h == 1 and wl.stride_h == 1)
    for cfg in blocks:
        lib = compile_for(kernel, wl, cfg, features)
        if not can_execute("amx"):
            assert "tdpbusd" in lib.mod.inspect_source("s")
            continue
        args = [tvm.runtime.tensor(a) for a in (
            xq.reshape(kernel.input_shape(wl, cfg)), kernel.pack_weight(wq, wl, cfg), bias_q, m, s,
            np.array([x_zp, out_zp, 0, 255], np.int32))]
        out = tvm.runtime.empty(kernel.output_shape(wl, cfg), "uint8")
        lib(*args, out)
        np.testing.assert_array_equal(out.numpy().reshape(wl.out_shape), expected, err_msg=str(cfg))


@pytest.mark.parametrize("precision", ["w8a8", "bf16"])
def test_amx_tile_configuration_once_per_parallel_task(precision: str) -> None:
    """``intrinsics.hoist_tile_config``: the AMX kernels configure their tiles (``ldtilecfg``)
    once at the start of each parallel task (the parallel loop inside TVM's parallel launch
    point, the configuration before it), not in every block's zero step or loop iteration; the
    blocks still zero their accumulators. Cross-compiled (its results: the bit-exact AMX tests)."""
    features = PROFILES["amx"]
    wl = Conv2dWorkload(1, 64, 28, 28, 64, 3, 3, 1, 1, 1, 1, 1, 1, layout="NHWC" if precision == "w8a8" else "NCHW")
    kernel = registry.select("conv2d", precision, features)
    func = kernel.build_primfunc(wl, kernel.fallback_config(wl, features))
    script = func.script()
    # (the kernel's configuration, and the caller's loaded back at the end of each task)
    assert script.count("llvm.x86.ldtilecfg") == 2 and script.count("llvm.x86.sttilecfg") == 1
    head, _, tail = script.partition('T.sblock("amx_tiles")')
    assert '"pragma_parallel_launch_point"' in head.splitlines()[-2]
    before, _, loop = tail.partition("T.parallel(")
    assert "llvm.x86.sttilecfg" in before and "llvm.x86.ldtilecfg" in before and "llvm.x86.tilezero" in loop
    lib = tvm.compile(tvm.IRModule({"main": func}), target=tvm.target.Target(features.target_json()))
    asm = lib.mod.inspect_source("s")
    assert asm.count("ldtilecfg") == 2 and asm.count("sttilecfg") == 1 and "tilezero" in asm
    # the buffer sttilecfg stores 64 bytes into is allocated 64 bytes (not the one its address reads)
    sizes = re.findall(r"%saved_tile_config = (?:alloca \[(\d+) x i8\]|[^\n]*AllocWorkspace[^\n]*|[^\n]*i64 (\d+), i32 1, i32 8\))",
                       lib.mod.inspect_source("ll"))
    assert sizes and all(int(a or b) >= 64 for a, b in sizes), sizes


def _tile_config_access(name: str, target):  # type: ignore[no-untyped-def]
    """A function that loads (``ldtilecfg``) or stores (``sttilecfg``) the thread's tile
    configuration from / into a 64-byte buffer."""
    from tvm.script import tirx as T

    @T.prim_func
    def main(cfg: T.Buffer((64,), "uint8")):
        T.func_attr({"global_symbol": "main"})
        T.evaluate(T.call_llvm_intrin("void", f"llvm.x86.{name}", T.address_of(cfg[0])))

    return tvm.compile(tvm.IRModule({"main": main}), target=target).jit()["main"]


@pytest.mark.skipif(not can_execute("amx"), reason=skip_reason("amx", "its compilation: "
                                                                 "test_amx_tile_configuration_once_per_parallel_task"))
def test_an_amx_kernel_leaves_the_callers_tile_configuration() -> None:
    """Other AMX code in the process keeps its tile configuration loaded between calls
    (onnxruntime's int8 GEMM: once per thread); a tvmq kernel run on that thread in between must
    leave it as it found it, or that code's next tile instruction raises #UD (SIGILL, seen in
    ``bench.layer_latency`` on an Emerald Rapids). One thread, so the kernel runs on this one."""
    from tvmq.runtime import request_amx_permission, set_num_threads

    assert request_amx_permission()
    features = HOST.with_isa("amx")
    target = tvm.target.Target(features.target_json())
    wl = Conv2dWorkload(1, 64, 6, 28, 64, 3, 3, 1, 1, 1, 1, 1, 1, layout="NHWC")
    kernel = registry.select("conv2d", "w8a8", features)
    cfg = kernel.fallback_config(wl, features)
    ex = compile_for(kernel, wl, cfg, features)
    xq, wq, bias_q, m, s, x_zp, out_zp = _operands(wl, 3)
    args = [tvm.runtime.tensor(a) for a in (xq, kernel.pack_weight(wq, wl, cfg), bias_q, m, s,
                                            np.array([x_zp, out_zp, 0, 255], np.int32))]
    theirs = np.zeros(64, np.uint8)
    theirs[0], theirs[16:32:2], theirs[48:56] = 1, 64, 16  # palette 1, 8 tiles of 16 x 64 bytes
    load, store = _tile_config_access("ldtilecfg", target), _tile_config_access("sttilecfg", target)
    set_num_threads(1)
    try:
        load(tvm.runtime.tensor(theirs))
        ex(*args, tvm.runtime.empty(kernel.output_shape(wl, cfg), "uint8"))
        after = tvm.runtime.tensor(np.zeros(64, np.uint8))
        store(after)
    finally:
        set_num_threads(HOST.num_cores)
    np.testing.assert_array_equal(after.numpy(), theirs)


TEMPLATE_WORKLOADS = [
    Conv2dWorkload(1, 24, 10, 9, 40, 3, 3, 1, 1, 1, 1, 1, 1, epilogue=Epilogue(True, "relu")),
    Conv2dWorkload(1, 32, 8, 8, 48, 1, 1, epilogue=Epilogue(True, "none")),
    Conv2dWorkload(1, 16, 9, 9, 24, 3, 3, 2, 2, 1, 1, 1, 1, epilogue=Epilogue(True, "none")),
]


def _template_cases() -> list:  # type: ignore[type-arg]
    """(key, workload, configuration): the first candidate of each configuration type in the
    tuning space of every W8A8 conv kernel whose level the host executes."""
    out = []
    for key in registry.registered_keys():
        if key.op != "conv2d" or key.precision != "w8a8" or not can_execute(key.isa):
            continue
        features = HOST.with_isa(key.isa)
        for i, wl in enumerate(TEMPLATE_WORKLOADS):
            firsts: dict = {}
            for cfg in registry.get(key).tuning_space(wl, features):
                firsts.setdefault(type(cfg).__name__, cfg)
            for name, cfg in firsts.items():
                out.append(pytest.param(key, wl, cfg, id=f"{key}-{i}-{name}"))
    return out


@pytest.mark.parametrize("key, wl, cfg", _template_cases())
def test_every_template_in_a_w8a8_tuning_space_is_bit_exact(key, wl: Conv2dWorkload, cfg) -> None:  # type: ignore[no-untyped-def]
    """Each template a W8A8 conv kernel can be tuned to (its space's configuration types, a new
    kernel module's too) against the numpy integer reference."""
    kernel, features = registry.get(key), HOST.with_isa(key.isa)
    xq, wq, bias_q, m, s, x_zp, out_zp = _operands(wl, seed=7)
    ex = compile_for(kernel, wl, cfg, features)
    args = [tvm.runtime.tensor(a) for a in (
        xq.reshape(kernel.input_shape(wl, cfg)), kernel.pack_weight(wq, wl, cfg), bias_q, m, s,
        np.array([x_zp, out_zp, 0, 255], np.int32))]
    out = tvm.runtime.empty(kernel.output_shape(wl, cfg), "uint8")
    ex(*args, out)
    expected = reference.conv2d_w8a8(xq, wq, bias_q, m, s, x_zp, out_zp, 0, 255, wl)
    np.testing.assert_array_equal(out.numpy().reshape(wl.out_shape), expected)


def test_the_portable_int8_conv_is_tuned_only_over_templates_it_builds() -> None:
    """It shares fp32's Conv2dConfig space, which also offers fp32's pointwise template for 1x1
    convs: its tuning space keeps the configurations it can build (each one builds)."""
    wl = Conv2dWorkload(1, 32, 8, 8, 48, 1, 1)
    kernel = registry.get(registry.KernelKey("conv2d", "w8a8", "generic"))
    offered = space.config_space(kernel.fallback_config(wl, HOST), wl, HOST)
    tuned = kernel.tuning_space(wl, HOST)
    assert {type(c).__name__ for c in offered} == {"Conv2dConfig", "PointwiseConfig"}
    assert {type(c).__name__ for c in tuned} == {"Conv2dConfig"}
    assert tuned[0] == kernel.fallback_config(wl, HOST)
    for cfg in tuned:
        kernel.build_primfunc(wl, cfg)
