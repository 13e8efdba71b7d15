"""``depthwise_conv2d/w8a8/avx2`` (``schedules.depthwise.int8_avx2``): the vpmaddwd row-pair
depthwise 3x3 / 5x5 kernel, built directly in TIR on ``columns.build``'s skeleton.

Selection, configuration space, weight packing and cross-compilation run on any host; the
executing checks (bit-exact against ``reference.conv2d_w8a8`` with float32 requantization over
shapes, every configuration of the space, extreme operands; no write past the output) need a
CPU with AVX2 and skip elsewhere."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import tvm

from schedules import registry
from schedules.depthwise.fp32 import DepthwiseConfig
from schedules.depthwise.int8_avx2 import DepthwisePairConfig, covers, pack_weight
from schedules.depthwise.int8_nhwc import ChannelsLastDepthwiseConfig
from schedules.depthwise.int8_vnni import DepthwiseQuadConfig
from schedules.workload import Conv2dWorkload

from .isa import COOPERLAKE, HASWELL, HOST, SKYLAKE, can_execute, skip_reason
from .test_depthwise_vnni import MOBILENETV2, ODD, RELU6, _id, column_kernel_space, dw
from .test_depthwise_vnni import _run as run_column_kernel
from .test_kernel_bounds import CANARY, _guarded

KEY = registry.KernelKey("depthwise_conv2d", "w8a8", "avx2")
EXECUTES = pytest.mark.skipif(not can_execute("avx2"), reason=skip_reason(
    "avx2", "its compilation is checked here by test_pair_kernel_cross_compiles_to_vpmaddwd"))
# channels a multiple of 8 but not of 16 (the quad kernel's block)
EIGHTS = [dw(8, 9, 9, 1), dw(24, 14, 14, 1), dw(40, 7, 7, 2), dw(8, 1, 1, 1), dw(56, 5, 11, 2, (1, 0, 0, 1))]


def dw5(c: int, h: int, w: int, s: int, pads=(2, 2, 2, 2), **kw) -> Conv2dWorkload:  # type: ignore[no-untyped-def]
    return replace(dw(c, h, w, s, **kw), kernel_h=5, kernel_w=5, pad_top=pads[0], pad_left=pads[1],
                   pad_bottom=pads[2], pad_right=pads[3])


# 5x5 (MobileNetV3, PP-LCNet): padding 2 makes the second and the second-last row group and
# column tile border tiles too
FIVES = [dw5(32, 14, 14, 1), dw5(64, 7, 7, 1), dw5(16, 28, 28, 2), dw5(48, 9, 11, 2, (1, 2, 2, 1)), dw5(8, 5, 5, 1),
         dw5(16, 1, 1, 1), dw5(16, 2, 3, 1), dw5(16, 3, 3, 2), dw5(24, 6, 6, 1, (0, 0, 0, 0)),
         dw5(16, 4, 9, 2, (2, 0, 1, 2))]


def _kernel():  # type: ignore[no-untyped-def]
    return registry.get(KEY)


@pytest.mark.parametrize("features", [HASWELL, SKYLAKE], ids=["haswell", "skylake"])
def test_avx2_targets_select_the_pair_kernel_where_it_covers(features) -> None:  # type: ignore[no-untyped-def]
    """AVX2 and AVX-512 without VNNI take it; VNNI targets keep the quad kernel."""
    kernel = registry.select("depthwise_conv2d", "w8a8", features)
    assert kernel.key == KEY
    for wl in MOBILENETV2 + ODD + EIGHTS + FIVES:
        assert isinstance(kernel.fallback_config(wl, features), DepthwisePairConfig), wl
    base = MOBILENETV2[2]
    others = [replace(base, epilogue=replace(RELU6, residual=True)), replace(base, epilogue=replace(RELU6, requant="dyadic")),
              dw(12, 14, 14, 1), dw(32, 14, 14, 1, (2, 2, 2, 2)), dw5(32, 14, 14, 1, (3, 3, 3, 3)),
              replace(dw5(32, 14, 14, 1), kernel_h=7, kernel_w=7), replace(base, batch=2)]
    for wl in others:
        assert not covers(wl)
        assert isinstance(kernel.fallback_config(wl, features), ChannelsLastDepthwiseConfig), wl
    assert isinstance(kernel.fallback_config(replace(base, layout="NCHW"), features), DepthwiseConfig)
    assert registry.select("depthwise_conv2d", "w8a8", COOPERLAKE).key.isa == "avx512_vnni"
    assert isinstance(registry.select("depthwise_conv2d", "w8a8", COOPERLAKE).fallback_config(base, COOPERLAKE),
                      DepthwiseQuadConfig)
    # no W4A8 twin of a directly built kernel
    assert registry.select("depthwise_conv2d", "w4a8", features).key.isa == "generic"


def test_pair_tuning_space_starts_at_the_fallback_and_offers_todays_kernel() -> None:
    own = column_kernel_space(_kernel(), HASWELL, DepthwisePairConfig)
    assert {c.cb for c in own} == {8, 16} and {c.rows for c in own} == {1, 2}
    assert all(c.rows * c.tile * c.cb // 8 <= 10 for c in own)


def test_pair_weights_hold_each_tap_once_per_output_row() -> None:
    """int16 lanes ``2j + i`` of pair ``p``: rows (0, 1) and (2, -) for the tile's first output
    row, (-, 0) and (1, 2) for its second; 5x5: (0, 1), (2, 3), (4, -) and (-, 0), (1, 2), (3, 4)."""
    wl = dw(16, 8, 8, 1)
    w = np.arange(-72, 72).astype(np.int8).reshape(wl.weight_shape)
    packed = pack_weight(w, wl, DepthwisePairConfig(8, 2, 2))
    assert packed.dtype == np.int16 and packed.shape == (2, 6, 2, 16)
    c, rw = 11, 2  # block 1, lane j = 3
    b, j = divmod(c, 8)
    lanes = {(k, p): tuple(packed[b, 3 * k + rw, p, 2 * j:2 * j + 2]) for k in (0, 1) for p in (0, 1)}
    taps = w[c, 0, :, rw]
    assert lanes == {(0, 0): (taps[0], taps[1]), (0, 1): (taps[2], 0), (1, 0): (0, taps[0]), (1, 1): (taps[1], taps[2])}
    wl5 = dw5(8, 8, 8, 1)
    w5 = np.arange(-100, 100).astype(np.int8).reshape(wl5.weight_shape)
    packed5 = pack_weight(w5, wl5, DepthwisePairConfig(8, 2, 2))
    assert packed5.shape == (1, 10, 3, 16)
    t = w5[5, 0, :, 3]
    got = {(k, p): tuple(packed5[0, 5 * k + 3, p, 10:12]) for k in (0, 1) for p in range(3)}
    assert got == {(0, 0): (t[0], t[1]), (0, 1): (t[2], t[3]), (0, 2): (t[4], 0),
                   (1, 0): (0, t[0]), (1, 1): (t[1], t[2]), (1, 2): (t[3], t[4])}


@pytest.mark.parametrize("wl", [MOBILENETV2[2], MOBILENETV2[3], MOBILENETV2[9], ODD[0], EIGHTS[-1], FIVES[0]], ids=_id)
def test_pair_kernel_cross_compiles_to_vpmaddwd(wl: Conv2dWorkload) -> None:
    """With TVM's default pipeline (TIR CSE on) for a Haswell target, on any host."""
    kernel = _kernel()
    cfg = kernel.fallback_config(wl, HASWELL)
    asm = tvm.compile(tvm.IRModule({"main": kernel.build_primfunc(wl, cfg)}),
                      target=tvm.target.Target(HASWELL.target_json())).mod.inspect_source("s")
    assert "vpmaddwd" in asm and "vpmaxub" in asm


