#!/usr/bin/env python3
"""Mixed precision end to end on the real MobileNetV2: sensitivity, allocation on measured
latencies, builds, re-measurement, accuracy (issue 6's acceptance numbers).

Usage::

    python bench/mixed_pipeline.py [--model .cache/models/mobilenetv2.onnx]
        [--root ../shared/data/imagenet-sample] [--n 1000] [--calib 256] [--sens-samples 32]
        [--db bench/results/tuning_mobilenetv2.jsonl] [--size-budget 0.6x]
        [--latency-budget 0.9x] [--front-points 8] [--threads 1]

Steps (one run, this machine):

1. Calibrate on the first ``--calib`` images (as ``w8a8_accuracy.py``), analyze (per-layer output
   SQNR per spec on ``--sens-samples`` of them), read the latency table from the tuning database
   (``tvmq tune`` wrote it), and compile two plans with ``tvmq.pipeline.compile_mixed``: the
   size-budget plan and the latency-budget plan (each also builds the uniform W8A8 reference).
2. The sensitivity-vs-latency Pareto front (exact ILP at evenly spaced latency budgets): every
   point (at most ``--front-points``, evenly chosen) is built and timed; predicted vs measured.
3. Every library: top-1 on ``--n`` imagenet-sample images and agreement with onnxruntime fp32,
   weight bytes as stored; median latency over ``--repeat`` calls (``--threads``).

Results: ``bench/results/mixed_pipeline.json`` and ``.md`` (the tables, also printed). Nothing here
asserts; the acceptance judgement is in the issue note.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))


def accuracy(lib: Path, x: np.ndarray, y: np.ndarray, ref_pred: np.ndarray) -> dict[str, float]:
    import tvmq

    m = tvmq.load(lib)
    name = m.inputs[0][0]
    logits = np.concatenate([np.asarray(list(m.run({name: x[i:i + 1]}).values())[0]) for i in range(len(x))])
    pred = logits.argmax(axis=1)
    return {"top1": float((pred == y).mean()), "agreement": float((pred == ref_pred).mean())}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=str(ROOT / ".cache" / "models" / "mobilenetv2.onnx"))
    ap.add_argument("--root", default=str(ROOT.parent / "shared" / "data" / "imagenet-sample"))
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--calib", type=int, default=256)
    ap.add_argument("--sens-samples", type=int, default=32)
    ap.add_argument("--db", default=str(ROOT / "bench" / "results" / "tuning_mobilenetv2.jsonl"))
    ap.add_argument("--size-budget", default="0.6x")
    ap.add_argument("--latency-budget", default="0.75x",
                    help="the second plan's latency budget (with the size budget too)")
    ap.add_argument("--range", default="percentile", choices=["minmax", "percentile", "mse"])
    ap.add_argument("--front-points", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=50)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "build" / "mixed"))
    ap.add_argument("--output", default=str(ROOT / "bench" / "results" / "mixed_pipeline"))
    args = ap.parse_args()

    import tvmq
    from imagenet_eval import load_imagenet_sample, onnxruntime_logits
    from schedules.target_features import detect_host
    from tvmq.calibration import collect
    from tvmq.pipeline import compile_mixed, measure_ms
    from tvmq.plan import PrecisionPlan, QuantSpec

    log = lambda m: print(m, flush=True)  # noqa: E731
    features = detect_host()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "size" / "sensitivity.json").unlink(missing_ok=True)  # time the analysis from scratch
    x, y = load_imagenet_sample(args.root, n=args.n)
    calib = x[: args.calib]
    ref_pred = onnxruntime_logits(args.model, x).argmax(axis=1)
    fp32_top1 = float((ref_pred == y).mean())
    log(f"{len(x)} images, onnxruntime fp32 top-1 {fp32_top1:.3f}")

    t = time.perf_counter()
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

    def row(label: str, lib: Path, plan: dict[str, str], predicted: float | None, measured: float | None) -> None:
        m = json.loads((lib.parent / "manifest.json").read_text())
        acc = accuracy(lib, x, y, ref_pred)
        rows.append({"label": label, "predicted_ms": predicted,
                     "measured_ms": measured if measured is not None else measure_ms(lib, args.threads, args.repeat),
                     "weight_bytes": m["weight_bytes"], "sensitivity": problem.totals(plan)["sensitivity"],
                     "predicted_sqnr_db": sens.predicted_sqnr_db(plan) if any(s != "fp32" for s in plan.values()) else None,
                     "specs": {s: list(plan.values()).count(s) for s in sorted(set(plan.values()))}, **acc})
        log(f"{label}: {rows[-1]}")

    fp32_plan = {l: "fp32" for l in problem.options}
    fp32_build = tvmq.build(args.model, out / "fp32", features=features, db=args.db, threads=args.threads,
                            progress=lambda m: None)
    row("fp32", fp32_build.library, fp32_plan, problem.totals(fp32_plan)["latency"] + overhead, None)
    w8 = {l: "w8a8" for l in problem.options}
    row("w8a8", out / "size" / "w8a8" / "model.so", w8, problem.totals(w8)["latency"] + overhead, None)
    for label, (r, _) in runs.items():
        budget = f"size {args.size_budget}" + (f" + latency {args.latency_budget}" if label == "latency" else "")
        row(f"{budget} ({r.allocation.status}, binds: {', '.join(r.allocation.binding) or '-'})",
            r.build.library, r.plan, r.predicted_ms, None)

    idx = np.unique(np.linspace(0, len(front) - 1, min(args.front_points, len(front))).round().astype(int))
    for k, i in enumerate(idx):
        p = front[i]
        plan = PrecisionPlan({l: QuantSpec.parse(s) for l, s in p.plan.items()})
        b = tvmq.build(args.model, out / f"front{k}", features=features, plan=plan, stats=stats, db=args.db,
                       threads=args.threads, range_method=args.range, progress=lambda m: None)
        row(f"front {k}", b.library, p.plan, p.latency + overhead, None)

    def fmt(v, f="{:.2f}"):  # type: ignore[no-untyped-def]
        return "-" if v is None else f.format(v)

    lines = [f"MobileNetV2 mixed precision, {features.isa}, {args.threads} thread(s); {len(x)} imagenet-sample "
             f"images (onnxruntime fp32 top-1 {100 * fp32_top1:.1f}%), {args.calib} calibration images "
             f"({args.range} ranges), sensitivity on {args.sens_samples}; latencies from {Path(args.db).name}; "
             f"the front: sensitivity vs latency under the size budget.", "",
             "| plan | specs | predicted ms | measured ms | error | weights MB | top-1 | vs fp32 (pt) | agreement |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r_ in rows:
        err = (r_["predicted_ms"] / r_["measured_ms"] - 1) if r_["predicted_ms"] else None
        specs = ", ".join(f"{s} {n}" for s, n in r_["specs"].items())
        lines.append(f"| {r_['label']} | {specs} | {fmt(r_['predicted_ms'])} | {fmt(r_['measured_ms'])} | "
                     f"{fmt(err and 100 * err, '{:+.1f}%')} | {r_['weight_bytes'] / 1e6:.2f} | "
                     f"{100 * r_['top1']:.1f}% | {100 * (r_['top1'] - fp32_top1):+.1f} | {100 * r_['agreement']:.1f}% |")
    pipeline = {label: {"seconds": sec, "steps": r.timings} for label, (r, sec) in runs.items()}
    lines += ["", "Pipeline seconds (size-budget run: calibrate + analyze + latency table + reference "
              "build + allocate + build; tuning is separate, see tune_mobilenetv2.json): "
              + json.dumps({k: round(v, 1) for k, v in runs["size"][0].timings.items()})]
    report = "\n".join(lines)
    print("\n" + report)
    Path(args.output + ".md").write_text(report + "\n")
    Path(args.output + ".json").write_text(json.dumps({"rows": rows, "fp32_top1": fp32_top1, "pipeline": pipeline,
                                                       "settings": vars(args)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
