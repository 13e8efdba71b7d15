#!/usr/bin/env python3
"""fp32 batch-1 CPU latency: tvmq (untuned) side by side with onnxruntime, in one run.

Usage::

    python bench/fp32_latency.py [--models mobilenetv2,light_resnet50] [--threads 1,2]
                                 [--rounds 5] [--warmup 10] [--repeat 30]
                                 [--mobilenetv2 .cache/models/mobilenetv2.onnx] [--rebuild]

Method
------
1. **Compile once.** Each model is compiled with ``tvmq.build`` (fp32, no tuning) into
   ``bench/results/build/<model>/`` (gitignored). The build is reused on later runs as long
   as a stamp file matches: SHA-256 of the ONNX file and of the tvmq sources (``tvmq/`` and
   ``schedules/``); ``--rebuild`` forces a fresh compile. Compilation runs in a subprocess.
2. **One input.** A seeded standard-normal float32 input (``--seed``, default 0) is drawn
   once per model from the ONNX graph's input shapes (symbolic dims -> 1) and saved beside
   the build; both runtimes read that same file.
3. **Interleaved fresh processes.** For every (model, threads) pair, ``--rounds`` rounds run
   in the order tvmq, onnxruntime, tvmq, onnxruntime, ... Each variant runs in a *fresh*
   Python subprocess (the TVM and onnxruntime thread pools spin-wait and would disturb each
   other inside one process; fresh processes also average out allocation/placement luck).
   A worker loads the model, runs ``--warmup`` untimed calls, then ``--repeat`` timed calls,
   and prints its samples as JSON. Interleaving spreads slow drifts of the machine (other
   load, frequency changes) over both variants instead of biasing one of them.
4. **What is timed.** One public "numpy in, numpy out" call per sample, wall clock via
   ``time.perf_counter``: ``Module.run(feeds)`` for tvmq (includes copying the input into a
   TVM tensor and the output back to numpy) and ``InferenceSession.run(None, feeds)`` for
   onnxruntime. The tvmq worker's warmup goes through ``Module.benchmark(threads=T)`` (which
   sizes TVM's thread pool; ``TVM_NUM_THREADS=T`` is also set in the worker's environment);
   its in-process kernel-only statistics are kept in the JSON as ``tvmq_api_benchmark``.
   onnxruntime: ``intra_op_num_threads=T``, ``inter_op_num_threads=1``,
   ``ORT_ENABLE_ALL``, ``CPUExecutionProvider``.
5. **Statistics.** All samples of a variant (rounds x repeat) are pooled: median, p10, p90
   (``statistics.quantiles(n=10)``, the same as ``tvmq.BenchmarkResult``) and n; the ratio
   is median(tvmq) / median(onnxruntime), below 1 means tvmq is faster. A row whose
   per-round medians differ by more than 20% gets a "noisy" note under the table.
6. **Sanity column.** From the first round, ``max|y_tvmq - y_ort| / max|y_ort|`` over all
   outputs on the benchmark input.
7. **Interference.** Each worker compares the machine's busy CPU time (``/proc/stat``) with
   its own over the timed calls: ``other_cpu_cores`` is how many cores other processes
   kept busy meanwhile (per round in the JSON, mean/max in the table header).

Results go to ``bench/results/fp32_latency.json`` (samples, statistics, machine info,
load average before/after) and ``bench/results/fp32_latency.md`` (the table, also printed).
Nothing here asserts on timings: on a loaded or small machine the numbers are noisy, so
read the p10-p90 spread and the load average before drawing conclusions.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO_ROOT / "bench" / "results"
BUILD_DIR = RESULTS_DIR / "build"
DEFAULT_MOBILENETV2 = REPO_ROOT / ".cache" / "models" / "mobilenetv2.onnx"
ALL_MODELS = ("mobilenetv2", "light_resnet50")
VARIANTS = ("tvmq", "onnxruntime")
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "amx_int8")
JSON_MARKER = "BENCH_JSON:"
STAMP_FILE = "bench_stamp.json"
INPUT_FILE = "input.npz"
# Flag a row when its per-round medians differ by more than this factor.
NOISY_ROUND_SPREAD = 1.2


# ---------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------

def write_results(output: Path, result: dict[str, Any], report: str) -> None:
    """``output`` (JSON) and the same path with ``.md`` (the table), folders created."""
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=1))
    output.with_suffix(".md").write_text(report)
    print(f"wrote {output} and {output.with_suffix('.md')}")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tvmq_source_hash() -> str:
    """Hash of every Python file in tvmq/ and schedules/: a changed compiler invalidates builds."""
    h = hashlib.sha256()
    for folder in ("tvmq", "schedules"):
        for p in sorted((REPO_ROOT / folder).rglob("*.py")):
            h.update(str(p.relative_to(REPO_ROOT)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def light_resnet50_path() -> Path:
    import onnx

    return Path(onnx.__file__).parent / "backend" / "test" / "data" / "light" / "light_resnet50.onnx"


def child_env(threads: int | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    if threads is not None:
        env["TVM_NUM_THREADS"] = str(threads)
    return env


def run_worker(spec: dict[str, Any], *, threads: int | None = None,
               timeout: float = 1800.0, script: Path | None = None) -> dict[str, Any]:
    """Run ``script`` (default: this one) in worker mode (``script --worker SPEC_JSON``) in a
    fresh interpreter; return the JSON it prints after ``JSON_MARKER`` (or an error)."""
    cmd = [sys.executable, str(Path(script or __file__).resolve()), "--worker", json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, env=child_env(threads), capture_output=True, text=True,
                              timeout=timeout, cwd=REPO_ROOT, check=False)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"worker timed out after {timeout:.0f}s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(JSON_MARKER):
            return json.loads(line[len(JSON_MARKER):])
    tail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-5:]
    return {"ok": False, "error": f"worker exited with code {proc.returncode}: " + " | ".join(tail)}


def summarize(samples: Sequence[float]) -> dict[str, float | int]:
    s = sorted(samples)
    q = statistics.quantiles(s, n=10) if len(s) >= 2 else [s[0]] * 9
    return {"median_ms": statistics.median(s), "p10_ms": q[0], "p90_ms": q[-1],
            "mean_ms": statistics.fmean(s), "min_ms": s[0], "n": len(s)}


def onnx_input_specs(model: Path) -> list[tuple[str, tuple[int, ...], str]]:
    """The graph's real inputs (initializers excluded), symbolic dims taken as 1 (batch 1)."""
    import onnx
    from onnx import helper

    graph = onnx.load(str(model), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    specs = []
    for vi in graph.input:
        if vi.name in initializers:
            continue
        tt = vi.type.tensor_type
        shape = tuple(d.dim_value if d.HasField("dim_value") else 1 for d in tt.shape.dim)
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type)).name
        specs.append((vi.name, shape, dtype))
    return specs


