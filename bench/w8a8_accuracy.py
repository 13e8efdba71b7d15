"""W8A8 accuracy and latency of the real MobileNetV2 on imagenet-sample, tvmq beside its rivals."""

from __future__ import annotations

import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import harness as h


def plan_of(model: str, spec: str) -> Any:
    """A uniform spec, or 'mixed': W4A8 with the depthwise, first and last layers at W8A8
    ('w8a8-narrow': W8A8, the recipe's narrow conv weights)."""
    if spec != "mixed":
        return "w8a8" if spec == "w8a8-narrow" else spec
    from tvmq.frontend import prepare  # deferred: imports TVM
    from tvmq.plan import PrecisionPlan, QuantSpec

    layers = prepare(model).layers
    keep = {layers.layers[0].name, layers.layers[-1].name}
    return PrecisionPlan({l.name: QuantSpec.parse(
        "w8a8" if l.op == "depthwise_conv2d" or l.name in keep else "w4a8") for l in layers}, layers)


def main() -> int:
    ap = h.argument_parser(__doc__, n=1000, calib=256, **h.IMAGE_OPTIONS,
                           methods=("percentile,mse", "W8A8 rows: activation range methods"),
                           plans=("w8a16,w4a8,mixed,bf16", "more tvmq rows (percentile ranges): uniform "
                                  "specs, 'mixed' (W4A8, depthwise, first, last W8A8) or 'w8a8-narrow' "
                                  "(W8A8, pair-fitted conv weights); '' for none"),
                           check=(20, "images checked bit-exact vs simulation"),
                           requant=("float", "tvmq's requantization(s), float and/or dyadic: W8A8 rows "
                                    "for each; the extra plans take the first"))
    if (args := h.image_bench_args(ap)) is None:
        return 0
    import tvmq  # deferred: imports TVM, after TVM_NUM_THREADS is set
    from tvmq.calibration import collect
    from tvmq.recipe import with_recipe

    x, y = h.imagenet_sample(args.root, args.n)
    calib = x[: args.calib]  # calibration images are also scored: the test set is small
    rows: list[dict[str, Any]] = []

    def add(variant: str, run: Any, call: Any = None, **more: Any) -> None:  # call: the timed one
        pred = h.predictions(run, x)
        rows.append({"variant": variant, "pred": pred, "ms": h.median_ms(call or (lambda: run(x[:1]))),
                     **more})

    add("onnxruntime fp32", h.ort_run(args.model))
    t = time.perf_counter()
    stats = collect(args.model, calib)
    calib_s = time.perf_counter() - t
    requants = [q for q in args.requant.split(",") if q]
    with tempfile.TemporaryDirectory() as tmp:
        # one row per W8A8 range method and requantization, and per extra plan
        for spec, method, requant in ([("w8a8", m, q) for m in args.methods.split(",") if m for q in requants]
                                      + [(p, "percentile", requants[0]) for p in args.plans.split(",") if p]):
            t = time.perf_counter()
            # w8a8-narrow: pair-fitted conv weights, vpmaddubsw on AVX2 (tvmq.recipe.pair_fit)
            r = tvmq.build(args.model, Path(tmp) / f"{spec}_{method}_{requant}",
                           plan=plan_of(args.model, spec), range_method=method, requant=requant,
                           stats=with_recipe(stats, narrow_weights=True) if spec == "w8a8-narrow" else stats)
            build_s = time.perf_counter() - t
            run = h.tvmq_run(r.library)
            exact = h.bit_exact(r, run, x, args.check)
            how = method if requant == "float" else f"{method}, {requant} requantization"
            add(f"tvmq {spec.upper() if spec != 'mixed' else 'W4A8 + W8A8 (dw, first, last)'} ({how})", run,
                bit_exact=exact, build_s=build_s, weight_bytes=r.manifest_data["weight_bytes"])
        add("onnxruntime int8 (QDQ)", h.ort_run(h.ort_int8(Path(args.model), calib, Path(tmp) / "int8.onnx")))
    notes = []
    try:  # OpenVINO fp32 and int8 (NNCF on the calibration images), OV_CONFIG (the f32 hint keeps fp32 fp32)
        ov, _ = h.import_openvino()
        core = ov.Core()
        q, quantize_s = h.nncf_int8(h.ov_read(core, args.model, x.shape), calib)  # NNCF gets its own copy
        for variant, m, extra in (("OpenVINO fp32", h.ov_read(core, args.model, x.shape), {}),
                                  ("OpenVINO int8 (NNCF)", q, {"quantize_s": quantize_s})):
            compiled, req, info = h.ov_compile(core, m)
            name, out = compiled.input(0).get_any_name(), compiled.output(0)
            add(variant, lambda a, req=req, name=name, out=out: req.infer({name: a})[out],
                lambda req=req, name=name: req.infer({name: x[:1]}), **info, **extra)
    except ImportError as e:
        notes.append(f"OpenVINO rows skipped: {e}; install with `{h.OV_MISSING}`")
    except Exception as e:  # noqa: BLE001 (a rival failing must not lose the rows measured so far)
        notes.append(f"OpenVINO rows failed: {type(e).__name__}: {e}")
    notes += [f"{r['variant']} conv/dense kernels: {r['kernels']}" for r in rows if "kernels" in r]
    fp32 = rows[0]["pred"]
    rows = [{**{k: v for k, v in r.items() if k != "pred"}, **h.top1(r["pred"], y, fp32)} for r in rows]
    rows = [{k: r[k] for k in ("variant", "top1", "ms", *r) if k in r} for r in rows]
    head = (f"MobileNetV2 (real), {len(x)} imagenet-sample images, {args.calib} calibration images, batch 1, "
            f"1 thread, {platform.processor() or platform.machine()}, {h.utc_now()}; calibration pass "
            f"{calib_s:.1f}s")
    cells = [[r["variant"], f"{100 * r['top1']:.1f}%", f"{100 * (r['top1'] - rows[0]['top1']):+.1f}",
              f"{100 * r['agreement']:.1f}%", f"{r['ms']:.2f}",
              f"{r['weight_bytes'] / 1e6:.2f}" if "weight_bytes" in r else "-", r.get("bit_exact", "-")]
             for r in rows]
    h.write_results(Path(args.out), "w8a8_accuracy",
                    {"rows": rows, "n": len(x), "calib": args.calib, "calibration_seconds": calib_s,
                     "notes": notes},
                    head + "\n\n" + h.md_table(
                        ["variant", "top-1", "vs fp32 (pt)", "agreement with fp32", "median ms",
                         "weights (MB, as stored)", "bit-exact vs simulation"], cells, "lrrrrrl",
                        [f"- {note}" for note in notes]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
