"""``depthwise_conv2d/w8a8/avx512_vnni`` (``schedules.depthwise.int8_vnni``): the vpdpbusd
column-quad depthwise 3x3 kernel, built directly in TIR.

Selection, configuration space and cross-compilation (with TVM's default pipeline: TIR CSE on)
run on any host; the executing checks (bit-exact against ``reference.conv2d_w8a8`` with float32
requantization, no write past the output) need a CPU with avx512_vnni and skip elsewhere."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import tvm

from schedules import reference, registry, space
from schedules.depthwise.int8_nhwc import ChannelsLastDepthwiseConfig
from schedules.depthwise.fp32 import DepthwiseConfig
from schedules.depthwise.int8_vnni import DepthwiseQuadConfig, covers
from schedules.workload import Conv2dWorkload, Epilogue

from .isa import CASCADELAKE, COOPERLAKE, HOST, can_execute, skip_reason
from .test_kernel_bounds import CANARY, _guarded

KEY = registry.KernelKey("depthwise_conv2d", "w8a8", "avx512_vnni")
RELU6 = Epilogue(True, "clip", 0.0, 6.0, requant="float")
RELU = Epilogue(True, "relu", requant="float")
NONE = Epilogue(True, "none", requant="float")
EXECUTES = pytest.mark.skipif(not can_execute("avx512_vnni"), reason=skip_reason(
    "avx512_vnni", "its compilation is checked here by test_quad_kernel_cross_compiles_to_vpdpbusd"))


def dw(c: int, h: int, w: int, s: int, pads=(1, 1, 1, 1), ep: Epilogue = RELU6, **kw) -> Conv2dWorkload:  # type: ignore[no-untyped-def]
    return Conv2dWorkload(1, c, h, w, c, 3, 3, s, s, *pads, groups=c, epilogue=ep, layout="NHWC", **kw)


MOBILENETV2 = [dw(c, h, h, s) for c, h, s in [
    (32, 112, 1), (96, 112, 2), (144, 56, 1), (144, 56, 2), (192, 28, 1), (192, 28, 2),
    (384, 14, 1), (576, 14, 1), (576, 14, 2), (960, 7, 1)]]
ODD = ([dw(16, n, n, s) for n in range(1, 10) for s in (1, 2)]
       + [dw(48, 9, 9, 2), dw(48, 7, 11, 1), dw(16, 13, 13, 1), dw(16, 13, 17, 2), dw(32, 5, 9, 2, ep=RELU),
          dw(16, 6, 6, 2, (0, 0, 1, 1)), dw(16, 8, 8, 1, (0, 0, 0, 0)), dw(32, 5, 9, 2, (1, 0, 0, 1), NONE),
          dw(16, 10, 10, 2, (0, 1, 1, 0)), dw(16, 2, 3, 1, (1, 1, 0, 0)), dw(64, 29, 29, 1)])


def _id(wl: Conv2dWorkload) -> str:
    return (f"c{wl.in_channels}-{wl.height}x{wl.width}-s{wl.stride_h}-p{wl.pad_top}{wl.pad_left}"
            f"{wl.pad_bottom}{wl.pad_right}-{wl.epilogue.activation}" + (f"-k{wl.kernel_h}" if wl.kernel_h != 3 else ""))


def _kernel():  # type: ignore[no-untyped-def]
    return registry.get(KEY)


@pytest.mark.parametrize("features", [COOPERLAKE, CASCADELAKE], ids=["cooperlake", "cascadelake"])
def test_vnni_targets_select_the_quad_kernel_where_it_covers(features) -> None:  # type: ignore[no-untyped-def]
    kernel = registry.select("depthwise_conv2d", "w8a8", features)
    assert kernel.key == KEY
    for wl in MOBILENETV2 + ODD:
        assert isinstance(kernel.fallback_config(wl, features), DepthwiseQuadConfig), wl
    # today's kernel for everything else
    base = MOBILENETV2[2]
    others = [replace(base, epilogue=replace(RELU6, residual=True)), replace(base, epilogue=replace(RELU6, requant="dyadic")),
              replace(base, epilogue=replace(RELU6, out_float=True)), dw(24, 14, 14, 1), dw(32, 14, 14, 1, dilation_h=2, dilation_w=2),
              dw(32, 14, 14, 1, (2, 2, 2, 2)), replace(base, kernel_h=5, kernel_w=5, pad_top=2, pad_left=2, pad_bottom=2, pad_right=2),
              replace(base, batch=2)]
    for wl in others:
        assert not covers(wl)
        assert isinstance(kernel.fallback_config(wl, features), ChannelsLastDepthwiseConfig), wl
    nchw = replace(base, layout="NCHW")
    assert isinstance(kernel.fallback_config(nchw, features), DepthwiseConfig)
    # no quad kernel below avx512_vnni (AVX-512 without VNNI: the AVX2 pair kernel), and no W4A8
    # twin of it (its TIR is built directly)
    assert registry.select("depthwise_conv2d", "w8a8", features.with_isa("avx512")).key.isa == "avx2"
    assert registry.select("depthwise_conv2d", "w4a8", features).key.isa == "generic"


def column_kernel_space(kernel, features, config_cls: type) -> list:  # type: ignore[no-untyped-def]
    """A column kernel's space on MobileNetV2's 192-channel 28x28 depthwise: the fallback first,
    its own configurations and the portable kernel's, no duplicate, each through JSON and back,
    every tile dividing the width. Returns its own configurations."""
    wl = MOBILENETV2[4]
    configs = kernel.tuning_space(wl, features)
    assert configs[0] == kernel.fallback_config(wl, features)
    assert {type(c) for c in configs} == {config_cls, ChannelsLastDepthwiseConfig}
    assert len(set(configs)) == len(configs)
    for cfg in configs:
        assert space.config_from_json(space.config_to_json(cfg)) == cfg
    own = [c for c in configs if isinstance(c, config_cls)]
    assert all(wl.out_width % c.tile == 0 for c in own)
    return own


def test_quad_tuning_space_starts_at_the_fallback_and_offers_todays_kernel() -> None:
    assert column_kernel_space(_kernel(), COOPERLAKE, DepthwiseQuadConfig)


@pytest.mark.parametrize("features", [COOPERLAKE, CASCADELAKE], ids=["cooperlake", "cascadelake"])
@pytest.mark.parametrize("wl", [MOBILENETV2[2], MOBILENETV2[3], MOBILENETV2[9], ODD[0], ODD[-2]], ids=_id)
def test_quad_kernel_cross_compiles_to_vpdpbusd(wl: Conv2dWorkload, features) -> None:  # type: ignore[no-untyped-def]
    """With TVM's default pipeline (TIR CSE on: the kernel's TIR must not trip it) on any host."""
    kernel = _kernel()
    cfg = kernel.fallback_config(wl, features)
    ex = tvm.compile(tvm.IRModule({"main": kernel.build_primfunc(wl, cfg)}),
                     target=tvm.target.Target(features.target_json()))
    assert "vpdpbusd" in ex.mod.inspect_source("s")


def _operands(wl: Conv2dWorkload, seed: int):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    c = wl.in_channels
    x = rng.integers(0, 256, wl.data_shape).astype(np.uint8)
    w = rng.integers(-128, 128, wl.weight_shape).astype(np.int8)
    bias = rng.integers(-20000, 20001, c).astype(np.int32)
    scale = (rng.random(c) * 0.02).astype(np.float32)
    x_zp, out_zp = int(rng.integers(0, 256)), int(rng.integers(0, 256))
    lo, hi = (out_zp, 255) if wl.epilogue.activation != "none" else (0, 255)
    if wl.epilogue.activation == "clip":
        hi = min(255, out_zp + 90)
    return x, w, bias, scale, x_zp, out_zp, lo, hi


def _run(wl: Conv2dWorkload, cfg, seed: int = 0, out=None, kernel=None, extreme: bool = False):  # type: ignore[no-untyped-def]
    """Run ``kernel`` (default: the quad kernel) with ``cfg`` on random operands (``extreme``:
    every product and accumulator at its largest, scales that push the float past int32);
    returns (output, the reference)."""
    from .test_int8_kernels import compile_for

    kernel = kernel or _kernel()
    x, w, bias, scale, x_zp, out_zp, lo, hi = _operands(wl, seed)
    if extreme:
        x = np.where(x > 127, 255, 0).astype(np.uint8)
        w = np.where(w >= 0, 127, -128).astype(np.int8)
        scale = np.where(np.arange(wl.in_channels) % 3 == 0, np.float32(3e4), scale).astype(np.float32)
    args = [tvm.runtime.tensor(a) for a in (x, kernel.pack_weight(w, wl, cfg), bias, scale,
                                            np.array([x_zp, out_zp, lo, hi], np.int32))]
    if out is None:
        out = tvm.runtime.empty(wl.out_shape, "uint8")
    compile_for(kernel, wl, cfg, HOST)(*args, out)
    expected = reference.conv2d_w8a8(x, w, bias, scale, None, x_zp, out_zp, lo, hi, wl)
    return out, expected


@EXECUTES
@pytest.mark.parametrize("wl", MOBILENETV2 + ODD, ids=_id)
def test_quad_kernel_is_bit_exact(wl: Conv2dWorkload) -> None:
    cfg = _kernel().fallback_config(wl, HOST)
    assert isinstance(cfg, DepthwiseQuadConfig)
    out, expected = _run(wl, cfg, seed=wl.height)
    np.testing.assert_array_equal(out.numpy(), expected)


@EXECUTES
@pytest.mark.parametrize("wl", [dw(32, 9, 9, 1), dw(16, 7, 12, 2), dw(16, 5, 6, 1, (0, 1, 1, 0))], ids=_id)
def test_every_quad_configuration_is_bit_exact(wl: Conv2dWorkload) -> None:
    """Every tile / row count / loop order of the space (odd output heights: a 1-row tail)."""
    for cfg in _kernel().tuning_space(wl, HOST):
        if isinstance(cfg, DepthwiseQuadConfig):
            out, expected = _run(wl, cfg, seed=cfg.tile)
            np.testing.assert_array_equal(out.numpy(), expected, err_msg=str(cfg))


@EXECUTES
@pytest.mark.parametrize("wl", [dw(16, 7, 7, 1), dw(48, 9, 9, 2), dw(16, 13, 17, 2), dw(32, 5, 9, 2, (1, 0, 0, 1)),
                                dw(16, 1, 1, 1), dw(16, 8, 8, 1, (0, 0, 0, 0))], ids=_id)
def test_quad_kernel_writes_nothing_past_its_output(wl: Conv2dWorkload) -> None:
    for cfg in {_kernel().fallback_config(wl, HOST),
                DepthwiseQuadConfig(1, 2 if wl.stride_h == 1 else 1, False)}:
        whole, tail, out = _guarded(wl.out_shape, "uint8")
        out, expected = _run(wl, cfg, out=out)
        assert (tail == CANARY).all(), f"{cfg} wrote {np.count_nonzero(tail != CANARY)} byte(s) past its output"
        np.testing.assert_array_equal(out.numpy(), expected)