# ---------------------------------------------------------------------------------------------
# Worker mode (runs in a fresh subprocess)
# ---------------------------------------------------------------------------------------------

def _load_feeds(path: str) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        names = json.loads(str(z["__names__"]))
        return {n: z[f"in_{i}"] for i, n in enumerate(names)}


def _save_outputs(path: str, outputs: dict[str, np.ndarray]) -> None:
    names = list(outputs)
    np.savez(path, __names__=json.dumps(names),
             **{f"out_{i}": np.asarray(outputs[n]) for i, n in enumerate(names)})


def _system_busy_s() -> float | None:
    """CPU seconds spent busy by the whole machine (all cores, incl. steal), from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    # user nice system idle iowait irq softirq steal ...: everything but idle and iowait.
    busy = sum(fields[:8]) - fields[3] - fields[4]
    return busy / os.sysconf("SC_CLK_TCK")


def _timed(fn: Any, repeat: int) -> tuple[list[float], float | None]:
    """Time ``repeat`` calls; also return how many cores *other* processes kept busy meanwhile."""
    samples = []
    busy0, own0, wall0 = _system_busy_s(), time.process_time(), time.perf_counter()
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t) * 1e3)
    busy1, own1, wall = _system_busy_s(), time.process_time(), time.perf_counter() - wall0
    other = None
    if busy0 is not None and busy1 is not None and wall > 0:
        other = max(0.0, ((busy1 - busy0) - (own1 - own0)) / wall)
    return samples, other


def worker_build(spec: dict[str, Any]) -> dict[str, Any]:
    import tvm

    import tvmq

    t = time.perf_counter()
    try:
        r = tvmq.build(spec["model"], spec["out"], progress=lambda m: print(m, file=sys.stderr))
    except Exception as e:  # noqa: BLE001 - reported verbatim by the parent, never hidden
        return {"ok": False, "error": f"{type(e).__name__}: {e}"}
    return {"ok": True, "library": str(r.library), "seconds": time.perf_counter() - t,
            "timings": r.timings, "tvm_version": tvm.__version__,
            "isa": r.manifest_data.get("isa"), "target": r.manifest_data.get("target")}


def worker_tvmq(spec: dict[str, Any]) -> dict[str, Any]:
    import tvm

    import tvmq

    threads = int(spec["threads"])
    feeds = _load_feeds(spec["input"])
    m = tvmq.load(spec["library"])
    # benchmark() sizes TVM's thread pool (runtime.config_threadpool) and doubles as warmup;
    # its own (kernel-only) timing of repeat // 3 calls is kept as extra information.
    api = m.benchmark(feeds, warmup=spec["warmup"], repeat=max(1, spec["repeat"] // 3),
                      threads=threads)
    samples, other = _timed(lambda: m.run(feeds), spec["repeat"])
    if spec.get("save_outputs"):
        _save_outputs(spec["save_outputs"], m.run(feeds))
    return {"ok": True, "samples_ms": samples, "tvmq_api_benchmark": api.to_json(),
            "version": tvm.__version__, "other_cpu_cores": other,
            "loadavg_after": os.getloadavg()}


def worker_ort(spec: dict[str, Any]) -> dict[str, Any]:
    import onnxruntime as ort

    threads = int(spec["threads"])
    feeds = _load_feeds(spec["input"])
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(spec["model"], so, providers=["CPUExecutionProvider"])
    for _ in range(spec["warmup"]):
        sess.run(None, feeds)
    samples, other = _timed(lambda: sess.run(None, feeds), spec["repeat"])
    if spec.get("save_outputs"):
        names = [o.name for o in sess.get_outputs()]
        _save_outputs(spec["save_outputs"], dict(zip(names, sess.run(None, feeds))))
    return {"ok": True, "samples_ms": samples, "version": ort.__version__,
            "other_cpu_cores": other, "loadavg_after": os.getloadavg()}


WorkerFn = Callable[[dict[str, Any]], dict[str, Any]]


def worker_main(spec_json: str, handlers: dict[str, WorkerFn] | None = None) -> int:
    """Worker mode: run ``handlers[spec["kind"]]`` (default: build, tvmq, onnxruntime) and print
    its result as one ``JSON_MARKER`` line; any exception becomes ``{"ok": False, "error": ...}``."""
    spec = json.loads(spec_json)
    kind = spec["kind"]
    if handlers is None:
        handlers = {"build": worker_build, "tvmq": worker_tvmq, "onnxruntime": worker_ort}
    try:
        if kind in handlers:
            result = handlers[kind](spec)
        else:
            result = {"ok": False, "error": f"unknown worker kind {kind!r}"}
    except Exception as e:  # noqa: BLE001 - any failure becomes a reported row, not a crash
        result = {"ok": False, "error": f"{type(e).__name__}: {e}"}
    print(JSON_MARKER + json.dumps(result), flush=True)
    return 0


# ---------------------------------------------------------------------------------------------
# Parent: build, interleave, report
# ---------------------------------------------------------------------------------------------

@dataclass
class ModelCase:
    name: str
    onnx_path: Path
    build_dir: Path
    input_path: Path
    library: Path | None = None
    build_info: dict[str, Any] = field(default_factory=dict)
    build_error: str | None = None


def machine_info() -> dict[str, Any]:
    model_name, flags = "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and model_name == "unknown":
                model_name = value.strip()
            elif key == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count() or 1
    return {"cpu_model": model_name, "cpu_flags": {f: f in flags for f in CPU_FLAGS},
            "nproc": affinity, "cpu_count": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version()}


def package_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def git_revision() -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                              check=False).stdout.strip()

    return {"commit": git("rev-parse", "HEAD") or None,
            "dirty": bool(git("status", "--porcelain", "--", "tvmq", "schedules"))}


def prepare_case(case: ModelCase, *, rebuild: bool, seed: int,
                 build_spec: dict[str, Any] | None = None, stamp_extra: dict[str, Any] | None = None,
                 script: Path | None = None) -> None:
    """Compile (or reuse) the tvmq build and write the shared seeded input.

    ``build_spec`` adds keys to the ``build`` worker's spec and ``stamp_extra`` to the stamp
    (whatever else decides the build, e.g. the calibration data); ``script`` is the script
    whose worker mode builds (default: this one, an fp32 build)."""
    case.build_dir.mkdir(parents=True, exist_ok=True)
    stamp = {"onnx_sha256": sha256_file(case.onnx_path), "tvmq_sources": tvmq_source_hash(),
             "python": sys.executable, **(stamp_extra or {})}
    stamp_path = case.build_dir / STAMP_FILE
    library = case.build_dir / "model.so"
    cached = (not rebuild and library.exists() and (case.build_dir / "manifest.json").exists()
              and stamp_path.exists() and json.loads(stamp_path.read_text()).get("stamp") == stamp)
    if cached:
        case.library = library
        case.build_info = json.loads(stamp_path.read_text())["build"]
        case.build_info["reused"] = True
        print(f"[{case.name}] reusing build {library.relative_to(REPO_ROOT)}", flush=True)
    else:
        stamp_path.unlink(missing_ok=True)
        print(f"[{case.name}] compiling {case.onnx_path} with tvmq ...", flush=True)
        res = run_worker({"kind": "build", "model": str(case.onnx_path),
                          "out": str(case.build_dir), **(build_spec or {})}, script=script)
        if not res.get("ok"):
            case.build_error = res.get("error", "unknown error")
            print(f"[{case.name}] tvmq build FAILED: {case.build_error}", flush=True)
        else:
            case.library = Path(res["library"])
            case.build_info = {k: v for k, v in res.items() if k != "ok"}
            stamp_path.write_text(json.dumps({"stamp": stamp, "build": case.build_info}, indent=1))
            case.build_info["reused"] = False
            print(f"[{case.name}] compiled in {res['seconds']:.1f}s", flush=True)

    rng = np.random.default_rng(seed)
    specs = onnx_input_specs(case.onnx_path)
    arrays = {f"in_{i}": rng.standard_normal(shape).astype(dtype)
              for i, (_, shape, dtype) in enumerate(specs)}
    np.savez(case.input_path, __names__=json.dumps([n for n, _, _ in specs]), **arrays)


def rel_max_diff(tvmq_out: Path, ort_out: Path) -> float | None:
    a = dict(zip(*_read_outputs(tvmq_out)))
    b = dict(zip(*_read_outputs(ort_out)))
    common = [n for n in b if n in a]
    if not common:
        return None
    num = max(float(np.max(np.abs(a[n].astype(np.float64) - b[n]))) for n in common)
    den = max(float(np.max(np.abs(b[n]))) for n in common)
    return num / den if den > 0 else num


def _read_outputs(path: Path) -> tuple[list[str], list[np.ndarray]]:
    with np.load(path) as z:
        names = json.loads(str(z["__names__"]))
        return names, [z[f"out_{i}"] for i in range(len(names))]


def run_rounds(label: str, threads: int, specs: dict[str, dict[str, Any]],
               args: argparse.Namespace, *, outputs: dict[str, Path] | None = None,
               errors: dict[str, str] | None = None,
               script: Path | None = None) -> dict[str, Any]:
    """``args.rounds`` interleaved rounds; each round runs every variant of ``specs`` (name ->
    worker spec, in order) once, each in a fresh worker process of ``script``.

    ``warmup``, ``repeat`` and ``threads`` are added to every spec; in round 0 a variant named
    in ``outputs`` also saves its outputs there. A variant already in ``errors`` is not run; one
    that fails is recorded there and not run again. Returns the pooled samples, per-round
    medians (with ``other_cpu_cores`` and the load average after each worker), the errors and,
    per variant, each round's other result keys (``info``, e.g. ``tvmq_api_benchmark``)."""
    errors = {} if errors is None else errors
    outputs = outputs or {}
    names = list(specs)
    width = max([11, *map(len, names)])
    samples: dict[str, list[float]] = {v: [] for v in names}
    rounds: dict[str, list[dict[str, Any]]] = {v: [] for v in names}
    info: dict[str, list[dict[str, Any]]] = {v: [] for v in names}
    standard = {"ok", "samples_ms", "other_cpu_cores", "loadavg_after"}
    for r in range(args.rounds):
        for v in names:
            if v in errors:
                continue
            spec = {**specs[v], "threads": threads, "warmup": args.warmup, "repeat": args.repeat}
            if r == 0 and v in outputs:
                spec["save_outputs"] = str(outputs[v])
            res = run_worker(spec, threads=threads, script=script)
            if not res.get("ok"):
                errors[v] = res.get("error", "unknown error")
                print(f"  [{label} t={threads}] {v} FAILED: {errors[v]}", flush=True)
                continue
            samples[v].extend(res["samples_ms"])
            rounds[v].append({"median_ms": statistics.median(res["samples_ms"]),
                              "other_cpu_cores": res.get("other_cpu_cores"),
                              "loadavg_after": res["loadavg_after"]})
            info[v].append({k: val for k, val in res.items() if k not in standard})
            other = res.get("other_cpu_cores")
            print(f"  [{label} t={threads}] round {r + 1}/{args.rounds} {v:<{width}} "
                  f"median {statistics.median(res['samples_ms']):8.3f} ms"
                  + (f"  (other processes: {other:.2f} cores)" if other is not None else ""),
                  flush=True)
    return {"samples": samples, "per_round": rounds, "errors": errors, "info": info}


