"""ONNX -> one deployable shared library (``model.so``) + ``manifest.json``."""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from schedules.target_features import TargetFeatures, detect_host

from . import __version__
from .errors import ArtifactError, TvmqError
from .frontend import PreparedModel, prepare, to_relax

MANIFEST_SCHEMA = 1


@dataclass
class BuildResult:
    library: Path
    manifest: Path
    manifest_data: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)
    program: Any = None  # the numpy simulation of a quantized build


def _progress_default(msg: str) -> None:
    pass


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
                 progress: Callable[[str], None] = _progress_default, taps: bool = False,
                 plan: Any = None, stats: Any = None, range_method: str = "minmax",
                 configs: Any = None, switchable: bool = False) -> Lowered:
    """Prepared model -> scheduled Relax ``IRModule`` (+ kernel per layer, ...), before codegen.

    Every PrimFunc of the result is scheduled: the layers by their ``schedules`` kernel, the rest
    by ``ScheduleGeneric``. With a ``plan`` that quantizes layers, ``RealizeIntegers`` makes them
    integer-only (``stats``: calibration statistics) and ``Lowered.program`` simulates the result.
    ``configs`` chooses each kernel's configuration (``tvmq.tune.TunedConfigs``; default: the
    fallback ones); every kernel entry says which it got (``config_source``).
    """
    import tvm
    from tvm import relax

    from .passes.lower_kernels import LowerToKernels
    from .passes.schedule_generic import ScheduleGeneric

    timings: dict[str, float] = {}
    t = time.perf_counter()
    mod, params = to_relax(pm)
    timings["import"] = time.perf_counter() - t
    progress(f"imported: {len(pm.layers)} layers")

    t = time.perf_counter()
    program, qparams = None, {}
    if plan is not None and any(spec.name != "fp32" for spec in plan.values()):
        from .passes.realize_integers import RealizeIntegers

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
    import tvm
    from tvm.relax.backend.cpu_generic.pipeline import dataflow_lower_passes, finalize_passes

    target = tvm.target.Target(features.target_json())
    pipeline = tvm.transform.Sequential(dataflow_lower_passes(target) + finalize_passes(target))
    return tvm.compile(mod, target=target, relax_pipeline=pipeline)


def compile_relax(pm: PreparedModel, features: TargetFeatures, *,
                  progress: Callable[[str], None] = _progress_default, **lowering: Any):  # type: ignore[no-untyped-def]
    """Prepared model -> (``tvm.runtime.Executable``, ``Lowered``); ``lowering`` as ``lower_module``."""
    lowered = lower_module(pm, features, progress=progress, **lowering)
    progress("codegen (LLVM)...")
    t = time.perf_counter()
    ex = codegen(lowered.mod, features)
    lowered.timings["codegen"] = time.perf_counter() - t
    return ex, lowered


def size_accounting(pm: PreparedModel, plan: Any, stored: dict[str, int]) -> dict[str, Any]:
    """Weight bytes (as stored in the library: packed int8 / int4 / bf16 / fp32, biases and
    scales aside) and bit operations (MACs x weight bits x activation bits; fp32 counts 32 x 32,
    bf16 16 x 16),
    per layer and in total."""
    per_layer = {}
    for layer in pm.layers:
        spec = None if plan is None else plan[layer.name]
        w_bits, a_bits = (32, 32) if spec is None or spec.name == "fp32" else (spec.w_bits, spec.a_bits)
        per_layer[layer.name] = {"spec": "fp32" if spec is None else spec.name,
                                 "weight_bytes": int(stored.get(layer.name, layer.weight_bytes(32))),
                                 "bops": int(layer.macs) * w_bits * a_bits}
    return {"weight_bytes": sum(v["weight_bytes"] for v in per_layer.values()),
            "weight_bytes_fp32": sum(l.weight_bytes(32) for l in pm.layers),
            "bops": sum(v["bops"] for v in per_layer.values()),
            "size": per_layer}


