"""One pass of the compiled fp32 model over the calibration set, with taps on every layer input.

The taps are extra outputs of the lowered Relax module (``LowerToKernels(taps=True)``): every
layer's input and its output after the fused epilogue (bias, residual, activation), so the
statistics come from the same compiled kernels that run in deployment, not from a Python
interpreter of the graph, and are keyed by layer name. They are saved to JSON so the step can
be resumed and inspected.
"""

from __future__ import annotations

import base64
import json
import math
import os
import warnings
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
import tvm
from tvm import relax

from schedules.target_features import TargetFeatures, detect_host

from ..compiler import codegen, lower_module
from ..equalize import equalize_record
from ..errors import InputError, TvmqError
from ..frontend import per_sample_shapes, prepare
from ..gptq import HessianSum
from .data import CalibrationData
from .observers import Observer, TensorStats

STATS_SCHEMA = 1
HUGE = 1e6  # a calibration range beyond +-HUGE gets a warning (ActivationStats.check_ranges)
# GPTQ Hessians: at most this many output pixels of each layer per calibration image (a regular
# grid: MobileNetV2's 112x112 and 56x56 layers give 784; its 7x7 layers all 49)
HESSIAN_PATCHES_PER_IMAGE = 1024


@dataclass
class ActivationStats:
    """Per layer: statistics of its input and of its output (after the fused epilogue)."""

    layers: dict[str, dict[str, TensorStats]]  # layer -> {"in": ..., "out": ...}
    samples: int
    meta: dict[str, Any] = field(default_factory=dict)
    # layer -> [groups, d, d]: the sum of X X^T over its input's im2col patches (GPTQ)
    hessians: dict[str, np.ndarray] = field(default_factory=dict)

    def get(self, layer: str, role: str = "in") -> TensorStats:
        try:
            return self.layers[layer][role]
        except KeyError:
            raise TvmqError(f"no calibration statistics for the {role}put of layer {layer!r}") from None

    def hessian(self, layer: str) -> np.ndarray | None:
        return self.hessians.get(layer)

    def to_json(self) -> dict[str, Any]:
        d = {"schema": STATS_SCHEMA, "samples": self.samples, "meta": self.meta,
             "layers": {k: {r: t.to_json() for r, t in v.items()} for k, v in self.layers.items()}}
        if self.hessians:
            d["hessians"] = {k: _pack_symmetric(h) for k, h in self.hessians.items()}
        return d

    def save(self, path: str | os.PathLike) -> None:
        """Write the JSON under a temporary name, then rename it: never a half-written file."""
        p = Path(path)
        tmp = p.with_name(f".{p.name}.tmp{os.getpid()}")
        try:
            tmp.write_text(json.dumps(self.to_json(), indent=1))
            os.replace(tmp, p)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise TvmqError(f"cannot write {p}: {e.strerror}") from None

    def check_ranges(self) -> None:
        """One warning for degenerate ranges: constant tensors (min == max: all-zero or identical
        inputs) and huge ones (beyond +-1e6: inputs not scaled as the model expects); their
        quantization fits no real input. Non-finite or inverted ranges are errors (``load``)."""
        constant, huge = [], []
        for layer, roles in self.layers.items():
            for role, t in roles.items():
                if max(abs(t.min), abs(t.max)) > HUGE:
                    huge.append(f"{layer} ({role}put, [{t.min:.3g}, {t.max:.3g}])")
                elif t.max == t.min:
                    constant.append(f"{layer} ({role}put, {t.min:.3g})")
        parts = []
        if huge:
            parts.append(f"{len(huge)} huge range(s) beyond +-{HUGE:.0e}: {', '.join(huge[:3])}")
        if constant:
            parts.append(f"{len(constant)} constant tensor(s): {', '.join(constant[:3])}")
        if parts:
            warnings.warn("calibration: " + "; ".join(parts) + ": are the calibration inputs real, "
                          "preprocessed inputs? The quantized model will be inaccurate", stacklevel=2)

    @classmethod
    def load(cls, path: str | os.PathLike) -> ActivationStats:
        try:
            d = json.loads(Path(path).read_text())
            if not isinstance(d, dict):
                raise ValueError(f"a JSON {type(d).__name__}, not an object")
            if d.get("schema") != STATS_SCHEMA:
                raise ValueError(f"schema {d.get('schema')!r}, expected {STATS_SCHEMA}")
            layers = {k: {r: TensorStats.from_json(t) for r, t in v.items()} for k, v in d["layers"].items()}
            hessians = {k: _unpack_symmetric(h) for k, h in d.get("hessians", {}).items()}
            stats = cls(layers, int(d["samples"]), d.get("meta", {}), hessians)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise TvmqError(f"cannot read calibration statistics {path}: {type(e).__name__}: {e}") from None
        for layer, roles in layers.items():
            for role, t in roles.items():
                values = [t.min, t.max, t.percentile_lo, t.percentile_hi, t.mse_lo, t.mse_hi]
                if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
                    raise TvmqError(f"calibration statistics {path}: layer {layer!r} {role}put: a range is "
                                    f"not finite (NaN or inf)")
                if t.min > t.max or t.percentile_lo > t.percentile_hi or t.mse_lo > t.mse_hi:
                    raise TvmqError(f"calibration statistics {path}: layer {layer!r} {role}put: min "
                                    f"{t.min} > max {t.max} (an inverted range)")
        stats.check_ranges()
        return stats


