"""W8A8 batch-1 CPU latency: tvmq's integer-only W8A8 beside onnxruntime int8 and OpenVINO int8."""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench import harness as h

ORT_FP32, TVMQ, TVMQ_TUNED = "onnxruntime fp32", "tvmq W8A8", "tvmq W8A8 tuned"
ORT_INT8, OV_INT8 = "onnxruntime int8 (QDQ)", "OpenVINO int8 (NNCF)"
VARIANTS = (ORT_FP32, TVMQ, TVMQ_TUNED, ORT_INT8, OV_INT8)  # table order; also within a round
RIVALS = (ORT_INT8, OV_INT8)  # the table's ratio columns
KIND = {ORT_FP32: "onnxruntime", TVMQ: "tvmq", TVMQ_TUNED: "tvmq", ORT_INT8: "onnxruntime",
        OV_INT8: "openvino"}
RANGE_METHOD = "percentile"
BUSY_CORES = 0.5  # a row gets a note when other processes kept this many cores busy in a worker


def calibration_inputs(name: str, onnx_path: Path, args: argparse.Namespace) -> tuple[np.ndarray, str, bool]:
    """``(calib [N, ...], description, real_images)`` for one model."""
    (_, shape, dtype), = h.onnx_input_specs(onnx_path)
    why = ""
    if tuple(shape[1:]) == (3, 224, 224):  # an ImageNet-sized CNN: real images (ImageNet normalisation)
        try:
            x, _ = h.imagenet_sample(args.imagenet_root, args.calib)
            if len(x) == args.calib:
                return x, f"the first {len(x)} imagenet-sample images", True
            why = f"only {len(x)} images in {args.imagenet_root}"
        except (FileNotFoundError, ImportError) as e:
            why = str(e)
        print(f"[{name}] calibration falls back to random inputs: {why}", flush=True)
    rng = np.random.default_rng([args.seed, 1])  # not the benchmark input's stream
    calib = rng.standard_normal((args.calib, *shape[1:]), dtype=np.float32).astype(dtype)
    return calib, f"{args.calib} seeded random normal inputs" + (f" (FALLBACK: {why})" if why else ""), False


def tvmq_builds(model: dict[str, Any], args: argparse.Namespace, calib_path: Path, calib_sha: str) -> None:
    """The untuned and (with ``--db``) the tuned W8A8 library into ``model``."""
    name, onnx_path, d = model["name"], model["onnx"], h.BUILD_DIR / f"w8a8_{model['name']}"
    spec = {"calib": str(calib_path), "range_method": RANGE_METHOD}
    stamp = {"plan": "w8a8", "range_method": RANGE_METHOD, "calib_sha256": calib_sha}
    cases = {TVMQ: (h.ModelCase(name, onnx_path, d, d / h.INPUT_FILE), spec, stamp)}
    if args.db:
        from tvmq.tune import TuningDatabase  # deferred: imports TVM

        merged = d.parent / f"w8a8_{name}_tuned" / "tuning.jsonl"
        merged.parent.mkdir(parents=True, exist_ok=True)
        merged.unlink(missing_ok=True)
        TuningDatabase.merge(args.db, merged)
        cases[TVMQ_TUNED] = (h.ModelCase(name, onnx_path, merged.parent, d / h.INPUT_FILE),
                             {**spec, "db": str(merged)}, {**stamp, "db_sha256": h.sha256_file(merged)})
    for v, (case, spec_v, stamp_v) in cases.items():
        h.prepare_case(case, rebuild=args.rebuild, seed=args.seed, build_spec=spec_v, stamp_extra=stamp_v)
        model["cases"][v] = case
        if case.build_error:
            model["errors"][v] = f"build failed: {case.build_error}"
        elif case.library is not None:
            model["artifacts"][v] = case.library


def rival_builds(model: dict[str, Any], args: argparse.Namespace, calib_path: Path, calib_sha: str,
                 ov_missing: str | None) -> None:
    """The rivals' int8 models (quantized in workers, cached) into ``model``."""
    d = h.BUILD_DIR / f"w8a8_{model['name']}"
    src = model["rival_onnx"] = h.rival_onnx(model["onnx"], d / "rival.onnx")  # itself, or a folded copy
    base = {"onnx_sha256": h.sha256_file(src), "calib_sha256": calib_sha, "python": sys.executable,
            "recipe_sha256": {p.name: h.sha256_file(p) for p in (Path(h.__file__), Path(__file__))}}
    common = {"model": str(src), "calib": str(calib_path)}
    todo = {ORT_INT8: ("quantize_ort", d / "ort_int8" / "model.onnx", ("onnxruntime", "onnx"), {})}
    if ov_missing:
        model["skipped_variants"] = {OV_INT8: ov_missing}
    else:
        (_, shape, _), = h.onnx_input_specs(model["onnx"])
        todo[OV_INT8] = ("quantize_ov", d / "openvino_int8" / "model.xml", ("openvino", "nncf"),
                         {"shape": list(shape)})
    for v, (kind, out, packages, extra) in todo.items():
        stamp = {**base, **{p: h.package_version(p) for p in packages}}
        path, info, err = h.cached_build(f"{model['name']}/{v}", out, stamp, out.parent / "stamp.json",
                                         {"kind": kind, "out": str(out), **common, **extra}, args.rebuild)
        model["builds"][v] = info
        if err:
            model["errors"][v] = f"quantization failed: {err}"
        elif path is not None:
            model["artifacts"][v] = path


