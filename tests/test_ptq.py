"""Post-training steps before the integer code exists: cross-layer equalization (exact in fp32),
GPTQ rounding (im2col patches, Hessians, less output error than rounding to nearest), the recipe
options in the manifest, and a library built with both still equal to its numpy program."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import tvmq
from tvmq.calibration import ActivationStats, collect
from tvmq.equalize import equalize, equalize_record, find_links
from tvmq.frontend import prepare
from tvmq.gptq import CLIP_RATIOS, HessianSum, gptq_clip_round, gptq_round, hessian_scales, patches
from tvmq.plan import PrecisionPlan, QuantSpec
from tvmq.recipe import quantize_layer, recipe_options, with_recipe
from schedules import quant

from .conftest import FMNIST_DIR, fmnist_inputs

MODEL = FMNIST_DIR / "model.onnx"


def _chain_model(rng: np.random.Generator) -> onnx.ModelProto:
    """conv 3x3 -> ReLU -> depthwise 3x3 (stride 2) -> ReLU6 -> conv 1x1 -> GAP -> dense, with
    badly balanced channel ranges (what equalization is for)."""
    c = 8
    w1 = (rng.standard_normal((c, 3, 3, 3)) * np.logspace(-2, 1, c)[:, None, None, None]).astype(np.float32)
    w2 = (rng.standard_normal((c, 1, 3, 3)) * np.logspace(1, -1, c)[:, None, None, None]).astype(np.float32)
    w3 = rng.standard_normal((16, c, 1, 1)).astype(np.float32)
    wd = rng.standard_normal((5, 16)).astype(np.float32)
    inits = [numpy_helper.from_array(a, n) for a, n in (
        (w1, "w1"), (rng.standard_normal(c).astype(np.float32), "b1"), (w2, "w2"),
        (rng.standard_normal(c).astype(np.float32), "b2"), (w3, "w3"), (np.zeros(16, np.float32), "b3"),
        (wd, "wd"), (np.zeros(5, np.float32), "bd"), (np.array(0, np.float32), "lo"),
        (np.array(6, np.float32), "hi"))]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="dw", group=c, pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Clip", ["c2", "lo", "hi"], ["r2"], name="relu6"),
        helper.make_node("Conv", ["r2", "w3", "b3"], ["c3"], name="project"),
        helper.make_node("GlobalAveragePool", ["c3"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "wd", "bd"], ["y"], name="fc", transB=1),
    ]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def _weights(pm, name: str) -> np.ndarray:  # type: ignore[no-untyped-def]
    return next(v for k, v in pm.params.items() if pm.param_layer[k] == name and k.endswith(".weight"))


def test_equalization_is_exact_in_fp32_and_matches_channel_ranges() -> None:
    rng = np.random.default_rng(0)
    model = _chain_model(rng)
    eq = equalize(model)
    record = equalize_record(eq)
    assert record["links"] == 2 and record["through_relu6"] == 1
    x = rng.standard_normal((4, 1, 3, 16, 16)).astype(np.float32)
    for xi in x:
        a, b = _run(model, xi), _run(eq, xi)
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5 * float(np.abs(a).max()))
    pm, pm0 = prepare(eq), prepare(model)
    assert pm.layers.names == pm0.layers.names
    conv1, dw = _weights(pm, "conv1"), _weights(pm, "dw")
    r1 = np.abs(conv1).reshape(8, -1).max(axis=1)
    r2 = np.abs(dw).reshape(8, -1).max(axis=1)  # in-range of the next link too: one sweep does not settle
    before = np.abs(_weights(pm0, "conv1")).reshape(8, -1).max(axis=1)
    assert (r1.max() / r1.min()) < (before.max() / before.min()) / 10  # far more even than before
    assert np.all(r2 > 0)
    assert equalize_record(model) is None


def test_equalization_skips_relu6_when_asked_and_non_homogeneous_links() -> None:
    model = _chain_model(np.random.default_rng(1))
    assert equalize_record(equalize(model, relu6="skip"))["links"] == 1
    for n in model.graph.node:  # a sigmoid between the layers: no link there
        if n.name == "relu1":
            n.op_type = "Sigmoid"
    pm = prepare(model)
    import tvmq.onnx_graph as og
    links = find_links(pm, og.Graph(pm.model))
    assert [(l.first, l.second) for l in links] == [("dw", "project")]


def test_equalized_fmnist_model_equals_the_original() -> None:
    eq = equalize(MODEL)
    assert equalize_record(eq)["links"] >= 1
    x, _ = fmnist_inputs(8)
    base = prepare(MODEL).model
    for xi in x:
        a, b = _run(base, xi[None]), _run(eq, xi[None])
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4 * float(np.abs(a).max()))


@pytest.mark.parametrize("kind", ["conv", "dw", "strided", "dense"])
def test_patches_reproduce_the_layer(kind: str) -> None:
    """``W.reshape(K, -1) @ patches(x)`` is the layer's output (im2col in weight order)."""
    rng = np.random.default_rng(2)
    model = _chain_model(rng)
    pm = prepare(model)
    name = {"conv": "conv1", "dw": "dw", "strided": "dw", "dense": "fc"}[kind]
    layer = pm.layers[name]
    shape = layer.input_shape
    x = rng.standard_normal((2,) + tuple(shape[1:])).astype(np.float32)
    w = _weights(pm, name)
    p = patches(x, layer)  # [G, d, P]
    g = layer.groups
    y = np.matmul(w.reshape(g, w.shape[0] // g, -1), p)  # [G, Kg, P]
    if layer.op == "dense":
        ref = x @ w.T
        np.testing.assert_allclose(y[0].T, ref, rtol=1e-4, atol=1e-4)
        return
    import onnxruntime  # noqa: F401 (the reference conv)
    node = next(n for n in pm.model.graph.node if n.name == layer.node)
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], **attrs)], "one",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [numpy_helper.from_array(w, "w")])
    ref = _run(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), x)  # [N, K, OH, OW]
    got = y.reshape(w.shape[0], x.shape[0], *ref.shape[2:]).transpose(1, 0, 2, 3)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("bits,groups", [(4, 1), (8, 1), (4, 6)])
