"""W8A8 end to end: the compiled integer-only library equals its numpy simulation bit for bit,
and keeps the Fashion-MNIST CNN's accuracy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import tvmq
from tvmq.calibration import collect
from tvmq.errors import TvmqError
from tvmq.frontend import prepare
from tvmq.plan import PrecisionPlan

from .conftest import FMNIST_DIR, fmnist_inputs
from .isa import HOST, PROFILES, executable_levels

MODEL = FMNIST_DIR / "model.onnx"


@pytest.fixture(scope="module")
def w8a8(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    calib, _ = fmnist_inputs(split="calib")
    stats = collect(MODEL, calib)
    out = tmp_path_factory.mktemp("w8a8")
    return tvmq.build(MODEL, out, plan="w8a8", stats=stats), calib


def test_library_equals_integer_simulation_bit_for_bit(w8a8) -> None:  # type: ignore[no-untyped-def]
    result, calib = w8a8
    m = tvmq.load(result.library)  # the exported library, as a user loads it
    test_x, _ = fmnist_inputs(300)
    for x in list(calib[:50]) + list(test_x):  # calibration and held-out inputs
        x = x[None]
        got = m.run({"input": x})["logits"]
        (expected,) = result.program.run([x])
        np.testing.assert_array_equal(got, expected)


def test_w8a8_accuracy_within_0_3_points_of_fp32(w8a8, fmnist_compiled: Path) -> None:  # type: ignore[no-untyped-def]
    result, _ = w8a8
    x, y = fmnist_inputs()
    q, f = tvmq.load(result.library), tvmq.load(fmnist_compiled)
    pred_q = np.array([q.run({"input": x[i:i + 1]})["logits"].argmax() for i in range(len(x))])
    pred_f = np.array([f.run({"input": x[i:i + 1]})["logits"].argmax() for i in range(len(x))])
    acc_q, acc_f = (pred_q == y).mean(), (pred_f == y).mean()
    assert acc_q >= acc_f - 0.003, (acc_q, acc_f)
    assert (pred_q == pred_f).mean() >= 0.98


def test_manifest_records_plan_scales_and_kernels(w8a8) -> None:  # type: ignore[no-untyped-def]
    result, _ = w8a8
    manifest = json.loads(result.manifest.read_text())
    layers = [l["name"] for l in manifest["layers"]]
    assert set(manifest["plan"]["layers"]) == set(layers)
    assert all(manifest["plan"]["layers"][n]["w_bits"] == 8 for n in layers)
    for name in layers:
        qp = manifest["qparams"][name]
        assert qp["in"]["scale"] > 0 and 0 <= qp["in"]["zero_point"] <= 255
        assert manifest["kernels"][name]["kernel"].split("/")[1] == "w8a8"
    assert sum(manifest["qparams"][n]["residual"] for n in layers) == 1  # the residual block


def test_mixed_plan_keeps_fp32_layers(tmp_path: Path) -> None:
    calib, _ = fmnist_inputs(32, split="calib")
    stats = collect(MODEL, calib)
    layers = prepare(MODEL).layers
    plan = PrecisionPlan.uniform(layers, "w8a8", keep_fp32=["first"])
    result = tvmq.build(MODEL, tmp_path, plan=plan, stats=stats)
    assert result.manifest_data["kernels"][layers.names[0]]["kernel"].startswith("conv2d/fp32")
    assert result.manifest_data["kernels"][layers.names[1]]["kernel"].startswith("depthwise_conv2d/w8a8")
    x, y = fmnist_inputs(200)
    m = tvmq.load(result.library)
    outs = [m.run({"input": x[i:i + 1]})["logits"] for i in range(len(x))]
    assert (np.array([o.argmax() for o in outs]) == y).mean() >= 0.85
    # the fp32 layer is in the numpy program too (its kernel's summation order): still exact
    for i in range(0, len(x), 20):
        np.testing.assert_array_equal(outs[i], result.program.run([x[i:i + 1]])[0])


def test_quantized_plan_without_statistics_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(TvmqError, match="calibration statistics"):
        tvmq.build(MODEL, tmp_path, plan="w8a8")


def test_bias_correction_matches_explicit_sum() -> None:
    from schedules import quant
    from tvmq.recipe import expected_weight_error

    rng = np.random.default_rng(0)
    w = rng.standard_normal((6, 2, 3, 3))  # 6 outputs, 3 groups of 2 input channels
    wq, s_w = quant.quantize_weights(w, 8)
    mean = rng.standard_normal(6)
    got = expected_weight_error(w, wq, s_w, mean, groups=3)
    for k in range(6):
        g = k // 2
        err = (wq[k] * s_w[k] - w[k]).sum(axis=(1, 2))
        assert np.isclose(got[k], err @ mean[2 * g:2 * g + 2])


def _stem_model(tail_softmax: bool, ceil_mode: int = 0):  # type: ignore[no-untyped-def]
    """ResNet's stem and head in small: conv 7x7/2 + ReLU, max pool 3x3/2 (pad 1), a 1x1 conv,
    average pool over the whole map, flatten, Gemm (+ softmax)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(5)

    def init(name: str, shape: tuple[int, ...]) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.2).astype(np.float32), name)

    nodes = [helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], kernel_shape=[7, 7], strides=[2, 2],
                              pads=[3, 3, 3, 3]),
             helper.make_node("Relu", ["c0"], ["r0"]),
             helper.make_node("MaxPool", ["r0"], ["p0"], kernel_shape=[3, 3], strides=[2, 2],
                              pads=[1, 1, 1, 1], ceil_mode=ceil_mode),
             helper.make_node("Conv", ["p0", "w1", "b1"], ["c1"], kernel_shape=[1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("AveragePool", ["r1"], ["g"], kernel_shape=[5, 5] if not ceil_mode else [6, 6]),
             helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("Gemm", ["f", "w2", "b2"], ["logits" if not tail_softmax else "z"], transB=1)]
    if tail_softmax:
        nodes.append(helper.make_node("Softmax", ["z"], ["logits"], axis=1))
    g = helper.make_graph(nodes, "stem", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 19, 19])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)],
                          [init("w0", (8, 3, 7, 7)), init("b0", (8,)), init("w1", (12, 8, 1, 1)),
                           init("b1", (12,)), init("w2", (5, 12)), init("b2", (5,))])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


