#!/usr/bin/env python3
"""W8A8 accuracy and latency of the real MobileNetV2 on imagenet-sample, tvmq beside its rivals.

    python bench/w8a8_accuracy.py [--root ../shared/data/imagenet-sample] [--n 1000] [--calib 256]

Rows: onnxruntime fp32 (the reference), tvmq W8A8 for each activation range method (integer-only
library; bit-exactness against its numpy simulation checked on ``--check`` images), and
onnxruntime's own ``quantize_static`` int8 (QDQ, per-channel, uint8 activations, MinMax, the same
calibration images: the recipe of ``../shared/DATA.md``). Columns: top-1 on the labels, top-1
agreement with fp32, batch-1 median latency (1 thread, in-process, warm). OpenVINO + NNCF is not
run here (``pip install openvino nncf``; see ../shared/DATA.md for its numbers on the Xeon).
Skips cleanly (exit 0, a message) when the image folder is absent. Writes
``bench/results/w8a8_accuracy.{json,md}``.
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


def _median_ms(fn) -> float:  # type: ignore[no-untyped-def]
    from tvmq.runtime import time_calls

    return time_calls(fn, warmup=5, repeat=30).median_ms


def _ort_int8(fp32_path: Path, calib: np.ndarray, out: Path) -> Path:
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                          QuantType, quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(calib)

        def get_next(self):  # type: ignore[no-untyped-def]
            x = next(self.it, None)
            return None if x is None else {"input": x[None]}

    pre = out.with_name("pre.onnx")
    quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
    quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=str(ROOT / ".cache/models/mobilenetv2.onnx"))
    ap.add_argument("--root", default=str(ROOT.parent / "shared/data/imagenet-sample"))
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--calib", type=int, default=256)
    ap.add_argument("--methods", default="percentile,mse")
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

    import tvmq
    from imagenet_eval import load_imagenet_sample
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
        for method in args.methods.split(","):
            t = time.perf_counter()
            r = tvmq.build(args.model, Path(tmp) / method, plan="w8a8", stats=stats, range_method=method)
            build_s = time.perf_counter() - t
            m = tvmq.load(r.library)
            set_num_threads(1)
            pred = np.array([m.run({"input": x[i:i + 1]})["logits"].argmax() for i in range(len(x))])
            exact = all(np.array_equal(m.run({"input": x[i:i + 1]})["logits"], r.program.run([x[i:i + 1]])[0])
                        for i in range(len(x) - args.check, len(x)))
            ms = _median_ms(lambda: m.run({"input": x[:1]}))
            rows.append({"variant": f"tvmq W8A8 ({method})", "top1": float((pred == y).mean()),
                         "pred": pred, "ms": ms, "bit_exact": exact, "build_s": build_s})
        ort_row("onnxruntime int8 (QDQ)", _ort_int8(Path(args.model), calib, Path(tmp) / "int8.onnx"))
    for row in rows:
        row["agreement"] = float((row.pop("pred") == fp32).mean())
    fp = rows[0]
    lines = [f"MobileNetV2 (real), {len(x)} imagenet-sample images, {args.calib} calibration images, "
             f"batch 1, 1 thread, {platform.processor() or platform.machine()}, "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; calibration pass {calib_s:.1f}s", "",
             "| variant | top-1 | vs fp32 (pt) | agreement with fp32 | median ms | bit-exact vs simulation |",
             "|---|---:|---:|---:|---:|---|"]
    for row in rows:
        lines.append(f"| {row['variant']} | {100 * row['top1']:.1f}% | {100 * (row['top1'] - fp['top1']):+.1f} | "
                     f"{100 * row['agreement']:.1f}% | {row['ms']:.2f} | {row.get('bit_exact', '-')} |")
    table = "\n".join(lines)
    print(table)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output + ".md").write_text(table + "\n")
    Path(args.output + ".json").write_text(json.dumps({"rows": rows, "n": len(x), "calib": args.calib,
                                                       "calibration_seconds": calib_s}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
