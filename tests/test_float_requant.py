"""Float32 requantization (the default): every integer kernel bit-exact against
``quant.requantize(shift=None)`` at every ISA level the host runs, ties included; no FMA in the
integer kernels' code at any level; whole libraries in both modes equal their numpy program."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import tvm

import tvmq
from schedules import quant, reference, registry
from schedules.workload import Conv2dWorkload, DenseWorkload, Epilogue
from tvmq.calibration import collect

from .conftest import FMNIST_DIR, fmnist_inputs
from .isa import HOST, PROFILES, isa_params
from .test_int8_kernels import compile_for

FLOAT = Epilogue(True, "none", requant="float")
WORKLOADS = [
    Conv2dWorkload(1, 12, 9, 9, 20, 3, 3, 1, 1, 1, 1, 1, 1, epilogue=FLOAT),
    Conv2dWorkload(1, 20, 6, 5, 12, 1, 1, epilogue=FLOAT),
    Conv2dWorkload(1, 16, 8, 8, 16, 3, 3, 2, 2, 1, 1, 1, 1, groups=16, epilogue=FLOAT),
    Conv2dWorkload(1, 24, 6, 6, 40, 1, 1, groups=2, epilogue=FLOAT),
]
IDS = ["conv", "pointwise", "depthwise-s2", "grouped"]


def _scales(k: int, rng: np.random.Generator) -> np.ndarray:
    """Per-channel float32 scales that spread the outputs over the whole range, every third an
    exact power of two."""
    s = (10.0 ** rng.uniform(-5.5, -3.5, k)).astype(np.float32)
    s[::3] = np.float32(0.5) ** rng.integers(12, 17, len(s[::3]))
    return s


def _run(kernel, cfg, ex, wl, arrays, out_dtype):  # type: ignore[no-untyped-def]
    out = tvm.runtime.empty(kernel.output_shape(wl, cfg), out_dtype)
    ex(*[tvm.runtime.tensor(np.ascontiguousarray(a)) for a in arrays], out)
    return out.numpy().reshape(wl.out_shape)


@pytest.mark.parametrize("isa", isa_params("conv2d", "w8a8"))
@pytest.mark.parametrize("wl", WORKLOADS, ids=IDS)
@pytest.mark.parametrize("variant", ["plain", "residual-relu", "int16", "ties"])
def test_float_requantization_is_bit_exact(wl: Conv2dWorkload, isa: str, variant: str) -> None:
    """``ties``: a zero input padded with a zero zero point, so each accumulator is its odd
    bias and each scaled value a .5 tie, which must round to even as numpy's ``rint`` does."""
    _check_conv(wl, isa, variant)


@pytest.mark.parametrize("isa", [p for p in isa_params("conv2d", "w8a8") if p.values[0] not in ("generic", "amx")])
@pytest.mark.parametrize("wl", [
    Conv2dWorkload(1, 32, 5, 14, 96, 1, 1, epilogue=FLOAT, layout="NHWC"),  # read in place
    Conv2dWorkload(1, 16, 6, 7, 24, 1, 1, epilogue=FLOAT, layout="NHWC"),  # 24 channels: one block
    Conv2dWorkload(1, 8, 9, 9, 40, 3, 3, 2, 2, 1, 1, 1, 1, epilogue=FLOAT, layout="NHWC"),  # repacked
], ids=["1x1", "one-block", "3x3-s2"])
@pytest.mark.parametrize("blocks_inside", [False, True])
@pytest.mark.parametrize("variant", ["plain", "residual-relu"])
def test_float_requantization_channels_last_both_loop_orders(wl: Conv2dWorkload, isa: str, blocks_inside: bool,
                                                             variant: str) -> None:
    """Channels-last convs with the channel blocks outside the rows (the fallback) or inside
    each tile of pixels (``DotConv2dConfig.blocks_inside``): the same integers."""
    _check_conv(wl, isa, variant, lambda cfg: replace(cfg, blocks_inside=blocks_inside))


