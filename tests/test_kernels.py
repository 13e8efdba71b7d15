"""fp32 and bf16 kernels: bit for bit against numpy in their own summation order
(``KernelDef.float_reference``: the same terms in the same order with the same FMA roundings),
and within a tight bound of a float64-accumulated reference (so that the exact reference is a
convolution at all), over listed and hypothesis-generated shapes and sampled configurations.

Every kernel runs at each ISA level this host executes whose kernel differs (``tests.isa``: the
host's vector width, avx2's, generic's without FMA), so the fallback paths are exercised on any
host; AVX-512 code generation is checked by cross-compiling on any host.
"""

from __future__ import annotations

import re
from dataclasses import replace
from fractions import Fraction

import numpy as np
import pytest
import tvm
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schedules import bf16, reference, registry, space
from schedules.target_features import TargetFeatures
from schedules.workload import Conv2dWorkload, DenseWorkload, Epilogue

from .isa import HOST, PROFILES, executable_levels, isa_params

CONV_ISAS, DEPTHWISE_ISAS, DENSE_ISAS = (isa_params(op, "fp32") for op in registry.OPS)


def _features(isa: str) -> TargetFeatures:
    return HOST.with_isa(isa)


def _run(wl, weight, bias, data, features: TargetFeatures, residual=None,  # type: ignore[no-untyped-def]
         precision: str = "fp32", cfg=None, sample_seed: int | None = None) -> np.ndarray:
    kernel = registry.select(registry.op_of(wl), precision, features)
    cfg = cfg or kernel.fallback_config(wl, features)
    func = kernel.build_primfunc(wl, cfg, sample_seed=sample_seed)
    ex = tvm.compile(tvm.IRModule({"main": func}), target=tvm.target.Target(features.target_json()))
    args = [tvm.runtime.tensor(data.reshape(kernel.input_shape(wl, cfg))),
            tvm.runtime.tensor(kernel.pack_weight(weight, wl, cfg))]
    if wl.epilogue.bias:
        args.append(tvm.runtime.tensor(bias))
    if wl.epilogue.residual:
        args.append(tvm.runtime.tensor(residual.reshape(kernel.output_shape(wl, cfg))))
    out = tvm.runtime.empty(kernel.output_shape(wl, cfg), "float32")
    ex(*args, out)
    return out.numpy().reshape(wl.out_shape)


def _check(wl, isa: str, seed: int = 0, precision: str = "fp32", cfg=None,  # type: ignore[no-untyped-def]
           sample_seed: int | None = None) -> None:
    """Bit for bit against ``float_reference`` (the kernel's order and roundings); and within
    2e-5 of the float64-accumulated reference. bf16: both references take the inputs and weights
    rounded to bf16 (their products are exact in fp32)."""
    rng = np.random.default_rng(seed)
    data = rng.standard_normal(wl.data_shape).astype(np.float32)
    weight = rng.standard_normal(wl.weight_shape).astype(np.float32)
    bias = rng.standard_normal(wl.weight_shape[0]).astype(np.float32)
    residual = rng.standard_normal(wl.out_shape).astype(np.float32)
    features = _features(isa)
    kernel = registry.select(registry.op_of(wl), precision, features)
    cfg = cfg or kernel.fallback_config(wl, features)
    got = _run(wl, weight, bias, data, features, residual, precision, cfg, sample_seed)
    exact = kernel.float_reference(wl, cfg, data, weight, bias, residual, fma=features.fused_multiply_add)
    np.testing.assert_array_equal(got, exact)
    ref_fn = reference.dense if isinstance(wl, DenseWorkload) else reference.conv2d
    rd, rw = (bf16.round_bf16(data), bf16.round_bf16(weight)) if precision == "bf16" else (data, weight)
    if isinstance(wl, Conv2dWorkload) and wl.nhwc:  # (the float64 reference is NCHW)
        expected = np.moveaxis(ref_fn(np.moveaxis(rd, 3, 1), rw, bias if wl.epilogue.bias else None,
                                      replace(wl, layout="NCHW"), np.moveaxis(residual, 3, 1)), 1, 3)
    else:
        expected = ref_fn(rd, rw, bias if wl.epilogue.bias else None, wl, residual)
    scale = max(float(np.abs(expected).max()), 1.0)
    np.testing.assert_allclose(got, expected, rtol=0, atol=2e-5 * scale)


