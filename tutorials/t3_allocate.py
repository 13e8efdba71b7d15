"""Tutorial 3: per-layer sensitivity, then let the allocator choose each layer's precision under
a budget, and build that plan (with its report).

    python tutorials/t3_allocate.py [OUT_DIR] [TUNING_DB]

With a tuning database (tutorial 2) a latency budget works too; here 2x the uniform W8A8
model's measured latency, next to the size budget (a 0.7x size needs 4-bit layers, and some are
slower than their W8A8 form: on AVX2 and AVX-512 VNNI the W8A8 depthwise kernels are built
directly and have no W4A8 twin; at 1.5x the cheapest 0.7x plan was predicted at 1.38x on an AVX2 EPYC,
too close to the 5% margin to be met every time). (The
plan aims 5% under a latency budget, the prediction error; a budget no plan can meet gives the least-overrun plan, status
"infeasible".)
The shell form: ``tvmq analyze model.onnx --calibration calib.npy`` and
``tvmq compile model.onnx --calibration calib.npy --size-budget 0.7x -o out/``.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from t1_compile import MODEL, images


def main(out: Path, db: str | None = None) -> int:
    from tvmq.pipeline import compile_mixed

    calib = images("calib_x", 64)
    r = compile_mixed(MODEL, calib, out, size_budget="0.7x", db=db,
                      latency_budget="2x" if db else None)
    sens = r.extra["sensitivity"]
    for layer, spec in r.plan.items():
        sqnr = "-" if spec == "fp32" else f"{sens.sqnr_db(layer, spec):.1f} dB"
        print(f"{layer:<28} {spec:<6} output SQNR alone: {sqnr}")
    print(f"allocation {r.allocation.status}, binding {r.allocation.binding}; "
          f"{r.build.manifest_data['weight_bytes']} bytes; report: {r.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp()),
                  sys.argv[2] if len(sys.argv) > 2 else None))