def _checked(stats: ActivationStats) -> ActivationStats:
    stats.check_ranges()  # one warning for constant or huge ranges
    return stats


def collect(model: str | os.PathLike | onnx.ModelProto, data: Any, *,
            features: TargetFeatures | None = None,
            progress: Callable[[str], None] = lambda msg: None,
            input_shapes: dict[str, tuple[int, ...]] | None = None, batch_size: int = 1,
            hessians: bool = False, hessian_samples: int | None = None) -> ActivationStats:
    """Run the compiled fp32 model over ``data``; observe every layer's input, output and
    residual operand.

    ``hessians``: also sum ``X X^T`` over every conv / dense layer's im2col input patches
    (``tvmq.gptq``; the recipe then rounds weights with error feedback), over the first
    ``hessian_samples`` samples (None: all).

    ``data``: a ``CalibrationData`` or anything ``CalibrationData.from_source`` takes;
    ``input_shapes`` / ``batch_size``: as ``frontend.prepare`` (a model with dynamic H / W is
    calibrated, and then compiled, at the static shape given). Samples run one at a time, at
    batch 1 (the first dimension of ``input_shapes`` too): the statistics are per sample and fit
    a library built at any ``batch_size``.
    """
    # one sample at a time: the statistics of a library built for any batch
    pm = prepare(model, input_shapes=per_sample_shapes(input_shapes), batch_size=1)
    if not isinstance(data, CalibrationData):
        data = CalibrationData.from_source(data, pm.inputs)
    features = features or detect_host()
    lowered = lower_module(pm, features, taps=True)
    mod, taps = lowered.mod, lowered.taps
    progress(f"compiling the fp32 model with {len(taps)} taps")
    vm = relax.VirtualMachine(codegen(mod, features), tvm.cpu())
    observers = {tap: Observer(seed=0) for tap in taps}  # same data -> same sample
    info = {l.name: l for l in pm.layers}
    sums = {name: HessianSum(layer, HESSIAN_PATCHES_PER_IMAGE) for name, layer in info.items()} if hessians else {}
    h_seconds = 0.0
    h_samples = len(data) if hessian_samples is None else min(len(data), hessian_samples)
    for i, feed in enumerate(data.samples(batch=1)):
        result = list(vm["main"](*[tvm.runtime.tensor(feed[s.name]) for s in pm.inputs]))
        try:
            for tap, value in zip(taps, result[1:]):
                v = value.numpy()
                observers[tap].update(v)
                if hessians and i < h_samples and tap[1] == "in" and tap[0] in sums:
                    t = time.perf_counter()
                    sums[tap[0]].add(v)
                    h_seconds += time.perf_counter() - t
        except FloatingPointError:
            raise InputError(f"calibration sample {i} produces NaN/inf activations") from None
        if (i + 1) % 50 == 0:
            progress(f"calibrated {i + 1}/{len(data)} samples")
    layers: dict[str, dict[str, TensorStats]] = {}
    for (layer, role), obs in observers.items():
        layers.setdefault(layer, {})[role] = obs.stats()
    name = "<model>" if isinstance(model, onnx.ModelProto) else os.path.basename(os.fspath(model))
    meta = {"model": name, "isa": features.isa, "equalized": equalize_record(model) is not None}
    hess: dict[str, np.ndarray] = {}
    if hessians:
        t = time.perf_counter()
        hess = {name: acc.value() for name, acc in sums.items() if acc.count}
        h_seconds += time.perf_counter() - t
        meta["hessian_samples"] = h_samples
        meta["hessian_patches"] = {name: acc.count for name, acc in sums.items() if acc.count}
        meta["hessian_seconds"] = round(h_seconds, 2)
    return _checked(ActivationStats(layers, len(data), meta, hess))


def _pack_symmetric(h: np.ndarray) -> dict[str, Any]:
    """A ``[G, d, d]`` symmetric stack as JSON: its upper triangles, float32, base64."""
    iu = np.triu_indices(h.shape[-1])
    return {"shape": list(h.shape),
            "triu_f32": base64.b64encode(np.ascontiguousarray(h[:, iu[0], iu[1]], np.float32).tobytes()).decode()}


def _unpack_symmetric(d: dict[str, Any]) -> np.ndarray:
    g, n, _ = d["shape"]
    iu = np.triu_indices(n)
    tri = np.frombuffer(base64.b64decode(d["triu_f32"]), np.float32).reshape(g, -1).astype(np.float64)
    h = np.zeros((g, n, n))
    h[:, iu[0], iu[1]] = tri
    h[:, iu[1], iu[0]] = tri
    return h
