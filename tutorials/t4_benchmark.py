"""Tutorial 4: load a compiled library in Python, run it, and time it (1 and 2 threads).

    python tutorials/t4_benchmark.py [OUT_DIR]

Only ``model.so`` and ``manifest.json`` are needed at run time (no ONNX, no compiler).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

from t1_compile import MODEL, images


def main(out: Path) -> int:
    import tvmq

    lib = out / "model.so"
    if not lib.exists():
        tvmq.build(MODEL, out)
    m = tvmq.load(lib)
    print("inputs:", m.inputs)
    x = images(n=8)
    pred = [int(np.argmax(m.run({"input": x[i:i + 1]})["logits"])) for i in range(len(x))]
    print("predictions:", pred)
    for threads in (1, 2):
        b = m.benchmark(warmup=10, repeat=50, threads=threads)
        print(f"{threads} thread(s): median {b.median_ms:.3f} ms (p10 {b.p10_ms:.3f}, p90 {b.p90_ms:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp())))
