#!/usr/bin/env python3
"""W8A8 accuracy and latency of the real MobileNetV2 on imagenet-sample, tvmq beside its rivals.

    python bench/w8a8_accuracy.py [--root ../shared/data/imagenet-sample] [--n 1000] [--calib 256]

Rows: onnxruntime fp32 (the reference), tvmq W8A8 for each activation range method (integer-only
library; bit-exactness against its numpy simulation checked on ``--check`` images), and
onnxruntime's own ``quantize_static`` int8 (QDQ, per-channel, uint8 activations, MinMax, the same
calibration images: the recipe of ``../shared/DATA.md``). Columns: top-1 on the labels, top-1
agreement with fp32, batch-1 median latency (1 thread, in-process, warm). Then OpenVINO fp32 and
OpenVINO int8 (``nncf.quantize``, preset performance, the same calibration images), both compiled
for CPU with 1 thread, the latency hint and f32 inference precision; skipped with a message when
``openvino``/``nncf`` are missing (``pip install -e '.[bench]'``). Skips cleanly (exit 0, a
message) when the image folder is absent. Writes ``bench/results/w8a8_accuracy.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "bench"))

# The rivals' recipes live in _common.py (shared with w8a8_latency.py).
from _common import OV_CONFIG, OV_MISSING, import_openvino, nncf_int8
from _common import ort_int8 as _ort_int8
from _common import ov_kernels as _ov_kernels


def _median_ms(fn) -> float:  # type: ignore[no-untyped-def]
    from tvmq.runtime import time_calls

    return time_calls(fn, warmup=5, repeat=30).median_ms


def openvino_rows(model_path: str | Path, x: np.ndarray, y: np.ndarray, calib: np.ndarray,
                  config: dict | None = None) -> list[dict]:
    """OpenVINO fp32 and OpenVINO int8 (NNCF post-training quantization on ``calib``).

    Both compiled for ``"CPU"`` with ``config`` (default ``OV_CONFIG``: 1 thread, 1 stream, latency
    hint, f32 inference precision so the fp32 row is really fp32 and the layers NNCF leaves in
    float stay fp32, not bf16, on AMX/AVX512-BF16 CPUs). Rows as the onnxruntime ones: variant,
    top1, pred (argmax per image, batch 1), ms (``_median_ms``), plus the kernels the plugin picked.
    Raises ImportError when openvino or nncf is missing.
    """
    ov, _ = import_openvino()  # also sets NNCF_CI=1: NNCF telemetry off (it would try the network)

    config = dict(OV_CONFIG if config is None else config)
    core = ov.Core()

    def read():  # type: ignore[no-untyped-def]
        m = core.read_model(str(model_path))
        m.reshape({m.input(0).get_any_name(): [1, *x.shape[1:]]})  # static batch 1 (a no-op here)
        return m

    model = read()
    name = model.input(0).get_any_name()  # "input" for mobilenetv2.onnx
    q, quantize_s = nncf_int8(read(), calib)  # NNCF gets its own copy: the fp32 model stays untouched
    rows = []
    for variant, m, extra in (("OpenVINO fp32", model, {}),
                              ("OpenVINO int8 (NNCF)", q, {"quantize_s": quantize_s})):
        compiled = core.compile_model(m, "CPU", config)
        req = compiled.create_infer_request()
        out = compiled.output(0)
        pred = np.array([req.infer({name: x[i:i + 1]})[out].argmax() for i in range(len(x))])
        ms = _median_ms(lambda r=req: r.infer({name: x[:1]}))
        rows.append({"variant": variant, "top1": float((pred == y).mean()), "pred": pred, "ms": ms,
                     "kernels": _ov_kernels(compiled),
                     "precision": compiled.get_property("INFERENCE_PRECISION_HINT").to_string(),
                     "threads": int(compiled.get_property("INFERENCE_NUM_THREADS")), **extra})
    return rows


def _plan(model: str, spec: str):  # type: ignore[no-untyped-def]
    """A uniform spec, or 'mixed': W4A8 with the depthwise, first and last layers at W8A8."""
    if spec != "mixed":
        return spec
    from tvmq.frontend import prepare
    from tvmq.plan import PrecisionPlan, QuantSpec

    layers = prepare(model).layers
    keep = {layers.layers[0].name, layers.layers[-1].name}
    return PrecisionPlan({l.name: QuantSpec.parse(
        "w8a8" if l.op == "depthwise_conv2d" or l.name in keep else "w4a8") for l in layers}, layers)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=str(ROOT / ".cache/models/mobilenetv2.onnx"))
    ap.add_argument("--root", default=str(ROOT.parent / "shared/data/imagenet-sample"))
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--calib", type=int, default=256)
    ap.add_argument("--methods", default="percentile,mse", help="W8A8 rows: activation range methods")
    ap.add_argument("--plans", default="w8a16,w4a8,mixed,bf16",
                    help="more tvmq rows, percentile ranges: uniform specs (w8a16, w4a8, bf16) or 'mixed' (W4A8, "
                         "with the depthwise, first and last layers W8A8); '' for none")
    ap.add_argument("--check", type=int, default=20, help="images checked bit-exact vs simulation")
    ap.add_argument("--output", default=str(ROOT / "bench/results/w8a8_accuracy"))
    args = ap.parse_args()
    if not Path(args.root, "labels.csv").exists():
        print(f"skipped: {args.root} not found (the imagenet-sample folder of ../shared/data)")
        return 0
    if not Path(args.model).exists():
        print(f"skipped: {args.model} missing: run `make models`")
        return 0
    os.environ.setdefault("TVM_NUM_THREADS", "1")
    import onnxruntime as ort
    from imagenet_eval import load_imagenet_sample

    import tvmq
    from tvmq.calibration import collect
    from tvmq.runtime import set_num_threads

    x, y = load_imagenet_sample(args.root, n=args.n)
    calib = x[: args.calib]  # calibration images are also scored: the test set is small
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    rows = []

    def ort_row(name: str, path: Path) -> np.ndarray:
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        pred = np.array([sess.run(None, {"input": x[i:i + 1]})[0].argmax() for i in range(len(x))])
        ms = _median_ms(lambda: sess.run(None, {"input": x[:1]}))
        rows.append({"variant": name, "top1": float((pred == y).mean()), "pred": pred, "ms": ms})
        return pred

    fp32 = ort_row("onnxruntime fp32", Path(args.model))
    t = time.perf_counter()
    stats = collect(args.model, calib)
    calib_s = time.perf_counter() - t
    with tempfile.TemporaryDirectory() as tmp:
        variants = [("w8a8", m) for m in args.methods.split(",") if m] + \
                   [(p, "percentile") for p in args.plans.split(",") if p]
        for spec, method in variants:
            t = time.perf_counter()
            r = tvmq.build(args.model, Path(tmp) / f"{spec}_{method}", plan=_plan(args.model, spec),
                           stats=stats, range_method=method)
            build_s = time.perf_counter() - t
            m = tvmq.load(r.library)
            set_num_threads(1)
            pred = np.array([m.run({"input": x[i:i + 1]})["logits"].argmax() for i in range(len(x))])
            exact = "-" if r.program is None else all(  # bf16 / fp32: no integer oracle
                np.array_equal(m.run({"input": x[i:i + 1]})["logits"], r.program.run([x[i:i + 1]])[0])
                for i in range(len(x) - args.check, len(x)))
            ms = _median_ms(lambda: m.run({"input": x[:1]}))
            rows.append({"variant": f"tvmq {spec.upper() if spec != 'mixed' else 'W4A8 + W8A8 (dw, first, last)'} "
                                    f"({method})", "top1": float((pred == y).mean()),
                         "pred": pred, "ms": ms, "bit_exact": exact, "build_s": build_s,
                         "weight_bytes": r.manifest_data["weight_bytes"]})
        ort_row("onnxruntime int8 (QDQ)", _ort_int8(Path(args.model), calib, Path(tmp) / "int8.onnx"))
    notes = []
    try:
        ov_rows = openvino_rows(args.model, x, y, calib)
    except ImportError as e:
        notes.append(f"OpenVINO rows skipped: {e}; install with `{OV_MISSING}`")
    except Exception as e:  # noqa: BLE001 (a rival failing must not lose the rows measured so far)
        notes.append(f"OpenVINO rows failed: {type(e).__name__}: {e}")
    else:
        rows += ov_rows
    for note in notes:
        print(note)
    notes += [f"{r['variant']} conv/dense kernels: {r['kernels']}" for r in rows if "kernels" in r]
    for row in rows:
        row["agreement"] = float((row.pop("pred") == fp32).mean())
    fp = rows[0]
    lines = [f"MobileNetV2 (real), {len(x)} imagenet-sample images, {args.calib} calibration images, "
             f"batch 1, 1 thread, {platform.processor() or platform.machine()}, "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; calibration pass {calib_s:.1f}s", "",
             "| variant | top-1 | vs fp32 (pt) | agreement with fp32 | median ms | weights (MB, as stored) "
             "| bit-exact vs simulation |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for row in rows:
        wb = f"{row['weight_bytes'] / 1e6:.2f}" if "weight_bytes" in row else "-"
        lines.append(f"| {row['variant']} | {100 * row['top1']:.1f}% | {100 * (row['top1'] - fp['top1']):+.1f} | "
                     f"{100 * row['agreement']:.1f}% | {row['ms']:.2f} | {wb} | {row.get('bit_exact', '-')} |")
    if notes:
        lines += [""] + [f"- {note}" for note in notes]
    table = "\n".join(lines)
    print(table)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output + ".md").write_text(table + "\n")
    Path(args.output + ".json").write_text(json.dumps({"rows": rows, "n": len(x), "calib": args.calib,
                                                       "calibration_seconds": calib_s, "notes": notes},
                                                      indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
