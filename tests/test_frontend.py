"""Frontend: folding, layer naming and operator coverage, each on a tiny model built here,
compiled and compared with onnxruntime (max abs diff <= 1e-4 x output scale)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import tvmq
from tvmq import frontend

from .conftest import ort_session

RNG = np.random.default_rng(0)


def _init(name: str, shape: tuple[int, ...], scale: float = 0.3) -> onnx.TensorProto:
    return numpy_helper.from_array((RNG.standard_normal(shape) * scale).astype(np.float32), name)


def _model(nodes: list, inits: list, x_shape=(1, 8, 10, 10), opset: int = 17) -> onnx.ModelProto:  # type: ignore[no-untyped-def]
    g = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def _check(model: onnx.ModelProto, tmp_path: Path) -> dict:
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    r = tvmq.build(path, tmp_path / "out")
    m = tvmq.load(r.library)
    (name, shape, _), = m.inputs
    x = RNG.standard_normal(shape).astype(np.float32)
    got = m.run({name: x})["y"]
    ref = ort_session(path).run(None, {name: x})[0]
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() <= 1e-4 * max(np.abs(ref).max(), 1e-6)
    return r.manifest_data


def _bn(prefix: str, c: int) -> list:
    return [numpy_helper.from_array(RNG.uniform(0.5, 1.5, c).astype(np.float32), f"{prefix}.g"),
            _init(f"{prefix}.b", (c,), 0.1), _init(f"{prefix}.m", (c,), 0.1),
            numpy_helper.from_array(RNG.uniform(0.5, 1.5, c).astype(np.float32), f"{prefix}.v")]


def test_bn_and_affine_fold_into_conv_and_layer_names(tmp_path: Path) -> None:
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="stem", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "bn.g", "bn.b", "bn.m", "bn.v"], ["b1"], name="bn"),
        helper.make_node("Mul", ["b1", "scale"], ["m1"], name="scale"),
        helper.make_node("Add", ["m1", "shift"], ["a1"], name="shift"),
        helper.make_node("Relu", ["a1"], ["r1"], name="relu"),
        helper.make_node("Conv", ["r1", "w2"], ["y"]),  # unnamed: named after its weight
    ]
    inits = [_init("w1", (16, 8, 3, 3)), *_bn("bn", 16), _init("scale", (16, 1, 1)),
             _init("shift", (1, 16, 1, 1)), _init("w2", (4, 16, 1, 1))]
    manifest = _check(_model(nodes, inits), tmp_path)
    names = [l["name"] for l in manifest["layers"]]
    assert names == ["stem", "w2"]
    assert manifest["kernels"]["stem"]["epilogue"]["activation"] == "relu"
    pm = frontend.prepare(_model(nodes, inits))
    assert [n.op_type for n in pm.model.graph.node if n.op_type != "Constant"] == ["Conv", "Relu", "Conv"]


def test_preactivation_bn_and_dense_variants(tmp_path: Path) -> None:
    nodes = [
        helper.make_node("BatchNormalization", ["x", "bn.g", "bn.b", "bn.m", "bn.v"], ["b"], name="pre_bn"),
        helper.make_node("Relu", ["b"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "wg", "bg"], ["g"], name="fc_transb0"),  # transB = 0
        helper.make_node("MatMul", ["g", "wm"], ["mm"], name="fc_matmul"),
        helper.make_node("Softmax", ["mm"], ["y"], axis=1),
    ]
    inits = [*_bn("bn", 8), _init("wg", (8, 12)), _init("bg", (12,)), _init("wm", (12, 5))]
    manifest = _check(_model(nodes, inits), tmp_path)
    assert [l["op"] for l in manifest["layers"]] == ["dense", "dense"]


@pytest.mark.parametrize("opset", [9, 17])
def test_clip_variants_fused_and_standalone(opset: int, tmp_path: Path) -> None:
    if opset >= 11:
        clip = helper.make_node("Clip", ["c", "lo", "hi"], ["k"], name="relu6")
        lone = helper.make_node("Clip", ["s", "lo2"], ["y"], name="min_only")
        extra = [numpy_helper.from_array(np.array(0.0, np.float32), "lo"),
                 numpy_helper.from_array(np.array(6.0, np.float32), "hi"),
                 numpy_helper.from_array(np.array(-0.5, np.float32), "lo2")]
    else:
        clip = helper.make_node("Clip", ["c"], ["k"], name="relu6", min=0.0, max=6.0)
        lone = helper.make_node("Clip", ["s"], ["y"], name="min_only", min=-0.5)
        extra = []
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]), clip,
             helper.make_node("Sigmoid", ["k"], ["s0"]),
             helper.make_node("Sub", ["s0", "half"], ["s"]), lone]
    inits = [_init("w", (8, 8, 3, 3), 1.0), _init("b", (8,)),
             numpy_helper.from_array(np.array(0.5, np.float32), "half"), *extra]
    manifest = _check(_model(nodes, inits, opset=opset), tmp_path)
    ep = manifest["kernels"]["conv"]["epilogue"]
    assert (ep["activation"], ep["clip_min"], ep["clip_max"]) == ("clip", 0.0, 6.0)


def test_operator_zoo(tmp_path: Path) -> None:
    """Every non-layer operator of the supported list that the models above do not use."""
    n = helper.make_node
    nodes = [
        n("Conv", ["x", "w1"], ["c1"], name="dw", group=8, pads=[1, 1, 1, 1], strides=[2, 2]),
        n("HardSwish", ["c1"], ["h1"]),
        n("Conv", ["h1", "w2", "b2"], ["c2"], name="pw"),
        n("PRelu", ["c2", "slope"], ["p2"]),
        n("HardSigmoid", ["p2"], ["hs"], alpha=0.2, beta=0.5),
        n("Mul", ["p2", "hs"], ["m"]),
        n("Pad", ["m", "pads"], ["pd"], mode="constant"),
        n("MaxPool", ["pd"], ["mp"], kernel_shape=[3, 3], strides=[1, 1]),
        n("AveragePool", ["mp"], ["ap"], kernel_shape=[2, 2], strides=[2, 2]),
        n("Conv", ["x", "w3"], ["c3"], name="branch", strides=[4, 4]),  # 10 -> 3: AveragePool 5->2? shapes below
        n("Concat", ["ap", "c3"], ["cat"], axis=1),
        n("Transpose", ["cat"], ["t"], perm=[0, 2, 3, 1]),
        n("Transpose", ["t"], ["t2"], perm=[0, 3, 1, 2]),
        n("LeakyRelu", ["t2"], ["lr"], alpha=0.1),
        n("Tanh", ["lr"], ["th"]),
        n("ReduceMean", ["th"], ["rm"], axes=[2, 3], keepdims=0),
        n("Reshape", ["rm", "shape"], ["rs"]),
        n("Div", ["rs", "two"], ["y"]),
    ]
    inits = [_init("w1", (8, 1, 3, 3)), _init("w2", (12, 8, 1, 1)), _init("b2", (12,)),
             numpy_helper.from_array(RNG.uniform(0.05, 0.3, (12, 1, 1)).astype(np.float32), "slope"),
             numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "pads"),
             _init("w3", (4, 8, 3, 3)), numpy_helper.from_array(np.array([1, -1], np.int64), "shape"),
             numpy_helper.from_array(np.array(2.0, np.float32), "two")]
    manifest = _check(_model(nodes, inits, opset=17), tmp_path)
    assert {l["op"] for l in manifest["layers"]} == {"depthwise_conv2d", "conv2d"}


def test_constant_of_shape_weights_are_folded(tmp_path: Path) -> None:
    nodes = [helper.make_node("ConstantOfShape", ["wshape"], ["w"],
                              value=numpy_helper.from_array(np.array([0.05], np.float32))),
             helper.make_node("Conv", ["x", "w"], ["y"], name="conv")]
    inits = [numpy_helper.from_array(np.array([4, 8, 3, 3], np.int64), "wshape")]
    manifest = _check(_model(nodes, inits, opset=9), tmp_path)
    assert list(manifest["layers"][0]["weight_shape"]) == [4, 8, 3, 3]
