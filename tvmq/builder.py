"""ONNX -> one deployable shared library (``model.so``) + ``manifest.json``: ``build``, the
orchestrator (read, plan, choose kernel configurations, compile with ``compiler``, export, and
account for size)."""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import tvm

from schedules.target_features import TargetFeatures, detect_host
from schedules.workload import REQUANT_MODES

from . import specs
from .compiler import compile_relax, no_progress
from .equalize import equalize_record
from .errors import ArtifactError, TvmqError
from .frontend import PreparedModel, prepare
from .plan import PrecisionPlan
from .recipe import recipe_options
from .runtime import library_record
from .tune import TunedConfigs, TuningDatabase, device_fingerprint
from .version import __version__

MANIFEST_SCHEMA = 1


@dataclass
class BuildResult:
    library: Path
    manifest: Path
    manifest_data: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)
    program: Any = None  # the numpy simulation of a quantized build


def size_accounting(pm: PreparedModel, plan: Any, stored: dict[str, int]) -> dict[str, Any]:
    """Weight bytes (as stored in the library: packed int8 / int4 / bf16 / fp32, biases and
    scales aside) and bit operations (MACs x weight bits x activation bits; fp32 counts 32 x 32,
    bf16 16 x 16),
    per layer and in total."""
    per_layer = {}
    for layer in pm.layers:
        spec = specs.get("fp32" if plan is None else plan[layer.name].name)
        per_layer[layer.name] = {"spec": spec.name,
                                 "weight_bytes": int(stored.get(layer.name, layer.weight_bytes(32))),
                                 "bops": spec.bops(layer.macs)}
    return {"weight_bytes": sum(v["weight_bytes"] for v in per_layer.values()),
            "weight_bytes_fp32": sum(l.weight_bytes(32) for l in pm.layers),
            "bops": sum(v["bops"] for v in per_layer.values()),
            "size": per_layer}


def _tuned_configs(db: Any, features: TargetFeatures, threads: int,
                   progress: Callable[[str], None]) -> tuple[Any, dict[str, Any] | None]:
    """The configuration chooser of a build with a tuning database (else ``None``) and the
    manifest's ``tuning`` entry; a warning when the database has no record of this device."""
    if db is None:
        return None, None
    if not isinstance(db, TuningDatabase):
        if not Path(db).exists():
            raise TvmqError(f"tuning database not found: {db}")
        if not Path(db).is_file():
            raise TvmqError(f"tuning database {db} is a directory, not a file")
    database = db if isinstance(db, TuningDatabase) else TuningDatabase(db)
    device = device_fingerprint(features, threads)
    if not database.query(device_id=device["id"]):
        known = ", ".join(f"{d['cpu']} {d['isa']} {d['threads']}T" for d in database.devices().values())
        progress(f"warning: the tuning database has no record of this device ({device['cpu']}, "
                 f"{device['isa']}, {threads} thread(s)); records are of: {known or 'none'}")
    return TunedConfigs(database, features, device["id"]), {"db": str(getattr(database, "path", None)),
                                                             "device": device}


def _manifest(model: Any, pm: PreparedModel, features: TargetFeatures, plan: Any, lowered: Any,
              kernels: dict[str, Any], tuning: dict[str, Any] | None, range_method: str,
              timings: dict[str, float], requant: str | None, stats: Any = None) -> dict[str, Any]:
    """``manifest.json``: what was built, for what, from what, how (see the README)."""
    return {
        "schema": MANIFEST_SCHEMA,
        "tvmq_version": __version__,
        "tvm_version": tvm.__version__,
        "source_model": "<in-memory>" if hasattr(model, "graph") else os.path.basename(os.fspath(model)),
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
        # the post-training steps that set the integer weights and biases (tvmq.recipe,
        # tvmq.equalize); None for fp32 builds
        "recipe": None if plan is None else {**recipe_options(stats), "equalize": equalize_record(model)},
        "requant": requant,  # the integer layers' requantization (None: no integer layer)
        # layout changes between two integer ops (the quantized convs keep NHWC activations; the
        # quantize / dequantize at the integer region's edges change layout as they convert)
        "layout_transforms": [{"from": a, "to": b, "shape": list(shape)}
                              for a, b, shape in getattr(lowered, "layout_transforms", [])],
        # float ops a quantized plan runs in float32 between integer ones (no integer form)
        "float_islands": [i.to_json() for i in getattr(lowered, "islands", [])],
        "total_macs": pm.layers.total_macs,
        **size_accounting(pm, plan, lowered.weight_bytes),
        "build_seconds": timings,
    }


def _check_writable(out: Path) -> None:
    """An ``ArtifactError`` now, before any compiling, where ``out`` cannot become the output
    directory (a file there, or its nearest existing parent not writable: tried, not read from
    the permission bits, which do not bind root)."""
    if out.exists() and not out.is_dir():
        raise ArtifactError(f"output path exists and is not a directory: {out}")
    existing = out
    while not existing.exists():
        existing = existing.parent
    try:
        if not existing.is_dir():
            raise NotADirectoryError(20, "not a directory")
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".tvmq-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ArtifactError(f"cannot create output directory {out}: {existing}: {e.strerror or e}") from None


