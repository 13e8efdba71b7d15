"""Post-training algorithms on the real MobileNetV2, alone and together: cross-layer
equalization (CLE), GPTQ rounding, bias correction (BC); W8A8, W4A8 with the depthwise, first
and last layers at W8A8 ("mixed"), uniform W4A8. Top-1 and agreement with fp32 on imagenet-sample
(all images, and the ones not used for calibration), the seconds each step took, and a
bit-exactness check of every library against its numpy program."""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench import harness as h

# (label, equalize, gptq, bias correction[, Hessian clipping])
VARIANTS = {
    "none": (False, False, False),
    "bc": (False, False, True),
    "cle": (True, False, False),
    "cle+bc": (True, False, True),
    "gptq": (False, True, False),
    "gptq+bc": (False, True, True),
    "cle+gptq": (True, True, False),
    "cle+gptq+bc": (True, True, True),
    "bc+hc": (False, False, True, True),
    "gptq+bc+hc": (False, True, True, True),
}


def quantize_seconds(model: Any, stats: Any, plan: Any) -> float:
    """The recipe (weights, GPTQ, bias correction) over every layer at the plan's specs, in
    seconds, GPTQ's cache cold."""
    from tvmq import recipe
    from tvmq.frontend import prepare

    pm = prepare(model)
    recipe._GPTQ_CACHE.clear()
    t = time.perf_counter()
    for l in pm.layers:
        w = next(v for k, v in pm.params.items() if pm.param_layer[k] == l.name and k.endswith(".weight"))
        b = next((v for k, v in pm.params.items() if pm.param_layer[k] == l.name and k.endswith(".bias")), None)
        recipe.quantize_layer(l.name, w, b, l.groups, plan[l.name], stats, "percentile")
    return time.perf_counter() - t