def prepare_model(name: str, onnx_path: Path, args: argparse.Namespace,
                  ov_missing: str | None) -> dict[str, Any]:
    """Calibration data, the tvmq W8A8 builds, the rivals' int8 models, the benchmark input."""
    d = h.BUILD_DIR / f"w8a8_{name}"
    d.mkdir(parents=True, exist_ok=True)
    calib, desc, real = calibration_inputs(name, onnx_path, args)
    np.savez(d / "calib.npz", calib=calib)
    sha = hashlib.sha256(np.ascontiguousarray(calib).tobytes()).hexdigest()
    model = {"name": name, "onnx": onnx_path, "calib": desc, "calib_real_images": real, "calib_sha256": sha,
             "cases": {}, "artifacts": {ORT_FP32: onnx_path}, "errors": {}, "builds": {}}
    tvmq_builds(model, args, d / "calib.npz", sha)
    rival_builds(model, args, d / "calib.npz", sha, ov_missing)
    return model


def bench_model(model: dict[str, Any], threads: int, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """Interleaved rounds of every available variant for one (model, threads)."""
    case, art = model["cases"][TVMQ], model["artifacts"]
    specs = {v: {"kind": KIND[v], "input": str(case.input_path),
                 ("library" if KIND[v] == "tvmq" else "model"): str(art[v])} for v in VARIANTS if v in art}
    slug = {v: "".join(c if c.isalnum() else "_" for c in v) for v in specs}
    outputs = {v: tmp / f"{case.name}-{threads}-{slug[v]}.npz" for v in specs}
    res = h.run_rounds(case.name, threads, specs, args, outputs, dict(model["errors"]))
    stats = {v: h.summarize(s) for v, s in res["samples"].items() if s}
    ratios = {f"{k}/{v}": (stats[t]["median_ms"] / stats[v]["median_ms"]
                           if t in stats and v in stats else None)
              for k, t in (("tvmq", TVMQ), ("tuned", TVMQ_TUNED)) for v in VARIANTS if v != t}
    ref = outputs.get(ORT_FP32)
    diffs = {v: (h.rel_max_diff(outputs[v], ref) if ref and ref.exists() and outputs[v].exists() else None)
             for v in specs if v != ORT_FP32}
    return {"model": case.name, "threads": threads, "stats": stats, "ratios": ratios,
            "rel_max_diff_vs_ort_fp32": diffs, "errors": res["errors"],
            "skipped": model.get("skipped_variants", {}), "per_round": res["per_round"],
            "worker_info": res["info"], "samples_ms": res["samples"]}


def model_notes(rows: list[dict[str, Any]], models: dict[str, dict[str, Any]]) -> list[str]:
    """Skipped variants, the rival.onnx substitution, the conv/dense kernels each rival runs."""
    notes = list(dict.fromkeys(f"- {v}: skipped, {why}" for row in rows for v, why in row["skipped"].items()))
    for name, m in models.items():
        if m["rival_onnx"] != m["onnx"]:
            notes.append(f"- {name}: the rivals quantize `{m['rival_onnx'].name}` in the build folder, the "
                         "same function with any ConstantOfShape weights folded into initializers, no "
                         "initializer listed as a graph input, and opset >= 13 (without it NNCF quantizes "
                         "no conv of light_resnet50, onnxruntime's quantizer fails)")
        ov = next((i["kernels"] for row in rows if row["model"] == name
                   for i in row["worker_info"].get(OV_INT8, []) if i.get("kernels")), None)
        for v, k in ((ORT_INT8, m["builds"].get(ORT_INT8, {}).get("kernels")), (OV_INT8, ov)):
            if k:
                notes.append(f"- {name} {v} conv/dense kernels: {k}")
    return notes


def markdown_table(rows: list[dict[str, Any]], models: dict[str, dict[str, Any]],
                   skipped: dict[str, str]) -> str:
    tuned = any(TVMQ_TUNED in m["artifacts"] or TVMQ_TUNED in m["errors"] for m in models.values())
    shown = [v for v in VARIANTS if v != TVMQ_TUNED or tuned]
    keys = [(f"tvmq/{v}", f"ratio tvmq/{v}") for v in RIVALS]
    if tuned:
        keys += [(f"tuned/{v}", f"ratio tuned/{v}") for v in RIVALS]
        keys.append((f"tvmq/{TVMQ_TUNED}", "tuning speedup (untuned/tuned)"))
    cells = [[row["model"], row["threads"],
              *["skipped" if v in row["skipped"] else h.fmt_stat(row["stats"].get(v), row["errors"].get(v))
                for v in shown],
              *[f"{r:.2f}" if (r := row["ratios"].get(k)) else "-" for k, _ in keys]] for row in rows]
    notes = (h.row_notes(rows, BUSY_CORES) + model_notes(rows, models)
             + [f"- {name}: skipped, {why}" for name, why in skipped.items()])
    return h.md_table(["model", "threads", *shown, *(t for _, t in keys)], cells, "lr", notes)


def add_arguments(p: argparse.ArgumentParser) -> None:
    h.add_options(p, calib=(32, "calibration inputs per model (default 32)"))
    p.add_argument("--db", type=Path, action="append", default=[],
                   help="tuning database(s) (tvmq tune): adds the 'tvmq W8A8 tuned' variant")
    p.add_argument("--imagenet-root", type=Path, default=h.DEFAULT_IMAGENET,
                   help="imagenet-sample folder for mobilenetv2's calibration (default "
                        "../shared/data/imagenet-sample)")


def record(run: h.Run, args: argparse.Namespace, models: dict[str, Any], skipped: dict[str, str],
           rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The JSON of the run."""
    tvm = next((c.build_info["tvm_version"] for m in models.values() for c in m["cases"].values()
                if c.build_info.get("tvm_version")), None)
    return run.record(
        versions=h.versions(tvm, "openvino", "nncf"),
        settings={"models": args.model_list, "threads": args.thread_list, "rounds": args.rounds,
                  "warmup": args.warmup, "repeat": args.repeat, "seed": args.seed, "calib": args.calib,
                  "range_method": RANGE_METHOD, "imagenet_root": str(args.imagenet_root),
                  "variants": list(VARIANTS),
                  "openvino_config": {**h.OV_CONFIG, "INFERENCE_NUM_THREADS": "= threads"},
                  "db": [str(p) for p in args.db],
                  "timed_call": {TVMQ: "Module.run(feeds)", TVMQ_TUNED: "Module.run(feeds)",
                                 ORT_FP32: "InferenceSession.run", ORT_INT8: "InferenceSession.run",
                                 OV_INT8: "InferRequest.infer(feeds)"}},
        models={n: {"onnx": str(m["onnx"]), "rival_onnx": str(m["rival_onnx"]),
                    "build_dir": str(m["cases"][TVMQ].build_dir), "calibration": m["calib"],
                    "calibration_real_images": m["calib_real_images"],
                    "calibration_sha256": m["calib_sha256"],
                    "build": {**{v: c.build_info for v, c in m["cases"].items()}, **m["builds"]},
                    "build_errors": m["errors"]} for n, m in models.items()},
        skipped=skipped, results=rows)


def main(argv: Sequence[str] | None = None) -> int:
    args = h.latency_args(argv, __doc__, add_arguments)
    if args.calib < 1:
        sys.exit("w8a8_latency: error: --calib must be >= 1")
    run = h.Run("w8a8_latency")
    # found, not imported: OpenVINO's thread pool must not live in the parent
    missing = [m for m in ("openvino", "nncf") if importlib.util.find_spec(m) is None]
    ov_missing = f"{' and '.join(missing)} not installed: `{h.OV_MISSING}`" if missing else None
    if ov_missing:
        print(f"{OV_INT8}: SKIPPED, {ov_missing}", flush=True)
    found, skipped = h.find_models(args)
    models = {name: prepare_model(name, path, args, ov_missing) for name, path in found.items()}
    rows = []
    with tempfile.TemporaryDirectory(prefix="tvmq-bench-") as tmp:
        for model in models.values():
            for threads in args.thread_list:
                print(f"[{model['name']}] threads={threads}: {args.rounds} rounds x ({args.warmup} warmup + "
                      f"{args.repeat} timed) per variant", flush=True)
                rows.append(bench_model(model, threads, args, Path(tmp)))
    result = record(run, args, models, skipped, rows)
    tuned = f" and tuned on the kernels' best records in {', '.join(map(str, args.db))}" if args.db else ""
    calib = "; ".join(f"{n}: {m['calib']}" for n, m in models.items()) or "-"
    header = (f"W8A8 batch-1 latency, tvmq (untuned{tuned}, integer-only W8A8, {RANGE_METHOD} ranges) vs "
              f"onnxruntime int8 (QDQ) and OpenVINO int8 (NNCF), onnxruntime fp32 as the baseline. "
              f"{h.machine_line(result['machine'])}; {args.rounds} rounds x {args.repeat} timed calls per "
              f"variant, fresh process each; calibration ({args.calib} inputs, the same for all three "
              f"quantizers): {calib}; {run.load_note()}." + h.interference_note(rows)
              + "\n\nCells: median ms (p10-p90) over all timed calls; ratio = median(tvmq W8A8) / "
              "median(rival), below 1: tvmq is faster.")
    h.write_results(args.out, "w8a8_latency", result,
                    f"{header}\n\n{markdown_table(rows, models, skipped)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
