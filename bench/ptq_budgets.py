"""The smallest weight-size budget at which the real MobileNetV2 stays within 1 point of fp32,
with and without the post-training steps: the sensitivity analysis runs with each recipe (so the
allocator sees that recipe's per-layer errors), the allocator picks a plan for each
``--size-budget`` (relative to the W8A8 weight bytes; 0.5x = every layer at 4 bits), and each
plan is built and scored on imagenet-sample."""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from bench import harness as h
from bench.ptq_ablation import VARIANTS


def main() -> int:
    ap = h.argument_parser(__doc__, n=1000, calib=256,
                           variants=("bc,gptq+bc", f"recipes, of {', '.join(VARIANTS)}"),
                           budgets=("0.5,0.55,0.6,0.65,0.7", "size budgets, x the W8A8 weight bytes"),
                           samples=(32, "calibration samples the sensitivity analysis runs on"),
                           check=(3, "images checked bit-exact against the numpy program, per library"),
                           method=("percentile", "activation range method"))
    h.image_options(ap)
    args = ap.parse_args()
    if h.images_missing(args):
        return 0
    os.environ.setdefault("TVM_NUM_THREADS", "1")
    import tvmq  # deferred: imports TVM, after TVM_NUM_THREADS is set
    from tvmq import specs as specs_
    from tvmq.allocate import allocate
    from tvmq.calibration import collect
    from tvmq.equalize import equalize
    from tvmq.frontend import prepare
    from tvmq.pipeline import build_problem, resolve_budgets
    from tvmq.plan import PrecisionPlan, QuantSpec
    from tvmq.recipe import with_recipe
    from tvmq.runtime import set_num_threads
    from tvmq.sensitivity import analyze

    x, y = h.imagenet_sample(args.root, args.n)
    calib = x[: args.calib]
    held = slice(args.calib, len(x))
    sess = h.ort_session(Path(args.model), 1)
    fp32 = h.predictions(lambda a: sess.run(None, {"input": a})[0], x)
    fp32_top1 = float((fp32 == y).mean())
    variants = [v for v in args.variants.split(",") if v]
    budgets = [float(b) for b in args.budgets.split(",") if b]
    specs = list(specs_.NAMES)
    rows: list[dict[str, Any]] = []
    models: dict[bool, Any] = {}
    stats: dict[bool, Any] = {}
    for eq in sorted({VARIANTS[v][0] for v in variants}):
        models[eq] = equalize(args.model) if eq else args.model
        stats[eq] = collect(models[eq], calib, hessians=True)
    with tempfile.TemporaryDirectory() as tmp:
        for v in variants:
            eq, gptq, bc = VARIANTS[v]
            st = with_recipe(stats[eq], gptq=gptq, bias_correction=bc)
            pm = prepare(models[eq])
            t = time.perf_counter()
            sens = analyze(models[eq], st, calib, specs=[s for s in specs if s != "fp32"], range_method=args.method,
                           limit=args.samples, contexts=["alone"])
            sens_s = time.perf_counter() - t
            problem = build_problem(pm, sens, None, specs)
            print(f"{v}: sensitivity {sens_s:.0f}s", flush=True)
            for b in budgets:
                problem.size_budget = resolve_budgets(problem, size=f"{b}x")["size"]
                alloc = allocate(problem)
                plan = PrecisionPlan({l: QuantSpec.parse(s) for l, s in alloc.plan.items()}, pm.layers)
                r = tvmq.build(models[eq], Path(tmp) / f"{v}_{b}", plan=plan, stats=st, range_method=args.method)
                m = tvmq.load(r.library)
                set_num_threads(1)
                run = lambda a, m=m: m.run({"input": a})["logits"]  # noqa: E731
                pred = h.predictions(run, x)
                exact = "-" if r.program is None else all(
                    np.array_equal(run(x[i:i + 1]), r.program.run([x[i:i + 1]])[0])
                    for i in range(len(x) - args.check, len(x)))
                row = {"variant": v, "budget": b, **h.top1(pred, y, fp32),
                       "agreement_held_out": float((pred[held] == fp32[held]).mean()),
                       "weight_bytes": r.manifest_data["weight_bytes"], "status": alloc.status,
                       "predicted_sqnr_db": sens.predicted_sqnr_db(alloc.plan),
                       "specs": dict(Counter(alloc.plan.values())), "sensitivity_s": sens_s, "bit_exact": exact}
                rows.append(row)
                print(f"{v:12s} {b:.2f}x {row['weight_bytes'] / 1e6:.2f} MB top1 {100 * row['top1']:.1f} "
                      f"agree {100 * row['agreement']:.1f} {row['specs']} exact {exact}", flush=True)
    info = h.machine_info()
    lines = [f"MobileNetV2 (real), {len(x)} imagenet-sample images ({args.calib} for calibration, also scored; "
             f"'held-out' = the other {len(x) - args.calib}), sensitivity on {args.samples} calibration images, "
             f"specs {', '.join(specs)}, {h.machine_line(info)}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
             f"fp32 (onnxruntime) top-1 {100 * fp32_top1:.1f}%", ""]
    head = ["recipe", "size budget", "weights MB", "specs", "predicted SQNR dB", "top-1", "vs fp32 (pt)",
            "agreement", "agreement held-out", "bit-exact"]
    body = [[r["variant"], f"{r['budget']:.2f}x", f"{r['weight_bytes'] / 1e6:.2f}",
             " ".join(f"{s} x{n}" for s, n in sorted(r["specs"].items())), f"{r['predicted_sqnr_db']:.1f}",
             f"{100 * r['top1']:.1f}%", f"{100 * (r['top1'] - fp32_top1):+.1f}", f"{100 * r['agreement']:.1f}%",
             f"{100 * r['agreement_held_out']:.1f}%", r["bit_exact"]] for r in rows]
    lines.append(h.md_table(head, body))
    lines += ["", "Sensitivity analysis seconds: " + ", ".join(
        f"{v} {next(r['sensitivity_s'] for r in rows if r['variant'] == v):.0f}" for v in variants)]
    h.write_results(Path(args.out), "ptq_budgets",
                    {"rows": rows, "n": len(x), "calib": args.calib, "fp32_top1": fp32_top1, "machine": info},
                    "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
