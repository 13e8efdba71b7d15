"""Native bf16 kernels (AVX512-BF16 ``vdpbf16ps``, AMX-BF16 ``tdpbf16ps`` conv): selection, code
generation, and bit-exactness against their numpy reference (``reference.conv2d_bf16_dot`` /
``dense_bf16_dot`` / ``conv2d_bf16_amx``).

Running the native kernels needs a CPU whose /proc/cpuinfo lists ``avx512_bf16`` (Cooper Lake,
Sapphire Rapids and later, Zen 4); elsewhere those tests skip, and what can be checked without
one is: the kernels cross-compile to ``vdpbf16ps`` on zmm registers; ``registry.select`` picks
them only where the target has the feature; the same kernels (packing, repack, loop order,
epilogue) with the instruction replaced by a lane-by-lane emulation of its definition
(``intrinsics_bf16.DPBF16PS_16X2_EMULATED``) equal the reference bit for bit on this CPU; and
the reference is a convolution (within 2e-5 of float64 on the same bf16 operands).

The AMX-BF16 conv (``conv2d/bf16/amx``) likewise: cross-compiled to ``tdpbf16ps`` tiles, selected
only where the target has ``amx_bf16``, run with the tile intrinsics emulated on memory by the
SDM's definition of ``tdpbf16ps`` (``intrinsics_bf16.amx_bf16_intrinsics(m, emulated=True)``);
its run on the instruction needs a CPU whose /proc/cpuinfo lists ``amx_bf16`` (Sapphire Rapids
and later) and skips elsewhere.
"""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tvm import s_tir, te

from schedules import bf16, intrinsics_bf16, reference, registry, space
from schedules.conv2d import bf16_dot as conv_native
from schedules.dense import bf16_dot as dense_native
from schedules.workload import Conv2dWorkload, DenseWorkload, Epilogue

from .isa import CASCADELAKE, COOPERLAKE, HOST, SAPPHIRERAPIDS
needs_avx512_bf16 = pytest.mark.skipif(not HOST.avx512_bf16, reason=(
    "this CPU cannot execute AVX512-BF16 (vdpbf16ps): run `make test` on a CPU whose /proc/cpuinfo "
    "lists avx512_bf16 (the kernels' compilation is checked here by "
    "test_native_kernels_compile_to_vdpbf16ps, their layout and order by the emulated-instruction tests)"))
needs_amx_bf16 = pytest.mark.skipif(not (HOST.amx_bf16 and HOST.avx512_bf16), reason=(
    "this CPU cannot execute AMX-BF16 (tdpbf16ps): run `make test` on a CPU whose /proc/cpuinfo lists "
    "amx_bf16 (Sapphire Rapids or later; the kernel's compilation is checked here by "
    "test_amx_conv_compiles_to_tdpbf16ps, its layout and order by the emulated-tile tests)"))
AMX = registry.KernelKey("conv2d", "bf16", "amx")

RELU = Epilogue(True, "relu")
RELU6 = Epilogue(True, "clip", 0.0, 6.0)
NONE = Epilogue(False, "none")
RES_RELU = Epilogue(True, "relu", residual=True)
RES = Epilogue(True, "none", residual=True)
NATIVE = {"conv2d": conv_native, "dense": dense_native}


def _module(wl):  # type: ignore[no-untyped-def]
    return dense_native if isinstance(wl, DenseWorkload) else conv_native


def _operands(wl, seed: int, scale: float = 1.0):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    data = (rng.standard_normal(wl.data_shape) * scale).astype(np.float32)
    weight = (rng.standard_normal(wl.weight_shape) * scale).astype(np.float32)
    bias = rng.standard_normal(wl.weight_shape[0]).astype(np.float32)
    residual = rng.standard_normal(wl.out_shape).astype(np.float32)
    return data, weight, bias, residual


def _execute(ex, mod, wl, cfg, data, weight, bias, residual) -> np.ndarray:  # type: ignore[no-untyped-def]
    args = [tvm.runtime.tensor(data.reshape(mod.input_shape(wl, cfg))),
            tvm.runtime.tensor(mod.pack_weight(weight, wl, cfg))]
    if wl.epilogue.bias:
        args.append(tvm.runtime.tensor(bias))
    if wl.epilogue.residual:
        args.append(tvm.runtime.tensor(residual.reshape(mod.output_shape(wl, cfg))))
    out = tvm.runtime.empty(mod.output_shape(wl, cfg), "float32")
    ex(*args, out)
    return out.numpy().reshape(wl.out_shape)


