"""The mixed-precision pipeline: calibrate, analyze, read measured latencies, allocate, build,
re-measure (``tvmq compile --latency-budget / --size-budget``).

    >>> r = compile_mixed("model.onnx", "calib.npz", "out/", latency_budget="0.8x",
    ...                   db="tuning.jsonl")                                  # doctest: +SKIP

Budgets are absolute (``"3.5ms"``, ``"2MB"`` / ``"2000000"`` bytes, BOPs as a number) or
relative to the uniform W8A8 plan (``"0.8x"``). The allocation problem has one option per layer
and spec: sensitivity = the output noise-to-signal ratio of that layer alone at that spec
(``tvmq.sensitivity``), latency = the layer's kernel on this device (``LatencyTable``: the best
tuning record, or the predictor's estimate for a layer never measured), size = the weight bytes
at the spec's width before any kernel's channel padding (the manifest's ``weight_bytes`` counts
the packed, padded arrays: the same on wide layers, several times more on a few-channel head such
as a 4-way dense layer, which kernels pad to their vector lanes), BOPs = MACs x weight bits x activation bits; the edges between layers carry the measured
conversion kernels (float <-> integer). Predicted end-to-end latency = the plan's layers and
conversions plus the rest of the graph (pools, adds, the model's edges), taken as the measured
uniform-W8A8 library minus its layer sum; the built libraries are timed and both numbers go in
the manifest and the report.

``compile_mixed`` runs ``STEPS`` (calibrate, analyze, latency_table, reference, allocate, build,
measure, evaluate, report), each a function of one ``MixedContext``. The steps whose output is a
file in the output directory (calibration.json, sensitivity.json, latency_table.json, w8a8/)
record in its resume.json the key of what they were made from; a rerun reuses an output whose
key matches and recomputes the others.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import re
import shutil
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from schedules import registry
from schedules.target_features import detect_host

from . import specs as specs_
from .allocate import AllocationProblem, Option, allocate, pareto_front
from .builder import build
from .calibration import ActivationStats, CalibrationData, collect
from .errors import TvmqError
from .frontend import prepare
from .plan import PrecisionPlan, QuantSpec
from .recipe import with_recipe
from .report import write_report
from .runtime import load
from .sensitivity import SensitivityResult, analyze
from .tune import LatencyTable, TuningDatabase, device_fingerprint
from .version import __version__


def parse_budget(text: str | float | None, unit: str) -> tuple[str, float] | None:
    """``"0.8x"`` -> ("relative", 0.8); ``"3.5ms"`` -> ("absolute", 3.5) (ms); ``"2MB"`` -> bytes."""
    if text is None:
        return None
    if isinstance(text, (int, float)):
        return "absolute", float(text)
    t = str(text).strip().lower().replace(" ", "")
    m = re.fullmatch(r"([0-9]*\.?[0-9]+(?:e[+-]?\d+)?)(x|ms|us|s|b|kb|mb|gb)?", t)
    if not m:
        raise TvmqError(f"cannot read budget {text!r}: use e.g. 0.8x, 3.5ms, 2MB")
    value, suffix = float(m.group(1)), m.group(2) or ""
    if value <= 0:
        raise TvmqError(f"budget {text!r} must be positive")
    if suffix == "x":
        return "relative", value
    scale = {"latency": {"": 1.0, "ms": 1.0, "us": 1e-3, "s": 1e3},
             "size": {"": 1.0, "b": 1.0, "kb": 1e3, "mb": 1e6, "gb": 1e9},
             "bops": {"": 1.0}}[unit]
    if suffix not in scale:
        raise TvmqError(f"budget {text!r}: unit {suffix!r} does not fit a {unit} budget")
    return "absolute", value * scale[suffix]


def check_budgets(*, latency: Any = None, size: Any = None, bops: Any = None, db: Any = None) -> None:
    """The budgets of a mixed-precision compile, checked before any work (one clear error)."""
    if latency is None and size is None and bops is None:
        raise TvmqError("a mixed-precision compile needs a budget: --latency-budget, --size-budget or --bops-budget")
    if latency is not None and db is None:
        raise TvmqError("a latency budget needs measured latencies: run `tvmq tune` and pass --db")
    for text, unit in ((latency, "latency"), (size, "size"), (bops, "bops")):
        parse_budget(text, unit)


def load_labels(labels: Any, count: int) -> np.ndarray:
    """Evaluation labels: ``count`` class indices (an integer ``.npy`` or array)."""
    if isinstance(labels, (str, os.PathLike)):
        try:
            labels = np.load(labels, allow_pickle=False)
        except FileNotFoundError:
            raise TvmqError(f"evaluation labels not found: {labels}") from None
        except (OSError, ValueError) as e:
            raise TvmqError(f"cannot read evaluation labels {labels}: not a numpy file ({e})") from None
    y = np.asarray(labels)
    if not isinstance(y, np.ndarray) or y.dtype.kind not in "iu":
        raise TvmqError(f"evaluation labels must be class indices (integers), got dtype {y.dtype}")
    y = y.ravel()
    if len(y) != count:
        raise TvmqError(f"{len(y)} labels for {count} evaluation inputs")
    return y


def _check_mixed_inputs(model: Any, output_dir: Any, db: Any, calibration: Any, eval_data: Any,
                        eval_labels: Any, shapes: dict[str, Any]) -> None:
    """Every path of a mixed-precision compile, read or checked before any work: nothing is
    computed, then refused (a mistyped --eval-labels was found after the whole pipeline)."""
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise TvmqError(f"output path exists and is not a directory: {out}")
    if db is not None and not isinstance(db, TuningDatabase) and not Path(db).is_file():
        raise TvmqError(f"tuning database not found: {db}")
    if eval_labels is not None and eval_data is None:
        raise TvmqError("evaluation labels need the evaluation inputs (eval_data)")
    inputs = prepare(model, **shapes).inputs  # also checks the input shapes against the model
    if isinstance(calibration, (ActivationStats, CalibrationData)) and eval_data is None:
        return
    if not isinstance(calibration, (ActivationStats, CalibrationData)) and not str(calibration).endswith(".json"):
        CalibrationData.from_source(calibration, inputs)
    if eval_data is not None:
        data = eval_data if isinstance(eval_data, CalibrationData) else CalibrationData.from_source(eval_data, inputs)
        if eval_labels is not None:
            load_labels(eval_labels, len(data))


def layer_edges(pm: Any) -> list[tuple[str, str]]:
    """(producer layer, consumer layer) pairs: the consumer's input comes from the producer's
    output through ops that are not layers (activations, adds, pools, reshapes)."""
    nodes = list(pm.model.graph.node)
    by_node = {l.node: l.name for l in pm.layers}
    consumers: dict[str, list[Any]] = {}
    for n in nodes:
        for t in n.input:
            consumers.setdefault(t, []).append(n)
    edges = []
    for n in nodes:
        if n.name not in by_node:
            continue
        seen, queue = set(), deque(n.output)
        while queue:
            t = queue.popleft()
            for c in consumers.get(t, []):
                if c.name in seen:
                    continue
                seen.add(c.name)
                if c.name in by_node:
                    edges.append((by_node[n.name], by_node[c.name]))
                else:
                    queue.extend(c.output)
    return sorted(set(edges))


def build_problem(pm: Any, sensitivity: Any, table: Any | None, specs: list[str], *,
                  context: str = "alone", edges: list[tuple[str, str]] | None = None) -> AllocationProblem:
    """The allocation problem of a model (no budgets yet); latency in ms (0 without a table)."""
    options: dict[str, dict[str, Option]] = {}
    for layer in pm.layers:
        options[layer.name] = {
            s: Option(sensitivity=sensitivity.nsr(layer.name, s, context),
                      latency=0.0 if table is None else table.latency_us(layer.name, s) / 1e3,
                      size=float(specs_.get(s).weight_bytes(layer.weight_params)),
                      bops=float(specs_.get(s).bops(layer.macs)))
            for s in specs}
    boundaries: dict[tuple[str, str], dict[tuple[str, str], float]] = {}
    if table is not None:
        for a, b in (edges if edges is not None else layer_edges(pm)):
            costs = {(s, t): table.boundary_us(b, s, t) / 1e3 for s in specs for t in specs}
            costs = {k: v for k, v in costs.items() if v > 0}
            if costs:
                boundaries[(a, b)] = costs
    return AllocationProblem(options=options, boundaries=boundaries)


def resolve_budgets(problem: AllocationProblem, *, latency: Any = None, size: Any = None, bops: Any = None,
                    overhead_ms: float = 0.0) -> dict[str, float]:
    """Budgets in the problem's units; relative ones scale the uniform W8A8 plan's totals
    (latency budgets are end to end: ``overhead_ms``, the rest of the graph, is taken off)."""
    ref = problem.totals({l: "w8a8" for l in problem.options}) if all(
        "w8a8" in o for o in problem.options.values()) else None
    out = {}
    for name, text, unit in (("latency", latency, "latency"), ("size", size, "size"), ("bops", bops, "bops")):
        parsed = parse_budget(text, unit)
        if parsed is None:
            continue
        kind, value = parsed
        if kind == "relative":
            if ref is None:
                raise TvmqError(f"a relative {name} budget needs w8a8 among the candidate specs")
            value = value * (ref[name] + (overhead_ms if name == "latency" else 0.0))
        out[name] = value - (overhead_ms if name == "latency" else 0.0)
        if out[name] <= 0:
            raise TvmqError(f"{name} budget {text!r} is below what the rest of the graph alone takes "
                            f"({overhead_ms:.2f} ms)")
    return out


@dataclass
class MixedResult:
    build: Any  # BuildResult of the chosen plan
    plan: dict[str, str]
    allocation: Any
    predicted_ms: float
    measured_ms: float | None
    report: Path | None
    timings: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


def measure_ms(library: Path, threads: int = 1, repeat: int = 30) -> float:
    return load(library).benchmark(warmup=5, repeat=repeat, threads=threads).median_ms


def compile_mixed(model: Any, calibration: Any, output_dir: Any, *, latency_budget: Any = None,
                  size_budget: Any = None, bops_budget: Any = None, db: Any = None,
                  specs: list[str] = specs_.NAMES, threads: int = 1, features: Any = None,  # type: ignore[assignment]
                  range_method: str = "minmax", sensitivity_samples: int = 32, measure: bool = True,
                  context: str = "alone", sensitivity: Any = None, latency_margin: float = 0.05,
                  eval_data: Any = None, eval_labels: Any = None, resume: bool = True,
                  requant: str = "float", equalize: bool = False, gptq: bool = False,
                  bias_correction: bool = True, hessian_clipping: bool = False, narrow_weights: bool = False,
                  input_shapes: dict[str, tuple[int, ...]] | None = None, batch_size: int = 1,
                  progress: Callable[[str], None] = lambda m: None) -> MixedResult:
    """The whole pipeline into ``output_dir`` (``model.so``, ``manifest.json``, ``report.html``,
    ``sensitivity.json``, ``calibration.json``, ``w8a8/`` the reference build), run as the
    named ``STEPS`` over one ``MixedContext``.

    ``calibration``: the unlabeled inputs (a ``CalibrationData`` or what it reads); with
    ``sensitivity`` given (a ``SensitivityResult`` or its JSON, e.g. from ``tvmq analyze``), the
    statistics alone are enough (``ActivationStats`` or a calibration.json).

    ``latency_margin``: the plan is chosen so that its *predicted* latency stays that fraction
    below the budget (measured here: predictions fall 1-8% under the measured libraries on
    MobileNetV2), so that the library meets the budget when measured.

    ``eval_data`` (inputs, as ``CalibrationData`` reads them) and optional ``eval_labels``
    (class indices): the fp32, W8A8 and chosen libraries are run on them and the report and
    manifest get their agreement with fp32 (top-1 of the argmax) and, with labels, accuracy.

    ``resume``: a rerun into the same ``output_dir`` reuses calibration.json, sensitivity.json,
    latency_table.json and w8a8/ (and the W8A8 latency measured with it) where ``resume.json``
    records them as made from the same model bytes, calibration inputs or statistics, tuning
    database, options and tvmq version; anything else is recomputed. ``resume=False``
    recomputes every step (the keys are still recorded for the next run).

    ``equalize`` (cross-layer equalization, ``tvmq.equalize``: the model is equalized before
    anything else), ``gptq`` (calibration also sums each layer's input Hessian; weights are
    rounded with error feedback), ``bias_correction`` and ``hessian_clipping`` (each weight
    channel clipped for the output error under its Hessian; summed as for gptq): the post-training steps of the
    quantization recipe (``tvmq.recipe``), the same for the sensitivity analysis and the builds.

    ``input_shapes`` / ``batch_size``: as ``frontend.prepare``; a model with dynamic dimensions
    (H / W) is calibrated, analyzed, timed and compiled at the static shapes given."""
    check_budgets(latency=latency_budget, size=size_budget, bops=bops_budget, db=db)
    specs_.check(list(specs), "the specs to allocate")
    shapes = {"input_shapes": dict(input_shapes) if input_shapes else None, "batch_size": batch_size}
    _check_mixed_inputs(model, output_dir, db, calibration, eval_data, eval_labels, shapes)
    if equalize:
        from .equalize import equalize as equalize_model

        model = equalize_model(model, **shapes)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    ctx = MixedContext(
        model=model, calibration=calibration, out=out, latency_budget=latency_budget,
        size_budget=size_budget, bops_budget=bops_budget, db=db, specs=list(specs), threads=threads,
        features=features or detect_host(), range_method=range_method,
        sensitivity_samples=sensitivity_samples, measure=measure, context=context,
        given_sensitivity=sensitivity, latency_margin=latency_margin, eval_data=eval_data,
        eval_labels=eval_labels, resume=resume, progress=progress, pm=prepare(model, **shapes), requant=requant,
        recipe={"gptq": gptq, "bias_correction": bias_correction, "hessian_clipping": hessian_clipping,
                "narrow_weights": narrow_weights},
        shapes=shapes)
    for step in STEPS:
        step(ctx)
    return MixedResult(ctx.result, ctx.alloc.plan, ctx.alloc, ctx.predicted or 0.0, ctx.measured, ctx.report,
                       ctx.timings, {"front": ctx.front, "problem": ctx.problem, "sensitivity": ctx.sens,
                                     "table": ctx.table, "reference": ctx.reference_build})


@dataclass
class MixedContext:
    """One mixed-precision compile: its inputs and options, then what each step produces."""

    model: Any
    calibration: Any
    out: Path
    latency_budget: Any
    size_budget: Any
    bops_budget: Any
    db: Any
    specs: list[str]
    threads: int
    features: Any
    range_method: str
    sensitivity_samples: int
    measure: bool
    context: str
    given_sensitivity: Any
    latency_margin: float
    eval_data: Any
    eval_labels: Any
    resume: bool
    progress: Callable[[str], None]
    pm: Any
    requant: str  # the integer layers' requantization (builder.build)
    recipe: dict[str, bool] = field(default_factory=dict)  # tvmq.recipe options (gptq, bias_correction)
    # frontend.prepare's input_shapes and batch_size: every step compiles at these static shapes
    shapes: dict[str, Any] = field(default_factory=lambda: {"input_shapes": None, "batch_size": 1})
    # calibrate
    stats: Any = None
    data: CalibrationData | None = None
    # analyze
    sens: Any = None
    # latency_table
    table: Any = None
    problem: Any = None
    # reference
    reference: Path | None = None  # the uniform W8A8 library
    reference_build: Any = None  # its BuildResult where built in this run (None where reused)
    reference_ms: float | None = None
    overhead: float = 0.0  # ms of the rest of the graph (measured W8A8 minus its layer sum)
    # allocate
    budgets: dict[str, float] = field(default_factory=dict)
    alloc: Any = None
    front: list[Any] = field(default_factory=list)
    predicted: float | None = None
    # build, measure, evaluate, report
    result: Any = None
    measured: float | None = None
    quality: dict[str, Any] | None = None
    report: Path | None = None
    timings: dict[str, float] = field(default_factory=dict)
    digests: dict[str, str] = field(default_factory=dict)  # of the inputs, for the resume keys


@dataclass(frozen=True)
class Step:
    """A named step of ``compile_mixed``: ``run(ctx)`` fills its part of the context; its
    seconds go to ``ctx.timings[timing]`` (None: not timed); skipped where ``when(ctx)`` is false."""

    name: str
    run: Callable[[MixedContext], None]
    timing: str | None = None
    when: Callable[[MixedContext], bool] = lambda ctx: True

    def __call__(self, ctx: MixedContext) -> None:
        if not self.when(ctx):
            return
        t = time.perf_counter()
        self.run(ctx)
        if self.timing is not None:
            ctx.timings[self.timing] = time.perf_counter() - t


def _calibrate(ctx: MixedContext) -> None:
    """The activation statistics: given, reused from calibration.json, or collected (and saved)."""
    if isinstance(ctx.calibration, ActivationStats) or str(ctx.calibration).endswith(".json"):
        stats = ctx.calibration if isinstance(ctx.calibration, ActivationStats) else ActivationStats.load(ctx.calibration)
        if (ctx.recipe.get("gptq") or ctx.recipe.get("hessian_clipping")) and not stats.hessians:
            raise TvmqError("gptq / hessian_clipping need statistics with Hessians: calibrate with --gptq "
                            "(collect(hessians=True))")
        ctx.stats = with_recipe(stats, **ctx.recipe)
        return
    ctx.data = (ctx.calibration if isinstance(ctx.calibration, CalibrationData)
                else CalibrationData.from_source(ctx.calibration, ctx.pm.inputs))
    hessians = bool(ctx.recipe.get("gptq") or ctx.recipe.get("hessian_clipping"))
    path, key = ctx.out / "calibration.json", _key(ctx, "model", "data", "features", "shapes", hessians=hessians)
    if _reusable(ctx, "calibrate", key, path):
        ctx.stats = with_recipe(ActivationStats.load(path), **ctx.recipe)
        ctx.progress(f"calibrate: reused {path} (same model, data and options)")
        return
    _forget(ctx, "calibrate")
    ctx.progress(f"calibrating on {len(ctx.data)} samples" + (" (and each layer's Hessian)" if hessians else ""))
    stats = collect(ctx.model, ctx.data, features=ctx.features, progress=ctx.progress, hessians=hessians,
                    **ctx.shapes)
    _atomic(path, stats.save)
    _remember(ctx, "calibrate", key, path)
    ctx.stats = with_recipe(stats, **ctx.recipe)


def _analyze(ctx: MixedContext) -> None:
    """The per-layer sensitivities: given, reused from sensitivity.json, or measured into it."""
    if ctx.given_sensitivity is not None:
        given = ctx.given_sensitivity
        ctx.sens = given if isinstance(given, SensitivityResult) else SensitivityResult.load(given)
        missing = [s for s in ctx.specs if s != "fp32" and s not in ctx.sens.specs]
        if missing:
            raise TvmqError(f"the sensitivity results have no {missing}")
        return
    if ctx.data is None:
        raise TvmqError("sensitivity analysis needs the calibration inputs, not only their statistics")
    specs = [s for s in ctx.specs if s != "fp32"]
    contexts = ["alone"] if ctx.context == "alone" else ["alone", ctx.context]
    path = ctx.out / "sensitivity.json"
    key = _key(ctx, "model", "stats", "data", "features", "shapes", specs=specs, contexts=contexts,
               range_method=ctx.range_method, samples=ctx.sensitivity_samples)
    if _reusable(ctx, "analyze", key, path):
        ctx.sens = SensitivityResult.load(path)
        ctx.progress(f"analyze: reused {path} (same model, data and options)")
        return
    _forget(ctx, "analyze")
    if not ctx.resume and path.exists():
        path.unlink()  # analyze() would resume from its finished layers
    ctx.sens = analyze(ctx.model, ctx.stats, ctx.data, specs=specs, range_method=ctx.range_method,
                       features=ctx.features, output=path, limit=ctx.sensitivity_samples,
                       contexts=contexts, progress=ctx.progress, **ctx.shapes)
    _remember(ctx, "analyze", key, path)


def _latency_table(ctx: MixedContext) -> None:
    """The measured latencies of every layer at every spec (with a tuning database), and the
    allocation problem."""
    if ctx.db is not None:
        path = ctx.out / "latency_table.json"
        narrow = bool(ctx.recipe.get("narrow_weights"))
        key = _key(ctx, "model", "db", "features", "shapes", specs=ctx.specs, threads=ctx.threads,
                   **({"narrow_weights": True} if narrow else {}))
        if _reusable(ctx, "latency_table", key, path):
            ctx.table = LatencyTable.load(path)
            ctx.progress(f"latency_table: reused {path} (same model, database and options): "
                         f"{ctx.table.counts()}")
        else:
            _forget(ctx, "latency_table")
            device = device_fingerprint(ctx.features, ctx.threads)
            ctx.table = LatencyTable.from_database(TuningDatabase(ctx.db), device["id"], model=ctx.pm,
                                                   specs=ctx.specs, features=ctx.features, narrow_weights=narrow)
            _atomic(path, ctx.table.save)
            _remember(ctx, "latency_table", key, path)
            ctx.progress(f"latency table: {ctx.table.counts()}")
    ctx.problem = build_problem(ctx.pm, ctx.sens, ctx.table, ctx.specs, context=ctx.context,
                                edges=layer_edges(ctx.pm))


def _reference(ctx: MixedContext) -> None:
    """The uniform W8A8 library in w8a8/ (built, or reused), timed: the rest-of-graph overhead."""
    path = ctx.out / "w8a8"
    key = _key(ctx, "model", "stats", "db", "features", "shapes", range_method=ctx.range_method, threads=ctx.threads,
               requant=ctx.requant)
    ctx.reference = path / "model.so"
    outputs = (ctx.reference, path / "manifest.json")
    record = _reusable(ctx, "reference", key, *outputs)
    if record is not None:
        ctx.progress(f"reference: reused {path} (same model, statistics and options)")
    else:
        _forget(ctx, "reference")
        partial = ctx.out / "w8a8.partial"
        shutil.rmtree(partial, ignore_errors=True)
        built = build(ctx.model, partial, features=ctx.features, plan="w8a8", stats=ctx.stats,
                      range_method=ctx.range_method, db=ctx.db, threads=ctx.threads, requant=ctx.requant,
                      progress=lambda m: None, **ctx.shapes)
        shutil.rmtree(path, ignore_errors=True)
        partial.rename(path)
        ctx.reference_build = dataclasses.replace(built, library=ctx.reference, manifest=path / "manifest.json")
        record = _remember(ctx, "reference", key, *outputs)
    if ctx.measure:
        ctx.reference_ms = record.get("measured_ms")
        if ctx.reference_ms is None:  # built or reused without being timed
            ctx.reference_ms = measure_ms(ctx.reference, ctx.threads)
            _remember(ctx, "reference", key, *outputs, measured_ms=ctx.reference_ms)
        if ctx.table is not None:
            w8 = ctx.problem.totals({l: "w8a8" for l in ctx.problem.options})["latency"]
            ctx.overhead = max(0.0, ctx.reference_ms - w8)


def _allocate(ctx: MixedContext) -> None:
    """Budgets in the problem's units, the optimal plan under them and the Pareto front."""
    if not 0 <= ctx.latency_margin < 1:
        raise TvmqError(f"latency_margin must be in [0, 1), got {ctx.latency_margin}")
    overhead, problem = ctx.overhead, ctx.problem
    budgets = resolve_budgets(problem, latency=ctx.latency_budget, size=ctx.size_budget, bops=ctx.bops_budget,
                              overhead_ms=overhead)
    if "latency" in budgets:  # the end-to-end budget, less the margin, less the rest of the graph
        target = (budgets["latency"] + overhead) * (1 - ctx.latency_margin) - overhead
        if target <= 0:
            raise TvmqError(f"latency budget {ctx.latency_budget!r} leaves nothing for the layers after the "
                            f"{100 * ctx.latency_margin:.0f}% margin and {overhead:.2f} ms for the rest of "
                            f"the graph")
        budgets["latency_end_to_end"] = budgets["latency"] + overhead
        budgets["latency"] = target
    problem.latency_budget = budgets.get("latency")
    problem.size_budget = budgets.get("size")
    problem.bops_budget = budgets.get("bops")
    ctx.budgets, ctx.alloc = budgets, allocate(problem)
    ctx.front = pareto_front(AllocationProblem(problem.options, size_budget=problem.size_budget,
                                               bops_budget=problem.bops_budget, boundaries=problem.boundaries)) \
        if ctx.table is not None else []
    ctx.predicted = ctx.alloc.totals["latency"] + overhead if ctx.table is not None else None
    plan = ctx.alloc.plan
    ctx.progress(f"allocation {ctx.alloc.status}: " + ", ".join(
        f"{s} x{list(plan.values()).count(s)}" for s in ctx.specs if s in plan.values())
        + (f"; binding: {', '.join(ctx.alloc.binding)}" if ctx.alloc.binding else ""))