def test_gptq_has_less_output_error_than_rounding_to_nearest(bits: int, groups: int) -> None:
    rng = np.random.default_rng(3)
    k, d, n = 12, 18, 4000
    mix = rng.standard_normal((groups, d, d)) + 2 * np.eye(d)  # correlated inputs
    x = np.matmul(mix, rng.standard_normal((groups, d, n)))
    h = np.matmul(x, x.transpose(0, 2, 1))
    w = rng.standard_normal((k, d))  # groups of k / groups output channels
    q_rtn, s = quant.quantize_weights(w, bits)
    q = gptq_round(w, s, bits, h, groups)
    hi = 2 ** (bits - 1) - 1
    assert q.dtype == np.int8 and np.abs(q).max() <= hi

    def out_err(qq: np.ndarray) -> float:
        dw = (qq * s[:, None] - w).reshape(groups, -1, d)
        return float(np.sum(np.matmul(dw, x) ** 2))

    assert out_err(q) < 0.8 * out_err(q_rtn), (out_err(q), out_err(q_rtn))


@pytest.mark.parametrize("clip", [False, True])
def test_pair_constrained_gptq_keeps_vpmaddubsw_exact(clip: bool) -> None:
    """``pairs``: the rounded weights of an ungrouped conv fit ``vpmaddubsw`` (every same-signed
    input-channel pair at most 128; odd channel counts too) at any scale, also where plain
    GPTQ would not, and the output error stays far below 7-bit weights' (the alternative)."""
    rng = np.random.default_rng(11)
    k, c, taps, n = 16, 7, 3, 3000
    d = c * taps * taps
    x = rng.standard_normal((1, d, n)) + 0.5 * rng.standard_normal((1, 1, n))  # correlated inputs
    h = np.matmul(x, x.transpose(0, 2, 1))
    w = rng.standard_normal((k, c, taps, taps)) * np.where(rng.random((k, c, taps, taps)) < 0.1, 4, 1)
    s = quant.pair_fit_scales(w)
    w2 = w.reshape(k, d)

    def out_err(q: np.ndarray, sc: np.ndarray) -> float:
        return float(np.sum(np.matmul(q.reshape(k, d) * sc[:, None] - w2, x[0]) ** 2))

    if clip:
        q, s = gptq_clip_round(w, s, 8, h, pairs=True)
    else:
        q = gptq_round(w, s, 8, h, pairs=True)
        assert not quant.pairs_fit_int16(np.moveaxis(gptq_round(w, s * 0.7, 8, h), 1, -1))
        q_tight = gptq_round(w, s * 0.7, 8, h, pairs=True)  # a step the pairs do not fit: clipped
        assert quant.pairs_fit_int16(np.moveaxis(q_tight, 1, -1))
    assert q.dtype == np.int8 and np.abs(q).max() <= 127
    assert quant.pairs_fit_int16(np.moveaxis(q, 1, -1))
    q7, s7 = quant.quantize_weights(w, 7)
    assert out_err(q, s) < 0.5 * out_err(q7, s7)
    with pytest.raises(ValueError, match="ungrouped"):
        gptq_round(w2, s, 8, h, pairs=True)


