"""Batch-1 end-to-end CPU latency, tvmq beside its rivals (``python -m bench.latency fp32|w8a8``, results
``fp32_latency`` / ``w8a8_latency``; see bench/README.md)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench import harness as h
from schedules.target_features import ISA_LEVELS
from tvmq.runtime import BenchmarkResult

ORT_FP32, TVMQ, TVMQ_TUNED, NARROW = "onnxruntime fp32", "tvmq W8A8", "tvmq W8A8 tuned", "tvmq W8A8 narrow"
INT8_RIVALS = ORT_INT8, OV_INT8 = "onnxruntime int8 (QDQ)", "OpenVINO int8 (NNCF)"
# per precision: {variant: (worker kind, table column)} in table order, also within a round; the
# reference the outputs are compared with; the OpenVINO variant and the packages it needs; the
# ratio columns {ratio key: column}
MODES = {
    "fp32": {"variants": {"tvmq": ("tvmq", "tvmq median ms (p10-p90)"),
                          "onnxruntime": ("onnxruntime", "onnxruntime median ms (p10-p90)"),
                          "openvino": ("openvino", "OpenVINO median ms (p10-p90)")},
             "ref": "onnxruntime", "tvmq": ("tvmq",), "ov": ("openvino", ("openvino",)),
             "ratios": {"tvmq/onnxruntime": "ratio tvmq/ort", "tvmq/openvino": "ratio tvmq/OpenVINO"}},
    "w8a8": {"variants": {v: (k, v) for v, k in ((ORT_FP32, "onnxruntime"), (TVMQ, "tvmq"),
                                                 (TVMQ_TUNED, "tvmq"), (ORT_INT8, "onnxruntime"),
                                                 (OV_INT8, "openvino"))},
             "ref": ORT_FP32, "tvmq": (TVMQ, TVMQ_TUNED), "ov": (OV_INT8, ("openvino", "nncf")),
             "ratios": {**{f"{t}/{v}": f"ratio {t}/{v}" for t in ("tvmq", "tuned") for v in INT8_RIVALS},
                        f"tvmq/{TVMQ_TUNED}": "tuning speedup (untuned/tuned)"}},
}
RANGE_METHOD = "percentile"


def mode_of(args: Any) -> dict[str, Any]:
    """``MODES[precision]`` with a tvmq W8A8 variant per ``--isa`` and one for ``--narrow-weights``
    after the untuned build, and their ratios to the int8 rivals."""
    mode = MODES[args.precision]
    extra = [f"tvmq W8A8 {i}" for i in args.isa_list] + [NARROW] * args.narrow_weights
    if not extra:
        return mode
    items = list(mode["variants"].items())
    at = list(mode["variants"]).index(TVMQ) + 1
    return {**mode, "variants": dict(items[:at] + [(v, ("tvmq", v)) for v in extra] + items[at:]),
            "tvmq": (*mode["tvmq"], *extra),
            "ratios": {**mode["ratios"],
                       **{f"{v}/{r}": f"ratio {v}/{r}" for v in extra for r in INT8_RIVALS}}}


def calibration_inputs(name: str, onnx_path: Path, args: Any) -> tuple[np.ndarray, str, bool]:
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


def builds(m: dict[str, Any], args: Any, d: Path, ov_missing: str | None) -> list[tuple]:
    """``(variant, worker spec, output, stamp)`` of every build ``m`` needs: tvmq's, and in w8a8
    the ``--isa`` / narrow / tuned (``--db``) ones and the rivals' int8 models, on one calibration set."""
    sources = {"onnx_sha256": h.sha256_file(m["onnx"]), "tvmq_sources": h.tvmq_source_hash(),
               "python": sys.executable}
    if args.precision == "fp32":
        return [("tvmq", {"kind": "build", "model": str(m["onnx"])}, d / "model.so", sources)]
    calib, desc, real = calibration_inputs(m["name"], m["onnx"], args)
    np.savez(d / "calib.npz", calib=calib)
    sha = hashlib.sha256(np.ascontiguousarray(calib).tobytes()).hexdigest()
    m["calibration"] = {"calibration": desc, "calibration_real_images": real, "calibration_sha256": sha}
    spec = {"kind": "build", "model": str(m["onnx"]), "calib": str(d / "calib.npz"),
            "range_method": RANGE_METHOD}
    stamp = {**sources, "plan": "w8a8", "range_method": RANGE_METHOD, "calib_sha256": sha}
    narrow = {"narrow_weights": True} if args.narrow_weights else {}
    todo = [(TVMQ, spec, d / "model.so", stamp)]
    todo += [(f"tvmq W8A8 {isa}", {**spec, "isa": isa}, d.parent / f"{d.name}_{isa}" / "model.so",
              {**stamp, "isa": isa}) for isa in args.isa_list]
    if narrow:
        todo.append((NARROW, {**spec, **narrow}, d.parent / f"{d.name}_narrow" / "model.so",
                     {**stamp, **narrow}))
    if args.db:
        from tvmq.tune import TuningDatabase  # deferred: imports TVM

        merged = d.parent / f"{d.name}_tuned" / "tuning.jsonl"
        merged.parent.mkdir(parents=True, exist_ok=True)
        merged.unlink(missing_ok=True)
        TuningDatabase.merge(args.db, merged)
        # narrow weights in the tuned build too: as `tvmq tune` measured them on AVX2
        todo.append((TVMQ_TUNED, {**spec, "db": str(merged), **narrow}, merged.parent / "model.so",
                     {**stamp, "db_sha256": h.sha256_file(merged), **narrow}))
    src = m["rival_onnx"] = h.rival_onnx(m["onnx"], d / "rival.onnx")  # itself, or a folded copy
    base = {"onnx_sha256": h.sha256_file(src), "calib_sha256": sha, "python": sys.executable,
            "recipe_sha256": {p.name: h.sha256_file(p) for p in (Path(h.__file__), Path(__file__))}}
    rival = {"model": str(src), "calib": str(d / "calib.npz")}
    todo.append((ORT_INT8, {"kind": "quantize_ort", **rival}, d / "ort_int8" / "model.onnx",
                 {**base, **{p: h.package_version(p) for p in ("onnxruntime", "onnx")}}))
    if not ov_missing:
        (_, shape, _), = h.onnx_input_specs(m["onnx"])
        todo.append((OV_INT8, {"kind": "quantize_ov", **rival, "shape": list(shape)},
                     d / "openvino_int8" / "model.xml",
                     {**base, **{p: h.package_version(p) for p in ("openvino", "nncf")}}))
    return todo