def build(model: str | os.PathLike, output_dir: str | os.PathLike, *,
          features: TargetFeatures | None = None,
          input_shapes: dict[str, tuple[int, ...]] | None = None, batch_size: int = 1,
          plan: Any = None, stats: Any = None, range_method: str = "minmax",
          db: Any = None, threads: int = 1,
          progress: Callable[[str], None] = _progress_default) -> BuildResult:
    """Compile an ONNX model into ``output_dir/model.so`` + ``output_dir/manifest.json``.

    Without ``plan`` every layer runs in fp32. A ``PrecisionPlan`` with W8A8 layers needs the
    calibration ``stats`` (``tvmq.calibration.collect``); ``BuildResult.program`` is then the
    numpy program of the graph the library runs (integer ops, and any bf16 / fp32 layers in
    their kernels' summation order): the library equals it bit for bit. It is None where an op
    tvmq does not reproduce (a softmax) lies before an output, and for plain fp32 builds.

    ``db`` (a tuning database path or ``tvmq.tune.TuningDatabase``): each kernel takes the best
    configuration measured on this CPU at ``threads`` threads (``tvmq tune``), the fallback
    configuration where the database has none; the manifest says which (``tuning``).

    Examples
    --------
    >>> r = build("model.onnx", "out/")                 # doctest: +SKIP
    >>> m = tvmq.load(r.library); m.run({"input": x})   # doctest: +SKIP
    """
    import tvm

    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise ArtifactError(f"output path exists and is not a directory: {out}")
    features = features or detect_host()
    t0 = time.perf_counter()
    progress(f"reading {model}")
    pm = prepare(model, input_shapes=input_shapes, batch_size=batch_size)
    t_prepare = time.perf_counter() - t0
    try:
        if plan is not None:
            from .plan import PrecisionPlan

            if not isinstance(plan, PrecisionPlan):
                plan = PrecisionPlan.uniform(pm.layers, plan)  # "w8a8" etc.
            plan.validate(pm.layers)
        configs, tuning = None, None
        if db is not None:
            from .tune import TunedConfigs, TuningDatabase, device_fingerprint

            database = db if isinstance(db, TuningDatabase) else TuningDatabase(db)
            device = device_fingerprint(features, threads)
            if not database.query(device_id=device["id"]):
                known = ", ".join(f"{d['cpu']} {d['isa']} {d['threads']}T" for d in database.devices().values())
                progress(f"warning: the tuning database has no record of this device ({device['cpu']}, "
                         f"{device['isa']}, {threads} thread(s)); records are of: {known or 'none'}")
            configs = TunedConfigs(database, features, device["id"])
            tuning = {"db": str(getattr(database, "path", None)), "device": device}
        ex, lowered = compile_relax(pm, features, progress=progress, plan=plan, stats=stats,
                                    range_method=range_method, configs=configs)
    except TvmqError:
        raise
    except Exception as e:
        raise TvmqError(f"compilation failed inside TVM: {type(e).__name__}: "
                        f"{str(e).strip().splitlines()[-1] if str(e).strip() else ''}") from e
    timings = {"prepare": t_prepare, **lowered.timings}
    kernels = lowered.kernels
    sources: dict[str, int] = {}
    for k in kernels.values():
        sources[k["config_source"]] = sources.get(k["config_source"], 0) + 1
    if tuning is not None:
        tuning["layers"] = sources
        progress("kernel configurations: " + ", ".join(f"{n} layer(s) {s}" for s, n in sorted(sources.items())))
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ArtifactError(f"cannot create output directory {out}: {e.strerror}") from None
    lib = out / "model.so"
    t = time.perf_counter()
    ex.export_library(str(lib))
    timings["export"] = time.perf_counter() - t
    manifest = {
        "schema": MANIFEST_SCHEMA,
        "tvmq_version": __version__,
        "tvm_version": tvm.__version__,
        "source_model": os.path.basename(os.fspath(model)),
        "target": features.target_json(),
        "target_features": {k: v for k, v in vars(features).items()},
        "isa": features.isa,
        "host": platform.node(),
        "inputs": [s.to_json() for s in pm.inputs],
        "outputs": [s.to_json() for s in pm.outputs],
        "layers": pm.layers.to_json(),
        "kernels": kernels,
        "tuning": tuning,
        "precision": "fp32" if plan is None else sorted({s.name for s in plan.values()}),
        "plan": None if plan is None else plan.to_json(),
        "qparams": lowered.qparams,
        "range_method": range_method if plan is not None else None,
        "total_macs": pm.layers.total_macs,
        **size_accounting(pm, plan, lowered.weight_bytes),
        "build_seconds": timings,
    }
    mpath = out / "manifest.json"
    mpath.write_text(json.dumps(manifest, indent=1))
    return BuildResult(lib, mpath, manifest, timings, lowered.program)
