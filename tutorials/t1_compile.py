"""Tutorial 1: compile an ONNX model with the defaults, then in W8A8, and run both.

    python tutorials/t1_compile.py [OUT_DIR]

fp32 needs nothing but the model; an integer plan needs calibration statistics from a few
hundred unlabeled inputs (here 64 of the bundled Fashion-MNIST images).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "fmnist_cnn" / "model.onnx"


def images(split: str = "test_x", n: int | None = None) -> np.ndarray:
    x = np.load(ROOT / "models" / "fmnist_cnn" / "data.npz")[split][:n]
    return ((x.astype(np.float32) / 255.0 - 0.2860) / 0.3530).reshape(-1, 1, 28, 28)


def main(out: Path) -> int:
    import tvmq
    from tvmq.calibration import collect

    fp32 = tvmq.build(MODEL, out / "fp32")                       # out/fp32/model.so + manifest.json
    stats = collect(MODEL, images("calib_x", 64))                # calibration: the compiled fp32 model
    w8a8 = tvmq.build(MODEL, out / "w8a8", plan="w8a8", stats=stats)
    x = images(n=1)
    for r in (fp32, w8a8):
        y = tvmq.load(r.library).run({"input": x})["logits"]
        print(f"{r.manifest_data['precision']}: class {int(np.argmax(y))}, "
              f"{r.manifest_data['weight_bytes']} bytes of weights")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp())))
