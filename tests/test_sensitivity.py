"""Sensitivity on the switchable build, and the mixed-precision pipeline on the bundled model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import tvmq
from schedules.target_features import detect_host
from tvmq.calibration import CalibrationData, collect
from tvmq.errors import TvmqError
from tvmq.frontend import prepare
from tvmq.pipeline import compile_mixed, layer_edges, parse_budget
from tvmq.sensitivity import SensitivityResult, analyze
from tvmq.tune import ScriptedMeasurer, TuningDatabase, device_fingerprint, extract_tasks, tune

from .conftest import FMNIST_DIR, fmnist_inputs

MODEL = FMNIST_DIR / "model.onnx"
FEATURES = detect_host()


@pytest.fixture(scope="module")
def calib():  # type: ignore[no-untyped-def]
    x, _ = fmnist_inputs(48)
    return x[:24], collect(MODEL, CalibrationData.from_source(x[:24], prepare(MODEL).inputs), features=FEATURES)


@pytest.fixture(scope="module")
def sens(calib, tmp_path_factory):  # type: ignore[no-untyped-def]
    x, stats = calib
    out = tmp_path_factory.mktemp("sens") / "sensitivity.json"
    return analyze(MODEL, stats, x, features=FEATURES, output=out), out


def _outputs(lib: Path, x: np.ndarray) -> np.ndarray:
    m = tvmq.load(lib)
    return np.concatenate([np.asarray(list(m.run({"input": x[i:i + 1]}).values())[0], np.float64).ravel()
                           for i in range(len(x))])


def _switchable_outputs(stats, x, setting: dict[int, str]) -> np.ndarray:  # type: ignore[no-untyped-def]
    import tvm
    from tvm import relax

    from tvmq.compiler import codegen, lower_module
    from tvmq.plan import QuantSpec
    from tvmq.sensitivity import layer_variant

    lowered = lower_module(prepare(MODEL), FEATURES, switchable=True)
    vm = relax.VirtualMachine(codegen(lowered.mod, FEATURES), tvm.cpu())
    params = []
    for i, sw in enumerate(lowered.switches):
        args, fq = layer_variant(sw, QuantSpec.parse(setting.get(i, "fp32")), stats, "minmax")
        params += [tvm.runtime.tensor(np.ascontiguousarray(a)) for a in args] + [tvm.runtime.tensor(fq)]
    return np.concatenate([vm["main"](tvm.runtime.tensor(x[i:i + 1]), *params).numpy().astype(np.float64).ravel()
                           for i in range(len(x))])


def test_switchable_build_is_the_fp32_build_when_nothing_is_switched(calib, fmnist_compiled) -> None:  # type: ignore[no-untyped-def]
    x, stats = calib
    np.testing.assert_array_equal(_switchable_outputs(stats, x[:8], {}), _outputs(fmnist_compiled / "model.so", x[:8]))


def test_switchable_w8a8_simulates_the_integer_library(calib, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Every layer switched to W8A8 reproduces the real integer library up to float rounding:
    its distance to the library is far below the library's distance to fp32."""
    x, stats = calib
    n = len(prepare(MODEL).layers)
    sim = _switchable_outputs(stats, x, {i: "w8a8" for i in range(n)})
    fp = _switchable_outputs(stats, x, {})
    real = _outputs(tvmq.build(MODEL, tmp_path, plan="w8a8", stats=stats, features=FEATURES).library, x)
    err_real = np.sum((real - fp) ** 2)
    assert err_real > 0
    assert np.sum((sim - real) ** 2) < 0.1 * err_real


def test_sensitivity_orders_the_specs_and_is_additive(sens) -> None:  # type: ignore[no-untyped-def]
    r, _ = sens
    layers = [l.name for l in prepare(MODEL).layers]
    assert list(r.layers) == layers and r.specs == ["w8a8", "w4a8", "w8a16", "bf16"]
    for l in layers:
        assert r.sqnr_db(l, "w4a8") < r.sqnr_db(l, "w8a8") < r.sqnr_db(l, "w8a16")
        assert r.nsr(l, "fp32") == 0.0 and np.isfinite(r.sqnr_db(l, "bf16"))
        assert r.layers[l]["w8a8"]["w8a8"]["nsr"] > 0  # the other context was measured too
    # the noise of all layers at W8A8, measured, against the sum of the layers' own noises
    measured = -10 * np.log10(r.baseline["w8a8_all"])
    predicted = r.predicted_sqnr_db({l: "w8a8" for l in layers})
    assert abs(measured - predicted) < 3.0, (measured, predicted)


