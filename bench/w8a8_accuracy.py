"""W8A8 accuracy and latency of the real MobileNetV2 on imagenet-sample, tvmq beside its rivals."""

from __future__ import annotations

import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench import harness as h


def openvino_rows(model_path: str | Path, x: np.ndarray, calib: np.ndarray) -> list[dict[str, Any]]:
    """OpenVINO fp32 and int8 (``nncf_int8`` on ``calib``), both compiled for CPU with
    ``OV_CONFIG`` (the f32 hint keeps fp32 layers fp32, not bf16, on AMX/AVX512-BF16 CPUs):
    variant, pred, ms, the kernels the plugin picked. ImportError without openvino or nncf."""
    ov, _ = h.import_openvino()
    core = ov.Core()
    model = h.ov_read(core, model_path, x.shape)
    name = model.input(0).get_any_name()
    q, quantize_s = h.nncf_int8(h.ov_read(core, model_path, x.shape), calib)  # NNCF gets its own copy
    rows = []
    for variant, m, extra in (("OpenVINO fp32", model, {}),
                              ("OpenVINO int8 (NNCF)", q, {"quantize_s": quantize_s})):
        compiled = core.compile_model(m, "CPU", dict(h.OV_CONFIG))
        req, out = compiled.create_infer_request(), compiled.output(0)
        rows.append({"variant": variant, "pred": h.predictions(lambda a, r=req: r.infer({name: a})[out], x),
                     "ms": h.median_ms(lambda r=req: r.infer({name: x[:1]})),
                     "kernels": h.ov_kernels(compiled),
                     "precision": compiled.get_property("INFERENCE_PRECISION_HINT").to_string(),
                     "threads": int(compiled.get_property("INFERENCE_NUM_THREADS")), **extra})
    return rows


def plan_of(model: str, spec: str) -> Any:
    """A uniform spec, or 'mixed': W4A8 with the depthwise, first and last layers at W8A8
    ('w8a8-narrow': W8A8, the recipe's narrow conv weights)."""
    if spec == "w8a8-narrow":
        return "w8a8"
    if spec != "mixed":
        return spec
    from tvmq.frontend import prepare  # deferred: imports TVM
    from tvmq.plan import PrecisionPlan, QuantSpec

    layers = prepare(model).layers
    keep = {layers.layers[0].name, layers.layers[-1].name}
    return PrecisionPlan({l.name: QuantSpec.parse(
        "w8a8" if l.op == "depthwise_conv2d" or l.name in keep else "w4a8") for l in layers}, layers)


def tvmq_rows(args: Any, x: np.ndarray, stats: Any, tmp: Path) -> list[dict[str, Any]]:
    """One row per W8A8 range method and per extra plan: built, scored, checked, timed."""
    import tvmq  # deferred: imports TVM

    rows = []
    requants = [q for q in args.requant.split(",") if q]
    for spec, method, requant in ([("w8a8", m, q) for m in args.methods.split(",") if m for q in requants]
                                  + [(p, "percentile", requants[0]) for p in args.plans.split(",") if p]):
        t = time.perf_counter()
        if spec == "w8a8-narrow":  # pair-fitted conv weights: vpmaddubsw on AVX2 (tvmq.recipe.pair_fit)
            from tvmq.recipe import with_recipe  # deferred: imports TVM

            spec_stats = with_recipe(stats, narrow_weights=True)
        else:
            spec_stats = stats
        r = tvmq.build(args.model, tmp / f"{spec}_{method}_{requant}", plan=plan_of(args.model, spec),
                       stats=spec_stats, range_method=method, requant=requant)
        build_s = time.perf_counter() - t
        run = h.tvmq_run(r.library)
        exact = h.bit_exact(r, run, x, args.check)
        label = spec.upper() if spec != "mixed" else "W4A8 + W8A8 (dw, first, last)"
        how = method if requant == "float" else f"{method}, {requant} requantization"
        rows.append({"variant": f"tvmq {label} ({how})", "pred": h.predictions(run, x),
                     "ms": h.median_ms(lambda run=run: run(x[:1])), "bit_exact": exact, "build_s": build_s,
                     "weight_bytes": r.manifest_data["weight_bytes"]})
    return rows