def _build(ctx: MixedContext) -> None:
    """The chosen plan's library: ``output_dir/model.so`` + manifest.json."""
    plan = PrecisionPlan({l: _spec(s) for l, s in ctx.alloc.plan.items()}, ctx.pm.layers)
    ctx.result = build(ctx.model, ctx.out, features=ctx.features, plan=plan, stats=ctx.stats,
                       range_method=ctx.range_method, db=ctx.db, threads=ctx.threads, requant=ctx.requant,
                       progress=ctx.progress, **ctx.shapes)


def _measure(ctx: MixedContext) -> None:
    """The chosen library's median latency."""
    ctx.measured = measure_ms(ctx.result.library, ctx.threads) if ctx.measure else None


def _evaluate(ctx: MixedContext) -> None:
    """fp32 (built into fp32/), W8A8 and the chosen library on the evaluation inputs."""
    fp32 = build(ctx.model, ctx.out / "fp32", features=ctx.features, db=ctx.db, threads=ctx.threads,
                 progress=lambda m: None, **ctx.shapes)
    ctx.quality = evaluate({"fp32": fp32.library, "w8a8": ctx.reference, "chosen": ctx.result.library},
                           ctx.eval_data, ctx.eval_labels, ctx.pm)
    ctx.progress("evaluation: " + ", ".join(
        f"{k} agreement {100 * v['agreement']:.1f}%" + (f" top-1 {100 * v['top1']:.1f}%" if v.get("top1") is not None else "")
        for k, v in ctx.quality.items()))