def prepare_model(name: str, onnx_path: Path, args: Any, ov_missing: str | None) -> dict[str, Any]:
    """The seeded benchmark input and every variant's artifact (builds cached while their stamp matches)."""
    mode = mode_of(args)
    d = h.BUILD_DIR / (name if args.precision == "fp32" else f"w8a8_{name}")
    d.mkdir(parents=True, exist_ok=True)
    rng, specs = np.random.default_rng(args.seed), h.onnx_input_specs(onnx_path)
    np.savez(d / h.INPUT_FILE, __names__=json.dumps([n for n, _, _ in specs]),
             **{f"in_{i}": rng.standard_normal(shape).astype(dtype)
                for i, (_, shape, dtype) in enumerate(specs)})
    m: dict[str, Any] = {"name": name, "onnx": onnx_path, "rival_onnx": onnx_path, "dir": d,
                         "input": d / h.INPUT_FILE,
                         "artifacts": {v: onnx_path for v, (kind, _) in mode["variants"].items()
                                       if kind != "tvmq" and v in (mode["ref"], "openvino")},
                         "errors": {}, "builds": {}, "calibration": {},
                         "skipped": {mode["ov"][0]: ov_missing} if ov_missing else {}}
    for v, spec, out, stamp in builds(m, args, d, ov_missing):
        path, info, err = h.cached_build(f"{name}/{v}", out, stamp, out.parent / "stamp.json",
                                         {**spec, "out": str(out.parent if spec["kind"] == "build" else out)},
                                         args.rebuild)
        m["builds"][v] = info
        if err:
            m["errors"][v] = f"build failed: {err}"
        elif path is not None:
            m["artifacts"][v] = path
    for v in m["skipped"]:
        m["artifacts"].pop(v, None)
    return m