@pytest.mark.parametrize("isa", isa_params("conv2d", "w8a8"))
@pytest.mark.parametrize("variant", ["plain", "residual-relu"])
@pytest.mark.parametrize("stride", [1, 2])
def test_float_requantization_wide_3x3_on_the_multi_row_tile(isa: str, variant: str, stride: int) -> None:
    """A 3x3 conv over a 56-wide map takes ``int8_rows``' tile at the VNNI level
    (``int8_dispatch._wide_window``) and a block of two rows of tiles at the AMX level: the same
    integers as numpy."""
    wl = Conv2dWorkload(1, 16, 56, 56, 24, 3, 3, stride, stride, 1, 1, 1, 1, epilogue=FLOAT, layout="NHWC")
    features = HOST.with_isa(isa)
    cfg = registry.select("conv2d", "w8a8", features).fallback_config(wl, features)
    # (AMX: a block of two rows of AMX tiles, strided too, ``int8_dispatch._amx_block``)
    assert (type(cfg).__name__ == "DotRowsConv2dConfig") == (isa in ("avx512_vnni", "amx"))
    assert (getattr(cfg, "dot", None) == "tvmq_amx") == (isa == "amx")
    _check_conv(wl, isa, variant)


def _check_conv(wl: Conv2dWorkload, isa: str, variant: str, tweak=lambda cfg: cfg) -> None:  # type: ignore[no-untyped-def]
    ep = {"residual-relu": replace(FLOAT, residual=True, activation="relu"),
          "residual-limit": replace(FLOAT, residual=True),
          "int16": replace(FLOAT, out_int16=True)}.get(variant, FLOAT)
    wl = replace(wl, epilogue=ep)
    rng = np.random.default_rng(len(variant) * 7 + wl.out_channels)
    xq = rng.integers(0, 256, wl.data_shape).astype(np.uint8)
    wq = rng.integers(-127, 128, wl.weight_shape).astype(np.int8)
    bias_q = rng.integers(-2 ** 20, 2 ** 20, wl.out_channels).astype(np.int32)
    scale = _scales(wl.out_channels, rng)
    x_zp, out_zp = 117, (0 if variant == "int16" else 61)
    if variant == "ties":
        xq[:], x_zp = 0, 0
        bias_q = rng.integers(-100, 100, wl.out_channels).astype(np.int32) * 2 + 1
        scale[:] = 0.5
    lo, hi = {"residual-relu": (out_zp, 255), "int16": (-30000, 30000)}.get(variant, (0, 255))
    features = HOST.with_isa(isa)
    kernel = registry.select(registry.op_of(wl), "w8a8", features)
    cfg = tweak(kernel.fallback_config(wl, features))
    ex = compile_for(kernel, wl, cfg, features)
    arrays = [xq.reshape(kernel.input_shape(wl, cfg)), kernel.pack_weight(wq, wl, cfg), bias_q, scale,
              np.array([x_zp, out_zp, lo, hi], np.int32)]
    residual = None
    if ep.residual:
        r = rng.integers(0, 256, wl.out_shape).astype(np.uint8)
        r_zp, r_scale = (255, quant.RESIDUAL_SCALE_LIMIT) if variant == "residual-limit" else (131, np.float32(0.75))
        if variant == "residual-limit":  # the largest residual term the kernels leave unclamped
            r[..., ::2] = 255
            bias_q[:] = 0
            scale[:] = np.float32(1e-6)
        arrays += [r.reshape(kernel.output_shape(wl, cfg)), np.array([r_zp], np.int32), np.array([r_scale])]
        residual = (r, r_zp, r_scale)
    out_dtype = "int16" if ep.out_int16 else "uint8"
    got = _run(kernel, cfg, ex, wl, arrays, out_dtype)
    want = reference.conv2d_w8a8(xq, wq, bias_q, scale, None, x_zp, out_zp, lo, hi, wl, residual,
                                 np.dtype(out_dtype))
    np.testing.assert_array_equal(got, want)
    if variant == "residual-limit":  # (saturated where r != r_zp, the zero point where r == r_zp)
        assert set(np.unique(want)) == {lo, out_zp} and (got == out_zp).any()
        return
    assert len(np.unique(want)) > (5 if variant == "ties" and wl.out_channels < 16 else 10)


@pytest.mark.parametrize("isa", isa_params("dense", "w8a8"))
def test_float_requantization_dense_is_bit_exact(isa: str) -> None:
    wl = DenseWorkload(2, 300, 70, FLOAT)
    rng = np.random.default_rng(11)
    xq = rng.integers(0, 256, (2, 300)).astype(np.uint8)
    wq = rng.integers(-127, 128, (70, 300)).astype(np.int8)
    bias_q = rng.integers(-2 ** 20, 2 ** 20, 70).astype(np.int32)
    scale = _scales(70, rng)
    features = HOST.with_isa(isa)
    kernel = registry.select("dense", "w8a8", features)
    cfg = kernel.fallback_config(wl, features)
    got = _run(kernel, cfg, compile_for(kernel, wl, cfg, features), wl,
               [xq.reshape(kernel.input_shape(wl, cfg)), kernel.pack_weight(wq, wl, cfg), bias_q, scale,
                np.array([0, 9, 0, 255], np.int32)], "uint8")
    np.testing.assert_array_equal(got, reference.dense_w8a8(xq, wq, bias_q, scale, None, 9, 0, 255))