def _run_emulated(wl, cfg, operands, sample_seed: int | None = None) -> np.ndarray:  # type: ignore[no-untyped-def]
    """The native kernel's own compute and schedule, ``vdpbf16ps`` replaced by its emulation,
    compiled for and run on this CPU."""
    mod = _module(wl)
    sch = s_tir.Schedule(te.create_prim_func(mod.compute(wl, cfg)), seed=sample_seed)
    if mod is conv_native:  # AMX configurations: the tile intrinsics emulated too
        mod.schedule(sch, wl, cfg, sample_seed is not None, intrinsics_bf16.DPBF16PS_16X2_EMULATED,
                     emulated_amx=True)
    else:
        mod.schedule(sch, wl, cfg, sample_seed is not None, intrinsics_bf16.DPBF16PS_16X2_EMULATED)
    func = sch.mod["main"].with_attr("tirx.is_scheduled", True)
    ex = tvm.compile(tvm.IRModule({"main": func}), target=tvm.target.Target(HOST.target_json()))
    return _execute(ex, mod, wl, cfg, *operands)


@st.composite
def conv_cases(draw):  # type: ignore[no-untyped-def]
    groups = draw(st.sampled_from([1, 1, 1, 1, 2, 3]))
    cg = draw(st.integers(1, 19))
    kg = draw(st.integers(1, 37))
    k = draw(st.sampled_from([1, 1, 3, 5]))
    stride = draw(st.integers(1, 2))
    pad = draw(st.integers(0, k // 2 + 1))
    hw = draw(st.integers(max(1, k - 2 * pad), 12))
    ep = draw(st.sampled_from([RELU, RELU6, NONE, RES_RELU, RES]))
    wl = Conv2dWorkload(draw(st.integers(1, 2)), cg * groups, hw, hw + draw(st.integers(0, 3)), kg * groups,
                        k, k, stride, stride, pad, pad, pad, pad, groups=groups, epilogue=ep)
    return wl, draw(st.integers(0, 2 ** 16))


def native_conv_cases():  # type: ignore[no-untyped-def]
    """The cases a model build runs on a native (or AMX) bf16 conv: not depthwise (those take the
    portable depthwise kernel: a channel has no partner to pair with)."""
    return conv_cases().filter(lambda case: registry.op_of(case[0]) == "conv2d")


@st.composite
def dense_cases(draw):  # type: ignore[no-untyped-def]
    wl = DenseWorkload(draw(st.integers(1, 3)), draw(st.integers(1, 70)), draw(st.integers(1, 50)),
                       draw(st.sampled_from([RELU, NONE, RES])))
    return wl, draw(st.integers(0, 2 ** 16))


# --- (a) code generation, any host ---------------------------------------------------------------
@pytest.mark.parametrize("wl", [
    Conv2dWorkload(1, 32, 14, 14, 64, 3, 3, 1, 1, 1, 1, 1, 1, epilogue=RELU),
    Conv2dWorkload(1, 32, 14, 14, 64, 1, 1, epilogue=RES),
    Conv2dWorkload(1, 13, 15, 15, 21, 3, 3, 2, 2, 1, 1, 1, 1, epilogue=RELU6),
    Conv2dWorkload(1, 20, 10, 10, 20, 3, 3, 1, 1, 1, 1, 1, 1, groups=2, epilogue=RES_RELU),
    DenseWorkload(1, 64, 40, NONE),
    DenseWorkload(2, 37, 10, RELU),
], ids=["3x3", "pointwise", "odd-3x3-s2", "grouped", "dense", "dense-odd"])
def test_native_kernels_compile_to_vdpbf16ps(wl) -> None:  # type: ignore[no-untyped-def]
    """Every native kernel cross-compiles (whatever this CPU is) and its inner loop is
    ``vdpbf16ps`` on zmm registers, the LLVM IR helper inlined away (no call left)."""
    kernel = registry.select(registry.op_of(wl), "bf16", COOPERLAKE)
    assert kernel.key == registry.KernelKey(registry.op_of(wl), "bf16", "avx512_vnni")
    cfg = kernel.fallback_config(wl, COOPERLAKE)
    lib = tvm.compile(tvm.IRModule({"main": kernel.build_primfunc(wl, cfg)}),
                      target=tvm.target.Target(COOPERLAKE.target_json()))
    asm = lib.mod.inspect_source("s")
    assert "vdpbf16ps" in asm
    assert "zmm" in asm
    assert "tvmq_dpbf16ps_512" not in asm


def test_native_kernels_with_sampled_schedules_compile() -> None:
    """Points of the tuning space (sampled tile splits) still tensorize to ``vdpbf16ps``."""
    for wl in (Conv2dWorkload(1, 16, 14, 14, 32, 3, 3, 1, 1, 1, 1, 1, 1, epilogue=RELU),
               DenseWorkload(1, 64, 24, RELU)):
        kernel = registry.select(registry.op_of(wl), "bf16", COOPERLAKE)
        cfg = kernel.fallback_config(wl, COOPERLAKE)
        for seed in (1, 2):
            lib = tvm.compile(tvm.IRModule({"main": kernel.build_primfunc(wl, cfg, sample_seed=seed)}),
                              target=tvm.target.Target(COOPERLAKE.target_json()))
            assert "vdpbf16ps" in lib.mod.inspect_source("s")


# --- (b) selection -------------------------------------------------------------------------------
def test_select_takes_native_kernels_only_with_avx512_bf16() -> None:
    for op in ("conv2d", "dense"):
        native = registry.KernelKey(op, "bf16", "avx512_vnni")
        assert registry.select(op, "bf16", COOPERLAKE).key == native
        # Sapphire Rapids: the AMX-BF16 conv (test_select_takes_amx_conv_only_with_amx_bf16)
        assert registry.select(op, "bf16", SAPPHIRERAPIDS).key == (AMX if op == "conv2d" else native)
        # Cascade Lake: avx512_vnni, the native kernel's ISA level, but no AVX512-BF16
        assert registry.select(op, "bf16", CASCADELAKE).key == registry.KernelKey(op, "bf16", "generic")
        assert registry.select(op, "bf16", COOPERLAKE.with_isa("avx2")).key.isa == "generic"
        assert registry.get(native).requires is not None
    # depthwise convs have no channel pairs: portable everywhere
    assert registry.select("depthwise_conv2d", "bf16", COOPERLAKE).key.isa == "generic"
    # fp32 and int8 selection unchanged by the feature
    assert registry.select("conv2d", "fp32", COOPERLAKE).key.isa == "generic"
    assert registry.select("conv2d", "w8a8", COOPERLAKE).key.isa == "avx512_vnni"
    # LLVM can only select vdpbf16ps for a CPU that has it
    assert (COOPERLAKE.mcpu, CASCADELAKE.mcpu, SAPPHIRERAPIDS.mcpu) == \
        ("cooperlake", "cascadelake", "sapphirerapids")


def test_native_and_portable_kernels_are_interchangeable_for_the_compiler() -> None:
    """Same arguments (float32 data, uint16 bf16 weights, float32 bias / residual / out) with the
    same element counts, so ``fp32_entry`` emits either without change."""
    for wl in (Conv2dWorkload(1, 13, 9, 9, 21, 3, 3, 1, 1, 1, 1, 1, 1, epilogue=RES_RELU),
               Conv2dWorkload(1, 24, 7, 7, 40, 1, 1, epilogue=RES), DenseWorkload(2, 37, 10, RELU)):
        native = registry.select(registry.op_of(wl), "bf16", COOPERLAKE)
        portable = registry.select(registry.op_of(wl), "bf16", CASCADELAKE)
        cn, cp = native.fallback_config(wl, COOPERLAKE), portable.fallback_config(wl, CASCADELAKE)
        assert np.prod(native.input_shape(wl, cn)) == np.prod(portable.input_shape(wl, cp)) == np.prod(wl.data_shape)
        assert np.prod(native.output_shape(wl, cn)) == np.prod(portable.output_shape(wl, cp)) == np.prod(wl.out_shape)
        w = np.ones(wl.weight_shape, np.float32)
        assert native.pack_weight(w, wl, cn).dtype == portable.pack_weight(w, wl, cp).dtype == np.uint16
        assert [(t.name, t.dtype) for t in native.compute(wl, cn)] == \
            [(t.name, t.dtype) for t in portable.compute(wl, cp)]


# --- (c) bit-exact on the instruction itself (AVX512-BF16 CPUs) -----------------------------------
def _run_native(wl, operands) -> tuple[np.ndarray, np.ndarray]:  # type: ignore[no-untyped-def]
    """On this CPU limited to the native kernel's level (an AMX-BF16 CPU's best bf16 conv is the
    AMX one, tested below)."""
    features = HOST.with_isa("avx512_vnni")
    kernel = registry.select(registry.op_of(wl), "bf16", features)
    assert kernel.key.isa == "avx512_vnni", (wl, kernel.key)
    cfg = kernel.fallback_config(wl, features)
    ex = tvm.compile(tvm.IRModule({"main": kernel.build_primfunc(wl, cfg)}),
                     target=tvm.target.Target(features.target_json()))
    got = _execute(ex, kernel, wl, cfg, *operands)
    data, weight, bias, residual = operands
    return got, kernel.float_reference(wl, cfg, data, weight, bias, residual, fma=features.fused_multiply_add)


@given(native_conv_cases(), dense_cases())
@settings(max_examples=60, deadline=None)
def test_native_cases_select_the_native_kernels(conv, dense) -> None:  # type: ignore[no-untyped-def]
    """What the bit-exact tests on the instruction draw is what their claim covers: on every
    AVX512-BF16 CPU (AMX-BF16 ones limited to the avx512_vnni level, as ``_run_native`` does)
    each drawn workload selects the native kernel. Checked on any host (no execution)."""
    for features in (COOPERLAKE, SAPPHIRERAPIDS.with_isa("avx512_vnni")):
        for wl in (conv[0], dense[0]):
            assert registry.select(registry.op_of(wl), "bf16", features).key.isa == "avx512_vnni", wl


@needs_avx512_bf16
@given(native_conv_cases())
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_native_conv2d_bit_exact(case) -> None:  # type: ignore[no-untyped-def]
    wl, seed = case
    got, exact = _run_native(wl, _operands(wl, seed))
    np.testing.assert_array_equal(got, exact)


@needs_avx512_bf16
@given(dense_cases())
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_native_dense_bit_exact(case) -> None:  # type: ignore[no-untyped-def]
    wl, seed = case
    got, exact = _run_native(wl, _operands(wl, seed))
    np.testing.assert_array_equal(got, exact)


def _denormal_case():  # type: ignore[no-untyped-def]
    """Row 0 of the data: 2^-65 everywhere; row 1: 2^-130 (a bf16 denormal). Weight rows 0-7:
    2^-65 everywhere (every product 2^-130: each partial sum is a float32 denormal, flushed);
    rows 8-15: 2^10 in feature 0 (row 1 x 2^10 would be the normal 2^-120 without DAZ)."""
    wl = DenseWorkload(2, 8, 16, NONE)
    data = np.full(wl.data_shape, 2.0 ** -65, np.float32)
    data[1] = 2.0 ** -130
    weight = np.full(wl.weight_shape, 2.0 ** -65, np.float32)
    weight[8:, 0] = 2.0 ** 10
    return wl, data, weight


def _check_denormal_result(out: np.ndarray) -> None:
    np.testing.assert_array_equal(out[0, :8], 0.0)  # FTZ: 8 x 2^-130 would be 2^-127
    # feature 1 first (a denormal result, flushed), then 2^-55, which absorbs the rest
    np.testing.assert_array_equal(out[0, 8:], np.float32(2.0 ** -55))
    np.testing.assert_array_equal(out[1], 0.0)  # DAZ: 2^-130 x 2^10 would be 2^-120


@needs_avx512_bf16
def test_native_denormals_are_flushed() -> None:
    """bf16 denormal inputs read as zero (DAZ), denormal results flushed (FTZ): the reference's
    assumptions about the instruction, checked on it."""
    wl, data, weight = _denormal_case()
    got, exact = _run_native(wl, (data, weight, None, None))
    np.testing.assert_array_equal(got, exact)
    _check_denormal_result(got)


# --- the same kernels with the instruction emulated (any CPU) ------------------------------------
@given(conv_cases(), st.booleans())
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_emulated_conv2d_bit_exact(case, sampled: bool) -> None:  # type: ignore[no-untyped-def]
    """The native conv's packing, repack, order and epilogue, on this CPU: equal to
    ``float_reference`` bit for bit (with a sampled point of the tuning space too)."""
    wl, seed = case
    kernel = registry.select("conv2d", "bf16", COOPERLAKE)
    cfg = kernel.fallback_config(wl, COOPERLAKE)
    operands = _operands(wl, seed)
    got = _run_emulated(wl, cfg, operands, sample_seed=seed + 1 if sampled else None)
    np.testing.assert_array_equal(got, kernel.float_reference(wl, cfg, *operands, fma=True))


@given(dense_cases())
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_emulated_dense_bit_exact(case) -> None:  # type: ignore[no-untyped-def]
    wl, seed = case
    kernel = registry.select("dense", "bf16", COOPERLAKE)
    cfg = kernel.fallback_config(wl, COOPERLAKE)
    operands = _operands(wl, seed)
    np.testing.assert_array_equal(_run_emulated(wl, cfg, operands),
                                  kernel.float_reference(wl, cfg, *operands, fma=True))


def test_emulated_denormals_are_flushed() -> None:
    wl, data, weight = _denormal_case()
    cfg = dense_native.fallback_config(wl, COOPERLAKE)
    exact = dense_native.float_reference(wl, cfg, data, weight)
    _check_denormal_result(exact)
    np.testing.assert_array_equal(_run_emulated(wl, cfg, (data, weight, None, None)), exact)


# --- (d) the reference is a convolution ----------------------------------------------------------
@given(conv_cases())
@settings(max_examples=40, deadline=None)
def test_reference_conv2d_is_a_convolution(case) -> None:  # type: ignore[no-untyped-def]
    wl, seed = case
    data, weight, bias, residual = _operands(wl, seed)
    cfg = conv_native.fallback_config(wl, COOPERLAKE)
    got = conv_native.float_reference(wl, cfg, data, weight, bias, residual)
    expected = reference.conv2d(bf16.round_bf16(data), bf16.round_bf16(weight),
                                bias if wl.epilogue.bias else None, wl, residual)
    scale = max(float(np.abs(expected).max()), 1.0)
    np.testing.assert_allclose(got, expected, rtol=0, atol=2e-5 * scale)


@given(dense_cases())
@settings(max_examples=40, deadline=None)
def test_reference_dense_is_a_dense(case) -> None:  # type: ignore[no-untyped-def]
    wl, seed = case
    data, weight, bias, residual = _operands(wl, seed)
    cfg = dense_native.fallback_config(wl, COOPERLAKE)
    got = dense_native.float_reference(wl, cfg, data, weight, bias, residual)
    expected = reference.dense(bf16.round_bf16(data), bf16.round_bf16(weight),
                               bias if wl.epilogue.bias else None, wl, residual)
    scale = max(float(np.abs(expected).max()), 1.0)
    np.testing.assert_allclose(got, expected, rtol=0, atol=2e-5 * scale)


def test_reference_order_is_odd_then_even_and_it_matters() -> None:
    """The order of the two terms of an instruction is observable: the reference in the
    instruction's order differs from the even-first order (so the bit-exact tests would catch a
    kernel, or an emulation, that swapped them), and the registry's ``float_reference`` is the
    odd-first one."""
    wl = DenseWorkload(4, 64, 64, NONE)
    data, weight, _, _ = _operands(wl, 3)
    cfg = dense_native.fallback_config(wl, COOPERLAKE)
    order = dense_native.dot_order(wl, cfg)
    assert order[:4] == [1, 0, 3, 2]
    rd, rw = bf16.round_bf16(data), bf16.round_bf16(weight)
    odd_first = reference.dense_bf16_dot(rd, rw, None, wl, order)
    even_first = reference.dense_bf16_dot(rd, rw, None, wl, list(range(64)))
    assert not np.array_equal(odd_first, even_first)
    kernel = registry.select("dense", "bf16", COOPERLAKE)
    np.testing.assert_array_equal(kernel.float_reference(wl, cfg, data, weight, fma=False), odd_first)
    conv = Conv2dWorkload(1, 5, 4, 4, 3, 3, 3, 1, 1, 1, 1, 1, 1)
    ccfg = conv_native.Bf16DotConv2dConfig(ic_bn=4, oc_bn=16, reg_n=4)
    assert conv_native.dot_order(conv, ccfg)[:3] == [(1, 0, 0), (0, 0, 0), (3, 0, 0)]
    assert conv_native.dot_order(conv, ccfg)[-1] == (4, 2, 2)  # channel 5 pads the last pair


def test_tuning_spaces_are_valid_configurations() -> None:
    """Each module's ``config_space`` (for ``schedules.space``) starts at the fallback and every
    candidate builds (tensorizes) for the native kernel."""
    wl = Conv2dWorkload(1, 13, 9, 9, 21, 3, 3, 1, 1, 1, 1, 1, 1, epilogue=RELU)
    start = conv_native.fallback_config(wl, COOPERLAKE)
    space = conv_native.config_space(start, wl)
    assert space[0] == start and len(space) == len(set(space)) > 10
    dwl = DenseWorkload(1, 37, 40, NONE)
    dstart = dense_native.fallback_config(dwl, COOPERLAKE)
    dspace = dense_native.config_space(dstart, dwl)
    assert dspace[0] == dstart and len(dspace) == len(set(dspace)) >= 3
    for w, cfgs in ((wl, space[::7]), (dwl, dspace)):
        kernel = registry.select(registry.op_of(w), "bf16", COOPERLAKE)
        for cfg in cfgs:
            kernel.build_primfunc(w, cfg)


# --- AMX-BF16 (tdpbf16ps) conv ---------------------------------------------------------------------
def _compile_amx(wl, features=SAPPHIRERAPIDS, sample_seed: int | None = None):  # type: ignore[no-untyped-def]
    kernel = registry.select("conv2d", "bf16", features)
    assert kernel.key == AMX
    cfg = kernel.fallback_config(wl, features)
    lib = tvm.compile(tvm.IRModule({"main": kernel.build_primfunc(wl, cfg, sample_seed=sample_seed)}),
                      target=tvm.target.Target(features.target_json()))
    return cfg, lib.mod.inspect_source("s")


@pytest.mark.parametrize("wl", [
    Conv2dWorkload(1, 32, 14, 14, 64, 3, 3, 1, 1, 1, 1, 1, 1, epilogue=RELU),
    Conv2dWorkload(1, 64, 7, 7, 40, 1, 1, epilogue=RES),
    Conv2dWorkload(2, 45, 9, 11, 21, 3, 3, 1, 1, 1, 1, 1, 1, epilogue=RELU6),
    Conv2dWorkload(1, 20, 10, 10, 20, 3, 3, 1, 1, 2, 2, 2, 2, dilation_h=2, dilation_w=2, groups=2,
                   epilogue=RES_RELU),
], ids=["3x3", "pointwise", "odd-channels", "grouped-dilated"])
def test_amx_conv_compiles_to_tdpbf16ps(wl) -> None:  # type: ignore[no-untyped-def]
    """Stride-1 convs cross-compile to AMX tiles: ``ldtilecfg`` with the tile's rows, tile loads,
    ``tdpbf16ps``, one ``tilestored`` per tile, and no ``vdpbf16ps``."""
    cfg, asm = _compile_amx(wl)
    assert (cfg.dot, cfg.ic_bn, cfg.oc_bn) == (conv_native.TDPBF16PS, 32, 16) and 1 <= cfg.reg_n <= 16
    assert "tdpbf16ps" in asm
    assert "ldtilecfg" in asm and "tileloadd" in asm and "tilestored" in asm
    assert "vdpbf16ps" not in asm


@pytest.mark.parametrize("wl", [
    Conv2dWorkload(1, 13, 15, 15, 21, 3, 3, 2, 2, 1, 1, 1, 1, epilogue=RELU6),
    Conv2dWorkload(1, 64, 1, 1, 32, 1, 1, epilogue=NONE),
], ids=["strided", "one-pixel-wide"])
def test_amx_strided_convs_fall_back_to_vdpbf16ps(wl) -> None:  # type: ignore[no-untyped-def]
    """A tile row load reads consecutive pixels: strided convs (and outputs one pixel wide, whose
    one-row tile does not tensorize) take the ``vdpbf16ps`` form of the same kernel, on zmm
    registers, with no AMX instruction."""
    cfg, asm = _compile_amx(wl)
    assert cfg.dot == conv_native.VDPBF16PS
    assert "vdpbf16ps" in asm and "zmm" in asm
    assert "tdpbf16ps" not in asm and "ldtilecfg" not in asm


def test_amx_tuning_space_compiles() -> None:
    """The AMX kernel's tuning space (every tile height) keeps the instruction, starts at the
    fallback, and each candidate (and a sampled schedule) tensorizes to ``tdpbf16ps``."""
    wl = Conv2dWorkload(1, 40, 9, 9, 24, 3, 3, 1, 1, 1, 1, 1, 1, epilogue=RELU)
    start = registry.get(AMX).fallback_config(wl, SAPPHIRERAPIDS)
    cands = space.config_space(start, wl, SAPPHIRERAPIDS)
    assert cands[0] == start and len(cands) == len(set(cands)) == 8
    assert {c.dot for c in cands} == {conv_native.TDPBF16PS} and {c.reg_n for c in cands} == set(range(2, 10))
    assert space.config_from_json(space.config_to_json(start)) == start
    for cfg in (cands[1], cands[-1]):
        func = registry.get(AMX).build_primfunc(wl, cfg)
        lib = tvm.compile(tvm.IRModule({"main": func}), target=tvm.target.Target(SAPPHIRERAPIDS.target_json()))
        assert "tdpbf16ps" in lib.mod.inspect_source("s")
    assert "tdpbf16ps" in _compile_amx(wl, sample_seed=3)[1]


def test_amx_config_is_validated() -> None:
    for bad in ((16, 16, 8), (32, 32, 8), (32, 16, 17), (32, 16, 1)):
        with pytest.raises(ValueError, match="AMX-BF16 tiles need"):
            conv_native.Bf16DotConv2dConfig(*bad, dot=conv_native.TDPBF16PS)
    with pytest.raises(ValueError, match="unknown bf16 dot product"):
        conv_native.Bf16DotConv2dConfig(32, 16, 8, dot="tdpbusd")
    # records written before the field existed still load (vdpbf16ps)
    old = {"type": "Bf16DotConv2dConfig", "ic_bn": 16, "oc_bn": 32, "reg_n": 7}
    assert space.config_from_json(old).dot == conv_native.VDPBF16PS
    with pytest.raises(ValueError, match="no single sequential order"):
        conv_native.dot_order(Conv2dWorkload(1, 32, 5, 5, 16, 1, 1),
                              conv_native.Bf16DotConv2dConfig(32, 16, 5, conv_native.TDPBF16PS))


def test_select_takes_amx_conv_only_with_amx_bf16() -> None:
    """``conv2d/bf16/amx`` where the target has amx_bf16; without it (or limited to the
    avx512_vnni level) the AVX512-BF16 kernel, then the portable one; dense and depthwise have
    no AMX-BF16 kernel."""
    from dataclasses import replace

    assert registry.select("conv2d", "bf16", SAPPHIRERAPIDS).key == AMX
    assert registry.get(AMX).requires is not None
    no_amx_bf16 = replace(SAPPHIRERAPIDS, amx_bf16=False)  # AMX-INT8 only
    assert registry.select("conv2d", "bf16", no_amx_bf16).key == registry.KernelKey("conv2d", "bf16", "avx512_vnni")
    assert registry.select("conv2d", "bf16", SAPPHIRERAPIDS.with_isa("avx512_vnni")).key.isa == "avx512_vnni"
    no_bf16 = replace(SAPPHIRERAPIDS, amx_bf16=False, avx512_bf16=False)
    assert registry.select("conv2d", "bf16", no_bf16).key.isa == "generic"
    assert registry.select("dense", "bf16", SAPPHIRERAPIDS).key.isa == "avx512_vnni"
    assert registry.select("depthwise_conv2d", "bf16", SAPPHIRERAPIDS).key.isa == "generic"
    # int8 on the same CPU: unchanged (AMX tdpbusd)
    assert registry.select("conv2d", "w8a8", SAPPHIRERAPIDS).key.isa == "amx"
    # the target LLVM compiles for has AMX-BF16
    assert SAPPHIRERAPIDS.mcpu == "sapphirerapids"


def test_amx_and_other_bf16_kernels_are_interchangeable_for_the_compiler() -> None:
    """Same arguments and element counts as the AVX512-BF16 and portable kernels, so
    ``fp32_entry`` emits any of them unchanged."""
    for wl in (Conv2dWorkload(1, 13, 9, 9, 21, 3, 3, 1, 1, 1, 1, 1, 1, epilogue=RES_RELU),
               Conv2dWorkload(1, 24, 7, 7, 40, 1, 1, epilogue=RES)):
        amx = registry.get(AMX)
        native = registry.select("conv2d", "bf16", COOPERLAKE)
        ca, cn = amx.fallback_config(wl, SAPPHIRERAPIDS), native.fallback_config(wl, COOPERLAKE)
        assert ca.dot == conv_native.TDPBF16PS
        assert np.prod(amx.input_shape(wl, ca)) == np.prod(wl.data_shape)
        assert np.prod(amx.output_shape(wl, ca)) == np.prod(wl.out_shape)
        assert amx.pack_weight(np.ones(wl.weight_shape, np.float32), wl, ca).dtype == np.uint16
        assert [(t.name, t.dtype) for t in amx.compute(wl, ca)] == \
            [(t.name, t.dtype) for t in native.compute(wl, cn)]


def _run_amx_native(wl, operands) -> tuple[np.ndarray, np.ndarray]:  # type: ignore[no-untyped-def]
    from tvmq.runtime import request_amx_permission

    assert request_amx_permission(), "Linux refused the AMX tile state (arch_prctl XTILEDATA)"
    kernel = registry.select("conv2d", "bf16", HOST)
    assert kernel.key == AMX
    cfg = kernel.fallback_config(wl, HOST)
    ex = tvm.compile(tvm.IRModule({"main": kernel.build_primfunc(wl, cfg)}),
                     target=tvm.target.Target(HOST.target_json()))
    got = _execute(ex, kernel, wl, cfg, *operands)
    data, weight, bias, residual = operands
    return got, kernel.float_reference(wl, cfg, data, weight, bias, residual, fma=True)


@needs_amx_bf16
@given(conv_cases())
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_amx_conv2d_bit_exact(case) -> None:  # type: ignore[no-untyped-def]
    """On the instruction: the AMX kernel (strided cases: its vdpbf16ps form) equals
    ``float_reference`` (``reference.conv2d_bf16_amx``, the SDM's pseudo-code) bit for bit."""
    wl, seed = case
    got, exact = _run_amx_native(wl, _operands(wl, seed))
    np.testing.assert_array_equal(got, exact)


def _partials_case():  # type: ignore[no-untyped-def]
    """A 1x1 conv, 4 input channels, two pixels (an AMX tile has two rows at least), channel
    products 2^24, 1, -2^24, 1 at each (every weight 1). The SDM's ``tdpbf16ps`` sums even products (2^24 - 2^24 = 0) and odd ones (1 + 1)
    apart: 2. Into one accumulator, even first (the Intrinsics Guide's pseudo-code): 2^24 + 1
    rounds to 2^24, so 1; odd first (``vdpbf16ps``): 0."""
    wl = Conv2dWorkload(1, 4, 1, 2, 16, 1, 1, epilogue=NONE)
    data = np.repeat(np.array([2.0 ** 24, 1.0, -(2.0 ** 24), 1.0], np.float32), 2).reshape(wl.data_shape)
    return wl, data, np.ones(wl.weight_shape, np.float32)


def test_amx_reference_follows_the_sdm_partial_sums() -> None:
    wl, data, weight = _partials_case()
    cfg = registry.get(AMX).fallback_config(wl, SAPPHIRERAPIDS)
    assert cfg.dot == conv_native.TDPBF16PS
    np.testing.assert_array_equal(registry.get(AMX).float_reference(wl, cfg, data, weight, fma=True), 2.0)
    vcfg = conv_native.Bf16DotConv2dConfig(4, 16, 1)
    np.testing.assert_array_equal(conv_native.float_reference(wl, vcfg, data, weight), 0.0)
    # FTZ after every FMA of a partial: 32 products of 2^-130 (denormal) each flush to zero,
    # where their sum 2^-125 would be normal; DAZ: a bf16 denormal input reads as zero
    dwl = Conv2dWorkload(1, 32, 1, 2, 16, 1, 1, epilogue=NONE)
    d = np.full(dwl.data_shape, 2.0 ** -65, np.float32)
    d[..., 1] = 2.0 ** -130
    w = np.full(dwl.weight_shape, 2.0 ** -65, np.float32)
    w[8:] = 2.0 ** 10
    dcfg = registry.get(AMX).fallback_config(dwl, SAPPHIRERAPIDS)
    out = registry.get(AMX).float_reference(dwl, dcfg, d, w, fma=True)
    np.testing.assert_array_equal(out[0, :8], 0.0)
    np.testing.assert_array_equal(out[0, 8:, 0, 0], np.float32(32 * 2.0 ** -55))
    np.testing.assert_array_equal(out[0, 8:, 0, 1], 0.0)


@needs_amx_bf16
def test_amx_partial_sums_on_the_instruction() -> None:
    """The hand-made case above on ``tdpbf16ps`` itself: which pseudo-code the hardware follows."""
    wl, data, weight = _partials_case()
    got, exact = _run_amx_native(wl, (data, weight, None, None))
    np.testing.assert_array_equal(got, exact)


@given(conv_cases(), st.booleans())
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_emulated_amx_conv2d_bit_exact(case, sampled: bool) -> None:  # type: ignore[no-untyped-def]
    """The AMX kernel's packing, repack, tile loop order and epilogue on this CPU, the tile
    intrinsics emulated by the SDM's definition: equal to ``float_reference`` bit for bit
    (strided cases: the kernel's vdpbf16ps form, emulated too)."""
    wl, seed = case
    kernel = registry.get(AMX)
    cfg = kernel.fallback_config(wl, SAPPHIRERAPIDS)
    amx = wl.stride_w == 1 and wl.out_width >= 2
    assert cfg.dot == (conv_native.TDPBF16PS if amx else conv_native.VDPBF16PS)
    operands = _operands(wl, seed)
    got = _run_emulated(wl, cfg, operands, sample_seed=seed + 1 if sampled else None)
    np.testing.assert_array_equal(got, kernel.float_reference(wl, cfg, *operands, fma=True))


def test_emulated_amx_partial_sums() -> None:
    wl, data, weight = _partials_case()
    cfg = registry.get(AMX).fallback_config(wl, SAPPHIRERAPIDS)
    np.testing.assert_array_equal(_run_emulated(wl, cfg, (data, weight, None, None)), 2.0)


@given(conv_cases())
@settings(max_examples=30, deadline=None)
def test_amx_reference_is_a_convolution(case) -> None:  # type: ignore[no-untyped-def]
    wl, seed = case
    data, weight, bias, residual = _operands(wl, seed)
    cfg = conv_native.Bf16DotConv2dConfig(32, 16, 4, conv_native.TDPBF16PS)
    got = conv_native.float_reference(wl, cfg, data, weight, bias, residual)
    expected = reference.conv2d(bf16.round_bf16(data), bf16.round_bf16(weight),
                                bias if wl.epilogue.bias else None, wl, residual)
    scale = max(float(np.abs(expected).max()), 1.0)
    np.testing.assert_allclose(got, expected, rtol=0, atol=2e-5 * scale)