RELU = Epilogue(True, "relu")
RELU6 = Epilogue(True, "clip", 0.0, 6.0)
NONE = Epilogue(False, "none")
RES_RELU = Epilogue(True, "relu", residual=True)  # ResNet: conv + bias + skip, then ReLU
RES = Epilogue(True, "none", residual=True)       # MobileNetV2: projection + skip
HSWISH = Epilogue(True, "hardswish")               # PP-LCNet (ONNX HardSwish as TVM imports it)
HSWISH_MD = Epilogue(True, "hardswish_mul_div", residual=True)  # spelled out: (x * relu6(x + 3)) / 6

# (N, C, H, W, K, R, S, stride, pad, dilation, groups, epilogue)
CONVS = [
    (1, 3, 32, 32, 16, 3, 3, 1, 1, 1, 1, RELU),      # stem-like, C < block
    (1, 16, 17, 19, 24, 3, 3, 2, 1, 1, 1, RELU6),    # odd sizes, stride 2
    (1, 7, 9, 9, 5, 1, 1, 1, 0, 1, 1, NONE),         # 1x1, odd channels, no bias
    (2, 13, 11, 11, 33, 5, 5, 1, 2, 1, 1, RELU),     # 5x5, batch 2, channels not multiple of 16
    (1, 3, 23, 23, 8, 7, 7, 2, 3, 1, 1, RELU),       # 7x7 stride 2 stem
    (1, 32, 14, 14, 64, 3, 3, 1, 2, 2, 1, NONE),     # dilation 2
    (1, 24, 12, 12, 36, 1, 1, 1, 0, 1, 4, RELU),     # grouped 1x1 (ShuffleNet style), 6/9 per group
    (1, 20, 10, 10, 20, 3, 3, 1, 1, 1, 2, RELU),     # grouped 3x3
    (1, 64, 13, 13, 48, 1, 1, 1, 0, 1, 1, RELU),     # width 13 (prime): padded register tile
    (1, 16, 8, 8, 16, 3, 3, 1, 0, 1, 1, RELU),       # no padding
    (1, 8, 9, 10, 8, 3, 3, 1, 0, 1, 1, NONE),        # asymmetric via shapes
    (1, 32, 12, 12, 64, 1, 1, 1, 0, 1, 1, RELU),     # 1x1 read straight from NCHW (no repack)
    (1, 64, 24, 24, 128, 1, 1, 2, 0, 1, 1, NONE),    # strided 1x1 downsample, no repack
    (1, 16, 10, 10, 24, 3, 3, 1, 1, 1, 1, RES_RELU),  # fused residual, direct template
    (1, 24, 7, 7, 40, 1, 1, 1, 0, 1, 1, RES),         # fused residual, pointwise template
    (1, 12, 6, 6, 12, 3, 3, 1, 1, 1, 3, RES_RELU),    # fused residual, grouped
]
DEPTHWISE = [
    (1, 32, 28, 28, 3, 1, 1, RELU6),
    (1, 37, 15, 15, 3, 2, 1, RELU),   # channel tail, stride 2
    (1, 16, 9, 9, 5, 1, 2, NONE),     # 5x5
    (2, 24, 7, 7, 3, 2, 1, RELU6),    # batch 2
    (1, 20, 9, 9, 3, 1, 1, RES_RELU),  # fused residual
    (1, 24, 9, 9, 3, 1, 1, HSWISH),
]


@pytest.mark.parametrize("isa", CONV_ISAS)
@pytest.mark.parametrize("case", CONVS, ids=lambda c: "x".join(map(str, c[:11])))
def test_conv2d_matches_reference(case, isa: str) -> None:  # type: ignore[no-untyped-def]
    n, c, h, w, k, r, s, st, p, d, g, ep = case
    _check(Conv2dWorkload(n, c, h, w, k, r, s, st, st, p, p, p, p, d, d, g, ep), isa)


