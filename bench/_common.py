"""Helpers shared by the W8A8 benches: the rivals' int8 recipes.

- ``ort_int8``: onnxruntime's ``quantize_static`` (QDQ, per-channel int8 weights, uint8
  activations, MinMax) on the given calibration inputs.
- ``nncf_int8``: OpenVINO's post-training quantization (``nncf.quantize``, preset PERFORMANCE)
  on the given calibration inputs; ``OV_CONFIG`` / ``ov_config`` compile it for the CPU,
  ``ov_kernels`` says which kernels the CPU plugin picked.
- ``rival_onnx``: a copy of an ONNX file the rivals' quantizers can work on (see there).

Used by ``w8a8_accuracy.py`` and ``w8a8_latency.py``; importable as ``_common`` with ``bench/``
on ``sys.path`` (the scripts' own folder, when they run as scripts).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

OV_CONFIG = {"INFERENCE_NUM_THREADS": 1, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY",
             "INFERENCE_PRECISION_HINT": "f32"}
OV_MISSING = "pip install -e '.[bench]'  (or: pip install openvino nncf)"


def onnx_input_name(model: str | Path) -> str:
    """The first real input of an ONNX graph (initializers that are also inputs excluded)."""
    import onnx

    graph = onnx.load(str(model), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    return next(i.name for i in graph.input if i.name not in initializers)


def ort_int8(fp32_path: Path, calib: np.ndarray, out: Path, input_name: str | None = None) -> Path:
    """onnxruntime int8: ``quant_pre_process`` then ``quantize_static`` (QDQ, per-channel,
    QUInt8 activations, QInt8 weights, MinMax) calibrated on ``calib`` (``[N, ...]``, one
    batch-1 sample each) fed to ``input_name`` (default: the graph's first input). Writes
    ``out`` (and ``pre.onnx`` beside it); returns ``out``."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    name = input_name or onnx_input_name(fp32_path)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(calib)

        def get_next(self):  # type: ignore[no-untyped-def]
            x = next(self.it, None)
            return None if x is None else {name: x[None]}

    pre = out.with_name("pre.onnx")
    quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
    quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax)
    return out


def rival_onnx(model: Path, out: Path) -> Path:
    """``model`` itself, or a copy at ``out`` that onnxruntime's and NNCF's quantizers handle.

    Some ONNX files (the ``onnx`` wheel's ``light_*`` models: IR 3, opset 9) compute every weight
    with ``ConstantOfShape`` from a shape that is an initializer *and* a graph input. NNCF then
    sees no constant weights and leaves every conv in fp32, ``quant_pre_process`` keeps the
    shapes as required inputs, and per-channel ``DequantizeLinear`` needs opset 13. The copy has
    those ``ConstantOfShape`` nodes evaluated into initializers, initializers removed from the
    graph inputs (IR >= 4), unused initializers dropped and, below opset 13, the opset converted
    to 13. The function computed is unchanged. Models that need none of this (the real
    MobileNetV2) are returned as they are.
    """
    import onnx
    from onnx import numpy_helper, version_converter

    m = onnx.load(str(model))
    g = m.graph
    inits = {i.name: i for i in g.initializer}
    opset = next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), 0)
    folds = [n for n in g.node if n.op_type == "ConstantOfShape" and n.input and n.input[0] in inits]
    init_inputs = [i for i in g.input if i.name in inits]
    if not folds and not init_inputs and opset >= 13:
        return model
    for n in folds:
        shape = numpy_helper.to_array(inits[n.input[0]]).astype(np.int64)
        attr = next((a for a in n.attribute if a.name == "value"), None)
        value = numpy_helper.to_array(attr.t) if attr is not None else np.zeros(1, np.float32)
        g.initializer.append(numpy_helper.from_array(
            np.full(tuple(shape), value.reshape(-1)[0], dtype=value.dtype), n.output[0]))
    fold_ids = {id(n) for n in folds}
    keep_nodes = [n for n in g.node if id(n) not in fold_ids]
    del g.node[:]
    g.node.extend(keep_nodes)
    used = {x for n in g.node for x in n.input} | {o.name for o in g.output}
    keep_inits = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(keep_inits)
    init_names = {i.name for i in g.initializer}
    keep_inputs = [i for i in g.input if i.name not in init_names and i.name not in inits]
    del g.input[:]
    g.input.extend(keep_inputs)
    m.ir_version = max(m.ir_version, 4)
    if opset < 13:
        m = version_converter.convert_version(m, 13)
    onnx.checker.check_model(m)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(m, str(out))
    return out


def import_openvino() -> tuple[Any, Any]:
    """``(openvino, nncf)``; raises ImportError when either is missing (install: ``OV_MISSING``).
    Sets ``NNCF_CI=1`` unless already set: NNCF's telemetry off (it would try the network)."""
    os.environ.setdefault("NNCF_CI", "1")
    import nncf
    import openvino as ov

    return ov, nncf


def ov_config(threads: int = 1) -> dict[str, Any]:
    """``OV_CONFIG`` with ``INFERENCE_NUM_THREADS`` = ``threads``."""
    return {**OV_CONFIG, "INFERENCE_NUM_THREADS": int(threads)}


def nncf_int8(model: Any, calib: np.ndarray) -> tuple[Any, float]:
    """``nncf.quantize`` of an ``openvino.Model`` on ``calib`` (``[N, ...]``, one batch-1 sample
    each): preset PERFORMANCE, ``subset_size=len(calib)``, NNCF's defaults otherwise. Returns the
    quantized model and the seconds it took. ``model`` itself is modified: pass a copy."""
    _, nncf = import_openvino()
    t = time.perf_counter()
    q = nncf.quantize(model, nncf.Dataset(calib, lambda a: a[None]),
                      preset=nncf.QuantizationPreset.PERFORMANCE, subset_size=len(calib))
    return q, time.perf_counter() - t


def ov_kernels(compiled: Any) -> str:
    """What the CPU plugin runs the conv/dense layers with, e.g. ``brgconv_avx2_1x1_I8 x34``."""
    from collections import Counter

    count: Counter[str] = Counter()
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        if info["layerType"].astype(str) in ("Convolution", "GroupConvolution", "FullyConnected", "MatMul"):
            count[info["primitiveType"].astype(str)] += 1
    return ", ".join(f"{k} x{v}" for k, v in sorted(count.items()))
