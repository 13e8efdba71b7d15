"""Fingerprints of the libraries a tree builds: to show a refactor changed nothing.

Builds the bundled Fashion-MNIST CNN as fp32, W8A8, W4A8, W8A16, bf16 and a seeded random mix
of the five, runs each on 20 test images, and prints sha256 prefixes of ``model.so``, of the
outputs and of the manifest (timings and host name aside). Run it in two checkouts with the
same environment and compare::

    git worktree add /tmp/before <rev>
    (cd /tmp/before && ../path/.venv/bin/python scripts/same_libraries.py /tmp/a) > before.json
    .venv/bin/python scripts/same_libraries.py /tmp/b > after.json && diff before.json after.json
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tvmq  # noqa: E402
from tests.conftest import FMNIST_DIR, fmnist_inputs  # noqa: E402
from tvmq.calibration import collect  # noqa: E402
from tvmq.frontend import prepare  # noqa: E402
from tvmq.plan import PrecisionPlan, QuantSpec  # noqa: E402

MODEL = FMNIST_DIR / "model.onnx"


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def main(out: Path) -> dict[str, dict[str, str]]:
    calib, _ = fmnist_inputs(64, split="calib")
    stats = collect(MODEL, calib)
    layers = prepare(MODEL).layers
    rng = np.random.default_rng(5)
    mix = PrecisionPlan({l.name: QuantSpec.parse(str(rng.choice(["w4a8", "w8a8", "w8a16", "fp32", "bf16"])))
                         for l in layers}, layers)
    plans = {"fp32": None, "w8a8": "w8a8", "w4a8": "w4a8", "w8a16": "w8a16", "bf16": "bf16", "mix": mix}
    x, _ = fmnist_inputs(20)
    res = {}
    for name, plan in plans.items():
        r = tvmq.build(MODEL, out / name, plan=plan, stats=stats if plan else None)
        m = tvmq.load(r.library)
        y = np.stack([m.run({"input": xi[None]})["logits"] for xi in x])
        manifest = {k: v for k, v in r.manifest_data.items() if k not in ("build_seconds", "host")}
        res[name] = {"so": _digest(r.library.read_bytes()), "out": _digest(y.tobytes()),
                     "manifest": _digest(json.dumps(manifest, sort_keys=True).encode())}
    return res


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: same_libraries.py OUTPUT_DIR")
    print(json.dumps(main(Path(sys.argv[1])), indent=1))