def main() -> int:
    ap = h.argument_parser(__doc__, n=1000, calib=256,
                           variants=(",".join(VARIANTS), f"which of {', '.join(VARIANTS)}"),
                           plans=("w8a8,mixed,w4a8", "w8a8, mixed (W4A8; depthwise, first, last W8A8), w4a8"),
                           check=(5, "images checked bit-exact against the numpy program, per library"),
                           method=("percentile", "activation range method"),
                           name=("ptq_ablation", "results file name (NAME.md / NAME.json)"))
    ap.add_argument("--ort-int8", action="store_true",
                    help="also score onnxruntime int8 (quantize_static QDQ, per-channel, MinMax) on the same "
                         "calibration images")
    h.image_options(ap)
    args = ap.parse_args()
    if h.images_missing(args):
        return 0
    os.environ.setdefault("TVM_NUM_THREADS", "1")
    import tvmq  # deferred: imports TVM, after TVM_NUM_THREADS is set
    from tvmq.calibration import collect
    from tvmq.equalize import equalize
    from tvmq.frontend import prepare
    from tvmq.plan import PrecisionPlan, QuantSpec
    from tvmq.recipe import with_recipe
    from tvmq.runtime import set_num_threads

    from bench.w8a8_accuracy import plan_of

    x, y = h.imagenet_sample(args.root, args.n)
    calib = x[: args.calib]
    held = slice(args.calib, len(x))
    sess = h.ort_session(Path(args.model), 1)
    name = sess.get_inputs()[0].name
    fp32 = h.predictions(lambda a: sess.run(None, {name: a})[0], x)
    labelled = sess.run(None, {name: x[:1]})[0].shape[-1] == 1000  # an ImageNet classifier: top-1 means something
    variants = [v for v in args.variants.split(",") if v]
    plans = [p for p in args.plans.split(",") if p]
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
        print(f"equalize={eq}: {times[f'cle_{eq}']:.1f}s, calibration + Hessians {times[f'collect_{eq}']:.1f}s "
              f"(Hessians {stats[eq].meta['hessian_seconds']:.1f}s)", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        if args.ort_int8:
            t = time.perf_counter()
            q = h.ort_session(h.ort_int8(Path(args.model), calib, Path(tmp) / "int8.onnx"), 1)
            quant_s = time.perf_counter() - t
            pred = h.predictions(lambda a: q.run(None, {name: a})[0], x)
            rows.append({"variant": "onnxruntime int8 (QDQ, per-channel, MinMax)", "plan": "w8a8",
                         **h.top1(pred, y, fp32), "agreement_held_out": float((pred[held] == fp32[held]).mean()),
                         "top1_held_out": float((pred[held] == y[held]).mean()), "cle_s": 0.0, "hessian_s": 0.0,
                         "recipe_s": quant_s, "build_s": 0.0, "bit_exact": "-"})
            print(f"onnxruntime int8 agree {100 * rows[-1]['agreement']:.1f}", flush=True)
        for v in variants:
            eq, gptq, bc, hc = (VARIANTS[v] + (False,))[:4]
            st = with_recipe(stats[eq], gptq=gptq, bias_correction=bc, hessian_clipping=hc)
            for p in plans:
                layers = prepare(models[eq]).layers
                plan = plan_of(args.model, p)
                if isinstance(plan, str):
                    plan = PrecisionPlan.uniform(layers, plan)
                else:  # same layer names: equalization keeps them
                    plan = PrecisionPlan({n: plan[n] for n in layers.names}, layers)
                q_s = quantize_seconds(models[eq], st, plan)
                t = time.perf_counter()
                r = tvmq.build(models[eq], Path(tmp) / f"{v}_{p}", plan=plan, stats=st, range_method=args.method)
                build_s = time.perf_counter() - t
                m = tvmq.load(r.library)
                set_num_threads(1)
                run = lambda a, m=m: next(iter(m.run({name: a}).values()))  # noqa: E731
                pred = h.predictions(run, x)
                exact = "-" if r.program is None else all(  # None: an op tvmq does not reproduce (softmax)
                    np.array_equal(run(x[i:i + 1]), r.program.run([x[i:i + 1]])[0])
                    for i in range(len(x) - args.check, len(x)))
                row = {"variant": v, "plan": p, **h.top1(pred, y, fp32),
                       "agreement_held_out": float((pred[held] == fp32[held]).mean()),
                       "top1_held_out": float((pred[held] == y[held]).mean()),
                       "cle_s": times[f"cle_{eq}"] if eq else 0.0,
                       "hessian_s": stats[eq].meta["hessian_seconds"] if gptq or hc else 0.0,
                       "recipe_s": q_s, "build_s": build_s, "bit_exact": exact,
                       "weight_bytes": r.manifest_data["weight_bytes"], "recipe": r.manifest_data["recipe"]}
                row["recipe"] = {k: (val if k != "equalize" or val is None else
                                     {kk: vv for kk, vv in val.items() if kk != "pairs"})
                                 for k, val in row["recipe"].items()}
                rows.append(row)
                print(f"{v:12s} {p:6s} top1 {100 * row['top1']:.1f} agree {100 * row['agreement']:.1f} "
                      f"(held-out {100 * row['agreement_held_out']:.1f}) recipe {q_s:.1f}s build {build_s:.0f}s "
                      f"exact {exact}", flush=True)
    fp32_top1 = float((fp32 == y).mean())
    info = h.machine_info()
    lines = [f"{Path(args.model).name}, {len(x)} imagenet-sample images ({args.calib} of them for calibration, "
             f"also scored; 'held-out' = the other {len(x) - args.calib}), {h.machine_line(info)}, "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; activation ranges: {args.method}; "
             + (f"fp32 (onnxruntime) top-1 {100 * fp32_top1:.1f}%" if labelled else
                "not an ImageNet classifier: agreement with fp32 (onnxruntime) only"), "",
             "Seconds: CLE = the equalization pass; Hessians = summing X X^T in the calibration pass "
             f"({args.calib} images; the calibration pass itself: " + ", ".join(
                 f"{times[f'collect_{eq}'] - stats[eq].meta['hessian_seconds']:.1f}s"
                 for eq in sorted(stats)) + "); recipe = quantizing every layer's weights "
             "(clipping search, GPTQ, bias correction) at the plan's specs.", ""]
    head = ["variant", "plan", "top-1", "vs fp32 (pt)", "agreement", "agreement held-out",
            "CLE s", "Hessians s", "recipe s", "build s", "bit-exact"]
    body = [[r["variant"], r["plan"], f"{100 * r['top1']:.1f}%" if labelled else "-",
             f"{100 * (r['top1'] - fp32_top1):+.1f}" if labelled else "-",
             f"{100 * r['agreement']:.1f}%", f"{100 * r['agreement_held_out']:.1f}%", f"{r['cle_s']:.1f}",
             f"{r['hessian_s']:.1f}", f"{r['recipe_s']:.1f}", f"{r['build_s']:.0f}", r["bit_exact"]]
            for r in rows]
    lines.append(h.md_table(head, body))
    h.write_results(Path(args.out), args.name,
                    {"rows": rows, "n": len(x), "calib": args.calib, "fp32_top1": fp32_top1 if labelled else None,
                     "model": Path(args.model).name, "times": times,
                     "machine": info}, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