def bench_model(m: dict[str, Any], threads: int, args: Any, tmp: Path) -> dict[str, Any]:
    """Interleaved rounds of every available variant for one (model, threads)."""
    mode, art = mode_of(args), m["artifacts"]
    specs = {v: {"kind": k, "input": str(m["input"]), ("library" if k == "tvmq" else "model"): str(art[v])}
             for v, (k, _) in mode["variants"].items() if v in art}
    outputs = {v: tmp / f"{m['name']}-{threads}-{''.join(c if c.isalnum() else '_' for c in v)}.npz"
               for v in specs}
    res = h.run_rounds(m["name"], threads, specs, args, outputs, dict(m["errors"]))
    stats = {v: BenchmarkResult.from_samples(s, threads).to_json() for v, s in res["samples"].items() if s}
    short = {TVMQ: "tvmq", TVMQ_TUNED: "tuned"}
    ratios = {f"{short.get(t, t)}/{v}": (stats[t]["median_ms"] / stats[v]["median_ms"]
                                         if t in stats and v in stats else None)
              for t in mode["tvmq"] for v in mode["variants"] if v != t}
    ref = outputs.get(mode["ref"])
    diffs = {v: (h.rel_max_diff(outputs[v], ref) if ref and ref.exists() and outputs[v].exists() else None)
             for v in specs if v != mode["ref"]}
    row = {"model": m["name"], "threads": threads, "stats": stats, "ratios": ratios,
           "rel_max_diff_vs_ort_fp32": diffs, "errors": res["errors"], "skipped": m["skipped"],
           "per_round": res["per_round"], "worker_info": res["info"], "samples_ms": res["samples"]}
    if args.precision == "fp32":  # the keys fp32_latency.json has always had
        row.update(ratio_tvmq_over_ort=ratios["tvmq/onnxruntime"], ratio_tvmq_over_ov=ratios["tvmq/openvino"],
                   rel_max_diff=diffs.get("tvmq"),
                   tvmq_api_benchmark=[i["tvmq_api_benchmark"] for i in res["info"].get("tvmq", [])])
    return row


