"""Mixed precision on the real MobileNetV2 (``python -m bench.mixed MODE``). ``pipeline``
(results ``mixed_pipeline``): end to end, sensitivity, allocation on measured latencies, builds,
re-measurement, accuracy. ``plans`` (``mixed_plans``): seeded random per-layer plans, each compiled to
one library that equals its build's numpy program bit for bit (float layers included); exits 1 if
one does not, or if a layer ran on another spec's kernel.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from bench import harness as h

ALL = ("w4a8", "w8a8", "w8a16", "bf16", "fp32")
INT = ("w4a8", "w8a8", "w8a16")


def pipeline(args: Any) -> int:
    """``pipeline``: calibration, the two ``compile_mixed`` runs (size, then latency + size budget, on the
    first's sensitivity), then fp32, uniform W8A8, the two budget plans and the front's points measured
    and scored."""
    import tvmq  # deferred: imports TVM
    from schedules.target_features import detect_host
    from tvmq.calibration import collect
    from tvmq.pipeline import compile_mixed, measure_ms
    from tvmq.plan import PrecisionPlan, QuantSpec

    log = lambda m: print(m, flush=True)  # noqa: E731
    features, out = detect_host(), Path(args.build_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "size" / "sensitivity.json").unlink(missing_ok=True)  # time the analysis from scratch
    x, y = h.imagenet_sample(args.root, args.n)
    ref = h.imagenet_eval().onnxruntime_logits(args.model, x).argmax(axis=1)
    fp32_top1 = float((ref == y).mean())
    log(f"{len(x)} images, onnxruntime fp32 top-1 {fp32_top1:.3f}")
    calib, t = x[: args.calib], time.perf_counter()
    stats = collect(args.model, calib, features=features, progress=log)
    t_cal = time.perf_counter() - t
    stats.save(out / "calibration.json")
    runs = {}
    for label, kw in (("size", {"size_budget": args.size_budget}),
                      ("latency", {"latency_budget": args.latency_budget, "size_budget": args.size_budget})):
        t = time.perf_counter()
        sens = out / "size" / "sensitivity.json" if label == "latency" else None
        r = compile_mixed(args.model, calib if sens is None else stats, out / label, db=args.db,
                          threads=args.threads, features=features, sensitivity_samples=args.sens_samples,
                          sensitivity=sens, range_method=args.range, progress=log, **kw)
        r.timings["calibrate"] = t_cal if label == "size" else 0.0
        runs[label] = (r, time.perf_counter() - t)
        log(f"[{label}] {r.allocation.status}, binding {r.allocation.binding}: predicted "
            f"{r.predicted_ms:.2f} ms, measured {r.measured_ms:.2f} ms")
    first = runs["size"][0]
    problem, front, sens = first.extra["problem"], first.extra["front"], first.extra["sensitivity"]
    overhead = json.loads((out / "size" / "manifest.json").read_text())["latency"]["rest_of_graph_ms"]
    rows = []

    def row(label: str, lib: Path, plan: dict[str, str], predicted: float) -> None:
        pred = h.predictions(h.tvmq_run(lib, args.threads), x)
        rows.append({"label": label, "predicted_ms": predicted,
                     "measured_ms": measure_ms(lib, args.threads, args.repeat),
                     "weight_bytes": json.loads((lib.parent / "manifest.json").read_text())["weight_bytes"],
                     "sensitivity": problem.totals(plan)["sensitivity"],
                     "predicted_sqnr_db": (sens.predicted_sqnr_db(plan)
                                           if any(s != "fp32" for s in plan.values()) else None),
                     "specs": {s: list(plan.values()).count(s) for s in sorted(set(plan.values()))},
                     **h.top1(pred, y, ref)})
        log(f"{label}: {rows[-1]}")

    quiet = {"features": features, "db": args.db, "threads": args.threads, "progress": lambda m: None}
    for spec, lib in (("fp32", tvmq.build(args.model, out / "fp32", **quiet).library),
                      ("w8a8", out / "size" / "w8a8" / "model.so")):
        plan = {l: spec for l in problem.options}
        row(spec, lib, plan, problem.totals(plan)["latency"] + overhead)
    for label, (r, _) in runs.items():
        budget = f"size {args.size_budget}" + (f" + latency {args.latency_budget}" if label == "latency"
                                               else "")
        row(f"{budget} ({r.allocation.status}, binds: {', '.join(r.allocation.binding) or '-'})",
            r.build.library, r.plan, r.predicted_ms)
    idx = np.unique(np.linspace(0, len(front) - 1, min(args.front_points, len(front))).round().astype(int))
    for k, i in enumerate(idx):
        plan = PrecisionPlan({l: QuantSpec.parse(s) for l, s in front[i].plan.items()})
        b = tvmq.build(args.model, out / f"front{k}", plan=plan, stats=stats, range_method=args.range,
                       **quiet)
        row(f"front {k}", b.library, front[i].plan, front[i].latency + overhead)

    def fmt(v: float | None, f: str = "{:.2f}") -> str:
        return "-" if v is None else f.format(v)

    cells = [[r["label"], ", ".join(f"{s} {c}" for s, c in r["specs"].items()), fmt(r["predicted_ms"]),
              fmt(r["measured_ms"]),
              fmt(r["predicted_ms"] and 100 * (r["predicted_ms"] / r["measured_ms"] - 1), "{:+.1f}%"),
              f"{r['weight_bytes'] / 1e6:.2f}", f"{100 * r['top1']:.1f}%",
              f"{100 * (r['top1'] - fp32_top1):+.1f}", f"{100 * r['agreement']:.1f}%"] for r in rows]
    lines = [f"MobileNetV2 mixed precision, {features.isa}, {args.threads} thread(s); {len(x)} "
             f"imagenet-sample images (onnxruntime fp32 top-1 {100 * fp32_top1:.1f}%), {args.calib} "
             f"calibration images ({args.range} ranges), sensitivity on {args.sens_samples}; latencies from "
             f"{Path(args.db).name}; the front: sensitivity vs latency under the size budget.", "",
             h.md_table(["plan", "specs", "predicted ms", "measured ms", "error", "weights MB", "top-1",
                         "vs fp32 (pt)", "agreement"], cells, "llr"), "",
             "Pipeline seconds (size-budget run: calibrate + analyze + latency table + reference build + "
             "allocate + build; tuning is separate, see tune_mobilenetv2.json): "
             + json.dumps({k: round(v, 1) for k, v in runs["size"][0].timings.items()})]
    h.write_results(Path(args.out), "mixed_pipeline",
                    {"rows": rows, "fp32_top1": fp32_top1,
                     "pipeline": {label: {"seconds": sec, "steps": r.timings}
                                  for label, (r, sec) in runs.items()},
                     "settings": {**{k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                                  "output": str(Path(args.out) / "mixed_pipeline")}}, "\n".join(lines))
    return 0


def random_plans(args: Any) -> int:
    """``plans``: ``--count`` plans over {W4A8, W8A8, W8A16, bf16, fp32}, every third integer-only."""
    import tvmq  # deferred: imports TVM
    from tvmq.calibration import collect
    from tvmq.frontend import prepare
    from tvmq.plan import PrecisionPlan, QuantSpec

    x, _ = h.imagenet_sample(args.root, args.calib + args.images)
    calib, test = x[:args.calib], x[args.calib:]
    fp32 = h.predictions(h.ort_run(args.model, None), test)
    stats, layers = collect(args.model, calib), prepare(args.model).layers
    rng = np.random.default_rng(args.seed)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.count):
            plan = PrecisionPlan({l.name: QuantSpec.parse(str(rng.choice(INT if i % 3 == 0 else ALL)))
                                  for l in layers}, layers)
            t = time.perf_counter()
            r = tvmq.build(args.model, Path(tmp) / f"p{i}", plan=plan, stats=stats, progress=lambda m: None)
            build_s = time.perf_counter() - t
            run = h.tvmq_run(r.library, threads=2)
            counts = Counter(s.name for s in plan.values())
            rows.append({"plan": i, "specs": {k: counts.get(k, 0) for k in ALL},
                         "bit_exact": h.bit_exact(r, run, test, args.exact, no_oracle=None),
                         "agreement": float(np.mean(h.predictions(run, test) == fp32)),
                         "weight_bytes": r.manifest_data["weight_bytes"], "build_s": round(build_s, 1),
                         "layers_on_wrong_kernel": [n for n, s in plan.items() if s.name not in
                                                    r.manifest_data["kernels"][n]["kernel"]]})
            print(rows[-1], flush=True)
    lines = [f"MobileNetV2 (real), {len(rows)} random plans (seed {args.seed}), {len(test)} scored images, "
             f"{args.calib} calibration images, {h.utc_now()}", "",
             f"Bit-exact: library == numpy program on the last {args.exact} scored images.", "",
             h.md_table(["plan", *ALL, "weights MB", "bit-exact vs simulation", "agreement with fp32",
                         "build s"],
                        [[row["plan"], *(row["specs"][k] for k in ALL), f"{row['weight_bytes'] / 1e6:.2f}",
                          "no oracle" if row["bit_exact"] is None else row["bit_exact"],
                          f"{100 * row['agreement']:.0f}%", row["build_s"]] for row in rows],
                        "r" * (len(ALL) + 2) + "lr")]
    h.write_results(Path(args.out), "mixed_plans", rows, "\n".join(lines))
    return 1 if any(r["bit_exact"] is not True or r["layers_on_wrong_kernel"] for r in rows) else 0


def main() -> int:
    ap = h.argument_parser(__doc__, ("mode", ["pipeline", "plans"], None), n=1000, calib=256, sens_samples=32,
                           db=str(h.RESULTS_DIR / "tuning_mobilenetv2.jsonl"), size_budget="0.6x",
                           latency_budget=("0.75x", "the second plan's latency budget (and the size one)"),
                           front_points=8, threads=1, repeat=50,
                           build_dir=(str(h.BUILD_DIR / "mixed"), "where the libraries are built"),
                           count=(20, "plans: how many random plans"), images=(40, "plans: images scored"),
                           exact=(5, "plans: images checked bit for bit per plan"), seed=(0, "plans: seed"),
                           **h.IMAGE_OPTIONS,
                           range=("percentile", None, {"choices": ["minmax", "percentile", "mse"]}))
    if (args := h.image_bench_args(ap, one_thread=False)) is None:
        return 0
    return random_plans(args) if args.mode == "plans" else pipeline(args)


if __name__ == "__main__":
    sys.exit(main())
