#!/usr/bin/env python3
"""Random per-layer mixed plans on the real MobileNetV2: each compiles to one library, and the
all-integer ones equal the numpy integer simulation bit for bit.

    python bench/mixed_plans.py [--plans 20] [--images 40] [--seed 0]

Plans are drawn (seeded) over {W4A8, W8A8, W8A16, bf16, fp32}; every third plan is integer-only
(W4A8 / W8A8 / W8A16). Every plan is checked bit for bit against the numpy program of the build
(float layers included: each float kernel's summation order and FMA roundings, see
``KernelDef.float_reference``) on the first ``--exact`` scored images (the numpy program runs
about a second per image); all ``--images`` give the agreement with fp32.
Calibration: the first 256 imagenet-sample images; scoring: the next ``--images``. Writes
``bench/results/mixed_plans.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

ALL = ("w4a8", "w8a8", "w8a16", "bf16", "fp32")
INT = ("w4a8", "w8a8", "w8a16")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=str(ROOT / ".cache/models/mobilenetv2.onnx"))
    ap.add_argument("--root", default=str(ROOT.parent / "shared/data/imagenet-sample"))
    ap.add_argument("--plans", type=int, default=20)
    ap.add_argument("--images", type=int, default=40)
    ap.add_argument("--exact", type=int, default=5, help="images checked bit for bit per plan")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--output", default=str(ROOT / "bench/results/mixed_plans"))
    args = ap.parse_args()
    if not Path(args.model).exists():
        print(f"skipped: {args.model} missing: run `make models`")
        return 0
    if not Path(args.root, "labels.csv").exists():
        print(f"skipped: {args.root} not found (the imagenet-sample folder of ../shared/data)")
        return 0
    import onnxruntime as ort
    from imagenet_eval import load_imagenet_sample

    import tvmq
    from tvmq.calibration import collect
    from tvmq.frontend import prepare
    from tvmq.plan import PrecisionPlan, QuantSpec
    from tvmq.runtime import set_num_threads

    x, _ = load_imagenet_sample(args.root, n=256 + args.images)
    calib, test = x[:256], x[256:]
    sess = ort.InferenceSession(args.model, providers=["CPUExecutionProvider"])
    fp32 = np.array([sess.run(None, {"input": t[None]})[0].argmax() for t in test])
    stats = collect(args.model, calib)
    layers = prepare(args.model).layers
    rng = np.random.default_rng(args.seed)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.plans):
            choice = INT if i % 3 == 0 else ALL
            plan = PrecisionPlan({l.name: QuantSpec.parse(str(rng.choice(choice))) for l in layers}, layers)
            t = time.perf_counter()
            r = tvmq.build(args.model, Path(tmp) / f"p{i}", plan=plan, stats=stats, progress=lambda m: None)
            build_s = time.perf_counter() - t
            m = tvmq.load(r.library)
            set_num_threads(2)
            outs = [m.run({"input": t[None]})["logits"] for t in test]
            exact = None if r.program is None else all(
                np.array_equal(o, r.program.run([t[None]])[0]) for o, t in zip(outs[:args.exact], test))
            agree = float(np.mean([o.argmax() == f for o, f in zip(outs, fp32)]))
            wrong_kernel = [n for n, s in plan.items() if s.name not in r.manifest_data["kernels"][n]["kernel"]]
            counts = Counter(s.name for s in plan.values())
            rows.append({"plan": i, "specs": {k: counts.get(k, 0) for k in ALL}, "bit_exact": exact,
                         "agreement": agree, "weight_bytes": r.manifest_data["weight_bytes"],
                         "build_s": round(build_s, 1), "layers_on_wrong_kernel": wrong_kernel})
            print(rows[-1], flush=True)
    lines = [f"MobileNetV2 (real), {len(rows)} random plans (seed {args.seed}), {len(test)} scored images, "
             f"256 calibration images, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", "",
             f"Bit-exact: library == numpy program on the first {args.exact} scored images.", "",
             "| plan | " + " | ".join(ALL) + " | weights MB | bit-exact vs simulation | agreement with fp32 | build s |",
             "|---:|" + "---:|" * len(ALL) + "---:|---|---:|---:|"]
    for row in rows:
        ex = "no oracle" if row["bit_exact"] is None else str(row["bit_exact"])
        lines.append(f"| {row['plan']} | " + " | ".join(str(row["specs"][k]) for k in ALL)
                     + f" | {row['weight_bytes'] / 1e6:.2f} | {ex} | {100 * row['agreement']:.0f}% | {row['build_s']} |")
    table = "\n".join(lines)
    print(table)
    Path(args.output + ".md").write_text(table + "\n")
    Path(args.output + ".json").write_text(json.dumps(rows, indent=1))
    bad = [r for r in rows if r["bit_exact"] is not True or r["layers_on_wrong_kernel"]]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
