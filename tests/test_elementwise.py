"""Boundary kernels (quantize, dequantize, integer pooling, gathers and pads of codes) bit-exact against numpy."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from hypothesis import given, settings
from hypothesis import strategies as st
from tvm import te

from schedules import elementwise, reference
from tvmq.passes.schedule_generic import schedule_primfunc

from .isa import HOST, executable_levels

# the vector width follows the level: each level this host executes whose width differs
LEVELS = list({HOST.with_isa(isa).fp32_lanes: isa for isa in reversed(executable_levels())}.values())


def _build(tensors, isa: str):  # type: ignore[no-untyped-def]
    features = HOST.with_isa(isa)
    func = schedule_primfunc(te.create_prim_func(tensors), features.fp32_lanes)  # as in a model build
    return tvm.compile(tvm.IRModule({"main": func}), target=tvm.target.Target(features.target_json()))


@pytest.mark.parametrize("isa", LEVELS)
def test_quantize_dequantize_bit_exact(isa: str) -> None:
    rng = np.random.default_rng(0)
    shape = (1, 5, 7, 9)
    x = (rng.standard_normal(shape) * 3).astype(np.float32)
    scale, zp = np.float32(0.0371), 117
    x.reshape(-1)[:4] = [(0 - zp + 0.5) * scale, 2.5 * scale, -1e9, 1e9]  # near-ties and clamps
    out = tvm.runtime.empty(shape, "uint8")
    _build(elementwise.quantize(shape), isa)(tvm.runtime.tensor(x), tvm.runtime.tensor(np.array([scale])),
                                        tvm.runtime.tensor(np.array([zp], np.int32)), out)
    np.testing.assert_array_equal(out.numpy(), reference.quantize_u8(x, scale, zp))
    back = tvm.runtime.empty(shape, "float32")
    _build(elementwise.dequantize(shape), isa)(out, tvm.runtime.tensor(np.array([scale])),
                                          tvm.runtime.tensor(np.array([zp], np.int32)), back)
    np.testing.assert_array_equal(back.numpy(), reference.dequantize_u8(out.numpy(), scale, zp))


@pytest.mark.parametrize("isa", LEVELS)
def test_integer_global_average_pool_bit_exact(isa: str) -> None:
    rng = np.random.default_rng(1)
    for shape in [(1, 32, 7, 7), (2, 3, 4, 4), (1, 64, 14, 14)]:
        q = rng.integers(0, 256, shape).astype(np.uint8)
        q[0, 0] = 255  # the largest sum
        out = tvm.runtime.empty((shape[0], shape[1], 1, 1), "uint8")
        _build(elementwise.global_avg_pool_u8(shape), isa)(tvm.runtime.tensor(q), out)
        np.testing.assert_array_equal(out.numpy(), reference.global_avg_pool_u8(q))


@pytest.mark.parametrize("isa", LEVELS)
@pytest.mark.parametrize("nhwc", [False, True], ids=["NCHW", "NHWC"])
@pytest.mark.parametrize("geometry", [((3, 3), (2, 2), (1, 1), (1, 1)), ((2, 3), (1, 2), (2, 1), (0, 1)),
                                      ((9, 9), (4, 4), (1, 1), (2, 2))], ids=["3x3-s2", "dilated", "9x9-reduce"])
def test_integer_max_pool_bit_exact(isa: str, nhwc: bool, geometry) -> None:  # type: ignore[no-untyped-def]
    """Small windows are one expression of their taps (a spatial block: channels-last, one vector
    max per tap), large ones a reduction; padding taps read 0, below every uint8 code."""
    (kh, kw), (sh, sw), (dh, dw), (ph, pw) = geometry
    shape, rng = (1, 64, 17, 15), np.random.default_rng(kh)
    out_hw = ((shape[2] + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (shape[3] + 2 * pw - dw * (kw - 1) - 1) // sw + 1)
    q = rng.integers(0, 256, shape).astype(np.uint8)
    tensors = elementwise.max_pool_u8(shape, out_hw, (kh, kw), (sh, sw), (dh, dw), (ph, pw), nhwc_io=nhwc)
    lib = _build(tensors, isa)
    out = tvm.runtime.empty(tuple(int(d) for d in tensors[-1].shape), "uint8")
    lib(tvm.runtime.tensor(elementwise_layout(q, nhwc)), out)
    want = reference.max_pool_u8(q, out_hw, (kh, kw), (sh, sw), (dh, dw), (ph, pw))
    np.testing.assert_array_equal(out.numpy(), elementwise_layout(want, nhwc))
    if nhwc and kh * kw <= elementwise.UNROLLED_WINDOW:
        func = schedule_primfunc(te.create_prim_func(tensors), HOST.with_isa(isa).fp32_lanes)
        assert "T.vectorized" in func.script()


@pytest.mark.parametrize("isa", LEVELS)
@pytest.mark.parametrize("nhwc", [False, True], ids=["NCHW", "NHWC"])
def test_integer_global_average_pool_into_another_scale_bit_exact(isa: str, nhwc: bool) -> None:
    """The pooled sum requantized into the consumer's quantization (a finer scale: the mean of
    a map varies less than its pixels), ties included."""
    rng = np.random.default_rng(2)
    for shape, zp_in, scale, zp_out in [((1, 32, 7, 7), 3, 0.0731, 128), ((2, 5, 4, 4), 0, 0.5, 0),
                                        ((1, 64, 14, 14), 255, 1 / 196 * 2.5, 17)]:
        q = rng.integers(0, 256, shape).astype(np.uint8)
        count = shape[2] * shape[3]
        out = tvm.runtime.empty((shape[0], shape[1], 1, 1), "uint8")
        _build(elementwise.global_avg_pool_requant_u8(shape, nhwc), isa)(
            tvm.runtime.tensor(elementwise_layout(q, nhwc)), tvm.runtime.tensor(np.array([-count * zp_in, zp_out], np.int32)),
            tvm.runtime.tensor(np.array([scale], np.float32)), out)
        want = reference.global_avg_pool_requant_u8(q, zp_in, scale, zp_out)
        np.testing.assert_array_equal(out.numpy(), want)
        exact = (q.astype(np.float64).sum(axis=(2, 3), keepdims=True) - count * zp_in) * np.float32(scale) + zp_out
        assert np.abs(want - np.clip(exact, 0, 255)).max() <= 0.5 + 1e-4


@pytest.mark.parametrize("isa", LEVELS)
@pytest.mark.parametrize("nhwc", [False, True], ids=["NCHW", "NHWC"])
@pytest.mark.parametrize("include_pad", [False, True], ids=["exclude-pad", "include-pad"])
@pytest.mark.parametrize("geometry", [((3, 3), (2, 2), (1, 1)), ((3, 3), (1, 1), (1, 1)), ((2, 2), (2, 2), (0, 0))],
                         ids=["3x3-s2-p1", "3x3-s1-p1", "2x2-s2"])
def test_integer_avg_pool_bit_exact(isa: str, nhwc: bool, include_pad: bool, geometry) -> None:  # type: ignore[no-untyped-def]
    """The window mean of the codes rounded half up; a padded tap is the zero point and
    counts (include-pad) or neither (exclude-pad: the count is the taps inside)."""
    (kh, kw), (sh, sw), (ph, pw) = geometry
    shape, rng, zp = (1, 32, 11, 10), np.random.default_rng(kh + sh), 37
    out_hw = ((shape[2] + 2 * ph - kh) // sh + 1, (shape[3] + 2 * pw - kw) // sw + 1)
    q = rng.integers(0, 256, shape).astype(np.uint8)
    tensors = elementwise.avg_pool_u8(shape, out_hw, (kh, kw), (sh, sw), (ph, pw), include_pad, nhwc_io=nhwc)
    lib = _build(tensors, isa)
    out = tvm.runtime.empty(tuple(int(d) for d in tensors[-1].shape), "uint8")
    lib(tvm.runtime.tensor(elementwise_layout(q, nhwc)), tvm.runtime.tensor(np.array([zp], np.int32)), out)
    want = reference.avg_pool_u8(q, out_hw, (kh, kw), (sh, sw), (ph, pw), include_pad, zp)
    np.testing.assert_array_equal(out.numpy(), elementwise_layout(want, nhwc))
    # the reference itself, against float means of the codes (padding: zp or left out)
    padded = np.pad(q.astype(np.float64), ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=np.nan)
    for y, x in [(0, 0), (out_hw[0] - 1, out_hw[1] - 1), (1, 2)]:
        win = padded[0, :, y * sh:y * sh + kh, x * sw:x * sw + kw].reshape(shape[1], -1)
        win = np.where(np.isnan(win), zp, win) if include_pad else win
        mean = np.nanmean(win, axis=1)
        np.testing.assert_array_equal(want[0, :, y, x], np.floor(mean + 0.5).astype(np.uint8))


@pytest.mark.parametrize("isa", LEVELS)
def test_integer_multiply_bit_exact(isa: str) -> None:
    """Two uint8 tensors multiplied into a third quantization, the second broadcast (an SE
    block's [N, 1, 1, C] scales over an NHWC map) or of the same shape; extreme codes."""
    rng = np.random.default_rng(3)
    for a_shape, b_shape in [((1, 9, 7, 48), (1, 1, 1, 48)), ((2, 5, 3, 3), (2, 5, 3, 3))]:
        a = rng.integers(0, 256, a_shape).astype(np.uint8)
        b = rng.integers(0, 256, b_shape).astype(np.uint8)
        a.flat[0], b.flat[0] = 255, 0
        for a_zp, b_zp, scale, zp in [(0, 0, 0.004, 0), (128, 7, 0.0123, 90), (255, 255, 1.5, 3)]:
            out = tvm.runtime.empty(a_shape, "uint8")
            _build(elementwise.multiply_u8(a_shape, b_shape), isa)(
                tvm.runtime.tensor(a), tvm.runtime.tensor(b), tvm.runtime.tensor(np.array([a_zp, b_zp, zp], np.int32)),
                tvm.runtime.tensor(np.array([scale], np.float32)), out)
            want = reference.multiply_u8(a, b, a_zp, b_zp, scale, zp)
            np.testing.assert_array_equal(out.numpy(), want)
            exact = (a.astype(np.float64) - a_zp) * (b.astype(np.float64) - b_zp) * np.float32(scale) + zp
            assert np.abs(want - np.clip(exact, 0, 255)).max() <= 0.5 + 1e-3


def elementwise_layout(a: np.ndarray, nhwc: bool) -> np.ndarray:
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1)) if nhwc else a


