"""Graph patterns real exporters produce, each built with ``onnx.helper``: they compile in fp32
(equal to onnxruntime) and in W8A8 (equal to the numpy program, bit for bit)."""

from __future__ import annotations

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
