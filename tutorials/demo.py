"""`make demo`: the whole mixed-precision pipeline on the bundled Fashion-MNIST CNN, beside
onnxruntime.

1. tune every kernel at every spec (W4A8, W8A8, W8A16, bf16, fp32; 4 configurations each) into
   ``.cache/demo_tuning.jsonl`` (a rerun resumes and measures nothing new);
2. calibrate on 256 unlabeled images, then build fp32, uniform W8A8 and a mixed plan the
   allocator chooses under a weight-size budget of 0.6x W8A8 (per-layer sensitivity measured on
   compiled code, latencies from the tuning database), with its HTML report;
3. print top-1 on the committed 1000-image test slice, agreement with onnxruntime fp32, weight
   bytes and batch-1 latency (median of repeated calls, 1 thread) of each.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "fmnist_cnn" / "model.onnx"
DATA = ROOT / "models" / "fmnist_cnn" / "data.npz"


def preprocess(images: np.ndarray) -> np.ndarray:
    return ((images.astype(np.float32) / 255.0 - 0.2860) / 0.3530).reshape(-1, 1, 28, 28)


def main() -> int:
    import onnxruntime as ort

    import tvmq
    from tvmq.calibration import collect
    from tvmq.runtime import set_num_threads, time_calls

    data = np.load(DATA)
    x, y = preprocess(data["test_x"]), data["test_y"].astype(np.int64)
    calib = preprocess(data["calib_x"])
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(MODEL), so, providers=["CPUExecutionProvider"])
    ort_pred = np.array([sess.run(None, {"input": x[i:i + 1]})[0].argmax() for i in range(len(x))])
    one = {"input": x[:1]}
    ort_ms = time_calls(lambda: sess.run(None, one), warmup=20, repeat=200).median_ms
    rows = [("onnxruntime fp32", ort_pred, ort_ms, "")]
    from tvmq.pipeline import compile_mixed
    from tvmq.tune import tune_model

    db = ROOT / ".cache" / "demo_tuning.jsonl"
    t = time.perf_counter()
    summary = tune_model(MODEL, ["w4a8", "w8a8", "w8a16", "bf16", "fp32"], db=db, trials=4, progress=False)
    print(f"tuned {len(summary.results)} tasks ({summary.measured} new measurements) in "
          f"{time.perf_counter() - t:.1f}s -> {db}")
    out = ROOT / ".cache" / "demo"
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        stats = collect(MODEL, calib)
        print(f"calibrated on {len(calib)} unlabeled images in {time.perf_counter() - t:.1f}s")
        t = time.perf_counter()
        mixed = compile_mixed(MODEL, calib, out, size_budget="0.6x", db=db,
                              progress=lambda m: None)
        print(f"mixed plan ({', '.join(f'{s} x{n}' for s, n in sorted(_count(mixed.plan).items()))}) "
              f"chosen and compiled in {time.perf_counter() - t:.1f}s; report: {mixed.report}")
        for name, plan in (("tvmq fp32", None), ("tvmq W8A8 (int-only)", "w8a8"), ("tvmq mixed 0.6x size", "mixed")):
            t = time.perf_counter()
            if plan == "mixed":
                r = mixed.build
            else:
                r = tvmq.build(MODEL, Path(tmp) / name.split()[1], plan=plan, stats=stats, db=db,
                               progress=lambda m: None)
                print(f"{name}: compiled in {time.perf_counter() - t:.1f}s")
            m = tvmq.load(r.library)
            set_num_threads(1)
            pred = np.array([m.run({"input": x[i:i + 1]})["logits"].argmax() for i in range(len(x))])
            ms = time_calls(lambda: m.run(one), warmup=20, repeat=200).median_ms
            kb = r.manifest_data["weight_bytes"] / 1024  # as stored in the library
            rows.append((name, pred, ms, f"{kb:.0f} KiB"))

    print()
    print(f"Fashion-MNIST CNN, {len(x)} test images, batch 1, 1 thread")
    print(f"{'runtime':<22} {'top-1':>7} {'agree w/ ORT':>13} {'median ms':>10} {'weights':>10}")
    for name, pred, ms, weights in rows:
        agree = "-" if name.startswith("onnxruntime") else f"{100 * (pred == ort_pred).mean():.1f}%"
        print(f"{name:<22} {100 * (pred == y).mean():>6.1f}% {agree:>13} {ms:>10.3f} {weights:>10}")
    print(f"tvmq fp32 / onnxruntime latency: {rows[1][2] / ort_ms:.2f}x")
    return 0


def _count(plan: dict[str, str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for s in plan.values():
        out[s] = out.get(s, 0) + 1
    return out


if __name__ == "__main__":
    os.environ.setdefault("TVM_NUM_THREADS", "1")
    sys.exit(main())
