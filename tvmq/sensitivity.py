"""Per-layer sensitivity: how much quantizing one layer to a spec damages the model's output.

For each layer and candidate spec, the layer alone is quantized (every other layer fp32) and the
SQNR of the model's final output against the fp32 output is measured on the unlabeled
calibration set (Pandey et al. 2023; AIMET's AMP does the same); the ``"w8a8"`` context does it
again with every other layer at W8A8. Both run on compiled code and need one build: the fp32
model is compiled with every layer *switchable* at run time (``LowerToKernels(switchable=True)``:
each layer's packed weights and bias are parameters of ``main`` and its input passes a
``fake_quantize`` whose mode and scale are parameters too), so a (layer, spec) point is a set of
arguments, not a compile. What a spec does to a layer is what ``RealizeIntegers`` does: weights
quantized per output channel (the same ``quant.quantize_weights``, MSE clipping below 8 bits),
the bias corrected for the mean rounding error, the input rounded to uint8 with the calibrated
range (``a_bits`` 8) or to int16 within the layer's overflow bound (``int16_qmax``, W8A16);
bf16 rounds weights and input to bfloat16. The integer kernels accumulate exactly where this
simulation sums in fp32: the two differ by float rounding only.

The allocator adds sensitivities across layers, so the additive quantity is the output's
noise-to-signal ratio ``nsr = sum((y_q - y)^2) / sum(y^2)`` (``sqnr_db = -10 log10(nsr)``); for
independent errors the noise powers add (Pandey et al.), and ``predicted_sqnr_db(plan)`` is
``-10 log10(sum of the plan's nsr)``.

Results are saved to JSON after every layer (``analyze(..., output=)``) and a rerun with the same
model, calibration statistics, samples and specs resumes after the last finished layer.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import tvm
from tvm import relax

from schedules import bf16, elementwise
from schedules.target_features import TargetFeatures, detect_host

from .calibration import CalibrationData
from .compiler import codegen, lower_module
from .errors import TvmqError
from .frontend import per_sample_shapes, prepare
from .passes.records import Switch
from .plan import QuantSpec
from .recipe import quantize_layer
from .specs import REDUCED

SENSITIVITY_SCHEMA = 1
CONTEXTS = ("alone", "w8a8")


@dataclass
class SensitivityResult:
    """``layers[layer][context][spec] = {"nsr": ..., "sqnr_db": ...}`` (fp32 is 0 / inf)."""

    specs: list[str]
    layers: dict[str, dict[str, dict[str, dict[str, float]]]]
    meta: dict[str, Any] = field(default_factory=dict)
    baseline: dict[str, float] = field(default_factory=dict)  # {"w8a8_all": nsr}

    def nsr(self, layer: str, spec: str, context: str = "alone") -> float:
        if spec == "fp32":
            return 0.0
        try:
            return float(self.layers[layer][context][spec]["nsr"])
        except KeyError:
            raise TvmqError(f"no sensitivity of layer {layer!r} at {spec!r} ({context})") from None

    def sqnr_db(self, layer: str, spec: str, context: str = "alone") -> float:
        return _db(self.nsr(layer, spec, context))

    def predicted_sqnr_db(self, plan: dict[str, str], context: str = "alone") -> float:
        return _db(sum(self.nsr(l, s, context) for l, s in plan.items()))

    def to_json(self) -> dict[str, Any]:
        return {"schema": SENSITIVITY_SCHEMA, "specs": self.specs, "meta": self.meta,
                "baseline": self.baseline, "layers": self.layers}

    def save(self, path: str | os.PathLike) -> None:
        tmp = Path(str(path) + ".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=1))
        os.replace(tmp, path)  # never a half-written file

    @classmethod
    def load(cls, path: str | os.PathLike) -> SensitivityResult:
        try:
            d = json.loads(Path(path).read_text())
            if d.get("schema") != SENSITIVITY_SCHEMA:
                raise ValueError(f"schema {d.get('schema')!r}, expected {SENSITIVITY_SCHEMA}")
            return cls(list(d["specs"]), d["layers"], d.get("meta", {}), d.get("baseline", {}))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise TvmqError(f"cannot read sensitivity file {path}: {e}") from None


def _db(nsr: float) -> float:
    return float("inf") if nsr <= 0 else -10.0 * math.log10(nsr)


def layer_variant(sw: Switch, spec: QuantSpec, stats: Any, method: str,
                  bias_correction: bool | None = None) -> tuple[list[np.ndarray], np.ndarray]:
    """The switchable arguments of one layer at ``spec``: ``[packed weight (, bias)]`` and the
    5 ``fake_quantize`` parameters of its input; integer specs follow ``tvmq.recipe``, as the
    compiler does."""
    m, kernel, cfg = sw.match, sw.kernel, sw.config
    off = np.array([elementwise.FQ_OFF, 1, 0, 0, 0], np.float32)
    if spec.name == "fp32":
        return list(sw.defaults), off
    w = np.asarray(m.weight, np.float32)
    if spec.bf16:
        args = [kernel.pack_weight(bf16.round_bf16(w), m.workload, cfg)]
        if m.epilogue.bias:
            args.append(np.asarray(m.bias, np.float64).astype(np.float32))
        return args, np.array([elementwise.FQ_BF16, 1, 0, 0, 0], np.float32)
    ql = quantize_layer(m.layer.name, w, m.bias, m.layer.groups, spec, stats, method,
                        bias_correction=bias_correction)
    ql = ql.fit_bias(ql.in_scale)
    if ql.int16_input:
        fq = np.array([elementwise.FQ_AFFINE, ql.in_scale, 0, -ql.in_qmax, ql.in_qmax], np.float32)
    else:
        fq = np.array([elementwise.FQ_AFFINE, ql.in_scale, ql.in_zero_point, 0, 255], np.float32)
    args = [kernel.pack_weight(ql.dequantized_weight(), m.workload, cfg)]
    if m.epilogue.bias:
        args.append(ql.bias.astype(np.float32))
    return args, fq


def _stats_hash(stats: Any) -> str:
    return hashlib.sha256(json.dumps(stats.to_json(), sort_keys=True).encode()).hexdigest()[:16]


def analyze(model: Any, stats: Any, data: Any, *, specs: list[str] = REDUCED,  # type: ignore[assignment]
            contexts: list[str] = CONTEXTS, range_method: str = "minmax",  # type: ignore[assignment]
            features: TargetFeatures | None = None, output: str | os.PathLike | None = None,
            limit: int | None = None,
            progress: Callable[[str], None] = lambda m: None,
            input_shapes: dict[str, tuple[int, ...]] | None = None,
            batch_size: int = 1) -> SensitivityResult:
    """Sensitivity of every layer of ``model`` at every spec in ``specs``, over ``data``
    (a ``CalibrationData`` or what ``CalibrationData.from_source`` takes; the first ``limit``
    samples), with calibration ``stats`` (``tvmq.calibration.collect``).

    ``input_shapes`` / ``batch_size``: as ``frontend.prepare`` (a model with dynamic H / W is
    analyzed at the static shape given, the one it is calibrated and compiled at), one sample at a
    time: at batch 1, whatever the batch the library is built for."""
    bad = [c for c in contexts if c not in CONTEXTS]
    if bad:
        raise TvmqError(f"unknown sensitivity context(s) {bad}; known: {', '.join(CONTEXTS)}")
    parsed = [QuantSpec.parse(s) for s in specs]
    if any(s.name == "fp32" for s in parsed):
        parsed = [s for s in parsed if s.name != "fp32"]  # fp32 is the reference: 0 by definition
    features = features or detect_host()
    pm = prepare(model, input_shapes=per_sample_shapes(input_shapes), batch_size=1)  # one sample at a time
    if not isinstance(data, CalibrationData):
        data = CalibrationData.from_source(data, pm.inputs)
    if len(data) == 0:
        raise TvmqError("sensitivity analysis needs at least one calibration sample")
    feeds = list(data.samples(batch=1))[: limit or None]
    result = SensitivityResult([s.name for s in parsed], {},
                               _analysis_meta(model, stats, feeds, pm, range_method, contexts))
    if output is not None and Path(output).exists():
        result = _resumed(result, output, progress)

    t0 = time.perf_counter()
    switches, run = _switchable_runner(pm, features, feeds, stats, range_method, parsed, progress)
    ref = run({})
    signal = sum(float(np.sum(r * r)) for r in ref)
    if not np.isfinite(signal) or signal <= 0:
        raise TvmqError("the fp32 model's outputs on the calibration samples are all zero or not finite")

    def nsr(outs: list[np.ndarray]) -> float:
        return sum(float(np.sum((o - r) ** 2)) for o, r in zip(outs, ref)) / signal

    all8 = {i: "w8a8" for i in range(len(switches))}
    if "w8a8" in contexts and "w8a8_all" not in result.baseline:
        result.baseline["w8a8_all"] = nsr(run(all8))
    for i, sw in enumerate(switches):
        layer = sw.layer
        if layer in result.layers:
            continue
        entry: dict[str, dict[str, dict[str, float]]] = {}
        for ctx in contexts:
            base = all8 if ctx == "w8a8" else {}
            entry[ctx] = {}
            for s in parsed:
                n = nsr(run({**base, i: s.name}))
                entry[ctx][s.name] = {"nsr": n, "sqnr_db": _db(n)}
        result.layers[layer] = entry
        if output is not None:
            result.save(output)
        progress(f"[{i + 1}/{len(switches)}] {layer}: " + ", ".join(
            f"{s}={v['sqnr_db']:.1f}dB" for s, v in entry[contexts[0]].items()))
    result.meta["seconds"] = result.meta.get("seconds", 0.0) + time.perf_counter() - t0
    if output is not None:
        result.save(output)
    return result


def _analysis_meta(model: Any, stats: Any, feeds: list[dict[str, np.ndarray]], pm: Any,
                   range_method: str, contexts: list[str]) -> dict[str, Any]:
    """What a sensitivity result was computed from: a saved one is resumed only where it matches."""
    model_id = (hashlib.sha256(Path(model).read_bytes()).hexdigest()[:16]
                if isinstance(model, (str, os.PathLike)) else "<in-memory>")
    return {"model": model_id, "stats": _stats_hash(stats), "samples": len(feeds),
            "input_shapes": {s.name: list(s.shape) for s in pm.inputs},
            "range_method": range_method, "contexts": list(contexts),
            "data": hashlib.sha256(b"".join(np.ascontiguousarray(f[s.name]).tobytes()
                                           for f in feeds for s in pm.inputs)).hexdigest()[:16]}


def _resumed(result: SensitivityResult, output: str | os.PathLike,
             progress: Callable[[str], None]) -> SensitivityResult:
    """The result saved in ``output`` where it was computed from the same inputs and specs as
    ``result`` (its finished layers are kept), else ``result``."""
    old = SensitivityResult.load(output)
    if {k: v for k, v in old.meta.items() if k != "seconds"} == result.meta and old.specs == result.specs:
        progress(f"resuming: {len(old.layers)} layer(s) already analyzed in {output}")
        return old
    progress(f"note: {output} was computed for other inputs or specs: starting over")
    return result


def _switchable_runner(pm: Any, features: TargetFeatures, feeds: list[dict[str, np.ndarray]], stats: Any,
                       range_method: str, parsed: list[QuantSpec],
                       progress: Callable[[str], None]) -> tuple[list[dict[str, Any]], Callable[..., list[np.ndarray]]]:
    """Compile the switchable model once; (its switches, ``run(setting)``): the flattened outputs
    on every feed with layer ``i`` at spec ``setting.get(i, "fp32")``."""
    t0 = time.perf_counter()
    lowered = lower_module(pm, features, switchable=True)
    switches = lowered.switches
    vm = relax.VirtualMachine(codegen(lowered.mod, features), tvm.cpu())
    progress(f"compiled the switchable model ({len(switches)} layers) in {time.perf_counter() - t0:.1f}s")
    dev = tvm.cpu()
    inputs = [[tvm.runtime.tensor(f[s.name], dev) for s in pm.inputs] for f in feeds]

    def tensors(args: list[np.ndarray], fq: np.ndarray) -> list[Any]:
        return [tvm.runtime.tensor(np.ascontiguousarray(a), dev) for a in args] + [tvm.runtime.tensor(fq, dev)]

    variants = {(i, s.name): tensors(*layer_variant(sw, s, stats, range_method))
                for i, sw in enumerate(switches) for s in [QuantSpec.parse("fp32"), QuantSpec.parse("w8a8"), *parsed]}

    def run(setting: dict[int, str]) -> list[np.ndarray]:
        params = [t for i in range(len(switches)) for t in variants[(i, setting.get(i, "fp32"))]]
        outs = []
        for x in inputs:
            y = vm["main"](*x, *params)
            ys = [y] if hasattr(y, "numpy") else list(y)
            outs.append(np.concatenate([np.asarray(v.numpy(), np.float64).ravel() for v in ys]))
        return outs

    return switches, run