def bench_pair(case: ModelCase, threads: int, args: argparse.Namespace,
               tmp: Path) -> dict[str, Any]:
    """Interleaved rounds for one (model, threads): tvmq, ORT, tvmq, ORT, ..."""
    variants = [v for v in VARIANTS if v != "tvmq" or case.library is not None]
    errors: dict[str, str] = {}
    if case.build_error:
        errors["tvmq"] = f"build failed: {case.build_error}"
    outputs = {v: tmp / f"{case.name}-{threads}-{v}.npz" for v in variants}
    specs = {v: {"kind": v, "input": str(case.input_path), "model": str(case.onnx_path),
                 "library": str(case.library) if case.library else None} for v in variants}
    res = run_rounds(case.name, threads, specs, args, outputs=outputs, errors=errors)
    samples = res["samples"]

    stats = {v: summarize(s) for v, s in samples.items() if s}
    ratio = (stats["tvmq"]["median_ms"] / stats["onnxruntime"]["median_ms"]
             if "tvmq" in stats and "onnxruntime" in stats else None)
    diff = (rel_max_diff(outputs["tvmq"], outputs["onnxruntime"])
            if all(v in outputs and outputs[v].exists() for v in VARIANTS) else None)
    api = [i["tvmq_api_benchmark"] for i in res["info"].get("tvmq", []) if "tvmq_api_benchmark" in i]
    return {"model": case.name, "threads": threads, "stats": stats, "ratio_tvmq_over_ort": ratio,
            "rel_max_diff": diff, "errors": errors, "per_round": res["per_round"],
            "tvmq_api_benchmark": api, "samples_ms": samples}