@pytest.mark.parametrize("shape", [(1, 56, 56, 64), (1, 7, 7, 3), (1, 5, 5, 33), (1, 1, 1, 1), (2, 64), (1, 9, 9, 40)],
                         ids=lambda s: "x".join(map(str, s)))
def test_shuffle_lookup_equals_the_table(shape: tuple[int, ...]) -> None:
    """``lookup_u8_shuffle`` (AVX2 ``vpshufb``, 32 bytes at a time, a scalar tail) is
    ``table[q]`` for every code: a permutation table and all 256 codes in every position.
    Compiled for a Haswell target on any host (checked for ``vpshufb``); run where AVX2 is."""
    from .isa import HASWELL, can_execute

    ex = tvm.compile(tvm.IRModule({"main": elementwise.lookup_u8_shuffle(shape)}),
                     target=tvm.target.Target(HASWELL.target_json()))
    size = int(np.prod(shape))
    assert ("vpshufb" in ex.mod.inspect_source("s")) == (size >= 32)  # (fewer: the scalar tail only)
    if not can_execute("avx2"):
        pytest.skip("this CPU cannot execute avx2 instructions: run `make test` on a CPU whose /proc/cpuinfo "
                    "lists avx2 (the compilation is checked above)")
    rng = np.random.default_rng(sum(shape))
    q = ((np.arange(size) * 7 + 3) % 256).astype(np.uint8).reshape(shape)  # every code, shifted per lane
    for table in (rng.permutation(256).astype(np.uint8)[None], rng.integers(0, 256, (1, 256)).astype(np.uint8)):
        out = tvm.runtime.empty(shape, "uint8")
        ex(tvm.runtime.tensor(q), tvm.runtime.tensor(table), out)
        np.testing.assert_array_equal(out.numpy(), table[0][q])