def _write_artifacts(out: Path, ex: Any, manifest_of: Callable[[], dict[str, Any]],
                     timings: dict[str, float]) -> tuple[Path, Path, dict[str, Any]]:
    """``out/model.so`` and ``out/manifest.json`` (``manifest_of()`` once the library is
    exported, its record added), written under temporary names and renamed when complete: a
    reader never sees half a model.so or manifest (a stale pair in between is refused by the
    library record)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ArtifactError(f"cannot create output directory {out}: {e.strerror}") from None
    lib, mpath = out / "model.so", out / "manifest.json"
    tmp_lib, tmp_manifest = out / f".model.{os.getpid()}.tmp.so", out / f".manifest.{os.getpid()}.tmp.json"
    t = time.perf_counter()
    try:
        try:
            ex.export_library(str(tmp_lib))
        except Exception as e:  # the linker: a full disk, a read-only folder
            raise ArtifactError(f"cannot write {lib}: {str(e).strip().splitlines()[-1] if str(e).strip() else e}") from None
        timings["export"] = time.perf_counter() - t
        manifest = manifest_of()
        manifest["library"] = library_record(tmp_lib)  # tvmq.load refuses a library that differs
        tmp_manifest.write_text(json.dumps(manifest, indent=1))
        os.replace(tmp_lib, lib)
        os.replace(tmp_manifest, mpath)
    except OSError as e:
        raise ArtifactError(f"cannot write {out}: {e.strerror}") from None
    finally:
        tmp_lib.unlink(missing_ok=True)
        tmp_manifest.unlink(missing_ok=True)
    return lib, mpath, manifest


def build(model: str | os.PathLike, output_dir: str | os.PathLike, *,
          features: TargetFeatures | None = None,
          input_shapes: dict[str, tuple[int, ...]] | None = None, batch_size: int = 1,
          plan: Any = None, stats: Any = None, range_method: str = "minmax",
          db: Any = None, threads: int = 1, requant: str = REQUANT_MODES[0],
          progress: Callable[[str], None] = no_progress) -> BuildResult:
    """Compile an ONNX model into ``output_dir/model.so`` + ``output_dir/manifest.json``.

    Without ``plan`` every layer runs in fp32. A ``PrecisionPlan`` with W8A8 layers needs the
    calibration ``stats`` (``tvmq.calibration.collect``); ``BuildResult.program`` is then the
    numpy program of the graph the library runs (integer ops, and any bf16 / fp32 layers in
    their kernels' summation order): the library equals it bit for bit. It is None where an op
    tvmq does not reproduce (a softmax) lies before an output, and for plain fp32 builds.

    ``db`` (a tuning database path or ``tvmq.tune.TuningDatabase``): each kernel takes the best
    configuration measured on this CPU at ``threads`` threads (``tvmq tune``), the fallback
    configuration where the database has none; the manifest says which (``tuning``).

    ``requant``: how integer layers requantize their accumulators, ``float`` (one float32 scale
    per channel; the default) or ``dyadic`` (integer-only multiplier and shift, for targets
    without floating point); both exactly reproducible in numpy (``schedules.quant``).

    Examples
    --------
    >>> r = build("model.onnx", "out/")                 # doctest: +SKIP
    >>> m = tvmq.load(r.library); m.run({"input": x})   # doctest: +SKIP
    """
    out = Path(output_dir)
    _check_writable(out)
    if requant not in REQUANT_MODES:
        raise TvmqError(f"unknown requantization {requant!r}; choose from {', '.join(REQUANT_MODES)}")
    features = features or detect_host()
    t0 = time.perf_counter()
    progress(f"reading {model}")
    pm = prepare(model, input_shapes=input_shapes, batch_size=batch_size)
    if plan is not None and stats is not None and "equalized" in getattr(stats, "meta", {}) \
            and bool(stats.meta["equalized"]) != (equalize_record(model) is not None):
        raise TvmqError("the calibration statistics are of the " + (
            "equalized model: build the equalized one too (--equalize)" if stats.meta["equalized"] else
            "model before equalization: calibrate the equalized model (--equalize)"))
    t_prepare = time.perf_counter() - t0
    try:
        if plan is not None:
            if not isinstance(plan, PrecisionPlan):
                plan = PrecisionPlan.uniform(pm.layers, plan)  # "w8a8" etc.
            plan.validate(pm.layers)
        configs, tuning = _tuned_configs(db, features, threads, progress)
        ex, lowered = compile_relax(pm, features, progress=progress, plan=plan, stats=stats,
                                    range_method=range_method, configs=configs, requant=requant)
    except TvmqError:
        raise
    except Exception as e:
        raise TvmqError(f"compilation failed inside TVM: {type(e).__name__}: "
                        f"{str(e).strip().splitlines()[-1] if str(e).strip() else ''}") from e
    timings = {"prepare": t_prepare, **lowered.timings}
    kernels = {name: k.to_json() for name, k in lowered.kernels.items()}
    sources: dict[str, int] = {}
    for k in lowered.kernels.values():
        sources[k.config_source] = sources.get(k.config_source, 0) + 1
    if tuning is not None:
        tuning["layers"] = sources
        progress("kernel configurations: " + ", ".join(f"{n} layer(s) {s}" for s, n in sorted(sources.items())))
    lib, mpath, manifest = _write_artifacts(out, ex, lambda: _manifest(
        model, pm, features, plan, lowered, kernels, tuning, range_method, timings,
        requant if lowered.qparams else None, stats), timings)
    return BuildResult(lib, mpath, manifest, timings, lowered.program)
