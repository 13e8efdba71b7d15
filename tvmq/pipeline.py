"""The mixed-precision pipeline: calibrate, analyze, read measured latencies, allocate, build,
re-measure (``tvmq compile --latency-budget / --size-budget``).

    >>> r = compile_mixed("model.onnx", "calib.npz", "out/", latency_budget="0.8x",
    ...                   db="tuning.jsonl")                                  # doctest: +SKIP

Budgets are absolute (``"3.5ms"``, ``"2MB"`` / ``"2000000"`` bytes, BOPs as a number) or
relative to the uniform W8A8 plan (``"0.8x"``). The allocation problem has one option per layer
and spec: sensitivity = the output noise-to-signal ratio of that layer alone at that spec
(``tvmq.sensitivity``), latency = the layer's kernel on this device (``LatencyTable``: the best
tuning record, or the predictor's estimate for a layer never measured), size = the stored weight
bytes, BOPs = MACs x weight bits x activation bits; the edges between layers carry the measured
conversion kernels (float <-> integer). Predicted end-to-end latency = the plan's layers and
conversions plus the rest of the graph (pools, adds, the model's edges), taken as the measured
uniform-W8A8 library minus its layer sum; the built libraries are timed and both numbers go in
the manifest and the report.
"""

from __future__ import annotations

import json
import re
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from schedules.target_features import detect_host

