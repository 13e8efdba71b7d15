"""One pass of the compiled fp32 model over the calibration set, with taps on every layer input.

The taps are extra graph outputs added to the cleaned ONNX graph before import, so the
statistics come from the same compiled kernels that run in deployment, not from a Python
interpreter of the graph. Statistics are keyed by the cleaned graph's tensor names and indexed
by layer name; they are saved to JSON so the step can be resumed and inspected.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import onnx
from onnx import helper

from schedules.target_features import TargetFeatures, detect_host

from ..errors import InputError, TvmqError
from ..frontend import PreparedModel, TensorSpec, prepare
from .data import CalibrationData
from .observers import Observer, TensorStats

STATS_SCHEMA = 1


@dataclass
class ActivationStats:
    """Per-tensor statistics and which tensor each layer reads."""

    tensors: dict[str, TensorStats]
    layer_inputs: dict[str, str]
    samples: int
    meta: dict[str, Any] = field(default_factory=dict)

    def layer_input(self, layer: str) -> TensorStats:
        try:
            return self.tensors[self.layer_inputs[layer]]
        except KeyError:
            raise TvmqError(f"no calibration statistics for layer {layer!r}") from None

    def to_json(self) -> dict[str, Any]:
        return {"schema": STATS_SCHEMA, "samples": self.samples, "meta": self.meta,
                "layer_inputs": self.layer_inputs,
                "tensors": {k: v.to_json() for k, v in self.tensors.items()}}

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=1))

    @classmethod
    def load(cls, path: str | os.PathLike) -> ActivationStats:
        try:
            d = json.loads(Path(path).read_text())
            if d.get("schema") != STATS_SCHEMA:
                raise ValueError(f"schema {d.get('schema')!r}, expected {STATS_SCHEMA}")
            return cls({k: TensorStats(**v) for k, v in d["tensors"].items()}, d["layer_inputs"],
                       int(d["samples"]), d.get("meta", {}))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise TvmqError(f"cannot read calibration statistics {path}: {e}") from None


def with_taps(pm: PreparedModel, names: list[str]) -> PreparedModel:
    """A copy of ``pm`` whose graph also outputs the tensors ``names`` (fp32)."""
    model = onnx.ModelProto()
    model.CopyFrom(pm.model)
    shapes = {l.input_tensor: l.input_shape for l in pm.layers}
    extra = [TensorSpec(n, tuple(shapes[n])) for n in names]
    model.graph.output.extend(helper.make_tensor_value_info(s.name, onnx.TensorProto.FLOAT, list(s.shape))
                              for s in extra)
    return dataclasses.replace(pm, model=model, outputs=list(pm.outputs) + extra)


def collect(model: str | os.PathLike | onnx.ModelProto, data: Any, *,
            features: TargetFeatures | None = None,
            progress: Callable[[str], None] = lambda msg: None) -> ActivationStats:
    """Run the compiled fp32 model over ``data`` and observe every layer's input.

    ``data``: a ``CalibrationData`` or anything ``CalibrationData.from_source`` takes.
    """
    import tvm
    from tvm import relax

    from ..build import compile_relax

    pm = prepare(model)
    if not isinstance(data, CalibrationData):
        data = CalibrationData.from_source(data, pm.inputs)
    graph_inputs = {s.name for s in pm.inputs}
    graph_outputs = [s.name for s in pm.outputs]
    taps = list(dict.fromkeys(l.input_tensor for l in pm.layers
                              if l.input_tensor not in graph_inputs and l.input_tensor not in graph_outputs))
    tapped = with_taps(pm, taps)
    progress(f"compiling the fp32 model with {len(taps)} taps")
    ex, _, _ = compile_relax(tapped, features or detect_host())
    vm = relax.VirtualMachine(ex, tvm.cpu())
    observed = list(dict.fromkeys(l.input_tensor for l in pm.layers))
    observers = {name: Observer(seed=k) for k, name in enumerate(observed)}
    out_names = graph_outputs + taps
    for i, feed in enumerate(data.samples(batch=1)):
        result = vm["main"](*[tvm.runtime.tensor(feed[s.name]) for s in pm.inputs])
        values = [result] if hasattr(result, "numpy") else list(result)
        arrays = dict(zip(out_names, (v.numpy() for v in values)))
        arrays.update(feed)
        try:
            for name, obs in observers.items():
                obs.update(arrays[name])
        except FloatingPointError:
            raise InputError(f"calibration sample {i} produces NaN/inf activations") from None
        if (i + 1) % 50 == 0:
            progress(f"calibrated {i + 1}/{len(data)} samples")
    stats = {name: obs.stats() for name, obs in observers.items()}
    return ActivationStats(stats, {l.name: l.input_tensor for l in pm.layers}, len(data),
                           {"model": os.path.basename(os.fspath(model)) if not isinstance(model, onnx.ModelProto) else "<model>"})
