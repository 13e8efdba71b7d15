"""Post-training steps (CLE, GPTQ, bias correction) on a real image classifier (default: MobileNetV2), per
recipe (``--variants``; see bench/README.md). ``ablation`` (``ptq_ablation``): W8A8, mixed and uniform W4A8,
top-1 and agreement with fp32, seconds per step. ``budgets`` (``ptq_budgets``): per recipe, the sensitivity
analysis, the allocator's plan per ``--budgets`` (x the W8A8 weight bytes), each built and scored.
Every library is checked bit for bit against its numpy program."""

from __future__ import annotations

import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench import harness as h

# label: (equalize, gptq, bias correction[, Hessian clipping])
VARIANTS = {"none": (False, False, False), "bc": (False, False, True), "cle": (True, False, False),
            "cle+bc": (True, False, True), "gptq": (False, True, False), "gptq+bc": (False, True, True),
            "cle+gptq": (True, True, False), "cle+gptq+bc": (True, True, True),
            "bc+hc": (False, False, True, True), "gptq+bc+hc": (False, True, True, True)}
DEFAULT_VARIANTS = {"ablation": ",".join(VARIANTS), "budgets": "bc,gptq+bc"}


def quantize_seconds(model: Any, stats: Any, plan: Any) -> float:
    """The recipe (weights, GPTQ, bias correction) over every layer at the plan's specs, in
    seconds, GPTQ's cache cold."""
    from tvmq import recipe
    from tvmq.frontend import prepare

    pm = prepare(model)
    recipe._GPTQ_CACHE.clear()
    t = time.perf_counter()
    for l in pm.layers:
        own = {k: v for k, v in pm.params.items() if pm.param_layer[k] == l.name}
        w = next(v for k, v in own.items() if k.endswith(".weight"))
        b = next((v for k, v in own.items() if k.endswith(".bias")), None)
        recipe.quantize_layer(l.name, w, b, l.groups, plan[l.name], stats, "percentile")
    return time.perf_counter() - t


def plans_of(args: Any, model: Any, stats: Any, calib: Any) -> list[tuple[str, Any, dict[str, Any]]]:
    """(label, plan, row fields): ablation, ``--plans`` on ``model`` (equalization keeps the layer
    names); budgets, the sensitivity analysis with this recipe and the allocator's plan per budget."""
    from bench.w8a8_accuracy import plan_of
    from tvmq import specs as specs_
    from tvmq.allocate import allocate
    from tvmq.frontend import prepare
    from tvmq.pipeline import build_problem, resolve_budgets
    from tvmq.plan import PrecisionPlan, QuantSpec
    from tvmq.sensitivity import analyze

    pm = prepare(model)
    if args.mode == "ablation":
        return [(p, PrecisionPlan.uniform(pm.layers, plan) if isinstance(plan := plan_of(args.model, p), str)
                 else PrecisionPlan({n: plan[n] for n in pm.layers.names}, pm.layers), {"plan": p})
                for p in args.plans.split(",") if p]
    specs, t = list(specs_.NAMES), time.perf_counter()
    sens = analyze(model, stats, calib, specs=[s for s in specs if s != "fp32"], range_method=args.method,
                   limit=args.samples, contexts=["alone"])
    sens_s = time.perf_counter() - t
    problem = build_problem(pm, sens, None, specs)
    print(f"sensitivity {sens_s:.0f}s", flush=True)
    out = []
    for b in [float(b) for b in args.budgets.split(",") if b]:
        problem.size_budget = resolve_budgets(problem, size=f"{b}x")["size"]
        alloc = allocate(problem)
        out.append((f"{b}", PrecisionPlan({l: QuantSpec.parse(s) for l, s in alloc.plan.items()}, pm.layers),
                    {"budget": b, "status": alloc.status, "specs": dict(Counter(alloc.plan.values())),
                     "predicted_sqnr_db": sens.predicted_sqnr_db(alloc.plan), "sensitivity_s": sens_s}))
    return out