@pytest.mark.parametrize("specs", [("w8a8", "w8a8", "w8a8"), ("fp32", "bf16", "w8a8"), ("bf16", "w8a8", "fp32")],
                         ids=["integer", "float-pools", "mixed"])
@pytest.mark.parametrize("ceil_mode", [0, 1])
def test_max_pool_and_average_pool_are_exact(tmp_path: Path, ceil_mode: int, specs: tuple[str, ...]) -> None:
    """Integer pools between integer layers; float pools (max, global average) after float
    layers, reproduced exactly by the numpy program too."""
    import onnx

    from tvmq.plan import QuantSpec

    path = tmp_path / "stem.onnx"
    onnx.save(_stem_model(False, ceil_mode), str(path))
    x = np.random.default_rng(6).standard_normal((40, 1, 3, 19, 19)).astype(np.float32)
    layers = prepare(path).layers
    plan = PrecisionPlan({l.name: QuantSpec.parse(s) for l, s in zip(layers, specs)}, layers)
    result = tvmq.build(path, tmp_path / "q", plan=plan, stats=collect(path, x[:24, 0]))
    kinds = [result.manifest_data["kernels"][l.name]["kernel"] for l in layers]
    assert result.program is not None, "the pools must be simulated (integer or float)"
    assert all(s in k for s, k in zip(specs, kinds))
    m = tvmq.load(result.library)
    for xi in x:
        np.testing.assert_array_equal(m.run({"x": xi})["logits"], result.program.run([xi])[0])


