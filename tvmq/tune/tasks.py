"""Tuning tasks: the distinct (kernel, workload) pairs a model compiles to, per spec.

Tasks are found by running the compiler's own lowering (``LowerToKernels`` / ``RealizeIntegers``
with the uniform plan of each spec) with a configuration chooser that records every kernel it
is asked for: the workloads are exactly those a later compile uses, fused epilogue included.
Integer plans need calibration ranges to lower; the scales do not change any workload, so
extraction uses placeholder ranges. Conversion tasks time the format conversions between specs
(quantize / dequantize kernels, no knobs) on each layer's input shape: the boundary costs of
the latency table.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import tvm_ffi
from tvm import te

from schedules import elementwise, registry
from schedules.target_features import TargetFeatures
from schedules.workload import Conv2dWorkload, DenseWorkload, Epilogue, Workload

from ..calibration.collect import ActivationStats
from ..calibration.observers import TensorStats
from ..frontend import to_relax
from ..passes.lower_kernels import LowerToKernels
from ..passes.realize_integers import RealizeIntegers
from ..passes.records import Lowering
from ..plan import PrecisionPlan
from ..specs import check as check_specs

# the conversions at a boundary between specs (``LatencyTable.boundary_us``): name -> what it
# converts (``conversion_compute`` builds its TE compute for one tensor shape)
CONVERSIONS = {
    "quantize_u8": "fp32 -> uint8 (a float layer feeds a W8A8 / W4A8 one)",
    "quantize_i16": "fp32 -> int16 (a float layer feeds a W8A16 one)",
    "dequantize_u8": "uint8 -> fp32 (an integer layer feeds a float one)",
}


def conversion_compute(name: str, shape: tuple[int, ...]) -> list:
    if name == "quantize_u8":
        return elementwise.quantize(shape)
    if name == "quantize_i16":
        return elementwise.quantize_i16(shape, 32767)
    if name == "dequantize_u8":
        return elementwise.dequantize(shape, "uint8")
    raise ValueError(f"unknown conversion {name!r}; known: {', '.join(CONVERSIONS)}")


def workload_to_json(wl: Workload) -> dict[str, Any]:
    return {"op": "dense" if isinstance(wl, DenseWorkload) else "conv2d", **wl.to_json()}


def workload_from_json(d: dict[str, Any]) -> Workload:
    d = dict(d)
    op = d.pop("op")
    ep = Epilogue(**d.pop("epilogue"))
    return (DenseWorkload if op == "dense" else Conv2dWorkload)(**d, epilogue=ep)


def shape_key(kernel: str, wl: Workload) -> str:
    """The workload without its epilogue: records of another epilogue of the same shapes are
    the next best evidence for a configuration."""
    d = workload_to_json(wl)
    d.pop("epilogue")
    return json.dumps([kernel, d], sort_keys=True)


@dataclass
class TuneTask:
    """One distinct kernel workload (or conversion) to tune and time."""

    key: str  # the workload key of the database
    kind: str  # "kernel" | "conversion"
    kernel: str  # kernel key (``conv2d/w8a8/avx2``) or conversion name
    spec: str
    workload: Any  # a Workload, or the conversion's tensor shape
    layers: list[str] = field(default_factory=list)  # where the model uses it
    # compiled only by a plain fp32 build (channels-last, HardSwish fused); the fp32 layers of
    # mixed plans, which the allocator prices, are the other fp32 tasks
    plain_fp32: bool = False

    @property
    def macs(self) -> int:
        if self.kind == "conversion":
            n = 1
            for s in self.workload:
                n *= s
            return n
        return self.workload.macs

    def describe(self) -> str:
        if self.kind == "conversion":
            return f"{self.kernel} {'x'.join(map(str, self.workload))}"
        wl = self.workload
        if isinstance(wl, DenseWorkload):
            return f"{self.kernel} {wl.batch}x{wl.in_features}->{wl.out_features}"
        dw = " dw" if wl.is_depthwise else ""
        return (f"{self.kernel} {wl.in_channels}x{wl.height}x{wl.width}->{wl.out_channels} "
                f"k{wl.kernel_h}s{wl.stride_h}{dw}")

    def workload_json(self) -> Any:
        return {"shape": list(self.workload)} if self.kind == "conversion" else workload_to_json(self.workload)


def _compute_hash(tensors: list) -> str:
    return str(tvm_ffi.structural_hash(te.create_prim_func(tensors)))


def kernel_task_key(kernel: registry.KernelDef, wl: Workload, features: TargetFeatures) -> str:
    """Kernel key + workload fields + the structural hash of the kernel's compute."""
    cfg = kernel.fallback_config(wl, features)
    payload = json.dumps([str(kernel.key), workload_to_json(wl), _compute_hash(kernel.compute(wl, cfg))],
                         sort_keys=True)
    return hashlib.sha1(payload.encode()).hexdigest()[:20]


