#!/usr/bin/env python3
"""W8A8 batch-1 CPU latency: tvmq's integer-only W8A8 beside onnxruntime int8 and OpenVINO int8.

Usage::

    python bench/w8a8_latency.py [--models mobilenetv2,light_resnet50] [--threads 1,2]
                                 [--rounds 5] [--warmup 10] [--repeat 30] [--calib 32]
                                 [--imagenet-root ../shared/data/imagenet-sample]
                                 [--mobilenetv2 .cache/models/mobilenetv2.onnx] [--rebuild]
                                 [--db bench/results/tuning_mobilenetv2.jsonl ...]

Variants, per (model, threads), batch 1:

- ``onnxruntime fp32``: the ONNX file as it is (the baseline).
- ``tvmq W8A8``: ``tvmq.build(model, plan="w8a8", stats=collect(model, calib),
  range_method="percentile")``, the integer-only library.
- ``tvmq W8A8 tuned`` (with ``--db``, tuning databases written by ``tvmq tune``): the same
  build with ``db=`` the databases merged: every kernel on its best configuration measured on
  this CPU at 1 thread (the same library is timed at every thread count), the fallback
  configuration for kernels without a record; the build info says how many of each.
- ``onnxruntime int8 (QDQ)``: ``quant_pre_process`` + ``quantize_static`` (QDQ, per-channel
  QInt8 weights, QUInt8 activations, MinMax) on the same calibration inputs.
- ``OpenVINO int8 (NNCF)``: ``nncf.quantize`` (preset performance) on the same calibration
  inputs, compiled for CPU with ``INFERENCE_NUM_THREADS=T``, one stream, the latency hint and
  f32 inference precision. Skipped, with the install command, when openvino/nncf are missing.

Calibration inputs (``--calib``, default 32): mobilenetv2: the first images of the
imagenet-sample folder (``scripts/imagenet_eval.py``), or seeded random normal inputs when the
folder is absent (the table header says which); light_resnet50: seeded random normal inputs (its
weights are constants, only the timing matters). The rivals' recipes are in ``_common.py``
(shared with ``w8a8_accuracy.py``).

Method: exactly ``fp32_latency.py``'s, whose helpers this script imports. All artifacts are
built once, each in a subprocess, and cached under ``bench/results/build/w8a8_<model>/`` while
their stamps match (the tvmq library: ONNX file, tvmq sources, calibration data, range method;
the rivals' models: ONNX file, calibration data, ``_common.py`` and this script, the rival's versions);
``--rebuild`` rebuilds all. Every (variant, threads) is timed in a *fresh* subprocess (the TVM,
onnxruntime and OpenVINO thread pools spin-wait and disturb each other inside one process), in
``--rounds`` interleaved rounds; each process does ``--warmup`` untimed calls and ``--repeat``
timed ones (numpy in, numpy out, on one seeded random input). All samples of a variant are
pooled: median, p10, p90, n; the ratios are median(tvmq W8A8) / median(rival), below 1 means
tvmq is faster.

Results: ``bench/results/w8a8_latency.json`` (samples, statistics, machine, versions, load
average) and ``bench/results/w8a8_latency.md`` (the table, also printed). Nothing here asserts on
timings.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import importlib.util
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

import fp32_latency as fl  # bench/ is on sys.path (above)
from _common import (
    OV_CONFIG,
    OV_MISSING,
    import_openvino,
    nncf_int8,
    ort_int8,
    ov_config,
    ov_kernels,
    rival_onnx,
)

SCRIPT = Path(__file__).resolve()
REPO_ROOT = fl.REPO_ROOT
RESULTS_DIR = fl.RESULTS_DIR
DEFAULT_IMAGENET = REPO_ROOT.parent / "shared" / "data" / "imagenet-sample"
COMMON_PY = BENCH_DIR / "_common.py"

ORT_FP32 = "onnxruntime fp32"
TVMQ = "tvmq W8A8"
TVMQ_TUNED = "tvmq W8A8 tuned"
ORT_INT8 = "onnxruntime int8 (QDQ)"
OV_INT8 = "OpenVINO int8 (NNCF)"
VARIANTS = (ORT_FP32, TVMQ, TVMQ_TUNED, ORT_INT8, OV_INT8)  # table order; also within a round
RIVALS = (ORT_INT8, OV_INT8)  # the table's ratio columns (tvmq, and tvmq tuned when timed)
RANGE_METHOD = "percentile"
CALIB_FILE = "calib.npz"
RIVAL_ONNX = "rival.onnx"
# A row gets a note when other processes kept at least this many cores busy in one of its workers.
BUSY_CORES = 0.5
ARTIFACT_STAMP = "stamp.json"


# ---------------------------------------------------------------------------------------------
# Worker mode (runs in a fresh subprocess)
# ---------------------------------------------------------------------------------------------

def _load_calib(path: str) -> np.ndarray:
    with np.load(path) as z:
        return z["calib"]


def worker_build_w8a8(spec: dict[str, Any]) -> dict[str, Any]:
    """Calibrate (``tvmq.calibration.collect``) and build the W8A8 library."""
    import tvm

    import tvmq
    from tvmq.calibration import collect

    calib = _load_calib(spec["calib"])
    log = lambda m: print(m, file=sys.stderr)
    t = time.perf_counter()
    try:
        stats = collect(spec["model"], calib, progress=log)
        t_cal = time.perf_counter() - t
        r = tvmq.build(spec["model"], spec["out"], plan="w8a8", stats=stats,
                       range_method=spec["range_method"], db=spec.get("db"), progress=log)
    except Exception as e:  # noqa: BLE001 - reported verbatim by the parent, never hidden
        return {"ok": False, "error": f"{type(e).__name__}: {e}"}
    return {"ok": True, "library": str(r.library), "seconds": time.perf_counter() - t,
            "calibration_s": t_cal, "calibration_samples": len(calib), "timings": r.timings,
            "tvm_version": tvm.__version__, "isa": r.manifest_data.get("isa"),
            "target": r.manifest_data.get("target"), "plan": "w8a8",
            "tuning": r.manifest_data.get("tuning"),
            "range_method": spec["range_method"]}


def worker_quantize_ort(spec: dict[str, Any]) -> dict[str, Any]:
    """onnxruntime int8 (QDQ) model; also which conv/dense ops onnxruntime makes of it."""
    from collections import Counter

    import onnx
    import onnxruntime as ort

    out = Path(spec["out"])
    t = time.perf_counter()
    ort_int8(Path(spec["model"]), _load_calib(spec["calib"]), out)
    seconds = time.perf_counter() - t
    out.with_name("pre.onnx").unlink(missing_ok=True)  # quant_pre_process's intermediate file
    # The QDQ -> QLinearConv fusions happen at the extended level: the kernels it will run.
    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        so.optimized_model_filepath = str(Path(tmp) / "opt.onnx")
        ort.InferenceSession(str(out), so, providers=["CPUExecutionProvider"])
        ops = Counter(n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node)
    kernels = ", ".join(f"{k} x{v}" for k, v in sorted(ops.items())
                        if any(s in k for s in ("Conv", "Gemm", "MatMul")))
    return {"ok": True, "model": str(out), "seconds": seconds, "kernels": kernels,
            "version": ort.__version__}


def worker_quantize_ov(spec: dict[str, Any]) -> dict[str, Any]:
    """OpenVINO int8 (NNCF), saved as OpenVINO IR (weights not compressed to fp16)."""
    ov, nncf = import_openvino()
    core = ov.Core()
    m = core.read_model(spec["model"])
    shape = spec["shape"]
    m.reshape({m.input(0).get_any_name(): [1, *shape[1:]]})  # static batch 1, as openvino_rows
    q, seconds = nncf_int8(m, _load_calib(spec["calib"]))
    ov.save_model(q, spec["out"], compress_to_fp16=False)
    return {"ok": True, "model": spec["out"], "seconds": seconds, "version": ov.__version__,
            "nncf_version": nncf.__version__}


def worker_openvino(spec: dict[str, Any]) -> dict[str, Any]:
    """Time ``InferRequest.infer`` of the NNCF model, compiled for CPU with T threads."""
    ov, _ = import_openvino()
    threads = int(spec["threads"])
    feeds = fl._load_feeds(spec["input"])
    core = ov.Core()
    compiled = core.compile_model(core.read_model(spec["model"]), "CPU", ov_config(threads))
    req = compiled.create_infer_request()
    for _ in range(spec["warmup"]):
        req.infer(feeds)
    samples, other = fl._timed(lambda: req.infer(feeds), spec["repeat"])
    if spec.get("save_outputs"):
        res = req.infer(feeds)
        fl._save_outputs(spec["save_outputs"],
                         {o.get_any_name(): np.asarray(res[o]) for o in compiled.outputs})
    return {"ok": True, "samples_ms": samples, "version": ov.__version__,
            "other_cpu_cores": other, "loadavg_after": os.getloadavg(),
            "kernels": ov_kernels(compiled),
            "precision": compiled.get_property("INFERENCE_PRECISION_HINT").to_string(),
            "ov_threads": int(compiled.get_property("INFERENCE_NUM_THREADS"))}


WORKERS: dict[str, fl.WorkerFn] = {
    "build": worker_build_w8a8, "quantize_ort": worker_quantize_ort,
    "quantize_ov": worker_quantize_ov, "tvmq": fl.worker_tvmq, "onnxruntime": fl.worker_ort,
    "openvino": worker_openvino}


# ---------------------------------------------------------------------------------------------
# Parent: calibration data, builds, interleave, report
# ---------------------------------------------------------------------------------------------

def calibration_inputs(name: str, onnx_path: Path,
                       args: argparse.Namespace) -> tuple[np.ndarray, str, bool]:
    """``(calib [N, ...], description, real_images)`` for one model."""
    (_, shape, dtype), = fl.onnx_input_specs(onnx_path)
    why = ""
    if name == "mobilenetv2":
        sys.path.insert(0, str(REPO_ROOT / "scripts"))
        try:
            from imagenet_eval import load_imagenet_sample

            x, _ = load_imagenet_sample(args.imagenet_root, n=args.calib)
            if len(x) == args.calib:
                return x, f"the first {len(x)} imagenet-sample images", True
            why = f"only {len(x)} images in {args.imagenet_root}"
        except (FileNotFoundError, ImportError) as e:
            why = str(e)
        print(f"[{name}] calibration falls back to random inputs: {why}", flush=True)
    rng = np.random.default_rng([args.seed, 1])  # not the benchmark input's stream
    calib = rng.standard_normal((args.calib, *shape[1:]), dtype=np.float32).astype(dtype)
    desc = f"{args.calib} seeded random normal inputs"
    return calib, desc + (f" (FALLBACK: {why})" if why else ""), False


def cached_artifact(label: str, kind: str, out: Path, stamp: dict[str, Any],
                    spec: dict[str, Any], rebuild: bool) -> tuple[Path | None, dict[str, Any], str | None]:
    """Build one rival's model in a worker unless ``out`` exists with a matching stamp beside it.
    Returns ``(path or None, info, error)``."""
    stamp_path = out.parent / ARTIFACT_STAMP
    if (not rebuild and out.exists() and stamp_path.exists()
            and json.loads(stamp_path.read_text()).get("stamp") == stamp):
        info = json.loads(stamp_path.read_text())["build"]
        print(f"[{label}] reusing {out.relative_to(REPO_ROOT)}", flush=True)
        return out, {**info, "reused": True}, None
    stamp_path.unlink(missing_ok=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    print(f"[{label}] quantizing ({kind}) ...", flush=True)
    res = fl.run_worker({"kind": kind, "out": str(out), **spec}, script=SCRIPT)
    if not res.get("ok"):
        err = res.get("error", "unknown error")
        print(f"[{label}] {kind} FAILED: {err}", flush=True)
        return None, {}, err
    info = {k: v for k, v in res.items() if k != "ok"}
    stamp_path.write_text(json.dumps({"stamp": stamp, "build": info}, indent=1))
    print(f"[{label}] done in {res['seconds']:.1f}s", flush=True)
    return out, {**info, "reused": False}, None


def prepare_model(name: str, onnx_path: Path, args: argparse.Namespace,
                  ov_missing: str | None) -> dict[str, Any]:
    """Calibration data, the tvmq W8A8 build, the rivals' int8 models, the benchmark input."""
    d = fl.BUILD_DIR / f"w8a8_{name}"
    d.mkdir(parents=True, exist_ok=True)
    calib, calib_desc, real = calibration_inputs(name, onnx_path, args)
    calib_path = d / CALIB_FILE
    np.savez(calib_path, calib=calib)
    calib_sha = hashlib.sha256(np.ascontiguousarray(calib).tobytes()).hexdigest()

    case = fl.ModelCase(name, onnx_path, d, d / fl.INPUT_FILE)
    fl.prepare_case(case, rebuild=args.rebuild, seed=args.seed,
                    build_spec={"calib": str(calib_path), "range_method": RANGE_METHOD},
                    stamp_extra={"plan": "w8a8", "range_method": RANGE_METHOD,
                                 "calib_sha256": calib_sha},
                    script=SCRIPT)

    model = {"case": case, "calib": calib_desc, "calib_real_images": real,
             "calib_sha256": calib_sha, "artifacts": {}, "errors": {}, "builds": {}}
    if case.build_error:
        model["errors"][TVMQ] = f"build failed: {case.build_error}"
    model["artifacts"][ORT_FP32] = onnx_path
    if case.library is not None:
        model["artifacts"][TVMQ] = case.library
    model["tuned_case"] = None
    if args.db:
        merged = d.parent / f"w8a8_{name}_tuned" / "tuning.jsonl"
        merged.parent.mkdir(parents=True, exist_ok=True)
        merged.unlink(missing_ok=True)
        from tvmq.tune import TuningDatabase

        TuningDatabase.merge(args.db, merged)
        tuned = fl.ModelCase(name, onnx_path, merged.parent, d / fl.INPUT_FILE)
        fl.prepare_case(tuned, rebuild=args.rebuild, seed=args.seed,
                        build_spec={"calib": str(calib_path), "range_method": RANGE_METHOD,
                                    "db": str(merged)},
                        stamp_extra={"plan": "w8a8", "range_method": RANGE_METHOD,
                                     "calib_sha256": calib_sha, "db_sha256": fl.sha256_file(merged)},
                        script=SCRIPT)
        model["tuned_case"] = tuned
        if tuned.build_error:
            model["errors"][TVMQ_TUNED] = f"build failed: {tuned.build_error}"
        elif tuned.library is not None:
            model["artifacts"][TVMQ_TUNED] = tuned.library

    rival_src = rival_onnx(onnx_path, d / RIVAL_ONNX)  # the file itself, or a folded copy
    model["rival_onnx"] = rival_src
    base = {"onnx_sha256": fl.sha256_file(rival_src), "calib_sha256": calib_sha,
            "recipe_sha256": {p.name: fl.sha256_file(p) for p in (COMMON_PY, SCRIPT)},
            "python": sys.executable}
    common = {"model": str(rival_src), "calib": str(calib_path)}
    path, info, err = cached_artifact(
        f"{name}/{ORT_INT8}", "quantize_ort", d / "ort_int8" / "model.onnx",
        {**base, "onnxruntime": fl.package_version("onnxruntime"), "onnx": fl.package_version("onnx")},
        common, args.rebuild)
    model["builds"][ORT_INT8] = info
    if err:
        model["errors"][ORT_INT8] = f"quantization failed: {err}"
    elif path is not None:
        model["artifacts"][ORT_INT8] = path

    if ov_missing:
        model["skipped_variants"] = {OV_INT8: ov_missing}
    else:
        (_, shape, _), = fl.onnx_input_specs(onnx_path)
        path, info, err = cached_artifact(
            f"{name}/{OV_INT8}", "quantize_ov", d / "openvino_int8" / "model.xml",
            {**base, "openvino": fl.package_version("openvino"), "nncf": fl.package_version("nncf")},
            {**common, "shape": list(shape)}, args.rebuild)
        model["builds"][OV_INT8] = info
        if err:
            model["errors"][OV_INT8] = f"quantization failed: {err}"
        elif path is not None:
            model["artifacts"][OV_INT8] = path
    return model