def test_sensitivity_resumes_from_its_file(sens, calib) -> None:  # type: ignore[no-untyped-def]
    r, out = sens
    x, stats = calib
    d = json.loads(out.read_text())
    dropped = list(d["layers"])[-1]
    del d["layers"][dropped]
    out.write_text(json.dumps(d))
    notes: list[str] = []
    again = analyze(MODEL, stats, x, features=FEATURES, output=out, progress=notes.append)
    assert any("resuming: 6 layer(s)" in n for n in notes)
    assert sum(n.startswith("[") for n in notes) == 1  # only the dropped layer was recomputed
    assert again.layers[dropped] == r.layers[dropped]  # same compiled code, same numbers
    # other samples: not the same inputs, so no resume
    notes.clear()
    analyze(MODEL, stats, x[:5], features=FEATURES, output=out, progress=notes.append, contexts=["alone"])
    assert any("starting over" in n for n in notes)
    with pytest.raises(TvmqError, match="cannot read"):
        out.write_text("{")
        SensitivityResult.load(out)


def test_layer_edges_follow_the_graph() -> None:
    pm = prepare(MODEL)
    names = [l.name for l in pm.layers]
    edges = layer_edges(pm)
    assert (names[0], names[1]) in edges and (names[-2], names[-1]) in edges
    # the residual block: conv1 feeds conv2, and the block's input reaches past it
    assert ("/res/conv1/conv1.0/Conv", "/res/conv2/conv2.0/Conv") in edges
    assert ("/pw/pw.0/Conv", "/down/down.0/Conv") in edges


def test_budgets_parse() -> None:
    assert parse_budget("0.8x", "latency") == ("relative", 0.8)
    assert parse_budget("3.5ms", "latency") == ("absolute", 3.5)
    assert parse_budget("500us", "latency") == ("absolute", 0.5)
    assert parse_budget("2MB", "size") == ("absolute", 2e6)
    for bad, unit in (("fast", "latency"), ("-1x", "size"), ("3ms", "size")):
        with pytest.raises(TvmqError):
            parse_budget(bad, unit)


