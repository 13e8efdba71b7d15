"""Tutorial 2: tune every kernel of a model at two specs into a JSONL database, then compile
with it. A rerun with the same database measures nothing new (and a killed run resumes).

    python tutorials/t2_tune.py [OUT_DIR]

The same from the shell: ``tvmq tune model.onnx --specs w8a8,fp32 --trials 4 --db tuning.jsonl``
then ``tvmq compile model.onnx -o out/ --db tuning.jsonl``.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "fmnist_cnn" / "model.onnx"


def main(out: Path) -> int:
    import tvmq
    from tvmq.tune import tune_model

    db = out / "tuning.jsonl"
    summary = tune_model(MODEL, ["w8a8", "fp32"], db=db, trials=4, progress=False)
    print(summary.table())
    again = tune_model(MODEL, ["w8a8", "fp32"], db=db, trials=4, progress=False)
    print(f"second run: {again.measured} new measurements")
    r = tvmq.build(MODEL, out / "tuned", db=db)                  # fp32 kernels on their best configs
    print("kernel configurations:", r.manifest_data["tuning"]["layers"])
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp())))