def _report(ctx: MixedContext) -> None:
    """The manifest's allocation, latency, evaluation and timings; report.json and report.html."""
    manifest = json.loads(ctx.result.manifest.read_text())
    alloc, budgets = ctx.alloc, ctx.budgets
    manifest["allocation"] = {
        "status": alloc.status, "binding": alloc.binding, "violated": alloc.violated,
        "budgets": {"latency_ms": budgets.get("latency_end_to_end"), "latency_margin": ctx.latency_margin,
                    "size_bytes": budgets.get("size"), "bops": budgets.get("bops"),
                    "given": {"latency": ctx.latency_budget, "size": ctx.size_budget, "bops": ctx.bops_budget}},
        "totals": alloc.totals, "predicted_sqnr_db": ctx.sens.predicted_sqnr_db(alloc.plan, ctx.context),
        "context": ctx.context, "solve_seconds": alloc.solve_seconds}
    manifest["latency"] = {"predicted_ms": ctx.predicted, "measured_ms": ctx.measured, "threads": ctx.threads,
                           "rest_of_graph_ms": ctx.overhead, "w8a8_measured_ms": ctx.reference_ms}
    if ctx.quality is not None:
        manifest["evaluation"] = ctx.quality
    manifest["pipeline_seconds"] = ctx.timings
    _atomic(ctx.result.manifest, lambda p: Path(p).write_text(json.dumps(manifest, indent=1)))

    report_data = _report_data(ctx)
    for p in report_data["plans"]:
        p.update((ctx.quality or {}).get(p["label"], {}))
    _atomic(ctx.out / "report.json", lambda p: Path(p).write_text(json.dumps(report_data, indent=1)))
    try:
        ctx.report = write_report(report_data, ctx.out)
    except ImportError as e:  # matplotlib missing: the data is kept, the page is not drawn
        ctx.progress(f"warning: no report.html ({e}); report.json is written")


