"""What lowering learns, as typed records: the passes fill a ``Lowering`` that the caller owns.

A pass in a ``tvm.transform.Sequential`` can only hand back an ``IRModule``; everything else it
decides (which kernel each layer runs, how many bytes its weights take, the scales of a
quantized layer, the numpy program of the integer graph) goes into the ``Lowering`` it was
given at construction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class LoweredLayer:
    """How one layer runs: its kernel, the PrimFunc it shares, the configuration and the fused
    epilogue (the manifest's ``kernels[layer]``)."""

    kernel: str  # KernelKey, e.g. "conv2d/w8a8/avx512_vnni"
    function: str  # the PrimFunc's global symbol (layers with one workload share it)
    config: dict[str, Any]
    epilogue: dict[str, Any]
    config_source: str  # "fallback", or where a tuned configuration came from
    layout: str = "NCHW"  # the activations' (``Conv2dWorkload.layout``): NCHW or NHWC
    narrow_weights: bool = False  # ``Conv2dWorkload.narrow_weights``: the manifest says so where true

    def to_json(self) -> dict[str, Any]:
        d = {"kernel": self.kernel, "function": self.function, "config": self.config,
             "epilogue": self.epilogue, "layout": self.layout, "config_source": self.config_source}
        if self.narrow_weights:
            d["narrow_weights"] = True
        return d


@dataclass
class Switch:
    """One layer of a switchable build (``LowerToKernels(switchable=True)``): the parameters of
    ``main`` that replace its weights (and bias) and its input's ``fake_quantize`` settings."""

    layer: str
    params: list[Any]  # relax.Var: packed weight (, bias)
    fq: Any  # relax.Var: the 5 fake_quantize parameters of its input
    defaults: list[np.ndarray]  # the fp32 values of ``params``
    match: Any  # lower_kernels.LayerMatch
    kernel: Any  # schedules.registry.KernelDef
    config: Any  # the kernel's configuration


@dataclass
class Lowering:
    """Everything the lowering passes decide besides the module itself."""

    kernels: dict[str, LoweredLayer] = field(default_factory=dict)  # per layer
    weight_bytes: dict[str, int] = field(default_factory=dict)  # per layer, as stored
    taps: list[tuple[str, str]] = field(default_factory=list)  # (layer, "in" / "out" / "residual")
    switches: list[Switch] = field(default_factory=list)
    qparams: dict[str, dict[str, Any]] = field(default_factory=dict)  # quantized layers' scales
    program: Any = None  # realize_integers.NumpyProgram: the bit-exact numpy oracle
    # every layout change RealizeIntegers emitted between two integer ops: (from, to, NCHW shape)
    layout_transforms: list[tuple[str, str, tuple[int, ...]]] = field(default_factory=list)
    # float islands: float ops RealizeIntegers left between integer ones (``Island``)
    islands: list[Island] = field(default_factory=list)


@dataclass
class Island:
    """Float ops a quantized plan keeps in float32 because tvmq has no integer form of them: the
    tensor they compute is quantized (with its consumer's calibrated range) for an integer
    layer; their inputs are dequantized integer outputs (``source`` ``"integer"``) or the
    model's inputs (``"input"``). The manifest's ``float_islands``."""

    ops: list[tuple[str, str]]  # (var, op name), in graph order
    feeds: list[str]  # the integer layers that quantize its result
    source: list[str]  # "integer" / "input" / "float layer"

    def to_json(self) -> dict[str, Any]:
        where = ("on the model's input, before the quantize" if self.source == ["input"]
                 else "between a dequantize and a quantize")
        return {"ops": [{"var": v, "op": op} for v, op in self.ops], "feeds": self.feeds,
                "source": self.source, "reason": f"no integer implementation in tvmq: runs in float32 {where}"}
