"""`make demo`: compile the bundled Fashion-MNIST CNN with tvmq and compare it with onnxruntime.

Prints top-1 accuracy on the committed 1000-image test slice and batch-1 latency (median of
repeated calls, 1 thread) for tvmq's fp32 library and onnxruntime fp32 on the same model.
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

    data = np.load(DATA)
    x, y = preprocess(data["test_x"]), data["test_y"].astype(np.int64)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        tvmq.build(MODEL, tmp, progress=lambda m: print(f"  tvmq: {m}", flush=True))
        print(f"compiled in {time.perf_counter() - t:.1f}s")
        m = tvmq.load(Path(tmp) / "model.so")
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
        sess = ort.InferenceSession(str(MODEL), so, providers=["CPUExecutionProvider"])

        tv_pred = np.array([m.run({"input": x[i:i + 1]})["logits"].argmax() for i in range(len(x))])
        ort_pred = np.array([sess.run(None, {"input": x[i:i + 1]})[0].argmax() for i in range(len(x))])
        from tvmq.runtime import set_num_threads, time_calls

        set_num_threads(1)
        one = {"input": x[:1]}
        tv_ms = time_calls(lambda: m.run(one), warmup=20, repeat=200).median_ms
        ort_ms = time_calls(lambda: sess.run(None, one), warmup=20, repeat=200).median_ms

    print()
    print(f"Fashion-MNIST CNN, {len(x)} test images, batch 1, 1 thread")
    print(f"{'runtime':<22} {'top-1':>7} {'agree w/ ORT':>13} {'median ms':>10}")
    print(f"{'onnxruntime fp32':<22} {100 * (ort_pred == y).mean():>6.1f}% {'-':>13} {ort_ms:>10.3f}")
    print(f"{'tvmq fp32':<22} {100 * (tv_pred == y).mean():>6.1f}% "
          f"{100 * (tv_pred == ort_pred).mean():>12.1f}% {tv_ms:>10.3f}")
    print(f"tvmq / onnxruntime latency: {tv_ms / ort_ms:.2f}x")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TVM_NUM_THREADS", "1")
    sys.exit(main())
