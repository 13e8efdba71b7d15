"""Random per-layer mixed plans on the real MobileNetV2: each compiles to one library, and each
equals its build's numpy program bit for bit (float layers included).
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

from bench import harness as h

ALL = ("w4a8", "w8a8", "w8a16", "bf16", "fp32")
INT = ("w4a8", "w8a8", "w8a16")


def main() -> int:
    ap = h.argument_parser(__doc__, plans=20, images=40, exact=(5, "images checked bit for bit per plan"),
                           seed=0)
    h.image_options(ap)
    args = ap.parse_args()
    if h.images_missing(args):
        return 0
    import tvmq  # deferred: imports TVM
    from tvmq.calibration import collect
    from tvmq.frontend import prepare
    from tvmq.plan import PrecisionPlan, QuantSpec
    from tvmq.runtime import set_num_threads

    x, _ = h.imagenet_sample(args.root, 256 + args.images)
    calib, test = x[:256], x[256:]
    sess = h.ort_session(args.model, None)
    fp32 = h.predictions(lambda a: sess.run(None, {"input": a})[0], test)
    stats, layers = collect(args.model, calib), prepare(args.model).layers
    rng = np.random.default_rng(args.seed)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.plans):
            plan = PrecisionPlan({l.name: QuantSpec.parse(str(rng.choice(INT if i % 3 == 0 else ALL)))
                                  for l in layers}, layers)
            t = time.perf_counter()
            r = tvmq.build(args.model, Path(tmp) / f"p{i}", plan=plan, stats=stats, progress=lambda m: None)
            build_s = time.perf_counter() - t
            m = tvmq.load(r.library)
            set_num_threads(2)
            outs = [m.run({"input": t[None]})["logits"] for t in test]
            exact = None if r.program is None else all(
                np.array_equal(o, r.program.run([t[None]])[0]) for o, t in zip(outs[:args.exact], test))
            counts = Counter(s.name for s in plan.values())
            rows.append({"plan": i, "specs": {k: counts.get(k, 0) for k in ALL}, "bit_exact": exact,
                         "agreement": float(np.mean([o.argmax() == f for o, f in zip(outs, fp32)])),
                         "weight_bytes": r.manifest_data["weight_bytes"], "build_s": round(build_s, 1),
                         "layers_on_wrong_kernel": [n for n, s in plan.items() if s.name not in
                                                    r.manifest_data["kernels"][n]["kernel"]]})
            print(rows[-1], flush=True)
    lines = [f"MobileNetV2 (real), {len(rows)} random plans (seed {args.seed}), {len(test)} scored images, "
             f"256 calibration images, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", "",
             f"Bit-exact: library == numpy program on the first {args.exact} scored images.", "",
             h.md_table(["plan", *ALL, "weights MB", "bit-exact vs simulation", "agreement with fp32",
                         "build s"],
                        [[row["plan"], *(row["specs"][k] for k in ALL), f"{row['weight_bytes'] / 1e6:.2f}",
                          "no oracle" if row["bit_exact"] is None else row["bit_exact"],
                          f"{100 * row['agreement']:.0f}%", row["build_s"]] for row in rows],
                        "r" * (len(ALL) + 2) + "lr")]
    h.write_results(Path(args.out), "mixed_plans", rows, "\n".join(lines))
    return 1 if any(r["bit_exact"] is not True or r["layers_on_wrong_kernel"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