def report(args: Any, run: h.Run, result: dict[str, Any], models: dict[str, dict[str, Any]],
           rows: list[dict[str, Any]], skipped: dict[str, str]) -> str:
    """The header, the table, and its notes: failures, noise, skipped variants, the rival.onnx
    substitution, the conv/dense kernels each rival runs."""
    mode, fp32 = mode_of(args), args.precision == "fp32"
    tuned = any(TVMQ_TUNED in m["artifacts"] or TVMQ_TUNED in m["errors"] for m in models.values())
    shown = [v for v in mode["variants"] if v != TVMQ_TUNED or tuned]
    keys = [(k, t) for k, t in mode["ratios"].items() if tuned or TVMQ_TUNED not in k and "tuned/" not in k]
    cells = [[row["model"], row["threads"],
              *["skipped" if v in row["skipped"] else
                "failed" if (s := row["stats"].get(v)) is None and row["errors"].get(v) else "-" if s is None
                else f"{s['median_ms']:.2f} ({s['p10_ms']:.2f}-{s['p90_ms']:.2f})" for v in shown],
              *[f"{r:.2f}" if (r := row["ratios"].get(k)) else "-" for k, _ in keys],
              *([f"{d:.1e}" if (d := row["rel_max_diff"]) is not None else "-"] if fp32 else [])]
             for row in rows]
    notes = h.row_notes(rows) + list(dict.fromkeys(f"- {v}: skipped, {why}" for row in rows
                                                    for v, why in row["skipped"].items()))
    for name, m in models.items():
        if m["rival_onnx"] != m["onnx"]:
            notes.append(f"- {name}: the rivals quantize `{m['rival_onnx'].name}` in the build folder, the "
                         "same function with any ConstantOfShape weights folded into initializers, no "
                         "initializer listed as a graph input, and opset >= 13 (without it NNCF quantizes "
                         "no conv of light_resnet50, onnxruntime's quantizer fails)")
        for v in m["artifacts"]:
            if k := m["builds"].get(v, {}).get("kernels") or next(
                    (i["kernels"] for row in rows if row["model"] == name
                     for i in row["worker_info"].get(v, []) if i.get("kernels")), None):
                notes.append(f"- {name} {v} conv/dense kernels: {k}")
    notes += [f"- {name}: skipped, {why}" for name, why in skipped.items()]
    head = ["model", "threads", *(mode["variants"][v][1] for v in shown), *(t for _, t in keys),
            *(["rel. max diff (vs ort)"] if fp32 else [])]
    timing = (f"{h.machine_line(result['machine'])}; {args.rounds} rounds x {args.repeat} timed calls per "
              "variant, fresh process each; ")
    if fp32:
        text = ("fp32 batch-1 latency, tvmq (untuned) vs onnxruntime and OpenVINO (f32 precision hint). "
                f"{timing}{run.load_note()}." + h.interference_note(rows))
    else:
        tuned_how = (f" and tuned{' (narrow weights)' if args.narrow_weights else ''} on the kernels' best "
                     f"records in {', '.join(map(str, args.db))}" if args.db else "")
        calib = "; ".join(f"{n}: {m['calibration']['calibration']}" for n, m in models.items()) or "-"
        text = (f"W8A8 batch-1 latency, tvmq (untuned{tuned_how}, integer-only W8A8, {RANGE_METHOD} ranges) "
                "vs onnxruntime int8 (QDQ) and OpenVINO int8 (NNCF), onnxruntime fp32 as the baseline. "
                f"{timing}calibration ({args.calib} inputs, the same for all three quantizers): {calib}; "
                f"{run.load_note()}." + h.interference_note(rows) + "\n\nCells: median ms (p10-p90) over all "
                "timed calls; ratio = median(tvmq W8A8) / median(rival), below 1: tvmq is faster.")
    return f"{text}\n\n{h.md_table(head, cells, 'lr', notes)}\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = h.argument_parser(
        __doc__, ("precision", list(MODES), "fp32 (fp32_latency) or w8a8 (w8a8_latency)"),
        rounds=(5, "interleaved rounds (default 5)"), warmup=(10, "untimed calls per process (default 10)"),
        repeat=(30, "timed calls per process (default 30)"), seed=(0, "seed of the random input (default 0)"),
        calib=(32, "w8a8: calibration inputs per model (default 32)"), **h.model_options(),
        rebuild=(False, "recompile even if a build is cached"),
        db=([], "w8a8: tuning database(s) (tvmq tune): adds the 'tvmq W8A8 tuned' variant",
            {"type": Path, "action": "append"}),
        imagenet_root=(h.DEFAULT_IMAGENET, "w8a8: imagenet-sample folder for mobilenetv2's calibration"),
        isa=([], "w8a8: also a tvmq W8A8 build for this ISA level (untuned; repeatable), e.g. avx512_vnni "
             "beside the host's amx", {"dest": "isa_list", "action": "append", "choices": ISA_LEVELS,
                                       "type": str}),
        narrow_weights=(False, "w8a8: also a tvmq W8A8 build with the recipe's narrow (pair-fitted) conv "
                        "weights (vpmaddubsw on AVX2); the tuned build (--db) then has them too"))
    args = p.parse_args(argv)
    if args.rounds < 1 or args.repeat < 1 or args.warmup < 0 or args.calib < 1:
        p.error("--rounds, --repeat and --calib must be >= 1, --warmup >= 0")
    if (args.db or args.isa_list or args.narrow_weights) and args.precision == "fp32":
        p.error("--db, --isa and --narrow-weights: w8a8 only")
    mode, name = mode_of(args), f"{args.precision}_latency"
    run = h.Run(name)
    # found, not imported: OpenVINO's thread pool must not live in the parent
    missing = [p for p in mode["ov"][1] if importlib.util.find_spec(p) is None]
    ov_missing = f"{' and '.join(missing)} not installed: `{h.OV_MISSING}`" if missing else None
    if ov_missing:
        print(f"{mode['ov'][0]}: SKIPPED, {ov_missing}", flush=True)
    found, skipped = h.find_models(args)
    models = {n: prepare_model(n, path, args, ov_missing) for n, path in found.items()}
    rows = []
    with tempfile.TemporaryDirectory(prefix="tvmq-bench-") as tmp:
        for m in models.values():
            for threads in args.thread_list:
                print(f"[{m['name']}] threads={threads}: {args.rounds} rounds x ({args.warmup} warmup + "
                      f"{args.repeat} timed) per variant", flush=True)
                rows.append(bench_model(m, threads, args, Path(tmp)))
    tvm = next((b["tvm_version"] for m in models.values() for b in m["builds"].values()
                if b.get("tvm_version")), None)
    tvmq_variant = mode["tvmq"][0]
    result = run.record(
        versions=h.versions(tvm, *mode["ov"][1]),
        settings={"models": args.model_list, "threads": args.thread_list, "rounds": args.rounds,
                  "warmup": args.warmup, "repeat": args.repeat, "seed": args.seed,
                  **({} if args.precision == "fp32" else {
                      "calib": args.calib, "range_method": RANGE_METHOD,
                      "imagenet_root": str(args.imagenet_root), "db": [str(p) for p in args.db]}),
                  "variants": list(mode["variants"]),
                  "openvino_config": {**h.OV_CONFIG, "INFERENCE_NUM_THREADS": "= threads"},
                  "timed_call": {v: {"tvmq": "Module.run(feeds)", "onnxruntime": "InferenceSession.run",
                                     "openvino": "InferRequest.infer(feeds)"}[kind]
                                 for v, (kind, _) in mode["variants"].items()}},
        models={n: {"onnx": str(m["onnx"]), "rival_onnx": str(m["rival_onnx"]), "build_dir": str(m["dir"]),
                    **m["calibration"],
                    "build": m["builds"] if args.precision == "w8a8" else m["builds"].get(tvmq_variant, {}),
                    "build_errors": m["errors"], "build_error": m["errors"].get(tvmq_variant)}
                for n, m in models.items()},
        skipped=skipped, results=rows)
    h.write_results(args.out, name, result, report(args, run, result, models, rows, skipped))
    return 0


if __name__ == "__main__":
    sys.exit(main())