def test_pair_fit_scales_round_into_the_pair_bound() -> None:
    """Rounding to nearest at ``pair_fit_scales`` fits ``vpmaddubsw`` without clipping, and
    each channel's step is the smallest that does (its largest weight or pair at 127)."""
    rng = np.random.default_rng(12)
    w = rng.standard_normal((32, 9, 3, 3)) ** 3
    s = quant.pair_fit_scales(w)
    q = np.round(w / s[:, None, None, None]).astype(np.int8)
    assert quant.pairs_fit_int16(np.moveaxis(q, 1, -1))
    pos, neg = quant.pair_sums(np.moveaxis(w / s[:, None, None, None], 1, -1))
    top = np.maximum(np.abs(w / s[:, None, None, None]).reshape(32, -1).max(1),
                     np.maximum(pos, neg).reshape(32, -1).max(1))
    np.testing.assert_allclose(top, 127)


def test_gptq_on_a_diagonal_hessian_rounds_to_nearest() -> None:
    """Uncorrelated inputs: nothing to compensate, GPTQ is rounding to nearest."""
    rng = np.random.default_rng(4)
    w = rng.standard_normal((6, 10))
    q_rtn, s = quant.quantize_weights(w, 4)
    h = np.diag(rng.uniform(1, 2, 10))[None]
    np.testing.assert_array_equal(gptq_round(w, s, 4, h), q_rtn)


@pytest.mark.parametrize("bits,groups", [(4, 1), (4, 6), (8, 1)])
def test_hessian_scales_minimise_the_output_error_over_their_grid(bits: int, groups: int) -> None:
    """Per channel, the chosen clipping ratio has the least ``dW H dW^T`` (rounding to nearest)
    of the grid; with inputs of very unequal energy it beats the weights' own MSE clipping on
    the output; with ``H = I`` it is the weight-MSE choice over the same grid."""
    rng = np.random.default_rng(7)
    k, d, n = 12, 18, 3000
    energy = np.logspace(1, -2, d)  # a few input channels carry nearly all the signal
    x = rng.standard_normal((groups, d, n)) * energy[None, :, None]
    h = np.matmul(x, x.transpose(0, 2, 1))
    w = rng.standard_normal((k, d)) * (1 + 4 * (rng.random((k, d)) < 0.05))  # a few outlier weights
    hi = 2 ** (bits - 1) - 1
    s = hessian_scales(w, bits, h, groups)
    assert s.shape == (k,) and (s > 0).all()

    def out_err(scales: np.ndarray) -> np.ndarray:
        q = np.clip(np.round(w / scales[:, None]), -hi, hi)
        dw = (q * scales[:, None] - w).reshape(groups, -1, d)
        return (np.matmul(dw, h) * dw).sum(axis=2).reshape(k)

    amax = np.abs(w).max(axis=1) / hi
    for r in CLIP_RATIOS:
        assert (out_err(s) <= out_err(amax * r) + 1e-12).all()
    if bits == 4:
        assert out_err(s).sum() < out_err(quant.weight_scales(w, bits)).sum()
    ident = hessian_scales(w, bits, np.broadcast_to(np.eye(d), (groups, d, d)), groups)
    own = [min(CLIP_RATIOS, key=lambda r: ((np.clip(np.round(w[i] / (amax[i] * r)), -hi, hi) * amax[i] * r - w[i]) ** 2).sum())
           for i in range(k)]
    np.testing.assert_allclose(ident, amax * np.array(own), rtol=1e-12)