@pytest.mark.parametrize("isa", list(PROFILES))
def test_conv2d_templates_and_repack_paths_are_exercised(isa: str) -> None:
    """At every ISA level, CONVS take both paths of the direct template by their fallbacks, and
    both paths of the pointwise one by its own configs (``test_conv2d_pointwise_template``;
    the fallback takes it on AVX2 wherever it applies, on AVX-512 on large maps only)."""
    from schedules.conv2d import fp32, fp32_direct, fp32_pointwise

    wls = [Conv2dWorkload(n, c, h, w, k, r, s, st, st, p, p, p, p, d, d, g, ep)
           for n, c, h, w, k, r, s, st, p, d, g, ep in CONVS]
    features = PROFILES[isa]
    cfgs = [registry.select("conv2d", "fp32", features).fallback_config(wl, features) for wl in wls]
    pointwise = [wl for wl in wls if fp32_pointwise.applies(wl)]
    direct = [(wl, c) for wl, c in zip(wls, cfgs) if isinstance(c, fp32_direct.Conv2dConfig)]
    assert len(pointwise) >= 3
    # the pointwise template with and without the pixel-padding copy
    assert {wl.height * wl.width % 16 == 0 for wl in pointwise} == {True, False}
    # the direct template with and without the NCHWc repack
    assert {fp32_direct.needs_repack(wl, c) for wl, c in direct} == {True, False}
    # the fallback's choice of template: AVX2 pointwise wherever it applies, AVX-512 on large maps
    big, small = Conv2dWorkload(1, 64, 56, 56, 256, 1, 1), Conv2dWorkload(1, 128, 28, 28, 512, 1, 1)
    wide = features.vector_registers >= 32
    assert fp32.pointwise_pays(big, features) and fp32.pointwise_pays(small, features) != wide
    assert all(isinstance(c, fp32_pointwise.PointwiseConfig) == fp32.pointwise_pays(wl, features)
               for wl, c in zip(wls, cfgs))


@pytest.mark.parametrize("isa", CONV_ISAS)
@pytest.mark.parametrize("case", [c for c in CONVS if c[5] == c[6] == 1 and c[7] == 1 and c[8] == 0 and c[10] == 1],
                         ids=lambda c: "x".join(map(str, c[:11])))
def test_conv2d_pointwise_template(case, isa: str) -> None:  # type: ignore[no-untyped-def]
    """The pointwise template on every CONVS case it applies to, at every ISA level, whatever
    template the fallback picks there."""
    from schedules.conv2d import fp32_pointwise

    n, c, h, w, k, r, s, st, p, d, g, ep = case
    wl = Conv2dWorkload(n, c, h, w, k, r, s, st, st, p, p, p, p, d, d, g, ep)
    assert fp32_pointwise.applies(wl)
    _check(wl, isa, cfg=fp32_pointwise.fallback_config(wl, _features(isa)))


@pytest.mark.parametrize("isa", CONV_ISAS)
def test_conv2d_asymmetric_padding(isa: str) -> None:
    wl = Conv2dWorkload(1, 8, 10, 12, 16, 3, 3, 2, 1, 0, 1, 2, 0, groups=1, epilogue=RELU)
    _check(wl, isa)


@pytest.mark.parametrize("isa", DEPTHWISE_ISAS)
@pytest.mark.parametrize("case", DEPTHWISE, ids=lambda c: "x".join(map(str, c[:7])))
def test_depthwise_matches_reference(case, isa: str) -> None:  # type: ignore[no-untyped-def]
    n, c, h, r, st, p, ep = case[0], case[1], case[2], case[4], case[5], case[6], case[7]
    wl = Conv2dWorkload(n, c, h, h, c, r, r, st, st, p, p, p, p, groups=c, epilogue=ep)
    assert registry.op_of(wl) == "depthwise_conv2d"
    _check(wl, isa)