from . import specs as specs_
from .allocate import AllocationProblem, Option, allocate, pareto_front
from .builder import build
from .calibration import ActivationStats, CalibrationData, collect
from .errors import TvmqError
from .frontend import prepare
from .plan import PrecisionPlan, QuantSpec
from .report import write_report
from .runtime import load
from .sensitivity import SensitivityResult, analyze
from .tune import LatencyTable, TuningDatabase, device_fingerprint



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
                  eval_data: Any = None, eval_labels: Any = None,
                  progress: Callable[[str], None] = lambda m: None) -> MixedResult:
    """The whole pipeline into ``output_dir`` (``model.so``, ``manifest.json``, ``report.html``,
    ``sensitivity.json``, ``calibration.json``, ``w8a8/`` the reference build).

    ``calibration``: the unlabeled inputs (a ``CalibrationData`` or what it reads); with
    ``sensitivity`` given (a ``SensitivityResult`` or its JSON, e.g. from ``tvmq analyze``), the
    statistics alone are enough (``ActivationStats`` or a calibration.json).

    ``latency_margin``: the plan is chosen so that its *predicted* latency stays that fraction
    below the budget (measured here: predictions fall 1-8% under the measured libraries on
    MobileNetV2), so that the library meets the budget when measured.

    ``eval_data`` (inputs, as ``CalibrationData`` reads them) and optional ``eval_labels``
    (class indices): the fp32, W8A8 and chosen libraries are run on them and the report and
    manifest get their agreement with fp32 (top-1 of the argmax) and, with labels, accuracy."""
    if latency_budget is None and size_budget is None and bops_budget is None:
        raise TvmqError("a mixed-precision compile needs a budget: --latency-budget, --size-budget or --bops-budget")
    if latency_budget is not None and db is None:
        raise TvmqError("a latency budget needs measured latencies: run `tvmq tune` and pass --db")
    specs_.check(list(specs), "the specs to allocate")
    features = features or detect_host()
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    pm = prepare(model)

    t = time.perf_counter()
    if isinstance(calibration, ActivationStats):
        stats, data = calibration, None
    elif str(calibration).endswith(".json"):
        stats, data = ActivationStats.load(calibration), None
    else:
        data = calibration if isinstance(calibration, CalibrationData) else CalibrationData.from_source(calibration, pm.inputs)
        progress(f"calibrating on {len(data)} samples")
        stats = collect(model, data, features=features, progress=progress)
        stats.save(out / "calibration.json")
    timings["calibrate"] = time.perf_counter() - t
    t = time.perf_counter()
    if sensitivity is not None:
        sens = sensitivity if isinstance(sensitivity, SensitivityResult) else SensitivityResult.load(sensitivity)
        missing = [s for s in specs if s != "fp32" and s not in sens.specs]
        if missing:
            raise TvmqError(f"the sensitivity results have no {missing}")
    elif data is None:
        raise TvmqError("sensitivity analysis needs the calibration inputs, not only their statistics")
    else:
        sens = analyze(model, stats, data, specs=[s for s in specs if s != "fp32"], range_method=range_method,
                       features=features, output=out / "sensitivity.json", limit=sensitivity_samples,
                       contexts=["alone"] if context == "alone" else ["alone", context], progress=progress)
    timings["analyze"] = time.perf_counter() - t

    t = time.perf_counter()
    table = None
    if db is not None:
        database = TuningDatabase(db)
        device = device_fingerprint(features, threads)
        table = LatencyTable.from_database(database, device["id"], model=pm, specs=list(specs), features=features)
        table.save(out / "latency_table.json")
        progress(f"latency table: {table.counts()}")
    edges = layer_edges(pm)
    problem = build_problem(pm, sens, table, list(specs), context=context, edges=edges)
    timings["latency_table"] = time.perf_counter() - t

    # the reference: uniform W8A8, built and timed, gives the rest-of-graph overhead
    t = time.perf_counter()
    overhead, ref_ms = 0.0, None
    ref = build(model, out / "w8a8", features=features, plan="w8a8", stats=stats, range_method=range_method,
                db=db, threads=threads, progress=lambda m: None)
    if measure:
        ref_ms = measure_ms(ref.library, threads)
        if table is not None:
            overhead = max(0.0, ref_ms - problem.totals({l: "w8a8" for l in problem.options})["latency"])
    timings["reference_build"] = time.perf_counter() - t

    t = time.perf_counter()
    if not 0 <= latency_margin < 1:
        raise TvmqError(f"latency_margin must be in [0, 1), got {latency_margin}")
    budgets = resolve_budgets(problem, latency=latency_budget, size=size_budget, bops=bops_budget,
                              overhead_ms=overhead)
    if "latency" in budgets:  # the end-to-end budget, less the margin, less the rest of the graph
        target = (budgets["latency"] + overhead) * (1 - latency_margin) - overhead
        if target <= 0:
            raise TvmqError(f"latency budget {latency_budget!r} leaves nothing for the layers after the "
                            f"{100 * latency_margin:.0f}% margin and {overhead:.2f} ms for the rest of the graph")
        budgets["latency_end_to_end"] = budgets["latency"] + overhead
        budgets["latency"] = target
    problem.latency_budget = budgets.get("latency")
    problem.size_budget = budgets.get("size")
    problem.bops_budget = budgets.get("bops")
    alloc = allocate(problem)
    front = pareto_front(AllocationProblem(problem.options, size_budget=problem.size_budget,
                                           bops_budget=problem.bops_budget, boundaries=problem.boundaries)) \
        if table is not None else []
    timings["allocate"] = time.perf_counter() - t
    progress(f"allocation {alloc.status}: " + ", ".join(
        f"{s} x{list(alloc.plan.values()).count(s)}" for s in specs if s in alloc.plan.values())
             + (f"; binding: {', '.join(alloc.binding)}" if alloc.binding else ""))

    t = time.perf_counter()
    plan = PrecisionPlan({l: _spec(s) for l, s in alloc.plan.items()}, pm.layers)
    result = build(model, out, features=features, plan=plan, stats=stats, range_method=range_method,
                   db=db, threads=threads, progress=progress)
    timings["build"] = time.perf_counter() - t
    predicted = alloc.totals["latency"] + overhead if table is not None else None
    measured = measure_ms(result.library, threads) if measure else None

    manifest = json.loads(result.manifest.read_text())
    manifest["allocation"] = {
        "status": alloc.status, "binding": alloc.binding, "violated": alloc.violated,
        "budgets": {"latency_ms": budgets.get("latency_end_to_end"), "latency_margin": latency_margin,
                    "size_bytes": budgets.get("size"), "bops": budgets.get("bops"),
                    "given": {"latency": latency_budget, "size": size_budget, "bops": bops_budget}},
        "totals": alloc.totals, "predicted_sqnr_db": sens.predicted_sqnr_db(alloc.plan, context),
        "context": context, "solve_seconds": alloc.solve_seconds}
    manifest["latency"] = {"predicted_ms": predicted, "measured_ms": measured, "threads": threads,
                           "rest_of_graph_ms": overhead, "w8a8_measured_ms": ref_ms}
    quality = None
    if eval_data is not None:
        t = time.perf_counter()
        fp32 = build(model, out / "fp32", features=features, db=db, threads=threads, progress=lambda m: None)
        quality = evaluate({"fp32": fp32.library, "w8a8": ref.library, "chosen": result.library},
                           eval_data, eval_labels, pm)
        timings["evaluate"] = time.perf_counter() - t
        manifest["evaluation"] = quality
        progress("evaluation: " + ", ".join(
            f"{k} agreement {100 * v['agreement']:.1f}%" + (f" top-1 {100 * v['top1']:.1f}%" if v.get("top1") is not None else "")
            for k, v in quality.items()))
    manifest["pipeline_seconds"] = timings
    result.manifest.write_text(json.dumps(manifest, indent=1))

    report_data = _report_data(pm, model, sens, table, problem, alloc, front, overhead, features, threads,
                               specs, timings, ref_ms, predicted, measured, budgets, latency_budget,
                               size_budget, manifest)
    for p in report_data["plans"]:
        p.update((quality or {}).get(p["label"], {}))
    (out / "report.json").write_text(json.dumps(report_data, indent=1))
    report = None
    try:
        report = write_report(report_data, out)
    except ImportError as e:  # matplotlib missing: the data is kept, the page is not drawn
        progress(f"warning: no report.html ({e}); report.json is written")
    return MixedResult(result, alloc.plan, alloc, predicted or 0.0, measured, report, timings,
                       {"front": front, "problem": problem, "sensitivity": sens, "table": table})