def fmt_stat(stats: dict[str, Any] | None, error: str | None) -> str:
    if stats is None:
        return "failed" if error else "-"
    return f"{stats['median_ms']:.2f} ({stats['p10_ms']:.2f}-{stats['p90_ms']:.2f})"


def markdown_table(rows: list[dict[str, Any]], skipped: dict[str, str]) -> str:
    lines = [("| model | threads | tvmq median ms (p10-p90) | onnxruntime median ms (p10-p90) "
              "| ratio tvmq/ort | rel. max diff |"),
             "|---|---:|---:|---:|---:|---:|"]
    for row in rows:
        st, err = row["stats"], row["errors"]
        ratio = f"{row['ratio_tvmq_over_ort']:.2f}" if row["ratio_tvmq_over_ort"] else "-"
        diff = f"{row['rel_max_diff']:.1e}" if row["rel_max_diff"] is not None else "-"
        lines.append(f"| {row['model']} | {row['threads']} | {fmt_stat(st.get('tvmq'), err.get('tvmq'))} "
                     f"| {fmt_stat(st.get('onnxruntime'), err.get('onnxruntime'))} | {ratio} | {diff} |")
    notes = row_notes(rows)
    notes += [f"- {name}: skipped, {why}" for name, why in skipped.items()]
    return "\n".join(lines + ([""] + notes if notes else []))


