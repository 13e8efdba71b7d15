"""The compiler's low level: a prepared model -> a scheduled Relax module -> an executable.

``lower_module`` maps layers to tvmq's kernels (``passes.lower_kernels``; with a quantized plan
``passes.realize_integers``), then legalizes, fuses and schedules the rest; ``codegen`` lowers
the Relax module to TVM's VM and LLVM. Calibration, sensitivity analysis and ``builder.build``
sit above this module; it imports none of them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import tvm
from tvm import relax
from tvm.relax.backend.cpu_generic.pipeline import dataflow_lower_passes, finalize_passes

from schedules.target_features import TargetFeatures

from .errors import TvmqError
from .frontend import PreparedModel, to_relax
from .passes.lower_kernels import LowerToKernels
from .passes.realize_integers import RealizeIntegers
from .passes.schedule_generic import ScheduleGeneric


def no_progress(msg: str) -> None:
    """The default ``progress`` callback: says nothing."""


@dataclass
class Lowered:
    """The scheduled Relax module and what lowering learned (before codegen)."""

    mod: Any
    kernels: dict[str, dict[str, Any]]
    timings: dict[str, float]
    taps: list[tuple[str, str]] = field(default_factory=list)
    program: Any = None  # NumpyProgram of a quantized build (the bit-exact numpy oracle)
    qparams: dict[str, Any] = field(default_factory=dict)
    weight_bytes: dict[str, int] = field(default_factory=dict)  # per layer, as stored in the library
    switches: list[dict[str, Any]] = field(default_factory=list)  # LowerToKernels(switchable=True)


def lower_module(pm: PreparedModel, features: TargetFeatures, *,
                 progress: Callable[[str], None] = no_progress, taps: bool = False,
                 plan: Any = None, stats: Any = None, range_method: str = "minmax",
                 configs: Any = None, switchable: bool = False) -> Lowered:
    """Prepared model -> scheduled Relax ``IRModule`` (+ kernel per layer, ...), before codegen.

    Every PrimFunc of the result is scheduled: the layers by their ``schedules`` kernel, the rest
    by ``ScheduleGeneric``. With a ``plan`` that quantizes layers, ``RealizeIntegers`` makes them
    integer-only (``stats``: calibration statistics) and ``Lowered.program`` simulates the result.
    ``configs`` chooses each kernel's configuration (``tvmq.tune.TunedConfigs``; default: the
    fallback ones); every kernel entry says which it got (``config_source``).
    """
    timings: dict[str, float] = {}
    t = time.perf_counter()
    mod, params = to_relax(pm)
    timings["import"] = time.perf_counter() - t
    progress(f"imported: {len(pm.layers)} layers")

    t = time.perf_counter()
    program, qparams = None, {}
    if plan is not None and any(spec.name != "fp32" for spec in plan.values()):
        if stats is None and any(not spec.is_float for spec in plan.values()):
            raise TvmqError("a quantized plan needs calibration statistics (tvmq calibrate)")
        lower: Any = RealizeIntegers(pm.layers, params, pm.param_layer, features, plan, stats,
                                     range_method, configs=configs)
        mod = lower(mod)
        qparams = lower.qparams
        integer_only = all(not spec.is_float for spec in plan.values())
        # integer plans: no float op between their layers (else an error); with float layers
        # the program reproduces them too (each kernel's summation order): the exact oracle
        if lower.program.check_integer_only() if integer_only else lower.program.simulated():
            program = lower.program
        else:
            progress("note: an op tvmq does not reproduce in numpy (e.g. a softmax) lies before an "
                     "output: no bit-exact numpy oracle of the outputs")
    else:
        lower = LowerToKernels(pm.layers, params, pm.param_layer, features, taps=taps, configs=configs,
                               switchable=switchable)
        mod = lower(mod)
    for entry in lower.kernels.values():
        entry["config_source"] = lower.config_source[entry["function"]]
    remaining = {p.name: params[p.name] for p in mod["main"].params if p.name in params}
    mod = relax.transform.BindParams("main", remaining)(mod)
    func = mod["main"]
    mod["main"] = func.without_attr("params") if func.attrs and "params" in func.attrs else func
    timings["lower_kernels"] = time.perf_counter() - t
    progress(f"kernels: {len(lower.kernels)} layers on {len({k['function'] for k in lower.kernels.values()})} kernels")
    missed = [l.name for l in pm.layers if l.name not in lower.kernels]
    if missed:  # correct (TVM's generic lowering) but slow: say so
        progress(f"warning: {len(missed)} layer(s) not matched to a kernel: {', '.join(missed[:5])}")

    target = tvm.target.Target(features.target_json())
    t = time.perf_counter()
    with target:
        mod = tvm.transform.Sequential([
            relax.transform.LegalizeOps(),
            relax.transform.AnnotateTIROpPattern(),
            relax.transform.FoldConstant(),
            relax.transform.FuseOps(),
            relax.transform.FuseTIR(),
            relax.transform.DeadCodeElimination(["main"]),
        ])(mod)
        mod = ScheduleGeneric(features.fp32_lanes)(mod)
    timings["legalize_fuse_schedule"] = time.perf_counter() - t
    return Lowered(mod, lower.kernels, timings, list(getattr(lower, "taps", [])), program, qparams,
                   dict(lower.weight_bytes), list(getattr(lower, "switches", [])))


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
