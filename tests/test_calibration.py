"""Calibration: data validation, observers, and one pass of the compiled model with taps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from tvmq.calibration import ActivationStats, CalibrationData, Observer, collect
from tvmq.calibration.observers import mse_range
from tvmq.errors import InputError
from tvmq.frontend import TensorSpec, prepare

from .conftest import FMNIST_DIR, fmnist_inputs, ort_session

SPEC = [TensorSpec("input", (1, 1, 28, 28))]


def test_data_validation_errors(tmp_path: Path) -> None:
    x, _ = fmnist_inputs(8)
    with pytest.raises(InputError, match="empty"):
        CalibrationData.from_source(x[:0], SPEC)
    bad = x.copy()
    bad[3, 0, 5, 5] = np.nan
    with pytest.raises(InputError, match="1 sample\\(s\\) contain NaN"):
        CalibrationData.from_source(bad, SPEC)
    bad[3, 0, 5, 5] = np.inf
    with pytest.raises(InputError, match="NaN or inf"):
        CalibrationData.from_source(bad, SPEC)
    with pytest.raises(InputError, match="samples of shape \\(1, 32, 32\\)"):
        CalibrationData.from_source(np.zeros((4, 1, 32, 32), np.float32), SPEC)
    with pytest.raises(InputError, match="dtype int64"):
        CalibrationData.from_source(np.zeros((4, 1, 28, 28), np.int64), SPEC)
    with pytest.raises(InputError, match="not found"):
        CalibrationData.from_source(tmp_path / "nope.npz", SPEC)
    np.savez(tmp_path / "c.npz", input=x)
    assert len(CalibrationData.from_source(tmp_path / "c.npz", SPEC, limit=5)) == 5
    np.save(tmp_path / "c.npy", x)
    assert len(CalibrationData.from_source(tmp_path / "c.npy", SPEC)) == 8


def test_observer_minmax_exact_and_sample_bounded() -> None:
    rng = np.random.default_rng(0)
    obs = Observer(capacity=1000)
    chunks = [rng.standard_normal(777) * (k + 1) for k in range(20)]
    for c in chunks:
        obs.update(c)
    allv = np.concatenate(chunks)
    st = obs.stats()
    assert (st.min, st.max) == (float(allv.astype(np.float32).min()), float(allv.astype(np.float32).max()))
    assert st.count == allv.size and obs.sample.size == 1000
    # a uniform sample: its mean |v| tracks the full data's within a few percent
    assert abs(np.abs(obs.sample).mean() / np.abs(allv).mean() - 1) < 0.1
    assert st.min <= st.percentile_lo <= st.mse_hi <= st.max
    with pytest.raises(FloatingPointError):
        obs.update(np.array([np.nan]))


def test_mse_clipping_beats_minmax_on_heavy_tails() -> None:
    rng = np.random.default_rng(1)
    v = np.concatenate([rng.standard_normal(20000), [80.0, -60.0]]).astype(np.float32)
    from tvmq.calibration.observers import _quant_mse

    lo, hi = mse_range(v, float(v.min()), float(v.max()))
    assert hi < 80.0 and _quant_mse(v, lo, hi, 8) < _quant_mse(v, float(v.min()), float(v.max()), 8)


def test_collect_taps_match_onnxruntime(tmp_path: Path) -> None:
    x, _ = fmnist_inputs(12, split="calib")
    stats = collect(FMNIST_DIR / "model.onnx", x)
    pm = prepare(FMNIST_DIR / "model.onnx")
    assert stats.samples == 12 and list(stats.layers) == pm.layers.names
    first = stats.get(pm.layers.names[0], "in")
    assert (first.min, first.max) == (float(x.min()), float(x.max()))  # the model input itself
    # a layer that feeds the next one directly: its output is the next one's input
    assert stats.get(pm.layers.names[0], "out") == stats.get(pm.layers.names[1], "in")
    # every layer input against onnxruntime's value of the same tensor in the cleaned graph
    model = onnx.ModelProto()
    model.CopyFrom(pm.model)
    names = [l.input_tensor for l in pm.layers if l.input_tensor != "input"]
    model.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in dict.fromkeys(names))
    path = tmp_path / "tapped.onnx"
    onnx.save(model, str(path))
    sess = ort_session(path)
    refs = [dict(zip(dict.fromkeys(names), sess.run(list(dict.fromkeys(names)), {"input": x[i:i + 1]})))
            for i in range(len(x))]
    for layer in pm.layers:
        if layer.input_tensor == "input":
            continue
        lo = min(float(r[layer.input_tensor].min()) for r in refs)
        hi = max(float(r[layer.input_tensor].max()) for r in refs)
        st = stats.get(layer.name, "in")
        assert abs(st.min - lo) <= 1e-4 * max(abs(lo), 1) and abs(st.max - hi) <= 1e-4 * max(abs(hi), 1)
    # the last layer's output is the model's output (logits)
    logits = ort_session(FMNIST_DIR / "model.onnx").run(None, {"input": x[:1]})[0]
    assert stats.get(pm.layers.names[-1], "out").min <= float(logits.min())
    stats.save(tmp_path / "calibration.json")
    again = ActivationStats.load(tmp_path / "calibration.json")
    assert again.layers == stats.layers