def row_notes(rows: list[dict[str, Any]]) -> list[str]:
    """Notes under a table: every failure, then every row whose per-round medians (of any
    variant) differ by more than ``NOISY_ROUND_SPREAD``."""
    notes = [f"- {row['model']} t={row['threads']} {v}: {e}"
             for row in rows for v, e in row["errors"].items()]
    for row in rows:
        spans = {v: [r["median_ms"] for r in rr] for v, rr in row["per_round"].items() if rr}
        if any(max(m) > NOISY_ROUND_SPREAD * min(m) for m in spans.values()):
            ranges = ", ".join(f"{v} {min(m):.2f}-{max(m):.2f}" for v, m in spans.items())
            others = [r["other_cpu_cores"] for rr in row["per_round"].values() for r in rr
                      if r.get("other_cpu_cores") is not None]
            busy = (f"other processes kept up to {max(others):.1f} cores busy"
                    if others else "other load on the machine?")
            notes.append(f"- {row['model']} t={row['threads']}: noisy, per-round medians "
                         f"{ranges} ms ({busy}); rerun when the machine is quiet")
    return notes


def interference_note(rows: list[dict[str, Any]]) -> str:
    """The header's sentence on how busy other processes kept the CPUs ('' if unknown)."""
    others = [r["other_cpu_cores"] for row in rows for rr in row["per_round"].values()
              for r in rr if r.get("other_cpu_cores") is not None]
    if not others:
        return ""
    return (f" While timing, other processes kept {statistics.fmean(others):.2f} cores busy "
            f"on average (max {max(others):.2f}).")


