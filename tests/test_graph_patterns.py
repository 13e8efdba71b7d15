"""Graph patterns real exporters produce, each built with ``onnx.helper``: they compile in fp32
(equal to onnxruntime) and in W8A8 (equal to the numpy program, bit for bit)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import tvmq
from tvmq.calibration import collect

from .conftest import ort_session


def _conv_model(path: Path, auto_pad: str, stride: int, size: int, pool: bool) -> Path:
    rng = np.random.default_rng(size * 10 + stride)
    w = numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "b")
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", auto_pad=auto_pad,
                              strides=[stride, stride], kernel_shape=[3, 3]),
             helper.make_node("Relu", ["c"], ["r"])]
    if pool:
        nodes.append(helper.make_node("MaxPool", ["r"], ["y"], auto_pad=auto_pad, kernel_shape=[3, 3],
                                      strides=[stride, stride]))
    else:
        nodes.append(helper.make_node("Identity", ["r"], ["y"]))
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, size, size])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w, b])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER", "VALID"])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("size", [15, 16])
def test_conv_auto_pad_equals_onnxruntime_and_the_numpy_program(tmp_path: Path, auto_pad: str, stride: int,
                                                                 size: int) -> None:
    model = _conv_model(tmp_path / "m.onnx", auto_pad, stride, size, pool=stride == 2)
    x = np.random.default_rng(1).standard_normal((8, 1, 3, size, size)).astype(np.float32)
    want = [ort_session(model).run(None, {"x": xi})[0] for xi in x]

    fp32 = tvmq.load(tvmq.build(model, tmp_path / "fp32").library)
    for xi, yi in zip(x, want):
        got = fp32.run({"x": xi})["y"]
        assert got.shape == yi.shape
        np.testing.assert_allclose(got, yi, rtol=1e-5, atol=1e-5)

    r = tvmq.build(model, tmp_path / "w8a8", plan="w8a8", stats=collect(model, x[:, 0]))
    assert r.program is not None
    q = tvmq.load(r.library)
    for xi in x:
        np.testing.assert_array_equal(q.run({"x": xi})["y"], r.program.run([xi])[0])


def test_a_channel_batch_norm_folding_nearly_zeroed_gets_a_raised_weight_scale(tmp_path: Path) -> None:
    """Tiny weights and a large bias (a dead channel after folding): the int32 bias would
    overflow; the channel's weight scale is raised instead of refusing the model."""
    rng = np.random.default_rng(3)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    w[2] *= 1e-9
    b = np.array([0.1, -0.2, 5.0, 0.3], np.float32)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Conv", ["r", "w2"], ["y"], name="conv2")]
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b"),
             numpy_helper.from_array(rng.standard_normal((2, 4, 1, 1)).astype(np.float32), "w2")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 8, 8])], inits)
    model = tmp_path / "m.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), model)
    x = rng.standard_normal((16, 1, 3, 8, 8)).astype(np.float32)

    r = tvmq.build(model, tmp_path / "w8a8", plan="w8a8", stats=collect(model, x[:, 0]))
    assert r.manifest_data["qparams"]["conv"]["w_scales_raised_for_bias"] == [2]
    assert "w_scales_raised_for_bias" not in r.manifest_data["qparams"]["conv2"]
    q = tvmq.load(r.library)
    ref = ort_session(model)
    for xi in x:
        got = q.run({"x": xi})["y"]
        np.testing.assert_array_equal(got, r.program.run([xi])[0])
        want = ref.run(None, {"x": xi})[0]
        sqnr = 10 * np.log10((want ** 2).sum() / ((got - want) ** 2).sum())
        assert sqnr > 25, sqnr


# --- quantized graphs real exporters make (issue 15): integer forms and float islands -------------
def _save(path: Path, nodes: list, inits: list, x_shape: list[int], x_type: int = TensorProto.FLOAT) -> Path:
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", x_type, x_shape)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def _weights(rng: np.random.Generator, **shapes: tuple[int, ...]) -> list:
    return [numpy_helper.from_array((rng.standard_normal(s) * 0.3).astype(np.float32), name)
            for name, s in shapes.items()]


def _ints(**values: list[int]) -> list:
    return [numpy_helper.from_array(np.array(v, np.int64), name) for name, v in values.items()]


def _w8a8_equals_program(tmp_path: Path, model: Path, x: np.ndarray, plan: str = "w8a8",
                         min_sqnr: float = 25.0) -> dict:
    """Compiles ``model`` at ``plan`` with statistics from ``x`` (samples ``[N, 1, ...]``); the
    library equals its numpy program and stays near onnxruntime's fp32; returns the manifest."""
    r = tvmq.build(model, tmp_path / plan, plan=plan, stats=collect(model, x[:, 0]))
    assert r.program is not None
    q, ref = tvmq.load(r.library), ort_session(model)
    for xi in x[:4]:
        got = q.run({"x": xi})["y"]
        np.testing.assert_array_equal(got, r.program.run([xi])[0])
        want = ref.run(None, {"x": xi})[0]
        assert 10 * np.log10((want ** 2).sum() / ((got - want) ** 2).sum()) > min_sqnr
    return r.manifest_data


