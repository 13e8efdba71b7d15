"""The compiler's low level: a prepared model -> a scheduled Relax module -> an executable.

``lower_module`` runs the lowering as ``tvm.transform`` passes (``lowering_passes``): layers to
tvmq's kernels (``passes.lower_kernels``; with a quantized plan ``passes.realize_integers``),
then TVM's CPU legalization and fusion, then ``ScheduleGeneric`` for the rest, each timed by a
pass instrument (``PassTimer``); what the passes decide comes back in a typed record
(``passes.records.Lowering``). ``codegen`` lowers the Relax module to TVM's VM and LLVM. Calibration, sensitivity analysis and ``builder.build``
sit above this module; it imports none of them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import tvm
from tvm import relax
from tvm.relax.backend.cpu_generic.pipeline import dataflow_lower_passes, finalize_passes, legalize_passes

from schedules.target_features import TargetFeatures

from .errors import TvmqError
from .frontend import PreparedModel, to_relax
from .passes import register_errors
from .passes.lower_kernels import LowerToKernels
from .passes.realize_integers import RealizeIntegers
from .passes.records import Lowering
from .passes.schedule_generic import ScheduleGeneric


def no_progress(msg: str) -> None:
    """The default ``progress`` callback: says nothing."""


@dataclass
class Lowered(Lowering):
    """The scheduled Relax module (before codegen), what lowering learned (``Lowering``) and the
    seconds of each step (``import``, then one entry per pass)."""

    mod: Any = None
    timings: dict[str, float] = field(default_factory=dict)


@tvm.instrument.pass_instrument
class PassTimer:
    """A pass instrument: the seconds of each pass run directly by a ``Sequential``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._started: list[float] = []

    def run_before_pass(self, mod: tvm.IRModule, info: tvm.transform.PassInfo) -> None:
        self._started.append(time.perf_counter())

    def run_after_pass(self, mod: tvm.IRModule, info: tvm.transform.PassInfo) -> None:
        elapsed = time.perf_counter() - self._started.pop()
        if len(self._started) == 1:  # inside the Sequential, not a pass a pass runs itself
            self.seconds[info.name] = self.seconds.get(info.name, 0.0) + elapsed