def parse_args(argv: Sequence[str] | None, *, description: str | None = None,
               output: Path | None = None,
               add_arguments: Callable[[argparse.ArgumentParser], None] | None = None
               ) -> argparse.Namespace:
    """The options shared by the latency benches; ``add_arguments`` adds a script's own."""
    p = argparse.ArgumentParser(description=description or __doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(ALL_MODELS),
                   help=f"comma-separated subset of {','.join(ALL_MODELS)} (default: all)")
    p.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    p.add_argument("--warmup", type=int, default=10, help="untimed calls per process (default 10)")
    p.add_argument("--repeat", type=int, default=30, help="timed calls per process (default 30)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random input (default 0)")
    p.add_argument("--mobilenetv2", type=Path, default=DEFAULT_MOBILENETV2,
                   help="MobileNetV2 ONNX file (default .cache/models/mobilenetv2.onnx)")
    p.add_argument("--rebuild", action="store_true", help="recompile even if a build is cached")
    p.add_argument("--output", type=Path, default=output or RESULTS_DIR / "fp32_latency.json",
                   help="JSON result path; the .md table goes beside it")
    if add_arguments is not None:
        add_arguments(p)
    args = p.parse_args(argv)
    args.model_list = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in args.model_list if m not in ALL_MODELS]
    if unknown:
        p.error(f"unknown model(s) {unknown}; choose from {list(ALL_MODELS)}")
    try:
        args.thread_list = [int(t) for t in args.threads.split(",") if t.strip()]
    except ValueError:
        p.error(f"--threads must be comma-separated integers, got {args.threads!r}")
    if not args.thread_list or min(args.thread_list) < 1:
        p.error("--threads must list integers >= 1")
    if args.rounds < 1 or args.repeat < 1 or args.warmup < 0:
        p.error("--rounds and --repeat must be >= 1, --warmup >= 0")
    return args