WORKER_KIND = {ORT_FP32: "onnxruntime", TVMQ: "tvmq", TVMQ_TUNED: "tvmq", ORT_INT8: "onnxruntime",
               OV_INT8: "openvino"}


def bench_model(model: dict[str, Any], threads: int, args: argparse.Namespace,
                tmp: Path) -> dict[str, Any]:
    """Interleaved rounds of every available variant for one (model, threads)."""
    case: fl.ModelCase = model["case"]
    art = model["artifacts"]
    specs: dict[str, dict[str, Any]] = {}
    for v in VARIANTS:
        if v in art:
            spec = {"kind": WORKER_KIND[v], "input": str(case.input_path)}
            spec["library" if v in (TVMQ, TVMQ_TUNED) else "model"] = str(art[v])
            specs[v] = spec
    errors = dict(model["errors"])
    slug = {v: "".join(c if c.isalnum() else "_" for c in v) for v in VARIANTS}
    outputs = {v: tmp / f"{case.name}-{threads}-{slug[v]}.npz" for v in specs}
    res = fl.run_rounds(case.name, threads, specs, args, outputs=outputs, errors=errors,
                        script=SCRIPT)

    stats = {v: fl.summarize(s) for v, s in res["samples"].items() if s}
    ratios = {f"tvmq/{v}": (stats[TVMQ]["median_ms"] / stats[v]["median_ms"]
                            if TVMQ in stats and v in stats else None)
              for v in VARIANTS if v != TVMQ}
    ratios.update({f"tuned/{v}": (stats[TVMQ_TUNED]["median_ms"] / stats[v]["median_ms"]
                                  if TVMQ_TUNED in stats and v in stats else None)
                   for v in VARIANTS if v != TVMQ_TUNED})
    ref = outputs.get(ORT_FP32)
    diffs = {v: (fl.rel_max_diff(outputs[v], ref) if ref and ref.exists() and outputs[v].exists()
                 else None) for v in specs if v != ORT_FP32}
    return {"model": case.name, "threads": threads, "stats": stats, "ratios": ratios,
            "rel_max_diff_vs_ort_fp32": diffs, "errors": errors,
            "skipped": model.get("skipped_variants", {}), "per_round": res["per_round"],
            "worker_info": res["info"], "samples_ms": res["samples"]}