def evaluate(libraries: dict[str, Path], data: Any, labels: Any, pm: Any) -> dict[str, dict[str, Any]]:
    """Per library: argmax agreement with the ``fp32`` one and, with ``labels``, top-1."""
    feeds = list((data if isinstance(data, CalibrationData) else CalibrationData.from_source(data, pm.inputs))
                 .samples(batch=1))
    y = None if labels is None else np.asarray(np.load(labels) if isinstance(labels, (str, Path)) else labels).ravel()
    if y is not None and len(y) != len(feeds):
        raise TvmqError(f"{len(y)} labels for {len(feeds)} evaluation inputs")
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


def _report_data(pm, model, sens, table, problem, alloc, front, overhead, features, threads, specs,  # type: ignore[no-untyped-def]
                 timings, ref_ms, predicted, measured, budgets, latency_budget, size_budget, manifest):
    dev = device_fingerprint(features, threads)
    w8 = {l: "w8a8" for l in problem.options}
    fp = {l: "fp32" for l in problem.options}
    plans = []
    for label, plan, meas in (("fp32", fp, None), ("w8a8", w8, ref_ms), ("chosen", alloc.plan, measured)):
        tot = problem.totals(plan)
        plans.append({"label": label, "predicted_ms": tot["latency"] + overhead if table is not None else None,
                      "measured_ms": meas, "weight_bytes": tot["size"], "sensitivity": tot["sensitivity"],
                      "sqnr_db": sens.predicted_sqnr_db(plan) if label != "fp32" else None})
    layers = []
    for layer in pm.layers:
        opts = problem.options[layer.name]
        layers.append({
            "name": layer.name, "op": layer.op, "chosen": alloc.plan[layer.name],
            "sqnr_db": {s: (None if s == "fp32" else sens.sqnr_db(layer.name, s)) for s in specs},
            "latency_us": {s: (opts[s].latency * 1e3 if table is not None else None) for s in specs},
            "latency_source": {s: (table.layers[layer.name][s]["source"] if table is not None else None)
                               for s in specs},
            "weight_bytes": {s: int(opts[s].size) for s in specs}})
    return {
        "model": str(Path(model).name) if not hasattr(model, "graph") else "<in-memory>",
        "device": {"cpu": dev["cpu"], "isa": dev["isa"], "threads": threads},
        "budget": {"latency": latency_budget, "size": size_budget, "resolved": budgets},
        "binding": alloc.binding,
        "plans": plans,
        "front": [{"label": f"p{i}", "sensitivity": p.sensitivity, "predicted_ms": p.latency + overhead,
                   "measured_ms": None, "weight_bytes": problem.totals(p.plan)["size"],
                   "top1": None, "agreement": None} for i, p in enumerate(front)],
        "layers": layers,
        "timings": timings,
        "predictor_error": table.predictor_error if table is not None else None,
    }