def find_models(args: argparse.Namespace) -> tuple[dict[str, Path], dict[str, str]]:
    """The ONNX file of each model of ``--models`` that exists, and why the others are skipped
    (printed as they are found)."""
    sources = {"mobilenetv2": args.mobilenetv2.resolve(), "light_resnet50": light_resnet50_path()}
    found: dict[str, Path] = {}
    skipped: dict[str, str] = {}
    for name in args.model_list:
        path = sources[name]
        if not path.exists():
            hint = " (run `make models` to export it)" if name == "mobilenetv2" else ""
            skipped[name] = f"{path} not found{hint}"
            print(f"[{name}] SKIPPED: {skipped[name]}", flush=True)
            continue
        found[name] = path
    return found, skipped


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = _dt.datetime.now(_dt.timezone.utc)
    load_before = os.getloadavg()
    print(f"load average before: {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}",
          flush=True)

    found, skipped = find_models(args)
    cases: list[ModelCase] = []
    for name, path in found.items():
        d = BUILD_DIR / name
        cases.append(ModelCase(name, path, d, d / INPUT_FILE))

    for case in cases:
        prepare_case(case, rebuild=args.rebuild, seed=args.seed)

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="tvmq-bench-") as tmp:
        for case in cases:
            for threads in args.thread_list:
                print(f"[{case.name}] threads={threads}: {args.rounds} rounds x "
                      f"({args.warmup} warmup + {args.repeat} timed) per variant", flush=True)
                rows.append(bench_pair(case, threads, args, Path(tmp)))

    load_after = os.getloadavg()
    table = markdown_table(rows, skipped)
    info = machine_info()
    flags = ", ".join(f for f, on in info["cpu_flags"].items() if on) or "none of " + "/".join(CPU_FLAGS)
    header = (f"fp32 batch-1 latency, tvmq (untuned) vs onnxruntime. {info['cpu_model']}, "
              f"{info['nproc']} CPUs ({flags}); {args.rounds} rounds x {args.repeat} timed calls "
              f"per variant, fresh process each; load average {load_before[0]:.2f} before, "
              f"{load_after[0]:.2f} after; {started:%Y-%m-%d %H:%M} UTC.")
    header += interference_note(rows)
    report = f"{header}\n\n{table}\n"
    print("\n" + report)

    result = {
        "benchmark": "fp32_latency",
        "date_utc": started.isoformat(timespec="seconds"),
        "duration_s": round((_dt.datetime.now(_dt.timezone.utc) - started).total_seconds(), 1),
        "machine": {**info, "loadavg_before": load_before, "loadavg_after": load_after},
        "versions": {"tvm": next((c.build_info.get("tvm_version") for c in cases
                                  if c.build_info.get("tvm_version")), None) or package_version("apache-tvm"),
                     "onnxruntime": package_version("onnxruntime"),
                     "onnx": package_version("onnx"), "numpy": np.__version__,
                     "tvmq_git": git_revision(), "tvmq_sources_sha256": tvmq_source_hash()},
        "settings": {"models": args.model_list, "threads": args.thread_list,
                     "rounds": args.rounds, "warmup": args.warmup, "repeat": args.repeat,
                     "seed": args.seed, "timed_call": {"tvmq": "Module.run(feeds)",
                                                       "onnxruntime": "InferenceSession.run"}},
        "models": {c.name: {"onnx": str(c.onnx_path), "build_dir": str(c.build_dir),
                            "build": c.build_info, "build_error": c.build_error} for c in cases},
        "skipped": skipped,
        "results": rows,
    }
    write_results(args.output, result, report)
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        sys.exit(worker_main(sys.argv[2]))
    sys.path.insert(0, str(REPO_ROOT))
    sys.exit(main())