@pytest.mark.parametrize("isa", CONV_ISAS)
@pytest.mark.parametrize("case", CONVS, ids=lambda c: "x".join(map(str, c[:11])))
def test_conv2d_channels_last_matches_reference(case, isa: str) -> None:  # type: ignore[no-untyped-def]
    """fp32 models keep NHWC end to end (``LowerToKernels``): the direct template reads and
    writes it (without a repack where nothing is padded)."""
    n, c, h, w, k, r, s, st, p, d, g, ep = case
    _check(Conv2dWorkload(n, c, h, w, k, r, s, st, st, p, p, p, p, d, d, g, ep, "NHWC"), isa)


@pytest.mark.parametrize("isa", CONV_ISAS)
@pytest.mark.parametrize("rows_outside", [False, True])
@pytest.mark.parametrize("ep", [HSWISH, HSWISH_MD, RES_RELU], ids=["hardswish", "hardswish_mul_div", "res_relu"])
def test_conv2d_channels_last_loop_orders_and_hardswish(ep: Epilogue, rows_outside: bool, isa: str) -> None:
    """Both loop orders of the channels-last direct conv (rows or channel blocks outside), each
    with both HardSwish spellings and a residual, bit for bit against the kernel's reference; and
    an integer kernel refuses a HardSwish (its epilogue clamps)."""
    wl = Conv2dWorkload(1, 16, 10, 10, 40, 3, 3, 1, 1, 1, 1, 1, 1, epilogue=ep, layout="NHWC")
    features = _features(isa)
    kernel = registry.select("conv2d", "fp32", features)
    _check(wl, isa, cfg=replace(kernel.fallback_config(wl, features), rows_outside=rows_outside))
    if ep.activation.startswith("hardswish"):
        w8a8 = registry.select("conv2d", "w8a8", features)
        with pytest.raises(ValueError, match="integer epilogue"):
            w8a8.build_primfunc(wl, w8a8.fallback_config(wl, features))


@pytest.mark.parametrize("isa", DEPTHWISE_ISAS)
@pytest.mark.parametrize("case", DEPTHWISE + [(1, 144, 14, 14, 3, 2, 1, RELU6), (1, 32, 12, 12, 3, 1, 1, RES)],
                         ids=lambda c: "x".join(map(str, c[:7])))
def test_depthwise_channels_last_matches_reference(case, isa: str) -> None:  # type: ignore[no-untyped-def]
    """``depthwise.fp32_nhwc``: vectorised over channels, any stride, padding read as 0.0."""
    from schedules.depthwise.int8_nhwc import ChannelsLastDepthwiseConfig

    n, c, h, r, st, p, ep = case[0], case[1], case[2], case[4], case[5], case[6], case[7]
    wl = Conv2dWorkload(n, c, h, h, c, r, r, st, st, p, p, p, p, groups=c, epilogue=ep, layout="NHWC")
    kernel = registry.select("depthwise_conv2d", "fp32", _features(isa))
    assert isinstance(kernel.fallback_config(wl, _features(isa)), ChannelsLastDepthwiseConfig)
    _check(wl, isa)


@pytest.mark.parametrize("isa", DENSE_ISAS)
@pytest.mark.parametrize("n,c,k,ep", [(1, 1280, 1000, NONE), (1, 64, 10, RELU), (3, 100, 37, RELU6),
                                      (1, 7, 5, NONE), (2, 30, 30, RES_RELU)])
def test_dense_matches_reference(n: int, c: int, k: int, ep: Epilogue, isa: str) -> None:
    _check(DenseWorkload(n, c, k, ep), isa)


def test_registry_miss_names_known_keys() -> None:
    with pytest.raises(registry.KernelNotFound, match=r"no kernel conv2d/int3/generic; registered: .*conv2d/fp32/generic"):
        registry.get(registry.KernelKey("conv2d", "int3", "generic"))


def test_registry_falls_back_to_portable_kernel() -> None:
    kernel = registry.select("conv2d", "fp32", TargetFeatures())  # no vector extensions at all
    assert kernel.key.isa == "generic"