STEPS = [
    Step("calibrate", _calibrate, "calibrate"),
    Step("analyze", _analyze, "analyze"),
    Step("latency_table", _latency_table, "latency_table"),
    Step("reference", _reference, "reference_build"),
    Step("allocate", _allocate, "allocate"),
    Step("build", _build, "build"),
    Step("measure", _measure),
    Step("evaluate", _evaluate, "evaluate", when=lambda ctx: ctx.eval_data is not None),
    Step("report", _report),
]


# Resuming: resume.json in the output directory maps a step to the key of the inputs its output
# was made from. A step's entry is dropped before it recomputes and written after its output is
# complete, so an interrupted step leaves no entry and its output is never trusted.
RESUME_FILE = "resume.json"
RESUME_SCHEMA = 1


def _key(ctx: MixedContext, *inputs: str, **options: Any) -> str:
    """sha256 of tvmq's version and sources, the named inputs' digests and the ``options``."""
    parts = {"tvmq": __version__, "source": _source_digest(), "options": options,
             "inputs": {name: _digest(ctx, name) for name in inputs}}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


@functools.lru_cache(maxsize=1)
def _source_digest() -> str:
    """sha256 of the compiler's own Python sources (``tvmq/``, ``schedules/``): an output made
    by other code (an edited checkout, another release) is not reused."""
    h = hashlib.sha256()
    for package in (Path(__file__).parent, Path(registry.__file__).parent):
        for path in sorted(package.rglob("*.py")):
            h.update(str(path.relative_to(package.parent)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def _digest(ctx: MixedContext, name: str) -> str:
    """The digest of one input of the pipeline (computed once per run)."""
    if name not in ctx.digests:
        h = hashlib.sha256()
        if name == "model":
            h.update(ctx.model.SerializeToString() if hasattr(ctx.model, "graph") else Path(ctx.model).read_bytes())
        elif name == "data":
            assert ctx.data is not None
            for k, a in ctx.data.arrays.items():
                h.update(json.dumps([k, str(a.dtype), list(a.shape)]).encode())
                h.update(np.ascontiguousarray(a).tobytes())
        elif name == "stats":
            h.update(json.dumps(ctx.stats.to_json(), sort_keys=True).encode())
        elif name == "db":
            h.update(b"<none>" if ctx.db is None else
                     Path(ctx.db).read_bytes() if Path(ctx.db).exists() else b"<missing>")
        elif name == "shapes":  # the static input shapes every step compiles at
            h.update(json.dumps([s.to_json() for s in ctx.pm.inputs], sort_keys=True).encode())
        elif name == "features":
            h.update(json.dumps(dataclasses.asdict(ctx.features), sort_keys=True).encode())
        else:
            raise ValueError(f"no digest of {name!r}")
        ctx.digests[name] = h.hexdigest()
    return ctx.digests[name]


def _records(out: Path) -> dict[str, dict[str, Any]]:
    """The steps recorded in ``out``'s resume.json (none where it is missing or unreadable)."""
    try:
        d = json.loads((out / RESUME_FILE).read_text())
        return dict(d["steps"]) if d.get("schema") == RESUME_SCHEMA else {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def _reusable(ctx: MixedContext, step: str, key: str, *outputs: Path) -> dict[str, Any] | None:
    """The record of ``step`` where resuming is on, its key is ``key`` and its ``outputs`` are the
    files it recorded (same contents)."""
    if not ctx.resume:
        return None
    record = _records(ctx.out).get(step)
    if not isinstance(record, dict) or record.get("key") != key:
        return None
    try:
        if record.get("outputs") != _file_digests(ctx.out, outputs):
            return None
    except OSError:  # an output is missing
        return None
    return record


def _forget(ctx: MixedContext, step: str) -> None:
    """Drop ``step``'s record before its outputs are rewritten."""
    records = _records(ctx.out)
    if records.pop(step, None) is not None:
        _write_records(ctx.out, records)


def _remember(ctx: MixedContext, step: str, key: str, *outputs: Path, **extra: Any) -> dict[str, Any]:
    """Record ``step``'s ``outputs`` (their sha256) as made from ``key``, with ``extra`` values;
    the record."""
    records = _records(ctx.out)
    records[step] = {**extra, "key": key, "outputs": _file_digests(ctx.out, outputs)}
    _write_records(ctx.out, records)
    return records[step]


def _file_digests(out: Path, paths: tuple[Path, ...]) -> dict[str, str]:
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


def _write_records(out: Path, records: dict[str, dict[str, Any]]) -> None:
    _atomic(out / RESUME_FILE, lambda p: Path(p).write_text(
        json.dumps({"schema": RESUME_SCHEMA, "steps": records}, indent=1, sort_keys=True)))


def _atomic(path: Path, save: Callable[[Path], None]) -> None:
    """``save(temporary path)``, then rename it to ``path``: never a half-written ``path``."""
    tmp = path.with_name(path.name + ".tmp")
    save(tmp)
    os.replace(tmp, path)


def evaluate(libraries: dict[str, Path], data: Any, labels: Any, pm: Any) -> dict[str, dict[str, Any]]:
    """Per library: argmax agreement with the ``fp32`` one and, with ``labels``, top-1."""
    feeds = list((data if isinstance(data, CalibrationData) else CalibrationData.from_source(data, pm.inputs))
                 .samples(batch=1))
    y = None if labels is None else load_labels(labels, len(feeds))
    preds = {}
    for name, lib in libraries.items():
        m = load(lib)
        preds[name] = np.array([int(np.argmax(next(iter(m.run(f).values())))) for f in feeds])
    ref = preds.get("fp32")
    return {name: {"agreement": float((p == ref).mean()) if ref is not None else None,
                   "top1": None if y is None else float((p == y).mean()), "n": len(p)}
            for name, p in preds.items()}


def _spec(name: str) -> Any:
    return QuantSpec.parse(name)


def _report_data(ctx: MixedContext) -> dict[str, Any]:
    """What report.json holds: the device, budgets, the fp32 / W8A8 / chosen plans, the Pareto
    front and every layer's options."""
    problem, alloc, table, sens, overhead = ctx.problem, ctx.alloc, ctx.table, ctx.sens, ctx.overhead
    dev = device_fingerprint(ctx.features, ctx.threads)
    w8 = {l: "w8a8" for l in problem.options}
    fp = {l: "fp32" for l in problem.options}
    plans = []
    for label, plan, meas in (("fp32", fp, None), ("w8a8", w8, ctx.reference_ms), ("chosen", alloc.plan, ctx.measured)):
        tot = problem.totals(plan)
        plans.append({"label": label, "predicted_ms": tot["latency"] + overhead if table is not None else None,
                      "measured_ms": meas, "weight_bytes": tot["size"], "sensitivity": tot["sensitivity"],
                      "sqnr_db": sens.predicted_sqnr_db(plan) if label != "fp32" else None})
    return {
        "model": str(Path(ctx.model).name) if not hasattr(ctx.model, "graph") else "<in-memory>",
        "device": {"cpu": dev["cpu"], "isa": dev["isa"], "threads": ctx.threads},
        "budget": {"latency": ctx.latency_budget, "size": ctx.size_budget, "resolved": ctx.budgets},
        "binding": alloc.binding,
        "plans": plans,
        "front": [{"label": f"p{i}", "sensitivity": p.sensitivity, "predicted_ms": p.latency + overhead,
                   "measured_ms": None, "weight_bytes": problem.totals(p.plan)["size"],
                   "top1": None, "agreement": None} for i, p in enumerate(ctx.front)],
        "layers": _report_layers(ctx),
        "timings": ctx.timings,
        "predictor_error": table.predictor_error if table is not None else None,
    }


def _report_layers(ctx: MixedContext) -> list[dict[str, Any]]:
    """Per layer: the chosen spec and every spec's SQNR, latency (and its source) and weight bytes."""
    layers = []
    for layer in ctx.pm.layers:
        opts = ctx.problem.options[layer.name]
        layers.append({
            "name": layer.name, "op": layer.op, "chosen": ctx.alloc.plan[layer.name],
            "sqnr_db": {s: (None if s == "fp32" else ctx.sens.sqnr_db(layer.name, s)) for s in ctx.specs},
            "latency_us": {s: (opts[s].latency * 1e3 if ctx.table is not None else None) for s in ctx.specs},
            "latency_source": {s: (ctx.table.layers[layer.name][s]["source"] if ctx.table is not None else None)
                               for s in ctx.specs},
            "weight_bytes": {s: int(opts[s].size) for s in ctx.specs}})
    return layers