@pytest.mark.parametrize("groups", [1, 6])
def test_gptq_clip_round_is_gptq_at_the_picked_scales(groups: int) -> None:
    """Per output channel the least output error of the factors tried (so never more than plain
    GPTQ at the given scales), and the integers are GPTQ's at the scales it returns."""
    rng = np.random.default_rng(8)
    k, d, n = 12, 18, 3000
    x = np.matmul(rng.standard_normal((groups, d, d)) + 2 * np.eye(d), rng.standard_normal((groups, d, n)))
    h = np.matmul(x, x.transpose(0, 2, 1))
    w = rng.standard_normal((k, d)) * (1 + 4 * (rng.random((k, d)) < 0.05))
    s0 = quant.weight_scales(w, 4)
    q, s = gptq_clip_round(w, s0, 4, h, groups)
    assert q.dtype == np.int8 and np.abs(q).max() <= 7
    np.testing.assert_array_equal(q, gptq_round(w, s, 4, h, groups))

    def out_err(qq: np.ndarray, ss: np.ndarray) -> np.ndarray:
        dw = (qq * ss[:, None] - w).reshape(groups, -1, d)
        return (np.matmul(dw, h) * dw).sum(axis=2).reshape(k)

    assert (out_err(q, s) <= out_err(gptq_round(w, s0, 4, h, groups), s0) + 1e-9).all()
    assert not np.array_equal(s, s0)


def test_hessian_sum_batches_and_grid() -> None:
    pm = prepare(_chain_model(np.random.default_rng(5)))
    layer = pm.layers["dw"]
    x = np.random.default_rng(6).standard_normal((5,) + tuple(layer.input_shape[1:])).astype(np.float32)
    one = HessianSum(layer, batch=1)
    many = HessianSum(layer, batch=3)
    for xi in x:
        one.add(xi[None])
        many.add(xi[None])
    p = patches(x, layer)
    ref = np.einsum("gip,gjp->gij", p.astype(np.float64), p.astype(np.float64))
    for h in (one.value(), many.value()):
        np.testing.assert_allclose(h, ref, rtol=1e-5, atol=1e-6 * float(np.abs(ref).max()))  # float32 sums
    assert ref.shape == (8, 9, 9) and one.count == p.shape[2] == 5 * 8 * 8
    # at most 16 patches per image: every second output row and column of the 8x8 output
    grid = patches(x[:1], layer, max_patches=16)
    np.testing.assert_array_equal(grid, patches(x[:1], layer).reshape(8, 9, 8, 8)[:, :, ::2, ::2].reshape(8, 9, 16))


@pytest.fixture(scope="module")
def fmnist_stats() -> ActivationStats:
    calib, _ = fmnist_inputs(64, split="calib")
    return collect(MODEL, calib, hessians=True)


def test_statistics_keep_hessians_through_json(fmnist_stats: ActivationStats, tmp_path: Path) -> None:
    pm = prepare(MODEL)
    assert set(fmnist_stats.hessians) == set(pm.layers.names)
    fmnist_stats.save(tmp_path / "s.json")
    back = ActivationStats.load(tmp_path / "s.json")
    for name, h in fmnist_stats.hessians.items():
        np.testing.assert_allclose(back.hessians[name], h, rtol=1e-6)
        np.testing.assert_array_equal(back.hessians[name], back.hessians[name].transpose(0, 2, 1))
    assert back.meta["hessian_patches"] == fmnist_stats.meta["hessian_patches"]