def cell(row: dict[str, Any], v: str) -> str:
    if v in row["skipped"]:
        return "skipped"
    return fl.fmt_stat(row["stats"].get(v), row["errors"].get(v))


def markdown_table(rows: list[dict[str, Any]], models: dict[str, dict[str, Any]],
                   skipped: dict[str, str]) -> str:
    tuned = any(TVMQ_TUNED in m["artifacts"] or TVMQ_TUNED in m["errors"] for m in models.values())
    shown = [v for v in VARIANTS if v != TVMQ_TUNED or tuned]
    ratio_keys = [(f"tvmq/{v}", f"ratio tvmq/{v}") for v in RIVALS]
    if tuned:
        ratio_keys += [(f"tuned/{v}", f"ratio tuned/{v}") for v in RIVALS]
        ratio_keys.append((f"tvmq/{TVMQ_TUNED}", "tuning speedup (untuned/tuned)"))
    lines = ["| model | threads | " + " | ".join(shown) + " | "
             + " | ".join(h for _, h in ratio_keys) + " |",
             "|---|---:|" + "---:|" * (len(shown) + len(ratio_keys))]
    for row in rows:
        ratios = [row["ratios"].get(k) for k, _ in ratio_keys]
        lines.append(f"| {row['model']} | {row['threads']} | "
                     + " | ".join(cell(row, v) for v in shown) + " | "
                     + " | ".join(f"{r:.2f}" if r else "-" for r in ratios) + " |")
    notes = fl.row_notes(rows)
    for row in rows:
        others = [r["other_cpu_cores"] for rr in row["per_round"].values() for r in rr
                  if r.get("other_cpu_cores") is not None]
        if others and max(others) >= BUSY_CORES:
            notes.append(f"- {row['model']} t={row['threads']}: other processes kept up to "
                         f"{max(others):.2f} cores busy while it was timed; rerun when the "
                         "machine is quiet")
    seen: set[str] = set()
    for row in rows:
        for v, why in row["skipped"].items():
            if v not in seen:
                seen.add(v)
                notes.append(f"- {v}: skipped, {why}")
    for name, m in models.items():
        if m["rival_onnx"] != m["case"].onnx_path:
            notes.append(f"- {name}: the rivals quantize `{m['rival_onnx'].name}` in the build "
                         "folder, the same function with its ConstantOfShape weights folded into "
                         "initializers and opset 13 (without it NNCF quantizes no conv, "
                         "onnxruntime's quantizer fails)")
        kernels = {ORT_INT8: m["builds"].get(ORT_INT8, {}).get("kernels")}
        kernels[OV_INT8] = next((i.get("kernels") for row in rows if row["model"] == name
                                 for i in row["worker_info"].get(OV_INT8, []) if i.get("kernels")),
                                None)
        for v, k in kernels.items():
            if k:
                notes.append(f"- {name} {v} conv/dense kernels: {k}")
    notes += [f"- {name}: skipped, {why}" for name, why in skipped.items()]
    return "\n".join(lines + ([""] + notes if notes else []))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--calib", type=int, default=32,
                   help="calibration inputs per model (default 32)")
    p.add_argument("--db", type=Path, action="append", default=[],
                   help="tuning database(s) (tvmq tune): adds the 'tvmq W8A8 tuned' variant")
    p.add_argument("--imagenet-root", type=Path, default=DEFAULT_IMAGENET,
                   help="imagenet-sample folder for mobilenetv2's calibration "
                        "(default ../shared/data/imagenet-sample)")