def conversion_task_key(name: str, shape: tuple[int, ...]) -> str:
    payload = json.dumps([name, list(shape), _compute_hash(conversion_compute(name, shape))])
    return hashlib.sha1(payload.encode()).hexdigest()[:20]


def _placeholder_stats(layers: Any, narrow_weights: bool = False) -> Any:
    t = TensorStats(count=1, min=0.0, max=1.0, percentile_lo=0.0, percentile_hi=1.0, mse_lo=0.0, mse_hi=1.0)
    return ActivationStats({l.name: {"in": t, "out": t} for l in layers}, samples=1,
                           meta={"placeholder": "task extraction only",
                                 "recipe": {"narrow_weights": bool(narrow_weights)}})


def extract_tasks(pm: Any, specs: list[str], features: TargetFeatures, *,
                  conversions: bool = True, narrow_weights: bool = False, plain_fp32: bool = True) -> list[TuneTask]:
    """The distinct tasks of a prepared model (``tvmq.frontend.prepare``) for ``specs``;
    ``narrow_weights``: the workloads of builds with the recipe's pair-fitted conv weights (their W8A8
    convs are ``Conv2dWorkload.narrow_weights`` workloads, ``vpmaddubsw`` on AVX2); ``plain_fp32``
    (with ``fp32`` in ``specs``): also the kernels a plain fp32 build compiles, channels-last with
    HardSwish fused (``TuneTask.plain_fp32``), beside the NCHW ones of mixed plans' fp32 layers."""
    check_specs(list(specs), "the specs to tune")
    tasks: dict[str, TuneTask] = {}
    keys: dict[tuple[str, str], str] = {}  # (kernel, workload key) -> task key

    plain = False  # whether the lowering running is a plain fp32 build's

    for spec in specs:
        def record(kernel: registry.KernelDef, wl: Workload, layer: str) -> tuple[Any, str]:
            cache = (str(kernel.key), wl.key())
            if cache not in keys:
                keys[cache] = kernel_task_key(kernel, wl, features)
            key = keys[cache]
            task = tasks.setdefault(key, TuneTask(key, "kernel", str(kernel.key), kernel.key.precision, wl,
                                                  plain_fp32=plain))
            if layer not in task.layers:
                task.layers.append(layer)
            return kernel.fallback_config(wl, features), "fallback"

        mod, params = to_relax(pm)
        plan = PrecisionPlan.uniform(pm.layers, spec)
        if spec == "fp32":
            LowerToKernels(pm.layers, params, pm.param_layer, features, Lowering(), configs=record)(mod)
            if plain_fp32:  # (as ``compiler.lowering_passes`` lowers a plain fp32 build)
                plain = True
                LowerToKernels(pm.layers, params, pm.param_layer, features, Lowering(), configs=record,
                               layout="NHWC", hardswish=True)(mod)
                plain = False
        else:
            RealizeIntegers(pm.layers, params, pm.param_layer, features, plan,
                            _placeholder_stats(pm.layers, narrow_weights), Lowering(), configs=record)(mod)
    if conversions:
        for layer in pm.layers:
            shape = tuple(int(s) for s in layer.input_shape)
            for name in CONVERSIONS:
                key = conversion_task_key(name, shape)
                task = tasks.setdefault(key, TuneTask(key, "conversion", name, "conversion", shape))
                task.layers.append(layer.name)
    return list(tasks.values())