def test_recipe_options_switch_the_steps(fmnist_stats: ActivationStats) -> None:
    pm = prepare(MODEL)
    layer = next(l for l in pm.layers if l.op == "conv2d" and l.name != pm.layers.names[0])
    w, spec = _weights(pm, layer.name), QuantSpec.parse("w4a8")
    assert recipe_options(fmnist_stats) == {"gptq": True, "bias_correction": True, "hessian_clipping": False,
                                          "narrow_weights": False}
    plain = with_recipe(fmnist_stats, gptq=False, bias_correction=False)
    assert recipe_options(plain) == {"gptq": False, "bias_correction": False, "hessian_clipping": False,
                                   "narrow_weights": False}
    rtn = quantize_layer(layer.name, w, None, layer.groups, spec, plain)
    np.testing.assert_array_equal(rtn.wq, quant.quantize_weights(w, 4)[0])
    g = quantize_layer(layer.name, w, None, layer.groups, spec, fmnist_stats)
    np.testing.assert_array_equal(g.w_scale, rtn.w_scale)
    assert not np.array_equal(g.wq, rtn.wq)
    h = fmnist_stats.hessians[layer.name][0]

    def err(q):  # type: ignore[no-untyped-def]
        dw = q.dequantized_weight().astype(np.float64).reshape(w.shape[0], -1) - w.reshape(w.shape[0], -1)
        return float(np.einsum("ki,ij,kj->", dw, h, dw))

    assert err(g) < err(rtn)
    hc = quantize_layer(layer.name, w, None, layer.groups, spec, with_recipe(plain, hessian_clipping=True))
    np.testing.assert_array_equal(hc.w_scale, hessian_scales(w, 4, fmnist_stats.hessians[layer.name], layer.groups))
    assert not np.array_equal(hc.w_scale, rtn.w_scale) and err(hc) < err(rtn)
    assert recipe_options(with_recipe(plain, hessian_clipping=True))["hessian_clipping"]
    no_h = with_recipe(dataclasses.replace(plain, hessians={}), hessian_clipping=True)
    assert not recipe_options(no_h)["hessian_clipping"]  # nothing to clip for: the step is off


def test_hessian_clipping_library_equals_its_numpy_program(fmnist_stats: ActivationStats, tmp_path: Path) -> None:
    """Hessian clipping (with GPTQ) changes scales and integer weights only: the W4A8 + W8A8
    library equals its numpy program bit for bit, and the manifest records the step."""
    layers = prepare(MODEL).layers
    plan = PrecisionPlan({l.name: QuantSpec.parse("w4a8" if l.op == "conv2d" else "w8a8") for l in layers}, layers)
    result = tvmq.build(MODEL, tmp_path, plan=plan, stats=with_recipe(fmnist_stats, hessian_clipping=True))
    manifest = json.loads(result.manifest.read_text())
    assert manifest["recipe"]["hessian_clipping"] and manifest["recipe"]["gptq"]
    plain = tvmq.build(MODEL, tmp_path / "plain", plan=plan, stats=fmnist_stats)
    conv = next(l.name for l in layers if l.op == "conv2d")
    assert manifest["qparams"][conv]["w_scales"] != json.loads(plain.manifest.read_text())["qparams"][conv]["w_scales"]
    _accurate_and_equal_to_its_program(result)