@pytest.mark.parametrize("isa", isa_params("conv2d", "w8a8"))
def test_a_residual_at_the_scale_limit_is_bit_exact_without_its_clamp(isa: str) -> None:
    """The kernels add a fused residual as ``rint(float32(r - r_zp) * r_scale)`` with no clamp to
    +-2**30: exact for every uint8 residual while ``|r_scale| <= 2**22`` (``r_zp`` 255, the
    largest term: -255 * 2**22); ``quant.residual_scale`` keeps a build's scales there and the
    numpy requantization refuses larger ones, as it refuses accumulator scales over 0.5 (whose
    clamp the kernels leave out too)."""
    _check_conv(Conv2dWorkload(1, 16, 6, 6, 32, 1, 1, epilogue=FLOAT, layout="NHWC"), isa, "residual-limit")
    assert quant.residual_scale(1e9) == quant.RESIDUAL_SCALE_LIMIT and quant.residual_scale(0.5) == np.float32(0.5)
    acc = np.zeros((1, 1), np.int32)
    with pytest.raises(ValueError, match="2\\*\\*22"):
        quant.requantize(acc, np.float32([0.5]), None, 0, 0, 255, residual=(acc, 0, np.float32(2.0 ** 23)))
    with pytest.raises(ValueError, match="scales <= 0.5"):  # the accumulator's term: its scale
        quant.requantize(acc, np.float32([0.75]), None, 0, 0, 255, residual=(acc, 0, np.float32(1.0)))


def test_float_requantization_rounds_ties_to_even_and_saturates() -> None:
    acc = np.array([[1, 3, 5, -1, -3, 2 ** 31 - 1, -2 ** 31]], np.int32)
    out = quant.requantize(acc, np.float32([0.5]), None, 0, -1000, 1000, axis=0)
    np.testing.assert_array_equal(out, [[0, 2, 2, 0, -2, 1000, -1000]])


@pytest.mark.parametrize("isa", list(PROFILES))
@pytest.mark.parametrize("op", ["conv2d", "depthwise_conv2d", "dense"])
def test_integer_kernels_have_no_fused_multiply_add(isa: str, op: str) -> None:
    """A multiply and an add fused into one FMA would round once instead of twice: the float
    epilogue keeps its adds in integers, so the compiled integer kernels hold no FMA at all."""
    wl = {"conv2d": WORKLOADS[0], "depthwise_conv2d": WORKLOADS[2],
          "dense": DenseWorkload(1, 64, 32, FLOAT)}[op]
    wl = replace(wl, epilogue=replace(FLOAT, residual=op != "dense"))
    features = PROFILES[isa]
    kernel = registry.select(op, "w8a8", features)
    cfg = kernel.fallback_config(wl, features)
    lib = tvm.compile(tvm.IRModule({"main": kernel.build_primfunc(wl, cfg)}),
                      target=tvm.target.Target(features.target_json()))
    asm = lib.mod.inspect_source("s")
    assert "vcvtdq2ps" in asm or "cvtdq2ps" in asm or "cvtsi2ss" in asm  # the float epilogue is there
    assert not [line for line in asm.splitlines() if "fmadd" in line or "fmsub" in line], isa


@pytest.mark.parametrize("requant", ["float", "dyadic"])
def test_both_requantization_modes_build_libraries_equal_to_their_program(tmp_path: Path, requant: str) -> None:
    model = FMNIST_DIR / "model.onnx"
    calib, _ = fmnist_inputs(64, split="calib")
    x, _ = fmnist_inputs(8)
    r = tvmq.build(model, tmp_path, plan="w8a8", stats=collect(model, calib), requant=requant)
    assert r.manifest_data["requant"] == requant
    assert all(k["epilogue"].get("requant", "dyadic") == requant for k in r.manifest_data["kernels"].values()
               if "w8a8" in k["kernel"] and not k["epilogue"]["out_float"])
    m = tvmq.load(r.library)
    for xi in x:
        np.testing.assert_array_equal(m.run({"input": xi[None]})["logits"], r.program.run([xi[None]])[0])