def test_float_ops_after_the_last_integer_layer_are_allowed(tmp_path: Path) -> None:
    """A softmax on the logits stays float, the rest is integer; the numpy program reproduces the
    softmax too (the C library's ``expf``, as the compiled code calls it)."""
    import onnx

    path = tmp_path / "stem_softmax.onnx"
    onnx.save(_stem_model(True), str(path))
    x = np.random.default_rng(7).standard_normal((8, 3, 19, 19)).astype(np.float32)
    result = tvmq.build(path, tmp_path / "q", plan="w8a8", stats=collect(path, x))
    y = tvmq.load(result.library).run({"x": x[:1]})["logits"]
    np.testing.assert_allclose(y.sum(), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(y, result.program.run([x[:1]])[0])


SPECS = ["w4a8", "w8a8", "w8a16", "fp32", "bf16"]
MAX_CHANNEL_BLOCK = 64  # the widest channel block of any kernel (AMX int8: 64 input channels a row)


def _weights_as_packed(kernel, wl, cfg, spec: str, rng):  # type: ignore[no-untyped-def]
    """Nonzero weights of ``spec``'s kind for ``wl``, their packing by ``kernel``, and both as
    the values each weight slot holds (int4: one slot per nibble; bf16: the bit patterns)."""
    from schedules import bf16

    if spec in ("fp32", "bf16"):
        w = (rng.uniform(0.5, 2.0, wl.weight_shape) * rng.choice([-1, 1], wl.weight_shape)).astype(np.float32)
    else:
        hi = 8 if spec == "w4a8" else 128
        w = (rng.integers(1, hi, wl.weight_shape) * rng.choice([-1, 1], wl.weight_shape)).astype(np.int8)
    packed = kernel.pack_weight(w, wl, cfg)
    if spec == "w4a8":
        nibbles = np.stack([packed & 0xF, packed >> 4]).astype(np.int16)
        slots = ((nibbles ^ 8) - 8).ravel()
    else:
        slots = packed.ravel()
    values = bf16.to_bf16_bits(w).ravel() if spec == "bf16" else w.ravel()
    return values, packed, slots


@pytest.mark.parametrize("isa", list(PROFILES))
def test_stored_weights_follow_the_spec_at_every_isa_level(isa: str) -> None:
    """Each layer of the bundled CNN, each spec, the kernel each ISA level selects (selection and
    packing only, so every level is checked on any host): the packed weights hold every weight
    exactly once at the spec's width, the rest zero padding, no more than rounding each channel
    axis up to a block would add."""
    from schedules import registry
    from schedules.workload import Epilogue
    from tvmq import specs
    from tvmq.passes.lower_kernels import layer_workload

    features = PROFILES[isa]
    rng = np.random.default_rng(3)
    for layer in prepare(MODEL).layers:
        wl = layer_workload(layer, Epilogue(True, "none"))
        for spec in SPECS:
            kernel = registry.select(registry.op_of(wl), spec, features)
            cfg = kernel.fallback_config(wl, features)
            values, packed, slots = _weights_as_packed(kernel, wl, cfg, spec, rng)
            assert packed.nbytes * 8 == slots.size * specs.get(spec).w_bits, (kernel.key, packed.dtype)
            np.testing.assert_array_equal(np.sort(slots[slots != 0]), np.sort(values), err_msg=str(kernel.key))
            k, c_per_group, *taps = wl.weight_shape
            groups = getattr(wl, "groups", 1)
            bound = groups * _up(k // groups) * _up(c_per_group) * int(np.prod(taps))
            if spec == "w4a8":  # nibbles pair up within a block: a block may end in an empty one
                bound *= 2
            assert slots.size <= bound, (kernel.key, wl.weight_shape, packed.shape)


def _up(n: int) -> int:
    return -(-n // MAX_CHANNEL_BLOCK) * MAX_CHANNEL_BLOCK


@pytest.mark.parametrize("isa", executable_levels())
def test_random_mixed_plans_compile_and_equal_simulation(tmp_path: Path, isa: str) -> None:
    """Seeded random per-layer mixes of W4A8 / W8A8 / W8A16 / bf16 / fp32, built for each ISA
    level this host executes, compile to one library each with each layer on its spec's kernel,
    and equal the numpy program bit for bit: int16 and uint8 activations meeting at boundaries,
    residual branches of either kind, float layers (in their kernels' summation order) and float
    ops between them. The host's level takes 20 plans, in which every spec and every (producer,
    consumer) kind of boundary occurs; each lower level 6. Each layer stores exactly what its
    kernel packs (``test_stored_weights_follow_the_spec_at_every_isa_level`` checks packing)."""
    from dataclasses import asdict, replace

    from schedules import registry
    from schedules.workload import Epilogue
    from tvmq.passes.lower_kernels import layer_workload
    from tvmq.plan import QuantSpec

    features = HOST.with_isa(isa)
    calib, _ = fmnist_inputs(split="calib")
    stats = collect(MODEL, calib[:64])
    layers = prepare(MODEL).layers
    x, _ = fmnist_inputs(8)
    rng = np.random.default_rng(11)
    boundaries = set()
    n_plans = 20 if isa == HOST.isa else 6
    for i in range(n_plans):
        plan = PrecisionPlan({l.name: QuantSpec.parse(str(rng.choice(SPECS))) for l in layers}, layers)
        names = [plan[l.name].name for l in layers]
        boundaries |= set(zip(names, names[1:]))
        r = tvmq.build(MODEL, tmp_path / f"p{i}", plan=plan, stats=stats, features=features)
        m = tvmq.load(r.library)
        kernels = r.manifest_data["kernels"]
        for name, spec in plan.items():
            assert spec.name in kernels[name]["kernel"], (name, spec.name, kernels[name])
        assert r.program is not None, names
        for xi in x:
            np.testing.assert_array_equal(m.run({"input": xi[None]})["logits"], r.program.run([xi[None]])[0])
        for layer in layers:  # stored bytes: the selected kernel's packing at its (fallback) config
            entry = kernels[layer.name]
            kernel = registry.get(registry.KernelKey.parse(entry["kernel"]))
            wl = layer_workload(layer, Epilogue(**entry["epilogue"]))
            if entry["layout"] != "NCHW":  # (a conv's activations channels-last)
                wl = replace(wl, layout=entry["layout"])
            if entry.get("narrow_weights"):  # (W8A8 weights that fit vpmaddubsw: quant.pairs_fit_int16)
                wl = replace(wl, narrow_weights=True)
            assert kernel is registry.select_for(wl, kernel.key.precision, features)
            cfg = kernel.fallback_config(wl, features)
            assert asdict(cfg) == entry["config"]
            dtype = np.float32 if plan[layer.name].name in ("fp32", "bf16") else np.int8
            packed = kernel.pack_weight(np.ones(wl.weight_shape, dtype), wl, cfg)
            assert r.manifest_data["size"][layer.name]["weight_bytes"] == packed.nbytes, (layer.name, entry)
    if isa == HOST.isa:
        assert {(a, b) for a in SPECS for b in SPECS} - boundaries == set(), "a boundary kind was never drawn"