def test_equalized_gptq_library_equals_its_numpy_program(tmp_path: Path) -> None:
    """CLE and GPTQ change weights and biases only: the library still equals its numpy program
    bit for bit, and the manifest records the steps."""
    eq = equalize(MODEL)
    calib, _ = fmnist_inputs(64, split="calib")
    stats = collect(eq, calib, hessians=True)
    layers = prepare(eq).layers
    plan = PrecisionPlan({l.name: QuantSpec.parse("w4a8" if l.op == "conv2d" else "w8a8") for l in layers}, layers)
    result = tvmq.build(eq, tmp_path, plan=plan, stats=stats)
    manifest = json.loads(result.manifest.read_text())
    assert manifest["recipe"]["gptq"] and manifest["recipe"]["bias_correction"]
    assert manifest["recipe"]["equalize"]["links"] == equalize_record(eq)["links"]
    _accurate_and_equal_to_its_program(result)


def _cli(*args: str):  # type: ignore[no-untyped-def]
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "tvmq", *args], capture_output=True, text=True, timeout=600)


def test_cli_calibrate_and_compile_with_equalization_and_gptq(tmp_path: Path) -> None:
    calib, _ = fmnist_inputs(32, split="calib")
    np.save(tmp_path / "calib.npy", calib)
    stats = tmp_path / "calibration.json"
    r = _cli("calibrate", str(MODEL), "--data", str(tmp_path / "calib.npy"), "-o", str(stats), "-q",
             "--equalize", "--gptq")
    assert r.returncode == 0, r.stderr
    loaded = ActivationStats.load(stats)
    assert loaded.hessians and loaded.meta["equalized"]
    r = _cli("compile", str(MODEL), "--bits", "w4a8", "--calibration", str(stats), "-o", str(tmp_path / "out"),
             "-q", "--equalize", "--gptq", "--no-bias-correction")
    assert r.returncode == 0, r.stderr
    recipe = json.loads((tmp_path / "out" / "manifest.json").read_text())["recipe"]
    assert recipe["gptq"] and not recipe["bias_correction"] and recipe["equalize"]["links"] >= 1
    r = _cli("compile", str(MODEL), "--bits", "w4a8", "--calibration", str(stats), "-o", str(tmp_path / "hc"),
             "-q", "--equalize", "--hessian-clipping")
    assert r.returncode == 0, r.stderr
    recipe = json.loads((tmp_path / "hc" / "manifest.json").read_text())["recipe"]
    assert recipe["hessian_clipping"] and not recipe["gptq"] and recipe["bias_correction"]
    plain = tmp_path / "plain.json"
    r = _cli("calibrate", str(MODEL), "--data", str(tmp_path / "calib.npy"), "-o", str(plain), "-q")
    assert r.returncode == 0, r.stderr
    r = _cli("compile", str(MODEL), "--bits", "w4a8", "--calibration", str(plain), "-o", str(tmp_path / "no_h"),
             "-q", "--hessian-clipping")
    assert r.returncode == 2 and "--hessian-clipping needs Hessians" in r.stderr, r.stderr
    # statistics of the equalized model do not fit the model as it was
    r = _cli("compile", str(MODEL), "--bits", "w8a8", "--calibration", str(stats), "-o", str(tmp_path / "bad"), "-q")
    assert r.returncode == 2 and "equalized" in r.stderr, r.stderr


def test_mixed_pipeline_runs_every_step_with_the_recipe(tmp_path: Path) -> None:
    """compile_mixed(equalize=True, gptq=True): the sensitivity analysis, the W8A8 reference and
    the chosen build all quantize with GPTQ and equalized weights (one recipe), and say so."""
    from tvmq.pipeline import compile_mixed

    x, _ = fmnist_inputs(32, split="calib")
    r = compile_mixed(MODEL, x, tmp_path, size_budget="0.7x", measure=False, equalize=True, gptq=True,
                      specs=["w4a8", "w8a8", "fp32"], sensitivity_samples=8)
    calibration = ActivationStats.load(tmp_path / "calibration.json")
    assert calibration.hessians and calibration.meta["equalized"]
    from tvmq.sensitivity import _stats_hash

    # the sensitivity analysis ran on these statistics with gptq and bias correction switched on
    assert r.extra["sensitivity"].meta["stats"] == _stats_hash(
        with_recipe(calibration, gptq=True, bias_correction=True, hessian_clipping=False, narrow_weights=False))
    for folder in (tmp_path, tmp_path / "w8a8"):
        recipe = json.loads((folder / "manifest.json").read_text())["recipe"]
        assert recipe["gptq"] and recipe["bias_correction"] and recipe["equalize"]["links"] >= 1
    m = tvmq.load(r.build.library)
    xs, _ = fmnist_inputs(5)
    for xi in xs:
        np.testing.assert_array_equal(m.run({"input": xi[None]})["logits"], r.build.program.run([xi[None]])[0])