def main(argv: Sequence[str] | None = None) -> int:
    args = fl.parse_args(argv, description=__doc__.split("\n\n")[0],
                         output=RESULTS_DIR / "w8a8_latency.json", add_arguments=add_arguments)
    if args.calib < 1:
        print("w8a8_latency: error: --calib must be >= 1", file=sys.stderr)
        return 2
    started = _dt.datetime.now(_dt.timezone.utc)
    load_before = os.getloadavg()
    print(f"load average before: {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}",
          flush=True)

    # Not imported here: OpenVINO's thread pool must not live in the parent.
    missing = [m for m in ("openvino", "nncf") if importlib.util.find_spec(m) is None]
    ov_missing = (f"{' and '.join(missing)} not installed: `{OV_MISSING}`" if missing else None)
    if ov_missing:
        print(f"{OV_INT8}: SKIPPED, {ov_missing}", flush=True)

    found, skipped = fl.find_models(args)
    models = {name: prepare_model(name, path, args, ov_missing) for name, path in found.items()}

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="tvmq-bench-") as tmp:
        for model in models.values():
            for threads in args.thread_list:
                print(f"[{model['case'].name}] threads={threads}: {args.rounds} rounds x "
                      f"({args.warmup} warmup + {args.repeat} timed) per variant", flush=True)
                rows.append(bench_model(model, threads, args, Path(tmp)))

    load_after = os.getloadavg()
    table = markdown_table(rows, models, skipped)
    info = fl.machine_info()
    flags = (", ".join(f for f, on in info["cpu_flags"].items() if on)
             or "none of " + "/".join(fl.CPU_FLAGS))
    calib = "; ".join(f"{n}: {m['calib']}" for n, m in models.items())
    tuned_note = (f" and tuned on the kernels' best records in {', '.join(str(p) for p in args.db)}"
                  if args.db else "")
    header = (f"W8A8 batch-1 latency, tvmq (untuned{tuned_note}, integer-only W8A8, {RANGE_METHOD} ranges) vs "
              f"onnxruntime int8 (QDQ) and OpenVINO int8 (NNCF), onnxruntime fp32 as the baseline. "
              f"{info['cpu_model']}, {info['nproc']} CPUs ({flags}); {args.rounds} rounds x "
              f"{args.repeat} timed calls per variant, fresh process each; calibration ({args.calib} "
              f"inputs, the same for all three quantizers): {calib or '-'}; load average "
              f"{load_before[0]:.2f} before, {load_after[0]:.2f} after; {started:%Y-%m-%d %H:%M} UTC.")
    header += fl.interference_note(rows)
    header += ("\n\nCells: median ms (p10-p90) over all timed calls; ratio = median(tvmq W8A8) / "
               "median(rival), below 1: tvmq is faster.")
    report = f"{header}\n\n{table}\n"
    print("\n" + report)

    tvm_version = next((m["case"].build_info.get("tvm_version") for m in models.values()
                        if m["case"].build_info.get("tvm_version")), None)
    result = {
        "benchmark": "w8a8_latency",
        "date_utc": started.isoformat(timespec="seconds"),
        "duration_s": round((_dt.datetime.now(_dt.timezone.utc) - started).total_seconds(), 1),
        "machine": {**info, "loadavg_before": load_before, "loadavg_after": load_after},
        "versions": {"tvm": tvm_version or fl.package_version("apache-tvm"),
                     "onnxruntime": fl.package_version("onnxruntime"),
                     "openvino": fl.package_version("openvino"), "nncf": fl.package_version("nncf"),
                     "onnx": fl.package_version("onnx"), "numpy": np.__version__,
                     "tvmq_git": fl.git_revision(), "tvmq_sources_sha256": fl.tvmq_source_hash()},
        "settings": {"models": args.model_list, "threads": args.thread_list,
                     "rounds": args.rounds, "warmup": args.warmup, "repeat": args.repeat,
                     "seed": args.seed, "calib": args.calib, "range_method": RANGE_METHOD,
                     "imagenet_root": str(args.imagenet_root), "variants": list(VARIANTS),
                     "openvino_config": {**OV_CONFIG, "INFERENCE_NUM_THREADS": "= threads"},
                     "db": [str(p) for p in args.db],
                     "timed_call": {TVMQ: "Module.run(feeds)", TVMQ_TUNED: "Module.run(feeds)",
                                    ORT_FP32: "InferenceSession.run",
                                    ORT_INT8: "InferenceSession.run",
                                    OV_INT8: "InferRequest.infer(feeds)"}},
        "models": {n: {"onnx": str(m["case"].onnx_path), "rival_onnx": str(m["rival_onnx"]),
                       "build_dir": str(m["case"].build_dir), "calibration": m["calib"],
                       "calibration_real_images": m["calib_real_images"],
                       "calibration_sha256": m["calib_sha256"],
                       "build": {TVMQ: m["case"].build_info,
                                 **({TVMQ_TUNED: m["tuned_case"].build_info} if m["tuned_case"] else {}),
                                 **m["builds"]},
                       "build_errors": m["errors"]} for n, m in models.items()},
        "skipped": skipped,
        "results": rows,
    }
    fl.write_results(args.output, result, report)
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        sys.exit(fl.worker_main(sys.argv[2], WORKERS))
    sys.path.insert(0, str(REPO_ROOT))
    sys.exit(main())
