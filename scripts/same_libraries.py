"""Fingerprints of the libraries a tree builds: to show a refactor changed nothing.

Builds the bundled Fashion-MNIST CNN as fp32, W8A8, W4A8, W8A16, bf16 and a seeded random mix
of the five, runs each on 20 test images, and prints sha256 prefixes of ``model.so``, of the
outputs and of the manifest (timings and host name aside). With ``--mobilenetv2`` the same for
the real MobileNetV2 (``make models``; calibrated on 64 images of ``../shared/data/imagenet-sample``,
run on 5 others; ~10 minutes on 2 cores). Run it in two checkouts with the same environment and
compare::

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
from tests.conftest import FMNIST_DIR, MOBILENETV2, ROOT, fmnist_inputs  # noqa: E402
from tvmq.calibration import collect  # noqa: E402
from tvmq.frontend import prepare  # noqa: E402
from tvmq.plan import PrecisionPlan, QuantSpec  # noqa: E402

MODEL = FMNIST_DIR / "model.onnx"


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _inputs(mobilenetv2: bool) -> tuple[Path, np.ndarray, np.ndarray]:
    """(model, calibration inputs, run inputs)."""
    if not mobilenetv2:
        return MODEL, fmnist_inputs(64, split="calib")[0], fmnist_inputs(20)[0]
    sys.path.insert(0, str(ROOT / "scripts"))
    from imagenet_eval import load_imagenet_sample  # (a script beside this one)
    images, _ = load_imagenet_sample(ROOT.parent / "shared" / "data" / "imagenet-sample", n=69)
    return MOBILENETV2, images[:64], images[64:]


def main(out: Path, mobilenetv2: bool = False) -> dict[str, dict[str, str]]:
    model, calib, x = _inputs(mobilenetv2)
    stats = collect(model, calib)
    pm = prepare(model)
    layers = pm.layers
    rng = np.random.default_rng(5)
    mix = PrecisionPlan({l.name: QuantSpec.parse(str(rng.choice(["w4a8", "w8a8", "w8a16", "fp32", "bf16"])))
                         for l in layers}, layers)
    plans = {"fp32": None, "w8a8": "w8a8", "w4a8": "w4a8", "w8a16": "w8a16", "bf16": "bf16", "mix": mix}
    feed, fetch = pm.inputs[0].name, pm.outputs[0].name
    res = {}
    for name, plan in plans.items():
        r = tvmq.build(model, out / name, plan=plan, stats=stats if plan else None)
        m = tvmq.load(r.library)
        y = np.stack([m.run({feed: xi[None]})[fetch] for xi in x])
        manifest = {k: v for k, v in r.manifest_data.items() if k not in ("build_seconds", "host")}
        res[name] = {"so": _digest(r.library.read_bytes()), "out": _digest(y.tobytes()),
                     "manifest": _digest(json.dumps(manifest, sort_keys=True).encode())}
    return res


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--mobilenetv2"]
    if len(args) != 1:
        sys.exit("usage: same_libraries.py [--mobilenetv2] OUTPUT_DIR")
    print(json.dumps(main(Path(args[0]), "--mobilenetv2" in sys.argv), indent=1))