@pytest.mark.parametrize("keepdims", [0, 1])
def test_a_reduce_mean_head_stays_integer(tmp_path: Path, keepdims: int) -> None:
    """A classifier head averaging with ``ReduceMean`` over H and W (newer torch exporters)
    instead of GlobalAveragePool + Flatten: integer global average pooling, no island."""
    rng = np.random.default_rng(5)
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("ReduceMean", ["r"], ["m"], axes=[2, 3], keepdims=keepdims),
             helper.make_node("Flatten", ["m"], ["f"]),
             helper.make_node("Gemm", ["f", "w2", "b2"], ["y"], name="fc", transB=1)]
    model = _save(tmp_path / "m.onnx", nodes, _weights(rng, w1=(8, 3, 3, 3), b1=(8,), w2=(5, 8), b2=(5,)),
                  [1, 3, 8, 8])
    x = rng.standard_normal((16, 1, 3, 8, 8)).astype(np.float32)
    manifest = _w8a8_equals_program(tmp_path, model, x)
    assert manifest["float_islands"] == []


@pytest.mark.parametrize("plan", ["w8a8", "w4a8"])
def test_a_strided_slice_and_channel_pad_shortcut_stays_integer(tmp_path: Path, plan: str) -> None:
    """A parameter-free downsampling shortcut (every other pixel, channels zero-padded) added to
    a strided conv's output: slice and pad run on the uint8 tensor in its NHWC layout (the pad
    writes the zero point), the residual add stays in the conv's epilogue."""
    rng = np.random.default_rng(6)
    nodes = [helper.make_node("Conv", ["x", "w0", "b0"], ["a"], name="conv0", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["ar"]),
             helper.make_node("Conv", ["ar", "w1", "b1"], ["c"], name="conv1", pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Relu", ["c"], ["cr"]),
             helper.make_node("Conv", ["cr", "w2", "b2"], ["d"], name="conv2", pads=[1, 1, 1, 1]),
             helper.make_node("Slice", ["ar", "st", "en", "ax", "sp"], ["s"]),
             helper.make_node("Pad", ["s", "pads"], ["p"], mode="constant"),
             helper.make_node("Add", ["d", "p"], ["e"]),
             helper.make_node("Relu", ["e"], ["er"]),
             helper.make_node("Conv", ["er", "w3", "b3"], ["y"], name="conv3")]
    inits = _weights(rng, w0=(8, 3, 3, 3), b0=(8,), w1=(16, 8, 3, 3), b1=(16,), w2=(16, 16, 3, 3), b2=(16,),
                     w3=(4, 16, 1, 1), b3=(4,))
    inits += _ints(st=[0, 0], en=[9, 9], ax=[2, 3], sp=[2, 2], pads=[0, 4, 0, 0, 0, 4, 0, 0])
    model = _save(tmp_path / "m.onnx", nodes, inits, [1, 3, 9, 9])
    x = rng.standard_normal((16, 1, 3, 9, 9)).astype(np.float32)
    manifest = _w8a8_equals_program(tmp_path, model, x, plan, min_sqnr=25 if plan == "w8a8" else 12)
    assert manifest["float_islands"] == []
    assert manifest["qparams"]["conv2"]["residual"]


def test_a_float_island_on_a_residual_uses_its_calibrated_range(tmp_path: Path) -> None:
    """A shortcut padded with a value that is no integer of its scale (1.0) stays float (an
    island); the residual operand is quantized with the range calibration observed for it."""
    rng = np.random.default_rng(7)
    nodes = [helper.make_node("Conv", ["x", "w0", "b0"], ["a"], name="conv0", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["ar"]),
             helper.make_node("Conv", ["ar", "w1", "b1"], ["d"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Pad", ["ar", "pads", "one"], ["p"], mode="constant"),
             helper.make_node("Add", ["d", "p"], ["e"]),
             helper.make_node("Relu", ["e"], ["er"]),
             helper.make_node("Conv", ["er", "w2", "b2"], ["y"], name="conv2")]
    inits = _weights(rng, w0=(8, 3, 3, 3), b0=(8,), w1=(12, 8, 3, 3), b1=(12,), w2=(4, 12, 1, 1), b2=(4,))
    inits += _ints(pads=[0, 2, 0, 0, 0, 2, 0, 0]) + [numpy_helper.from_array(np.array(1.0, np.float32), "one")]
    model = _save(tmp_path / "m.onnx", nodes, inits, [1, 3, 8, 8])
    x = rng.standard_normal((16, 1, 3, 8, 8)).astype(np.float32)
    stats = collect(model, x[:, 0])
    assert stats.get("conv1", "residual").max >= 1.0  # the pad value, observed
    manifest = _w8a8_equals_program(tmp_path, model, x)
    [island] = manifest["float_islands"]
    assert [op["op"] for op in island["ops"]] == ["nn.pad"] and island["feeds"] == ["conv1"]
    assert island["source"] == ["integer"] and "no integer implementation" in island["reason"]
    # `tvmq info` on the compiled folder lists it with the reason
    out = subprocess.run([sys.executable, "-m", "tvmq", "info", str(tmp_path / "w8a8")], capture_output=True,
                         text=True, check=True).stdout
    assert "1 float island(s)" in out and "nn.pad (" in out and "-> conv1: no integer implementation" in out


@pytest.mark.parametrize("edge", ["transpose", "cast"])
def test_float_ops_on_the_model_input_before_the_first_layer(tmp_path: Path, edge: str) -> None:
    """An NHWC input transposed, or an int64 input cast, before the first conv: the op runs in
    float on the input (listed as such) and the conv's input quantize follows it."""
    rng = np.random.default_rng(8)
    if edge == "transpose":
        first, shape, x_type = helper.make_node("Transpose", ["x"], ["t"], perm=[0, 3, 1, 2]), [1, 8, 8, 3], TensorProto.FLOAT
        x = rng.standard_normal((16, 1, 8, 8, 3)).astype(np.float32)
    else:
        first, shape, x_type = helper.make_node("Cast", ["x"], ["t"], to=TensorProto.FLOAT), [1, 3, 8, 8], TensorProto.INT64
        x = rng.integers(-20, 20, (16, 1, 3, 8, 8)).astype(np.int64)
    nodes = [first, helper.make_node("Conv", ["t", "w1", "b1"], ["c"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]), helper.make_node("Conv", ["r", "w2"], ["y"], name="conv2")]
    model = _save(tmp_path / "m.onnx", nodes, _weights(rng, w1=(8, 3, 3, 3), b1=(8,), w2=(4, 8, 1, 1)), shape, x_type)
    manifest = _w8a8_equals_program(tmp_path, model, x)
    [island] = manifest["float_islands"]
    assert island["source"] == ["input"] and island["feeds"] == ["conv1"]


def test_squeeze_excitation_hard_swish_sigmoid_and_concat(tmp_path: Path) -> None:
    """HardSwish, an SE block (GAP, two 1x1 convs, HardSigmoid, Mul), Sigmoid and Concat: the
    elementwise functions of one uint8 tensor become 256-entry lookup tables (HardSwish,
    HardSigmoid, Sigmoid), the GAP of a table is integer (into se1's input quantization), the
    SE product an integer kernel into conv3's input quantization, the concat integer: no
    island, every op reproduced by the numpy program."""
    rng = np.random.default_rng(9)
    nodes = [helper.make_node("Conv", ["x", "w0", "b0"], ["a"], name="conv0", pads=[1, 1, 1, 1]),
             helper.make_node("HardSwish", ["a"], ["ah"]),
             helper.make_node("GlobalAveragePool", ["ah"], ["g"]),
             helper.make_node("Conv", ["g", "w1", "b1"], ["s1"], name="se1"),
             helper.make_node("Relu", ["s1"], ["s1r"]),
             helper.make_node("Conv", ["s1r", "w2", "b2"], ["s2"], name="se2"),
             helper.make_node("HardSigmoid", ["s2"], ["s2h"], alpha=1 / 6, beta=0.5),
             helper.make_node("Mul", ["ah", "s2h"], ["m"]),
             helper.make_node("Conv", ["m", "w3", "b3"], ["c3"], name="conv3", pads=[1, 1, 1, 1]),
             helper.make_node("Sigmoid", ["c3"], ["c3s"]),
             helper.make_node("Concat", ["c3s", "m"], ["cat"], axis=1),
             helper.make_node("Conv", ["cat", "w4", "b4"], ["y"], name="conv4")]
    inits = _weights(rng, w0=(8, 3, 3, 3), b0=(8,), w1=(4, 8, 1, 1), b1=(4,), w2=(8, 4, 1, 1), b2=(8,),
                     w3=(8, 8, 3, 3), b3=(8,), w4=(4, 16, 1, 1), b4=(4,))
    model = _save(tmp_path / "m.onnx", nodes, inits, [1, 3, 8, 8])
    x = rng.standard_normal((16, 1, 3, 8, 8)).astype(np.float32)
    manifest = _w8a8_equals_program(tmp_path, model, x)
    assert manifest["float_islands"] == []


def test_an_fp32_build_fuses_both_spellings_of_hard_swish_into_the_convs(tmp_path: Path) -> None:
    """ONNX HardSwish (TVM imports it as ``x * (clip(x + 3, 0, 6) / 6)``) and the spelled-out
    ``Add, Clip, Mul, Div`` (``(x * clip(x + 3, 0, 6)) / 6``) after a conv and a depthwise conv:
    an fp32 build fuses each into the layer's epilogue in its own order of operations and stays
    equal to onnxruntime; a conv output with another user keeps its HardSwish apart; W8A8 is
    unchanged (lookup tables, equal to the numpy program)."""
    rng = np.random.default_rng(11)
    three, zero, six = (numpy_helper.from_array(np.array(v, np.float32), n)
                        for n, v in (("three", 3.0), ("zero", 0.0), ("six", 6.0)))
    nodes = [helper.make_node("Conv", ["x", "w0", "b0"], ["a"], name="conv0", pads=[1, 1, 1, 1]),
             helper.make_node("HardSwish", ["a"], ["ah"]),
             helper.make_node("Conv", ["ah", "w1", "b1"], ["d"], name="dw1", pads=[1, 1, 1, 1], group=8),
             helper.make_node("Add", ["d", "three"], ["d3"]),
             helper.make_node("Clip", ["d3", "zero", "six"], ["dc"]),
             helper.make_node("Mul", ["d", "dc"], ["dm"]),
             helper.make_node("Div", ["dm", "six"], ["dh"]),
             helper.make_node("Conv", ["dh", "w2", "b2"], ["e"], name="pw2"),
             helper.make_node("HardSwish", ["e"], ["eh"]),
             helper.make_node("Add", ["eh", "e"], ["y"])]  # e has another user: not fused
    inits = _weights(rng, w0=(8, 3, 3, 3), b0=(8,), w1=(8, 1, 3, 3), b1=(8,), w2=(8, 8, 1, 1), b2=(8,))
    model = _save(tmp_path / "m.onnx", nodes, inits + [three, zero, six], [1, 3, 10, 10])
    x = rng.standard_normal((6, 1, 3, 10, 10)).astype(np.float32) * 2
    r = tvmq.build(model, tmp_path / "fp32")
    acts = {name: k["epilogue"]["activation"] for name, k in r.manifest_data["kernels"].items()}
    assert acts == {"conv0": "hardswish", "dw1": "hardswish_mul_div", "pw2": "none"}, acts
    got, ref = tvmq.load(r.library), ort_session(model)
    for xi in x:
        np.testing.assert_allclose(got.run({"x": xi})["y"], ref.run(None, {"x": xi})[0], rtol=1e-5, atol=1e-5)
    _w8a8_equals_program(tmp_path, model, x)


def test_a_concat_of_branches_stays_integer(tmp_path: Path) -> None:
    """Inception-style branches (two convs of different output ranges and a Sigmoid of a
    third) concatenated on channels, then a conv: the inputs are requantized to one scale by
    uint8 lookups and concatenated in NHWC, no island."""
    rng = np.random.default_rng(10)
    nodes = [helper.make_node("Conv", ["x", "w0", "b0"], ["a"], name="conv0", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["ar"]),
             helper.make_node("Conv", ["ar", "w1", "b1"], ["p"], name="branch1"),
             helper.make_node("Conv", ["ar", "w2", "b2"], ["q"], name="branch2", pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["ar", "w3", "b3"], ["r"], name="branch3"),
             helper.make_node("Sigmoid", ["r"], ["rs"]),
             helper.make_node("Concat", ["p", "q", "rs"], ["cat"], axis=1),
             helper.make_node("Conv", ["cat", "w4", "b4"], ["y"], name="conv4")]
    inits = _weights(rng, w0=(8, 3, 3, 3), b0=(8,), w1=(6, 8, 1, 1), b1=(6,), w2=(4, 8, 3, 3), b2=(4,),
                     w3=(2, 8, 1, 1), b3=(2,), w4=(4, 12, 1, 1), b4=(4,))
    inits[4] = numpy_helper.from_array(numpy_helper.to_array(inits[4]) * 4, "w2")  # another range
    model = _save(tmp_path / "m.onnx", nodes, inits, [1, 3, 8, 8])
    x = rng.standard_normal((16, 1, 3, 8, 8)).astype(np.float32)
    manifest = _w8a8_equals_program(tmp_path, model, x)
    assert manifest["float_islands"] == []


def test_pre_activation_batch_norm_and_prelu_become_per_channel_tables(tmp_path: Path) -> None:
    """DenseNet's BatchNormalization + ReLU before a conv (not foldable into it) and a PRelu
    with one slope per channel: functions of one uint8 tensor with per-channel constants,
    each a per-channel uint8 lookup before the next conv, no island."""
    rng = np.random.default_rng(11)
    c = 8
    nodes = [helper.make_node("Conv", ["x", "w0", "b0"], ["a"], name="conv0", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["ar"]),
             helper.make_node("BatchNormalization", ["ar", "g", "beta", "mu", "var"], ["bn"]),
             helper.make_node("Relu", ["bn"], ["r"]),
             helper.make_node("Conv", ["r", "w1", "b1"], ["d"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("PRelu", ["d", "slope"], ["pr"]),
             helper.make_node("Conv", ["pr", "w2", "b2"], ["y"], name="conv2")]
    inits = _weights(rng, w0=(c, 3, 3, 3), b0=(c,), w1=(c, c, 3, 3), b1=(c,), w2=(4, c, 1, 1), b2=(4,))
    inits += [numpy_helper.from_array(v.astype(np.float32), n) for n, v in
              [("g", rng.uniform(0.5, 2, c)), ("beta", rng.standard_normal(c)), ("mu", rng.standard_normal(c) * 0.1),
               ("var", rng.uniform(0.5, 2, c)), ("slope", rng.uniform(0, 0.5, (c, 1, 1)))]]
    model = _save(tmp_path / "m.onnx", nodes, inits, [1, 3, 8, 8])
    x = rng.standard_normal((16, 1, 3, 8, 8)).astype(np.float32)
    manifest = _w8a8_equals_program(tmp_path, model, x)
    assert manifest["float_islands"] == []


@pytest.mark.parametrize("include_pad", [0, 1])
def test_a_padded_average_pool_stays_integer(tmp_path: Path, include_pad: int) -> None:
    """ShuffleNet's / DenseNet's AveragePool (3x3 stride 2, padded): the window mean of the
    codes in NHWC, no island."""
    rng = np.random.default_rng(12)
    nodes = [helper.make_node("Conv", ["x", "w0", "b0"], ["a"], name="conv0", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["ar"]),
             helper.make_node("AveragePool", ["ar"], ["p"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
                              count_include_pad=include_pad),
             helper.make_node("Conv", ["p", "w1", "b1"], ["y"], name="conv1", pads=[1, 1, 1, 1])]
    model = _save(tmp_path / "m.onnx", nodes, _weights(rng, w0=(8, 3, 3, 3), b0=(8,), w1=(4, 8, 3, 3), b1=(4,)),
                  [1, 3, 9, 9])
    x = rng.standard_normal((16, 1, 3, 9, 9)).astype(np.float32)
    assert _w8a8_equals_program(tmp_path, model, x)["float_islands"] == []


def test_a_channel_shuffle_is_one_gather_of_channels(tmp_path: Path) -> None:
    """ShuffleNet's channel shuffle (reshape to groups, transpose, reshape back) of a uint8
    tensor: one gather of its NHWC channels, no island and no layout change."""
    rng = np.random.default_rng(13)
    nodes = [helper.make_node("Conv", ["x", "w0", "b0"], ["a"], name="conv0", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["ar"]),
             helper.make_node("Reshape", ["ar", "s5"], ["r5"]),
             helper.make_node("Transpose", ["r5"], ["t5"], perm=[0, 2, 1, 3, 4]),
             helper.make_node("Reshape", ["t5", "s4"], ["sh"]),
             helper.make_node("Conv", ["sh", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1], group=3),
             helper.make_node("Relu", ["c1"], ["c1r"]),
             helper.make_node("Conv", ["c1r", "w2", "b2"], ["y"], name="conv2")]
    inits = _weights(rng, w0=(12, 3, 3, 3), b0=(12,), w1=(12, 4, 3, 3), b1=(12,), w2=(4, 12, 1, 1), b2=(4,))
    inits += _ints(s5=[1, 3, 4, 8, 8], s4=[1, 12, 8, 8])
    model = _save(tmp_path / "m.onnx", nodes, inits, [1, 3, 8, 8])
    x = rng.standard_normal((16, 1, 3, 8, 8)).astype(np.float32)
    manifest = _w8a8_equals_program(tmp_path, model, x)
    assert manifest["float_islands"] == []
    assert manifest["layout_transforms"] == [{"from": "NHWC", "to": "NCHW", "shape": [1, 12, 8, 8]}]  # conv2's


def test_a_model_with_dynamic_height_and_width_is_quantized_at_the_given_shape(tmp_path: Path) -> None:
    """``--input-shape`` reaches calibration too: `tvmq compile --bits w8a8 --calibration
    data.npy` and `tvmq calibrate` then `compile` with its statistics, on a model whose H and W
    are dynamic."""
    rng = np.random.default_rng(14)
    nodes = [helper.make_node("Conv", ["x", "w0", "b0"], ["a"], name="conv0", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["ar"]), helper.make_node("Conv", ["ar", "w1"], ["y"], name="conv1")]
    model = _save(tmp_path / "m.onnx", nodes, _weights(rng, w0=(8, 3, 3, 3), b0=(8,), w1=(4, 8, 1, 1)),
                  [1, 3, "h", "w"])
    np.save(tmp_path / "data.npy", rng.standard_normal((8, 3, 16, 12)).astype(np.float32))
    tvmq_cli = [sys.executable, "-m", "tvmq"]
    shape = ["--input-shape", "x=1,3,16,12"]
    subprocess.run([*tvmq_cli, "compile", str(model), "-o", str(tmp_path / "a"), "--bits", "w8a8", *shape,
                    "--calibration", str(tmp_path / "data.npy"), "-q"], check=True, capture_output=True)
    subprocess.run([*tvmq_cli, "calibrate", str(model), "--data", str(tmp_path / "data.npy"), *shape,
                    "-o", str(tmp_path / "stats.json"), "-q"], check=True, capture_output=True)
    subprocess.run([*tvmq_cli, "compile", str(model), "-o", str(tmp_path / "b"), "--bits", "w8a8", *shape,
                    "--calibration", str(tmp_path / "stats.json"), "-q"], check=True, capture_output=True)
    x = rng.standard_normal((1, 3, 16, 12)).astype(np.float32)
    ya, yb = (tvmq.load(tmp_path / d).run({"x": x})["y"] for d in "ab")
    np.testing.assert_array_equal(ya, yb)
    want = ort_session(model).run(None, {"x": x})[0]
    assert ya.shape == want.shape and 10 * np.log10((want ** 2).sum() / ((ya - want) ** 2).sum()) > 25


def test_a_residual_layer_whose_scale_would_pass_one_half_widens_its_output(tmp_path: Path) -> None:
    """A kernel that fuses a residual requantizes with scales <= 0.5 (``schedules.quant``; it
    leaves the accumulator's clamp out): a layer whose calibrated output range is so narrow
    that its scale would exceed it gets a wider output range, and still equals its program."""
    from dataclasses import replace

    rng = np.random.default_rng(8)
    nodes = [helper.make_node("Conv", ["x", "w0", "b0"], ["a"], name="conv0", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["ar"]),
             helper.make_node("Conv", ["ar", "w1", "b1"], ["c"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["c", "ar"], ["y"])]
    model = _save(tmp_path / "m.onnx", nodes, _weights(rng, w0=(8, 3, 3, 3), b0=(8,), w1=(8, 8, 3, 3), b1=(8,)),
                  [1, 3, 6, 6])
    x = rng.standard_normal((8, 3, 6, 6)).astype(np.float32)
    stats = collect(model, x)
    out = stats.layers["conv1"]["out"]
    tiny = 1e-5 * max(abs(out.min), abs(out.max))  # (an output range ~1e5 times narrower than observed)
    stats.layers["conv1"]["out"] = replace(out, min=-tiny, max=tiny, percentile_lo=-tiny, percentile_hi=tiny,
                                           mse_lo=-tiny, mse_hi=tiny)
    r = tvmq.build(model, tmp_path / "w8a8", plan="w8a8", stats=stats)
    q = r.manifest_data["qparams"]["conv1"]
    assert q["residual"]
    s_out, s_in = q["out"]["scale"], q["in"]["scale"]
    assert max(s_in * w for w in q["w_scales"]) / s_out <= 0.5 and s_out > 2 * tiny / 255
    lib = tvmq.load(r.library)
    for xi in x[:4]:
        np.testing.assert_array_equal(lib.run({"x": xi[None]})["y"], r.program.run([xi[None]])[0])


# --- detection / segmentation upsampling: Resize nearest and ConvTranspose ----------------------
def _resize(mode: str, coord: str, nearest: str, sizes: list[int] | None, scales: list[float] | None) -> tuple:
    ins = ["r", "", "", "sizes"] if sizes else ["r", "", "scales"]
    node = helper.make_node("Resize", ins, ["u"], name="resize", mode=mode, coordinate_transformation_mode=coord,
                            nearest_mode=nearest)
    inits = _ints(sizes=sizes) if sizes else [numpy_helper.from_array(np.array(scales, np.float32), "scales")]
    return node, inits


@pytest.mark.parametrize("coord,nearest,sizes,scales", [
    ("asymmetric", "floor", None, [1, 1, 2, 2]),  # PP-OCR's FPN
    ("half_pixel", "round_prefer_floor", [1, 8, 13, 7], None),  # up on H, down on W, by odd ratios
    ("align_corners", "round_prefer_ceil", [1, 8, 16, 16], None),
    ("pytorch_half_pixel", "ceil", None, [1, 1, 1.5, 3.0]),
])
def test_a_nearest_resize_is_a_gather_of_uint8_codes(tmp_path: Path, coord: str, nearest: str,
                                                     sizes: list[int] | None, scales: list[float] | None) -> None:
    """``Resize`` nearest between two convs: tvmq computes the indices (one constant gather per
    resized axis, ``onnx_graph.resize_nearest_to_gathers``); fp32 equals onnxruntime exactly (a
    selection of elements after the same conv), W8A8 gathers the uint8 codes (no island) and
    equals its numpy program."""
    rng = np.random.default_rng(20)
    resize, inits = _resize("nearest", coord, nearest, sizes, scales)
    nodes = [helper.make_node("Conv", ["x", "w0", "b0"], ["c"], name="conv0", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]), resize,
             helper.make_node("Conv", ["u", "w1", "b1"], ["y"], name="conv1", pads=[1, 1, 1, 1])]
    model = _save(tmp_path / "m.onnx", nodes, inits + _weights(rng, w0=(8, 3, 3, 3), b0=(8,), w1=(4, 8, 3, 3),
                                                                b1=(4,)), [1, 3, 8, 8])
    x = rng.standard_normal((16, 1, 3, 8, 8)).astype(np.float32)
    fp32 = tvmq.load(tvmq.build(model, tmp_path / "fp32").library)
    ref = ort_session(model)
    for xi in x[:4]:
        want = ref.run(None, {"x": xi})[0]
        got = fp32.run({"x": xi})["y"]
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    manifest = _w8a8_equals_program(tmp_path, model, x)
    assert manifest["float_islands"] == []


@pytest.mark.parametrize("plan", ["w8a8", "w4a8"])
def test_a_conv_transpose_whose_kernel_is_its_stride_is_a_conv_layer(tmp_path: Path, plan: str) -> None:
    """A 2x2 stride-2 ``ConvTranspose`` with a batch norm after it (a DB text detector's head):
    a 1x1 conv layer to 4x the channels (the batch norm folded into it) and a depth-to-space on
    the uint8 codes; fp32 equals onnxruntime, the quantized library its numpy program."""
    rng = np.random.default_rng(21)
    bn = [numpy_helper.from_array(v.astype(np.float32), n) for n, v in
          (("g", rng.uniform(0.5, 1.5, 6)), ("be", rng.standard_normal(6) * 0.1),
           ("mu", rng.standard_normal(6) * 0.1), ("var", rng.uniform(0.5, 1.5, 6)))]
    nodes = [helper.make_node("Conv", ["x", "w0", "b0"], ["c"], name="conv0", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("ConvTranspose", ["r", "wt", "bt"], ["t"], name="up", kernel_shape=[2, 2],
                              strides=[2, 2]),
             helper.make_node("BatchNormalization", ["t", "g", "be", "mu", "var"], ["n"]),
             helper.make_node("Relu", ["n"], ["nr"]),
             helper.make_node("Conv", ["nr", "w1", "b1"], ["y"], name="conv1")]
    inits = _weights(rng, w0=(8, 3, 3, 3), b0=(8,), wt=(8, 6, 2, 2), bt=(6,), w1=(2, 6, 1, 1), b1=(2,)) + bn
    model = _save(tmp_path / "m.onnx", nodes, inits, [1, 3, 8, 8])
    x = rng.standard_normal((16, 1, 3, 8, 8)).astype(np.float32)
    r = tvmq.build(model, tmp_path / "fp32")
    assert [layer["name"] for layer in r.manifest_data["layers"]] == ["conv0", "up", "conv1"]
    fp32, ref = tvmq.load(r.library), ort_session(model)
    for xi in x[:4]:
        np.testing.assert_allclose(fp32.run({"x": xi})["y"], ref.run(None, {"x": xi})[0], rtol=1e-5, atol=1e-5)
    manifest = _w8a8_equals_program(tmp_path, model, x, plan, min_sqnr=25 if plan == "w8a8" else 12)
    assert manifest["float_islands"] == []


def test_other_conv_transposes_compile_and_run_in_float_in_quantized_plans(tmp_path: Path) -> None:
    """A 3x3 stride-2 ``ConvTranspose`` with padding and ``output_shape`` (overlapping windows):
    TVM's transposed conv, equal to onnxruntime in fp32 (``output_shape`` becomes the pads and
    output padding it implies: TVM's importer ignores it); a float island in W8A8, still equal
    to the numpy program."""
    rng = np.random.default_rng(22)
    nodes = [helper.make_node("Conv", ["x", "w0", "b0"], ["c"], name="conv0", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("ConvTranspose", ["r", "wt", "bt"], ["t"], name="up", kernel_shape=[3, 3],
                              strides=[2, 2], output_shape=[16, 16]),
             helper.make_node("Relu", ["t"], ["tr"]),
             helper.make_node("Conv", ["tr", "w1", "b1"], ["y"], name="conv1")]
    inits = _weights(rng, w0=(8, 3, 3, 3), b0=(8,), wt=(8, 4, 3, 3), bt=(4,), w1=(2, 4, 1, 1), b1=(2,))
    model = _save(tmp_path / "m.onnx", nodes, inits, [1, 3, 8, 8])
    x = rng.standard_normal((16, 1, 3, 8, 8)).astype(np.float32)
    fp32, ref = tvmq.load(tvmq.build(model, tmp_path / "fp32").library), ort_session(model)
    for xi in x[:4]:
        want = ref.run(None, {"x": xi})[0]
        assert want.shape == (1, 2, 16, 16)
        np.testing.assert_allclose(fp32.run({"x": xi})["y"], want, rtol=1e-5, atol=1e-5)
    r = tvmq.build(model, tmp_path / "w8a8", plan="w8a8", stats=collect(model, x[:, 0]))
    assert [i["reason"] for i in r.manifest_data["float_islands"]]
    q = tvmq.load(r.library)
    for xi in x[:4]:
        got = q.run({"x": xi})["y"]
        if r.program is not None:
            np.testing.assert_array_equal(got, r.program.run([xi])[0])
        want = ref.run(None, {"x": xi})[0]
        assert 10 * np.log10((want ** 2).sum() / ((got - want) ** 2).sum()) > 25


def test_a_linear_resize_tvm_would_compute_differently_is_refused_in_one_line(tmp_path: Path) -> None:
    """Linear ``Resize`` at scales that give no whole output size: TVM's importer takes its
    coordinates from the sizes, ONNX from the scale; refused before any compile work."""
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], name="up", mode="linear")
    model = _save(tmp_path / "m.onnx", [node], [numpy_helper.from_array(np.array([1, 1, 1.5, 1.5], np.float32),
                                                                        "scales")], [1, 3, 5, 5])
    with pytest.raises(tvmq.TvmqError, match=r"^Resize node 'up': mode linear with scales \[1.0, 1.0, 1.5, 1.5\] "
                                             r"that do not give a whole output size"):
        tvmq.build(model, tmp_path / "out")


def test_a_softmax_head_is_in_the_numpy_program(tmp_path: Path) -> None:
    """A classifier ending in ``Exp`` and ``Softmax`` (float ops after the last layer): the
    compiled code calls the C library's ``expf``, the numpy program calls the same one
    (``reference.libm_expf``) and sums in the same order, so the library still equals it."""
    rng = np.random.default_rng(23)
    nodes = [helper.make_node("Conv", ["x", "w0", "b0"], ["c"], name="conv0", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["g"]), helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("Gemm", ["f", "w1", "b1"], ["l"], name="fc", transB=1),
             helper.make_node("Exp", ["l"], ["e"]), helper.make_node("Softmax", ["e"], ["y"], axis=-1)]
    model = _save(tmp_path / "m.onnx", nodes, _weights(rng, w0=(8, 3, 3, 3), b0=(8,), w1=(10, 8), b1=(10,)),
                  [1, 3, 8, 8])
    x = rng.standard_normal((16, 1, 3, 8, 8)).astype(np.float32)
    _w8a8_equals_program(tmp_path, model, x)


@pytest.mark.parametrize("mode", ["edge", "reflect"])
def test_an_edge_or_reflect_pad_copies_the_codes(tmp_path: Path, mode: str) -> None:
    """``Pad`` in mode edge / reflect before a conv (Caffe-era exports, OpenNSFW): a copy of the
    uint8 codes in their layout (no island), equal to the numpy program; fp32 equals onnxruntime."""
    rng = np.random.default_rng(24)
    nodes = [helper.make_node("Conv", ["x", "w0", "b0"], ["c"], name="conv0", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Pad", ["r", "pads"], ["p"], mode=mode),
             helper.make_node("Conv", ["p", "w1", "b1"], ["y"], name="conv1", strides=[2, 2])]
    inits = _weights(rng, w0=(8, 3, 3, 3), b0=(8,), w1=(4, 8, 3, 3), b1=(4,)) + _ints(pads=[0, 0, 1, 2, 0, 0, 2, 1])
    model = _save(tmp_path / "m.onnx", nodes, inits, [1, 3, 8, 8])
    x = rng.standard_normal((16, 1, 3, 8, 8)).astype(np.float32)
    fp32, ref = tvmq.load(tvmq.build(model, tmp_path / "fp32").library), ort_session(model)
    for xi in x[:4]:
        np.testing.assert_allclose(fp32.run({"x": xi})["y"], ref.run(None, {"x": xi})[0], rtol=1e-5, atol=1e-5)
    assert _w8a8_equals_program(tmp_path, model, x)["float_islands"] == []


def test_a_layer_norm_of_float_ops_is_in_the_numpy_program(tmp_path: Path) -> None:
    """LayerNorm exported as ops (SVTR / PP-OCRv4's recognizer): ``ReduceMean``, ``Sub``,
    ``Pow`` 2 (LLVM folds it to ``x * x``), ``Sqrt``, ``Div`` after a layer, a float island
    the numpy program reproduces (and ``Pow`` 3 through the C library's ``powf``)."""
    rng = np.random.default_rng(25)
    nodes = [helper.make_node("Conv", ["x", "w0", "b0"], ["c"], name="conv0", pads=[1, 1, 1, 1]),
             helper.make_node("ReduceMean", ["c"], ["mu"], axes=[1]),
             helper.make_node("Sub", ["c", "mu"], ["d"]),
             helper.make_node("Pow", ["d", "two"], ["d2"]),
             helper.make_node("ReduceMean", ["d2"], ["var"], axes=[1]),
             helper.make_node("Add", ["var", "eps"], ["ve"]),
             helper.make_node("Sqrt", ["ve"], ["sd"]),
             helper.make_node("Div", ["d", "sd"], ["n"]),
             helper.make_node("Pow", ["n", "three"], ["n3"]),
             helper.make_node("Conv", ["n3", "w1", "b1"], ["y"], name="conv1")]
    consts = [numpy_helper.from_array(np.array(v, np.float32), k) for k, v in (("two", 2.0), ("three", 3.0),
                                                                              ("eps", 1e-5))]
    model = _save(tmp_path / "m.onnx", nodes, _weights(rng, w0=(8, 3, 3, 3), b0=(8,), w1=(4, 8, 1, 1), b1=(4,))
                  + consts, [1, 3, 8, 8])
    x = rng.standard_normal((16, 1, 3, 8, 8)).astype(np.float32)
    manifest = _w8a8_equals_program(tmp_path, model, x, min_sqnr=15)
    assert {o["op"] for island in manifest["float_islands"] for o in island["ops"]} >= {"power", "sqrt"}