def main() -> int:
    ap = h.argument_parser(__doc__, ("mode", ["ablation", "budgets"], None), n=1000, calib=256,
                           **h.IMAGE_OPTIONS,
                           variants=("", f"recipes, of {', '.join(VARIANTS)} (default: ablation all, "
                                     f"budgets {DEFAULT_VARIANTS['budgets']})"),
                           plans=("w8a8,mixed,w4a8",
                                  "ablation: w8a8, mixed (W4A8; depthwise, first, last W8A8), w4a8"),
                           budgets=("0.5,0.55,0.6,0.65,0.7", "budgets: size budgets, x W8A8's weight bytes"),
                           samples=(32, "budgets: calibration samples the sensitivity analysis runs on"),
                           check=(5, "images checked bit-exact against the numpy program, per library"),
                           method=("percentile", "activation range method"),
                           name=("", "results file name (NAME.md / NAME.json; default ptq_MODE)"),
                           ort_int8=(False, "ablation: also score onnxruntime int8 (quantize_static QDQ, "
                                     "per-channel, MinMax) on the same calibration images"))
    if (args := h.image_bench_args(ap)) is None:
        return 0
    import tvmq  # deferred: imports TVM, after TVM_NUM_THREADS is set
    from tvmq import specs as specs_
    from tvmq.calibration import collect
    from tvmq.equalize import equalize
    from tvmq.recipe import with_recipe

    x, y = h.imagenet_sample(args.root, args.n)
    calib, held = x[: args.calib], slice(args.calib, len(x))
    ort = h.ort_run(args.model)
    fp32 = h.predictions(ort, x)
    labelled = ort(x[:1]).shape[-1] == 1000  # an ImageNet classifier: top-1 means something
    variants = [v for v in (args.variants or DEFAULT_VARIANTS[args.mode]).split(",") if v]
    rows: list[dict[str, Any]] = []
    models: dict[bool, Any] = {}
    stats: dict[bool, Any] = {}
    times: dict[str, float] = {}
    for eq in sorted({VARIANTS[v][0] for v in variants}):
        t = time.perf_counter()
        models[eq] = equalize(args.model) if eq else args.model
        times[f"cle_{eq}"] = time.perf_counter() - t
        t = time.perf_counter()
        stats[eq] = collect(models[eq], calib, hessians=True)
        times[f"collect_{eq}"] = time.perf_counter() - t
        print(f"equalize={eq}: {times[f'cle_{eq}']:.1f}s, calibration + Hessians {times[f'collect_{eq}']:.1f}"
              f"s (Hessians {stats[eq].meta['hessian_seconds']:.1f}s)", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        if args.ort_int8 and args.mode == "ablation":
            t = time.perf_counter()
            q = h.ort_run(h.ort_int8(Path(args.model), calib, Path(tmp) / "int8.onnx"))
            quant_s = time.perf_counter() - t
            rows.append({"variant": "onnxruntime int8 (QDQ, per-channel, MinMax)", "plan": "w8a8",
                         **h.top1(h.predictions(q, x), y, fp32, held), "cle_s": 0.0, "hessian_s": 0.0,
                         "recipe_s": quant_s, "build_s": 0.0, "bit_exact": "-"})
            print(f"onnxruntime int8 agree {100 * rows[-1]['agreement']:.1f}", flush=True)
        for v in variants:
            eq, gptq, bc, hc = (VARIANTS[v] + (False,))[:4]
            st = with_recipe(stats[eq], gptq=gptq, bias_correction=bc, hessian_clipping=hc)
            for label, plan, row in plans_of(args, models[eq], st, calib):
                if args.mode == "ablation":
                    row.update(cle_s=times[f"cle_{eq}"] if eq else 0.0,
                               hessian_s=stats[eq].meta["hessian_seconds"] if gptq or hc else 0.0,
                               recipe_s=quantize_seconds(models[eq], st, plan))
                t = time.perf_counter()
                r = tvmq.build(models[eq], Path(tmp) / f"{v}_{label}", plan=plan, stats=st,
                               range_method=args.method)
                build_s = time.perf_counter() - t
                run = h.tvmq_run(r.library)
                row = {"variant": v, **row, **h.top1(h.predictions(run, x), y, fp32, held),
                       "build_s": build_s, "bit_exact": h.bit_exact(r, run, x, args.check),
                       "weight_bytes": r.manifest_data["weight_bytes"],
                       "recipe": {k: (val if k != "equalize" or val is None else  # without the pairs
                                      {kk: vv for kk, vv in val.items() if kk != "pairs"})
                                  for k, val in r.manifest_data["recipe"].items()}}
                rows.append(row)
                print(f"{v:12s} {label:6s} {row['weight_bytes'] / 1e6:.2f} MB top1 {100 * row['top1']:.1f} "
                      f"agree {100 * row['agreement']:.1f} (held-out {100 * row['agreement_held_out']:.1f}) "
                      f"build {build_s:.0f}s exact {row['bit_exact']}", flush=True)
    fp32_top1 = float((fp32 == y).mean())
    info = h.machine_info()
    head = (f"{Path(args.model).name}, {len(x)} imagenet-sample images ({args.calib} of them for "
            f"calibration, also scored; 'held-out' = the other {len(x) - args.calib})"
            + (f", sensitivity on {args.samples} calibration images, specs {', '.join(specs_.NAMES)}"
               if args.mode == "budgets" else "")
            + f", {h.machine_line(info)}, {h.utc_now()}; activation ranges: {args.method}; "
            + (f"fp32 (onnxruntime) top-1 {100 * fp32_top1:.1f}%" if labelled
               else "not an ImageNet classifier: agreement with fp32 (onnxruntime) only"))

    def pct(v: float) -> str:
        return f"{100 * v:.1f}%"

    def cells(r: dict[str, Any], *more: Any) -> list[Any]:
        top = [pct(r["top1"]), f"{100 * (r['top1'] - fp32_top1):+.1f}"] if labelled else ["-", "-"]
        return [*top, pct(r["agreement"]), pct(r["agreement_held_out"]), *more, r["bit_exact"]]

    if args.mode == "budgets":
        lines = [head, "", h.md_table(
            ["recipe", "size budget", "weights MB", "specs", "predicted SQNR dB", "top-1", "vs fp32 (pt)",
             "agreement", "agreement held-out", "bit-exact"],
            [[r["variant"], f"{r['budget']:.2f}x", f"{r['weight_bytes'] / 1e6:.2f}",
              " ".join(f"{s} x{n}" for s, n in sorted(r["specs"].items())), f"{r['predicted_sqnr_db']:.1f}",
              *cells(r)] for r in rows]),
            "", "Sensitivity analysis seconds: " + ", ".join(dict.fromkeys(
                f"{r['variant']} {r['sensitivity_s']:.0f}" for r in rows))]
    else:
        calibration = ", ".join(f"{times[f'collect_{eq}'] - stats[eq].meta['hessian_seconds']:.1f}s"
                                for eq in sorted(stats))
        lines = [head, "", "Seconds: CLE = the equalization pass; Hessians = summing X X^T in the "
                 f"calibration pass ({args.calib} images; the calibration pass itself: {calibration}); "
                 "recipe = quantizing every layer's weights (clipping search, GPTQ, bias correction) at the "
                 "plan's specs.", "",
                 h.md_table(["variant", "plan", "top-1", "vs fp32 (pt)", "agreement", "agreement held-out",
                             "CLE s", "Hessians s", "recipe s", "build s", "bit-exact"],
                            [[r["variant"], r["plan"], *cells(r, f"{r['cle_s']:.1f}", f"{r['hessian_s']:.1f}",
                                                              f"{r['recipe_s']:.1f}", f"{r['build_s']:.0f}")]
                             for r in rows])]
    h.write_results(Path(args.out), args.name or f"ptq_{args.mode}",
                    {"rows": rows, "n": len(x), "calib": args.calib, "model": Path(args.model).name,
                     "fp32_top1": fp32_top1 if labelled else None, "times": times, "machine": info},
                    "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