def test_workload_validation() -> None:
    with pytest.raises(ValueError, match="groups"):
        Conv2dWorkload(1, 6, 8, 8, 4, 3, 3, groups=4)
    with pytest.raises(ValueError, match="empty"):
        Conv2dWorkload(1, 4, 2, 2, 4, 5, 5)


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("wl", [
    Conv2dWorkload(1, 16, 14, 14, 32, 3, 3, 1, 1, 1, 1, 1, 1, epilogue=RELU),     # direct
    Conv2dWorkload(1, 24, 12, 12, 40, 1, 1, epilogue=RES),                         # pointwise
    Conv2dWorkload(1, 24, 14, 14, 24, 3, 3, 2, 2, 1, 1, 1, 1, groups=24, epilogue=RELU6),
    DenseWorkload(1, 64, 24, RELU),
], ids=["direct", "pointwise", "depthwise", "dense"])
def test_sampled_schedules_are_correct(wl, seed: int) -> None:  # type: ignore[no-untyped-def]
    """Random points of each template's search space (knobs as sampling decisions) stay exact:
    the sampled tile splits leave each output's summation order as it is (each seed at another
    level this host executes)."""
    levels = executable_levels(registry.op_of(wl), "fp32")
    _check(wl, levels[seed % len(levels)], seed=seed, sample_seed=seed)


def test_design_space_records_sampling_decisions() -> None:
    """The template run as a MetaSchedule ScheduleFn body leaves its knobs in the trace."""
    from tvm import s_tir, te

    wl = Conv2dWorkload(1, 16, 14, 14, 32, 3, 3, 1, 1, 1, 1, 1, 1, epilogue=RELU)
    kernel = registry.select("conv2d", "fp32", HOST)
    cfg = kernel.fallback_config(wl, HOST)
    sch = s_tir.Schedule(te.create_prim_func(kernel.compute(wl, cfg)), seed=7)
    kernel.design_space(wl, cfg)(sch)
    decisions = {inst.kind.name: d for inst, d in sch.trace.decisions.items()}
    assert "SamplePerfectTile" in decisions  # the register tile is a sampling decision


AVX512 = PROFILES["avx512"]


@pytest.mark.parametrize("wl", [
    Conv2dWorkload(1, 16, 14, 14, 64, 3, 3, 1, 1, 1, 1, 1, 1, epilogue=RELU),
    Conv2dWorkload(1, 32, 14, 14, 64, 1, 1, epilogue=RELU6),
    Conv2dWorkload(1, 32, 14, 14, 32, 3, 3, 1, 1, 1, 1, 1, 1, groups=32, epilogue=RELU6),
    DenseWorkload(1, 64, 40, NONE),
], ids=["direct", "pointwise", "depthwise", "dense"])
def test_avx512_kernels_compile_to_zmm_code(wl) -> None:  # type: ignore[no-untyped-def]
    """AVX-512 code generation is checked on any host (running it is covered by the
    host-ISA tests on AVX-512 machines)."""
    kernel = registry.select(registry.op_of(wl), "fp32", AVX512)
    cfg = kernel.fallback_config(wl, AVX512)
    ex = tvm.compile(tvm.IRModule({"main": kernel.build_primfunc(wl, cfg)}),
                     target=tvm.target.Target(AVX512.target_json()))
    assert "zmm" in ex.mod.inspect_source("s")


@pytest.mark.parametrize("case", CONVS[:6] + CONVS[-3:], ids=lambda c: "x".join(map(str, c[:11])))
def test_bf16_conv2d_matches_bf16_rounded_reference(case) -> None:  # type: ignore[no-untyped-def]
    """The cases spread over the levels this host executes whose bf16 conv kernels differ (on
    an AVX512-BF16 CPU the native ``vdpbf16ps`` kernel takes some of them)."""
    n, c, h, w, k, r, s, st, p, d, g, ep = case
    levels = executable_levels("conv2d", "bf16")
    isa = levels[(CONVS[:6] + CONVS[-3:]).index(case) % len(levels)]
    _check(Conv2dWorkload(n, c, h, w, k, r, s, st, st, p, p, p, p, d, d, g, ep), isa, precision="bf16")