def bind_params(params: dict[str, np.ndarray]) -> tvm.transform.Pass:
    """The parameters of ``main`` still unbound after lowering (what no kernel packed) become
    constants; ``main`` loses its ``params`` attribute."""

    @tvm.transform.module_pass(opt_level=0, name="tvmq.BindParams")
    def bind(mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        remaining = {p.name: params[p.name] for p in mod["main"].params if p.name in params}
        mod = relax.transform.BindParams("main", remaining)(mod)
        func = mod["main"]
        mod["main"] = func.without_attr("params") if func.attrs and "params" in func.attrs else func
        return mod

    return bind


def lowering_passes(pm: PreparedModel, params: dict[str, np.ndarray], features: TargetFeatures,
                    record: Lowering, *, taps: bool = False, plan: Any = None, stats: Any = None,
                    range_method: str = "minmax", configs: Any = None, switchable: bool = False,
                    requant: str = "float") -> tuple[list[tvm.transform.Pass], list[tvm.transform.Pass]]:
    """The two pass lists of ``lower_module``: (layers to kernels, parameters bound) and, run
    under the target, TVM's CPU legalization + dead code elimination + ``ScheduleGeneric``."""
    if plan is not None and any(spec.name != "fp32" for spec in plan.values()):
        if stats is None and any(not spec.is_float for spec in plan.values()):
            raise TvmqError("a quantized plan needs calibration statistics (tvmq calibrate)")
        lower = RealizeIntegers(pm.layers, params, pm.param_layer, features, plan, stats, record,
                                range_method, configs=configs, requant=requant)
    else:
        # fp32 convs keep channels-last activations end to end, as the quantized ones do; the
        # tensors calibration and sensitivity analysis read stay NCHW
        lower = LowerToKernels(pm.layers, params, pm.param_layer, features, record, taps=taps,
                               configs=configs, switchable=switchable,
                               layout="NCHW" if taps or switchable else "NHWC",
                               hardswish=not (taps or switchable))
    target = tvm.target.Target(features.target_json())
    legalize = legalize_passes(target)
    if isinstance(lower, RealizeIntegers):
        # the float ops of a quantized graph stay one PrimFunc each: fused, LLVM contracts a
        # multiply and the add after it into one FMA, which the numpy program (one rounding per
        # op) would not reproduce
        legalize = [p for p in legalize if p.info.name not in ("FuseOps", "FuseTIR")]
    return ([lower, bind_params(params)],
            [*legalize, relax.transform.DeadCodeElimination(["main"]), ScheduleGeneric(features.fp32_lanes)])


def lower_module(pm: PreparedModel, features: TargetFeatures, *,
                 progress: Callable[[str], None] = no_progress, **options: Any) -> Lowered:
    """Prepared model -> scheduled Relax ``IRModule`` (+ kernel per layer, ...), before codegen.

    Every PrimFunc of the result is scheduled: the layers by their ``schedules`` kernel, the rest
    by ``ScheduleGeneric``. ``options`` as ``lowering_passes``: with a ``plan`` that quantizes
    layers, ``RealizeIntegers`` makes them integer-only (``stats``: calibration statistics) and
    ``Lowered.program`` simulates the result; ``configs`` chooses each kernel's configuration
    (``tvmq.tune.TunedConfigs``; default: the fallback ones), and every ``LoweredLayer`` says
    which it got (``config_source``); ``taps`` / ``switchable`` as ``LowerToKernels``.
    """
    register_errors()
    t = time.perf_counter()
    mod, params = to_relax(pm)
    import_seconds = time.perf_counter() - t
    progress(f"imported: {len(pm.layers)} layers")
    record = Lowering()
    to_kernels, legalize = lowering_passes(pm, params, features, record, **options)
    timer = PassTimer()
    with tvm.transform.PassContext(instruments=[timer]):
        mod = tvm.transform.Sequential(to_kernels)(mod)
        _check_lowering(pm, record, progress)
        with tvm.target.Target(features.target_json()):
            mod = tvm.transform.Sequential(legalize)(mod)
    return Lowered(**vars(record), mod=mod, timings={"import": import_seconds, **timer.seconds})


def _check_lowering(pm: PreparedModel, record: Lowering, progress: Callable[[str], None]) -> None:
    """Says what lowering did: the float islands of a quantized plan (one line per op kind),
    whether the numpy program reproduces the outputs, which layers missed a kernel."""
    kinds: dict[str, int] = {}
    for island in record.islands:
        for _, op in island.ops:
            kinds[op] = kinds.get(op, 0) + 1
    for op, n in sorted(kinds.items()):
        progress(f"float island: {n} x {op} (no integer implementation: float32 between a "
                 f"dequantize and a quantize)")
    if record.program is not None and not record.program.simulated():
        lost = record.program.missing()
        record.program = None
        progress(f"note: an op tvmq does not reproduce in numpy ({', '.join(lost)}) lies before an "
                 f"output: no bit-exact numpy oracle of the outputs")
    functions = {k.function for k in record.kernels.values()}
    progress(f"kernels: {len(record.kernels)} layers on {len(functions)} kernels")
    missed = [l.name for l in pm.layers if l.name not in record.kernels]
    if missed:  # correct (TVM's generic lowering) but slow: say so
        progress(f"warning: {len(missed)} layer(s) not matched to a kernel: {', '.join(missed[:5])}")


def codegen(mod, features: TargetFeatures):  # type: ignore[no-untyped-def]
    """Scheduled Relax module -> ``tvm.runtime.Executable`` (VM lowering + LLVM)."""
    target = tvm.target.Target(features.target_json())
    pipeline = tvm.transform.Sequential(dataflow_lower_passes(target) + finalize_passes(target))
    return tvm.compile(mod, target=target, relax_pipeline=pipeline)


def compile_relax(pm: PreparedModel, features: TargetFeatures, *,
                  progress: Callable[[str], None] = no_progress, **lowering: Any):  # type: ignore[no-untyped-def]
    """Prepared model -> (``tvm.runtime.Executable``, ``Lowered``); ``lowering`` as ``lower_module``."""
    lowered = lower_module(pm, features, progress=progress, **lowering)
    progress("codegen (LLVM)...")
    t = time.perf_counter()
    ex = codegen(lowered.mod, features)
    lowered.timings["codegen"] = time.perf_counter() - t
    return ex, lowered