def test_mixed_compile_meets_a_size_budget(calib, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    x, _ = calib
    ev, labels = fmnist_inputs(40)
    r = compile_mixed(MODEL, x, tmp_path, size_budget="0.7x", features=FEATURES, measure=False,
                      eval_data=ev, eval_labels=labels)
    m = r.build.manifest_data
    w8 = json.loads((tmp_path / "w8a8" / "manifest.json").read_text())
    assert m["weight_bytes"] <= 0.75 * w8["weight_bytes"]  # the budget counts unpadded bytes
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["allocation"]["status"] == "optimal" and "size" in manifest["allocation"]["binding"]
    assert any(s["w_bits"] == 4 for s in manifest["plan"]["layers"].values())
    ev_res = manifest["evaluation"]
    assert ev_res["fp32"]["agreement"] == 1.0 and ev_res["chosen"]["n"] == 40
    assert 0.5 < ev_res["chosen"]["top1"] <= 1.0 and 0.5 < ev_res["w8a8"]["agreement"] <= 1.0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["layers"] and {p["label"]: p["top1"] for p in report["plans"]}["chosen"] == ev_res["chosen"]["top1"]


def test_mixed_compile_on_measured_latencies(calib, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A latency budget with a tuning database (scripted latencies recorded as this device's)."""
    x, _ = calib
    pm = prepare(MODEL)
    tasks = extract_tasks(pm, ["w8a8", "w4a8", "w8a16", "bf16", "fp32"], FEATURES)
    speed = {"w4a8": 0.5, "w8a8": 1.0, "w8a16": 1.5, "bf16": 2.5, "fp32": 3.0, "conversion": 0.1}
    db = TuningDatabase(tmp_path / "db.jsonl")
    tune(tasks, db, ScriptedMeasurer(lambda t, c: speed[t.spec] * (1 + t.macs / 1e4),
                                     device=device_fingerprint(FEATURES, 1)), FEATURES, trials=2, progress=False)
    r = compile_mixed(MODEL, x, tmp_path / "out", latency_budget="1.0x", db=tmp_path / "db.jsonl",
                      features=FEATURES)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    alloc, lat = manifest["allocation"], manifest["latency"]
    b = alloc["budgets"]
    assert b["latency_margin"] == 0.05  # the plan is chosen 5% under the budget, its prediction error
    assert alloc["totals"]["latency"] + lat["rest_of_graph_ms"] <= 0.95 * b["latency_ms"] + 1e-9
    assert lat["predicted_ms"] > 0 and lat["measured_ms"] > 0
    # uniform W8A8 fits a 1.0x budget, so the optimum is at most as sensitive; here it is mixed
    w8 = r.extra["problem"].totals({l: "w8a8" for l in r.plan})
    assert alloc["totals"]["sensitivity"] <= w8["sensitivity"] + 1e-12
    assert len(set(r.plan.values())) > 1
    # every kernel found its record: exact, or (a mixed plan changes some fused epilogues) by shapes
    src = manifest["tuning"]["layers"]
    assert "fallback" not in src and sum(src.values()) == len(pm.layers) and src["tuned"] >= 1


def test_mixed_compile_errors(calib, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    x, _ = calib
    with pytest.raises(TvmqError, match="needs a budget"):
        compile_mixed(MODEL, x, tmp_path)
    with pytest.raises(TvmqError, match="--db"):
        compile_mixed(MODEL, x, tmp_path, latency_budget="0.8x")
    with pytest.raises(TvmqError, match="unknown specs"):
        compile_mixed(MODEL, x, tmp_path, size_budget="0.5x", specs=["w2a2"])


def test_cli_analyze_compile_with_a_budget_and_report(calib, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import subprocess
    import sys

    from .conftest import ROOT

    x, _ = calib
    np.save(tmp_path / "calib.npy", x)

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "tvmq", *args], cwd=ROOT, capture_output=True,
                              text=True, timeout=600)

    r = cli("analyze", str(MODEL), "--calibration", str(tmp_path / "calib.npy"), "--limit", "8",
            "-o", str(tmp_path / "s.json"), "-q")
    assert r.returncode == 0, r.stderr
    assert "7 layers on 8 samples" in r.stdout and SensitivityResult.load(tmp_path / "s.json").layers
    r = cli("compile", str(MODEL), "--calibration", str(tmp_path / "calib.npy"), "--size-budget", "0.7x",
            "-o", str(tmp_path / "out"), "-q")
    assert r.returncode == 0, r.stderr
    assert "allocation optimal, binding: size" in r.stdout
    (tmp_path / "out" / "report.html").unlink()
    r = cli("report", str(tmp_path / "out"))
    assert r.returncode == 0 and (tmp_path / "out" / "report.html").exists(), r.stderr
    r = cli("compile", str(MODEL), "--calibration", str(tmp_path / "calib.npy"), "--latency-budget", "2ms",
            "-o", str(tmp_path / "out2"))
    assert r.returncode == 2 and "--db" in r.stderr


def test_mixed_compile_resumes_from_its_output_directory(calib, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A rerun into the same directory reuses calibration.json, sensitivity.json,
    latency_table.json and w8a8/ where their keys match, and builds the same library; a changed
    option, an interrupted step or ``resume=False`` recomputes."""
    x, _ = calib
    pm = prepare(MODEL)
    tasks = extract_tasks(pm, ["w8a8", "w4a8", "w8a16", "bf16", "fp32"], FEATURES)
    speed = {"w4a8": 0.5, "w8a8": 1.0, "w8a16": 1.5, "bf16": 2.5, "fp32": 3.0, "conversion": 0.1}
    tune(tasks, TuningDatabase(tmp_path / "db.jsonl"),
         ScriptedMeasurer(lambda t, c: speed[t.spec] * (1 + t.macs / 1e4), device=device_fingerprint(FEATURES, 1)),
         FEATURES, trials=2, progress=False)
    out = tmp_path / "out"
    files = {"calibrate": out / "calibration.json", "analyze": out / "sensitivity.json",
             "latency_table": out / "latency_table.json", "reference": out / "w8a8" / "model.so"}

    def run(**options):  # type: ignore[no-untyped-def]
        lines: list[str] = []
        r = compile_mixed(MODEL, x, out, latency_budget="1.0x", db=tmp_path / "db.jsonl", features=FEATURES,
                          measure=False, sensitivity_samples=8, progress=lines.append, **options)
        reused = {step for step in files if any(l.startswith(f"{step}: reused ") for l in lines)}
        return r, reused, lines, {step: p.stat().st_mtime_ns for step, p in files.items()}

    first, reused, lines, mtimes = run()
    assert reused == set() and "calibrating on 24 samples" in lines
    so = (out / "model.so").read_bytes()
    again, reused, lines, mtimes2 = run()
    assert reused == set(files) and mtimes2 == mtimes
    assert not any(l.startswith(("calibrating", "compiled the switchable", "latency table:")) for l in lines)
    assert again.plan == first.plan and (out / "model.so").read_bytes() == so
    assert again.extra["sensitivity"].layers == first.extra["sensitivity"].layers

    # another range method: new sensitivities and a new reference; the statistics and latencies stay
    pct, reused, lines, mtimes3 = run(range_method="percentile")
    assert reused == {"calibrate", "latency_table"}
    assert {s for s in files if mtimes3[s] != mtimes[s]} == {"analyze", "reference"}
    assert json.loads(files["analyze"].read_text())["meta"]["range_method"] == "percentile"
    so = (out / "model.so").read_bytes()

    # an interrupted calibration leaves no record (a half file is not trusted): recomputed, and the
    # same statistics make the sensitivities and the reference reusable again
    record = json.loads((out / "resume.json").read_text())
    del record["steps"]["calibrate"]
    (out / "resume.json").write_text(json.dumps(record))
    files["calibrate"].write_text(files["calibrate"].read_text()[:100])
    _, reused, lines, mtimes4 = run(range_method="percentile")
    assert reused == {"analyze", "latency_table", "reference"} and "calibrating on 24 samples" in lines

    # resume=False: every step recomputed, to the same library
    fresh, reused, lines, mtimes5 = run(range_method="percentile", resume=False)
    assert reused == set() and all(mtimes5[s] != mtimes4[s] for s in files)
    assert fresh.plan == pct.plan and (out / "model.so").read_bytes() == so


def _dynamic_hw_model(path: Path) -> Path:
    """conv 3x3 (3 -> 16) + ReLU, conv 3x3 (16 -> 32) + ReLU, conv 1x1 (32 -> 8): x [1, 3, h, w]."""
    from onnx import TensorProto, helper, numpy_helper
    import onnx

    rng = np.random.default_rng(15)
    shapes = {"w0": (16, 3, 3, 3), "b0": (16,), "w1": (32, 16, 3, 3), "b1": (32,), "w2": (8, 32, 1, 1)}
    inits = [numpy_helper.from_array((rng.standard_normal(s) * 0.3).astype(np.float32), n) for n, s in shapes.items()]
    nodes = [helper.make_node("Conv", ["x", "w0", "b0"], ["a"], name="conv0", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["ar"]),
             helper.make_node("Conv", ["ar", "w1", "b1"], ["b"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["b"], ["br"]), helper.make_node("Conv", ["br", "w2"], ["y"], name="conv2")]
    g = helper.make_graph(nodes, "dyn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, "h", "w"])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, "h", "w"])], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_the_mixed_path_takes_input_shapes(tmp_path: Path) -> None:
    """A model with dynamic H and W through the whole mixed path (issue 15): `tvmq analyze` and
    `tvmq compile --size-budget` with `--input-shape` (no tuning records needed), and
    ``compile_mixed(input_shapes=)`` under a latency budget whose table comes from records
    tuned at that shape; every library at the shape, equal to its numpy program."""
    import subprocess
    import sys

    from .conftest import ROOT, ort_session

    model = _dynamic_hw_model(tmp_path / "dyn.onnx")
    shape = (1, 3, 12, 20)
    rng = np.random.default_rng(1)
    data = rng.standard_normal((6, *shape[1:])).astype(np.float32)
    np.save(tmp_path / "calib.npy", data)
    x = data[:1]

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "tvmq", *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=600)

    flag = ["--input-shape", "x=" + ",".join(map(str, shape))]
    r = cli("analyze", str(model), "--calibration", str(tmp_path / "calib.npy"), "--limit", "2", *flag,
            "-o", str(tmp_path / "s.json"), "-q")
    assert r.returncode == 0, r.stderr
    s = SensitivityResult.load(tmp_path / "s.json")
    assert sorted(s.layers) == ["conv0", "conv1", "conv2"] and s.meta["input_shapes"] == {"x": list(shape)}
    r = cli("compile", str(model), "--calibration", str(tmp_path / "calib.npy"), "--size-budget", "0.6x", *flag,
            "-o", str(tmp_path / "small"), "-q")
    assert r.returncode == 0, r.stderr
    manifest = json.loads((tmp_path / "small" / "manifest.json").read_text())
    assert manifest["inputs"][0]["shape"] == list(shape)
    assert manifest["allocation"]["status"] == "optimal" and "size" in manifest["allocation"]["binding"]
    assert manifest["allocation"]["totals"]["size"] <= manifest["allocation"]["budgets"]["size_bytes"]
    y = tvmq.load(tmp_path / "small").run({"x": x})["y"]
    want = ort_session(model).run(None, {"x": x})[0]
    assert y.shape == want.shape == (1, 8, 12, 20)
    assert 10 * np.log10((want ** 2).sum() / ((y - want) ** 2).sum()) > 10

    # a latency budget: the tasks and the table at the given shape
    shapes = {"x": shape}
    tasks = extract_tasks(prepare(model, input_shapes=shapes), ["w8a8", "w4a8", "fp32"], FEATURES)
    speed = {"w4a8": 0.5, "w8a8": 1.0, "fp32": 3.0, "conversion": 0.1}
    tune(tasks, TuningDatabase(tmp_path / "db.jsonl"),
         ScriptedMeasurer(lambda t, c: speed[t.spec] * (1 + t.macs / 1e4), device=device_fingerprint(FEATURES, 1)),
         FEATURES, trials=2, progress=False)
    m = compile_mixed(model, data, tmp_path / "fast", latency_budget="1.0x", db=tmp_path / "db.jsonl",
                      specs=["w4a8", "w8a8", "fp32"], features=FEATURES, measure=False, sensitivity_samples=2,
                      input_shapes=shapes)
    sources = {s["source"] for row in m.extra["table"].layers.values() for s in row.values()}
    assert sources == {"measured"}, sources  # every layer's latency from a record tuned at this shape
    assert m.build.program is not None and m.extra["reference"].program is not None
    for b in (m.build, m.extra["reference"]):
        np.testing.assert_array_equal(tvmq.load(b.library).run({"x": x})["y"], b.program.run([x])[0])


def test_the_mixed_path_builds_for_a_batch_from_samples_taken_one_at_a_time(tmp_path: Path) -> None:
    """Calibration and the sensitivity analysis run one sample at a time (batch 1), whatever the
    batch the libraries are built for: a mixed plan at batch 2 (it was a shape mismatch in
    calibration), every library equal to its numpy program on a batch of two."""
    model = _dynamic_hw_model(tmp_path / "dyn.onnx")
    data = np.random.default_rng(2).standard_normal((5, 3, 8, 10)).astype(np.float32)
    m = compile_mixed(model, data, tmp_path / "out", size_budget="0.6x", input_shapes={"x": (2, 3, 8, 10)},
                      specs=["w4a8", "w8a8", "fp32"], features=FEATURES, measure=False, sensitivity_samples=2)
    assert m.build.manifest_data["inputs"][0]["shape"] == [2, 3, 8, 10]
    assert m.extra["sensitivity"].meta["input_shapes"] == {"x": [1, 3, 8, 10]}
    for b in (m.build, m.extra["reference"]):
        np.testing.assert_array_equal(tvmq.load(b.library).run({"x": data[:2]})["y"], b.program.run([data[:2]])[0])