@pytest.mark.parametrize("case", DEPTHWISE[:3], ids=lambda c: "x".join(map(str, c[:7])))
def test_bf16_depthwise_and_dense_match_bf16_rounded_reference(case) -> None:  # type: ignore[no-untyped-def]
    """At the host's level and the portable ones (the cases spread over the levels)."""
    n, c, h, r, st, p, ep = case[0], case[1], case[2], case[4], case[5], case[6], case[7]
    i = DEPTHWISE.index(case)
    dw = Conv2dWorkload(n, c, h, h, c, r, r, st, st, p, p, p, p, groups=c, epilogue=ep)
    for wl in (dw, DenseWorkload(2, 3 * c, c, ep)):
        levels = executable_levels(registry.op_of(wl), "bf16")
        _check(wl, levels[i % len(levels)], precision="bf16")


@pytest.mark.parametrize("isa", list(PROFILES))
def test_bf16_rounding_is_nearest_even_and_stores_two_bytes(isa: str) -> None:
    x = np.array([1.0, 1.0 + 2 ** -8, 1.0 + 3 * 2 ** -8, -2.5, 3.0e38], np.float32)
    # 1 + 2^-8 is a tie between 1 and 1 + 2^-7: to even (1); 1 + 3*2^-8 rounds up to 1 + 2^-6
    np.testing.assert_array_equal(bf16.round_bf16(x)[:4], np.array([1.0, 1.0, 1.0 + 2 ** -6, -2.5], np.float32))
    assert bf16.to_bf16_bits(x).dtype == np.uint16
    wl = Conv2dWorkload(1, 8, 6, 6, 16, 3, 3, 1, 1, 1, 1, 1, 1)
    features = PROFILES[isa]  # each level's bf16 conv (AMX, vdpbf16ps, portable): its own layout
    k = registry.select("conv2d", "bf16", features)
    packed = k.pack_weight(np.ones(wl.weight_shape, np.float32), wl, k.fallback_config(wl, features))
    assert packed.dtype == np.uint16 and np.count_nonzero(packed) == np.prod(wl.weight_shape)  # padding aside