def _run(wl: Conv2dWorkload, cfg, seed: int = 0, out=None, extreme: bool = False):  # type: ignore[no-untyped-def]
    return run_column_kernel(wl, cfg, seed, out, _kernel(), extreme)


@EXECUTES
@pytest.mark.parametrize("wl", MOBILENETV2 + ODD + EIGHTS + FIVES, ids=_id)
def test_pair_kernel_is_bit_exact(wl: Conv2dWorkload) -> None:
    cfg = _kernel().fallback_config(wl, HOST.with_isa("avx2"))
    assert isinstance(cfg, DepthwisePairConfig)
    out, expected = _run(wl, cfg, seed=wl.height)
    np.testing.assert_array_equal(out.numpy(), expected)


@EXECUTES
@pytest.mark.parametrize("wl", [dw(16, 9, 9, 1), dw(16, 7, 12, 2), dw(16, 5, 6, 1, (0, 1, 1, 0)), dw5(16, 9, 8, 1),
                                dw5(16, 7, 12, 2, (2, 1, 1, 2))], ids=_id)
def test_every_pair_configuration_is_bit_exact(wl: Conv2dWorkload) -> None:
    """Every block / tile / row count / loop order of the space (odd output heights: a 1-row tail)."""
    for cfg in _kernel().tuning_space(wl, HOST.with_isa("avx2")):
        if isinstance(cfg, DepthwisePairConfig):
            out, expected = _run(wl, cfg, seed=cfg.tile)
            np.testing.assert_array_equal(out.numpy(), expected, err_msg=str(cfg))


@EXECUTES
@pytest.mark.parametrize("cfg", [DepthwisePairConfig(8, 7), DepthwisePairConfig(16, 1, 2)], ids=str)
def test_pair_kernel_is_exact_at_the_extremes(cfg: DepthwisePairConfig) -> None:
    """Largest products (255 x -128 in every tap), scales that push the float far past the
    clamp (and past int32: the upper clamp must come before the conversion)."""
    wl = dw(32, 14, 14, 1, ep=replace(RELU6, activation="none"))
    out, expected = _run(wl, cfg, seed=3, extreme=True)
    assert {0, 255} <= set(np.unique(expected))
    np.testing.assert_array_equal(out.numpy(), expected)


@EXECUTES
@pytest.mark.parametrize("wl", [dw(16, 7, 7, 1), dw(48, 9, 9, 2), dw(8, 13, 17, 2), dw(32, 5, 9, 2, (1, 0, 0, 1)),
                                dw(16, 1, 1, 1), dw(16, 8, 8, 1, (0, 0, 0, 0)), dw5(16, 7, 7, 1), dw5(16, 9, 9, 2)],
                         ids=_id)
def test_pair_kernel_writes_nothing_past_its_output(wl: Conv2dWorkload) -> None:
    cfgs = {_kernel().fallback_config(wl, HOST.with_isa("avx2")), DepthwisePairConfig(8, 1, 2 if wl.stride_h == 1 else 1, False)}
    if wl.in_channels % 16 == 0:
        cfgs.add(DepthwisePairConfig(16, 1))
    for cfg in cfgs:
        whole, tail, out = _guarded(wl.out_shape, "uint8")
        out, expected = _run(wl, cfg, out=out)
        assert (tail == CANARY).all(), f"{cfg} wrote {np.count_nonzero(tail != CANARY)} byte(s) past its output"
        np.testing.assert_array_equal(out.numpy(), expected)