def report(rows: list[dict[str, Any]], notes: list[str], args: Any, n: int, calib_s: float) -> str:
    head = (f"MobileNetV2 (real), {n} imagenet-sample images, {args.calib} calibration images, batch 1, 1 "
            f"thread, {platform.processor() or platform.machine()}, "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; calibration pass {calib_s:.1f}s\n\n")
    cells = [[row["variant"], f"{100 * row['top1']:.1f}%", f"{100 * (row['top1'] - rows[0]['top1']):+.1f}",
              f"{100 * row['agreement']:.1f}%", f"{row['ms']:.2f}",
              f"{row['weight_bytes'] / 1e6:.2f}" if "weight_bytes" in row else "-", row.get("bit_exact", "-")]
             for row in rows]
    return head + h.md_table(
        ["variant", "top-1", "vs fp32 (pt)", "agreement with fp32", "median ms", "weights (MB, as stored)",
         "bit-exact vs simulation"], cells, "lrrrrrl", [f"- {note}" for note in notes])


def main() -> int:
    ap = h.argument_parser(__doc__, n=1000, calib=256,
                           methods=("percentile,mse", "W8A8 rows: activation range methods"),
                           plans=("w8a16,w4a8,mixed,bf16", "more tvmq rows (percentile ranges): uniform "
                                  "specs, 'mixed' (W4A8, depthwise, first, last W8A8) or 'w8a8-narrow' "
                                  "(W8A8, pair-fitted conv weights); '' for none"),
                           check=(20, "images checked bit-exact vs simulation"),
                           requant=("float", "tvmq's requantization(s), float and/or dyadic: W8A8 rows "
                                    "for each; the extra plans take the first"))
    args = h.image_bench_args(ap)
    if args is None:
        return 0
    from tvmq.calibration import collect  # deferred: imports TVM, after TVM_NUM_THREADS is set

    x, y = h.imagenet_sample(args.root, args.n)
    calib = x[: args.calib]  # calibration images are also scored: the test set is small
    rows: list[dict[str, Any]] = []

    def ort_row(name: str, path: Path) -> None:
        run = h.ort_run(path)
        rows.append({"variant": name, "pred": h.predictions(run, x), "ms": h.median_ms(lambda: run(x[:1]))})

    ort_row("onnxruntime fp32", Path(args.model))
    t = time.perf_counter()
    stats = collect(args.model, calib)
    calib_s = time.perf_counter() - t
    with tempfile.TemporaryDirectory() as tmp:
        rows += tvmq_rows(args, x, stats, Path(tmp))
        ort_row("onnxruntime int8 (QDQ)", h.ort_int8(Path(args.model), calib, Path(tmp) / "int8.onnx"))
    notes = []
    try:
        rows += openvino_rows(args.model, x, calib)
    except ImportError as e:
        notes.append(f"OpenVINO rows skipped: {e}; install with `{h.OV_MISSING}`")
    except Exception as e:  # noqa: BLE001 (a rival failing must not lose the rows measured so far)
        notes.append(f"OpenVINO rows failed: {type(e).__name__}: {e}")
    notes += [f"{r['variant']} conv/dense kernels: {r['kernels']}" for r in rows if "kernels" in r]
    fp32 = rows[0]["pred"]
    for row in rows:
        pred = row.pop("pred")
        row.update(h.top1(pred, y, fp32))
    rows = [{k: r[k] for k in ("variant", "top1", "ms", *r) if k in r} for r in rows]
    h.write_results(Path(args.out), "w8a8_accuracy",
                    {"rows": rows, "n": len(x), "calib": args.calib, "calibration_seconds": calib_s,
                     "notes": notes},
                    report(rows, notes, args, len(x), calib_s))
    return 0


if __name__ == "__main__":
    sys.exit(main())