@given(shape=st.tuples(st.integers(1, 2), st.integers(1, 5), st.integers(2, 9), st.integers(2, 9)),
       axis=st.integers(0, 3), data=st.data())
@settings(max_examples=10, deadline=None)
def test_integer_gather_and_copy_pads_equal_numpy(shape: tuple[int, ...], axis: int, data: st.DataObject) -> None:
    """The integer forms of a nearest ``Resize`` (a take of constant indices) and of edge /
    reflect ``Pad`` (``RealizeIntegers._int_data_movement``) on uint8 codes, legalized and
    scheduled as in a model build, equal ``np.take`` / ``np.pad`` (``numpy_program.copy_pad``)
    over drawn shapes, indices and widths."""
    from tvm import relax

    from tvmq.passes.numpy_program import copy_pad
    from tvmq.passes.schedule_generic import ScheduleGeneric

    rng = np.random.default_rng(len(shape) * 7 + axis)
    q = rng.integers(0, 256, shape).astype(np.uint8)
    index = np.array(data.draw(st.lists(st.integers(0, shape[axis] - 1), min_size=1, max_size=12)), np.int32)
    widths = [data.draw(st.integers(0, d - 1)) for d in shape for _ in range(2)]  # (reflect: below the size)
    mode = data.draw(st.sampled_from(["replicate", "reflect"]))
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(shape, "uint8"))
    with bb.function("main", [x]):
        with bb.dataflow():
            taken = bb.emit(relax.op.take(x, relax.const(index), axis=axis))
            padded = bb.emit(relax.op.nn.pad(x, widths, mode))
            out = bb.emit_output(relax.Tuple([taken, padded]))
        bb.emit_func_output(out)
    features = HOST.with_isa(LEVELS[0])
    target = tvm.target.Target(features.target_json())
    with target:
        mod = ScheduleGeneric(features.fp32_lanes)(relax.transform.LegalizeOps()(bb.get()))
    vm = relax.VirtualMachine(tvm.compile(mod, target=target), tvm.cpu())
    got_take, got_pad = vm["main"](tvm.runtime.tensor(q))
    np.testing.assert_array_equal(got_take.numpy(), np.take(q, index, axis=axis))
    pairs = list(zip(widths[::2], widths[1::2]))
    numpy_mode = {"replicate": "edge", "reflect": "reflect"}[mode]
    np.testing.assert_array_equal(got_pad.numpy(), copy_pad(q, pairs, numpy_mode))