def test_equalized_relu6_link_stays_integer(tmp_path: Path) -> None:
    """The per-channel ReLU6 bound of an equalized link compiles to integer lookups (no float
    island), and the W8A8 library equals its numpy program."""
    rng = np.random.default_rng(7)
    eq = equalize(_chain_model(rng))
    x = rng.uniform(-1, 1, (16, 1, 3, 16, 16)).astype(np.float32)
    stats = collect(eq, x[:, 0], hessians=True)
    result = tvmq.build(eq, tmp_path, plan="w8a8", stats=stats)
    assert result.manifest_data["float_islands"] == []
    m = tvmq.load(result.library)
    for xi in x[:4]:
        np.testing.assert_array_equal(next(iter(m.run({"x": xi}).values())), result.program.run([xi])[0])


def _accurate_and_equal_to_its_program(result) -> None:  # type: ignore[no-untyped-def]
    """>= 80% on 100 Fashion-MNIST test images, every tenth equal to the numpy program."""
    m = tvmq.load(result.library)
    x, y = fmnist_inputs(100)
    preds = []
    for i in range(len(x)):
        got = m.run({"input": x[i:i + 1]})["logits"]
        preds.append(got.argmax())
        if i % 10 == 0:
            np.testing.assert_array_equal(got, result.program.run([x[i:i + 1]])[0])
    assert (np.array(preds) == y).mean() >= 0.8


def test_narrow_weights_take_vpmaddubsw_and_the_library_equals_its_program(fmnist_stats: ActivationStats,
                                                                            tmp_path: Path) -> None:
    """The recipe's ``narrow_weights``: ungrouped W8A8 convs get 8-bit weights whose every
    input-channel pair is within ``vpmaddubsw``'s exact range (``pairs_fit_int16``), at most
    127 and at least one channel's largest weight at 127 or its largest pair at 127-128;
    depthwise and dense keep plain 8 bits; on AVX2 those convs run ``vpmaddubsw`` (the
    manifest's configs), elsewhere nothing changes but the weights; the library equals its
    numpy program and stays accurate."""
    from schedules.target_features import detect_host

    from .isa import PROFILES, can_execute

    pm = prepare(MODEL)
    narrow = with_recipe(fmnist_stats, narrow_weights=True)
    for layer in pm.layers:
        q = quantize_layer(layer.name, _weights(pm, layer.name), None, layer.groups, QuantSpec.parse("w8a8"), narrow)
        assert int(np.abs(q.wq).max()) <= 127
        if layer.op == "conv2d" and layer.groups == 1:
            assert quant.pairs_fit_int16(np.moveaxis(q.wq, 1, -1)), layer.name
            pos, neg = quant.pair_sums(np.moveaxis(q.wq.astype(np.int32), 1, -1))
            assert max(int(pos.max()), int(neg.max())) >= 120  # the step is not wider than the bound needs
    features = detect_host().with_isa("avx2") if can_execute("avx2") else PROFILES["avx2"]
    result = tvmq.build(MODEL, tmp_path, plan="w8a8", stats=narrow, features=features)
    assert result.manifest_data["recipe"]["narrow_weights"]
    dots = {k["config"].get("dot") for k in result.manifest_data["kernels"].values()
            if k["kernel"] == "conv2d/w8a8/avx2"}
    assert dots == {"tvmq_pmaddubsw_8x4"}
    if can_execute("avx2"):
        _accurate_and_equal_to_its_program(result)