def test_fma_f32_is_correctly_rounded() -> None:
    """``fma_f32`` against exact rational arithmetic, on random values and on sums built to land
    on a float32 tie in float64 (where rounding twice would be wrong)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal(2000).astype(np.float32)
    b = rng.standard_normal(2000).astype(np.float32)
    c = (rng.standard_normal(2000) * 4).astype(np.float32)
    # ties: c = 1 + 2^-23 (odd last bit), a*b = 2^-24 + 2^-60: exact sum just above a tie, whose
    # float64 rounding is the tie itself; and a*b = 2^-24 - 2^-60 just below
    a2 = np.array([1 + 2 ** -20, 1 + 2 ** -20, 1.0], np.float32)
    b2 = np.array([2 ** -24 * (1 - 2 ** -20), -2 ** -24 * (1 - 2 ** -20), 2 ** -24], np.float32)
    c2 = np.array([1 + 2 ** -23, -(1 + 2 ** -23), 1 + 2 ** -22], np.float32)
    a, b, c = np.concatenate([a, a2]), np.concatenate([b, b2]), np.concatenate([c, c2])
    got = reference.fma_f32(a, b, c)
    exact = [Fraction(float(x)) * Fraction(float(y)) + Fraction(float(z)) for x, y, z in zip(a, b, c)]
    want = np.array([_round_f32(v) for v in exact], np.float32)
    np.testing.assert_array_equal(got, want)
    assert not np.array_equal(got[-3:-1], (a[-3:-1].astype(np.float64) * b[-3:-1] + c[-3:-1]).astype(np.float32))


def _round_f32(v: Fraction) -> float:
    """A rational rounded to the nearest float32, ties to even (exact, by bisection on the
    float32 neighbours of its float64 approximation)."""
    f = np.float32(float(v))
    lo = f if Fraction(float(f)) <= v else np.nextafter(f, np.float32(-np.inf))
    hi = np.nextafter(lo, np.float32(np.inf))
    dlo, dhi = v - Fraction(float(lo)), Fraction(float(hi)) - v
    if dlo != dhi:
        return float(lo if dlo < dhi else hi)
    return float(lo if int(np.float32(lo).view(np.uint32)) % 2 == 0 else hi)


@st.composite
def _float_case(draw):  # type: ignore[no-untyped-def]
    """A conv / depthwise / dense workload, a precision and a configuration drawn from the
    template's tuning space."""
    kind = draw(st.sampled_from(["conv", "conv", "depthwise", "dense"]))
    ep = draw(st.sampled_from([RELU, RELU6, NONE, RES, RES_RELU]))
    if kind == "dense":
        wl = DenseWorkload(draw(st.integers(1, 2)), draw(st.integers(1, 70)), draw(st.integers(1, 40)), ep)
    else:
        groups = draw(st.sampled_from([1, 1, 2])) if kind == "conv" else None
        cg, kg = draw(st.integers(1, 19)), draw(st.integers(1, 21))
        k = draw(st.sampled_from([1, 1, 3, 5]))
        stride, pad = draw(st.integers(1, 2)), draw(st.integers(0, k // 2))
        h, w = draw(st.integers(k, 13)), draw(st.integers(k, 13))
        if kind == "depthwise":
            c = cg * draw(st.integers(1, 3))
            wl = Conv2dWorkload(1, c, h, w, c, k, k, stride, stride, pad, pad, pad, pad, groups=c, epilogue=ep)
        else:
            wl = Conv2dWorkload(1, cg * groups, h, w, kg * groups, k, k, stride, stride, pad, pad, pad, pad,
                                groups=groups, epilogue=ep)
    precision = draw(st.sampled_from(["fp32", "bf16"]))
    isa = draw(st.sampled_from(executable_levels(registry.op_of(wl), precision)))
    features = HOST.with_isa(isa)
    kernel = registry.select(registry.op_of(wl), precision, features)
    configs = space.config_space(kernel.fallback_config(wl, features), wl, features)
    return wl, precision, isa, draw(st.sampled_from(configs))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_float_case(), st.integers(0, 2 ** 16))
def test_float_kernels_equal_their_ordered_reference_bit_for_bit(case, seed: int) -> None:  # type: ignore[no-untyped-def]
    """A configuration from the tuning space of a kernel at a level this host executes."""
    wl, precision, isa, cfg = case
    _check(wl, isa, seed=seed, precision=precision, cfg=cfg)


SPACE_WORKLOADS = {
    "conv2d": [Conv2dWorkload(1, 24, 10, 10, 40, 3, 3, 1, 1, 1, 1, 1, 1),
               Conv2dWorkload(1, 32, 9, 9, 48, 3, 3, 2, 2, 1, 1, 1, 1),
               Conv2dWorkload(1, 64, 7, 7, 48, 1, 1)],
    "depthwise_conv2d": [Conv2dWorkload(1, 32, 9, 9, 32, 3, 3, 2, 2, 1, 1, 1, 1, groups=32)],
    "dense": [DenseWorkload(1, 100, 10), DenseWorkload(2, 64, 33)],
}


@pytest.mark.parametrize("key", registry.registered_keys(), ids=str)
def test_every_kernel_space_starts_at_its_fallback_and_round_trips(key) -> None:  # type: ignore[no-untyped-def]
    """Every registered kernel, on the profile of its ISA level: its configuration space starts
    with its fallback, holds no duplicate, and every candidate survives the tuning database's
    JSON unchanged (its type registered by the kernel's module)."""
    kernel = registry.get(key)
    features = PROFILES[key.isa]
    for wl in SPACE_WORKLOADS[key.op]:
        fallback = kernel.fallback_config(wl, features)
        configs = space.config_space(fallback, wl, features)
        assert configs[0] == fallback and len(configs) > 1
        assert len(set(configs)) == len(configs)
        for cfg in configs:
            assert space.config_from_json(space.config_to_json(cfg)) == cfg


_W8A8_TILES = [Conv2dWorkload(1, 16, 112, 112, 96, 1, 1, layout="NHWC"),
               Conv2dWorkload(1, 24, 56, 56, 144, 1, 1, layout="NHWC"),
               Conv2dWorkload(1, 144, 56, 56, 24, 1, 1, layout="NHWC"),
               Conv2dWorkload(1, 64, 56, 56, 64, 3, 3, 1, 1, 1, 1, 1, 1, layout="NHWC"),
               Conv2dWorkload(1, 3, 224, 224, 32, 3, 3, 2, 2, 1, 1, 1, 1, layout="NHWC")]
_FP32_TILES = [Conv2dWorkload(1, 64, 56, 56, 64, 3, 3, 1, 1, 1, 1, 1, 1, layout="NHWC"),
               Conv2dWorkload(1, 3, 224, 224, 32, 3, 3, 2, 2, 1, 1, 1, 1, layout="NHWC"),
               Conv2dWorkload(1, 512, 7, 7, 2048, 1, 1, layout="NHWC",
                              epilogue=Epilogue(activation="relu", residual=True))]


@pytest.mark.parametrize("isa", ["avx512_vnni", "avx512", "avx2"])
@pytest.mark.parametrize("wl", _W8A8_TILES, ids=["16-96", "24-144", "144-24", "3x3", "first"])
def test_fallback_register_tiles_stay_on_the_stack(isa: str, wl: Conv2dWorkload) -> None:
    """A W8A8 register tile of STACK_TILE_BYTES or more lands in a heap workspace (TVM's
    kMaxStackAlloca): the dot-product fallback configs stay below it, and a dot-product conv's
    channel block leaves no ragged last block where a one-vector block would not."""
    from schedules.common import STACK_TILE_BYTES

    features = PROFILES[isa]
    cfg = registry.select(registry.op_of(wl), "w8a8", features).fallback_config(wl, features)
    assert cfg.reg_n * cfg.oc_bn * 4 < STACK_TILE_BYTES, cfg
    lanes = features.fp32_lanes
    if cfg.oc_bn > lanes:  # two vectors: whole pairs, or one block
        assert wl.out_channels % cfg.oc_bn == 0 or wl.out_channels < cfg.oc_bn, cfg


def _hottest_block(asm: str, instruction: str) -> list[str]:
    """The instructions of the assembly's basic block with the most ``instruction``s."""
    blocks = [[line.strip() for line in b.splitlines()[1:] if line.strip() and not line.strip().startswith(".")]
              for b in re.split(r"\n(?=\.LBB)", asm)]
    return max(blocks, key=lambda b: sum(line.startswith(instruction) for line in b))


@pytest.mark.parametrize("isa", ["avx512", "avx2"])
@pytest.mark.parametrize("wl", _FP32_TILES, ids=["3x3", "first", "7x7-residual"])
def test_fp32_fallback_tile_stays_in_registers(isa: str, wl: Conv2dWorkload) -> None:
    """The fp32 direct conv's fallback tile (on AVX-512 up to 14 x 2 vectors: over
    STACK_TILE_BYTES, a heap workspace that LLVM still promotes to registers) is accumulated in
    registers: in the block with the FMAs, one register per tile vector, none reloaded from memory
    (a spilled tile is moved back into its registers before every reduction step)."""
    features = PROFILES[isa]
    kernel = registry.select("conv2d", "fp32", features)
    cfg = kernel.fallback_config(wl, features)
    lib = tvm.compile(tvm.IRModule({"main": kernel.build_primfunc(wl, cfg)}),
                      target=tvm.target.Target(features.target_json()))
    body = _hottest_block(lib.mod.inspect_source("s"), "vfmadd")
    # AT&T operand order: the accumulator is an FMA's last operand, a load's destination its last
    accumulators = {line.split(",")[-1].strip() for line in body if line.startswith("vfmadd")}
    assert len(accumulators) == cfg.reg_n * cfg.oc_bn // features.fp32_lanes, (cfg, sorted(accumulators))
    reloads = [line for line in body if line.startswith("vmov") and "(" in line.split(",")[0]
               and line.split(",")[-1].strip() in accumulators]
    assert not reloads, (cfg, reloads)
