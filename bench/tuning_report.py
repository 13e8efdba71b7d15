#!/usr/bin/env python3
"""Tuning results (issue 5's acceptance numbers) from the tuning runs' own records.

Usage::

    # the tuning runs (each writes its database and a summary JSON):
    tvmq tune .cache/models/mobilenetv2.onnx --specs w4a8,w8a8,w8a16,bf16,fp32 --trials 16 \\
        --db bench/results/tuning_mobilenetv2.jsonl --summary bench/results/tune_mobilenetv2.json
    tvmq tune <onnx>/backend/test/data/light/light_resnet50.onnx --specs w8a8 --trials 16 \\
        --db bench/results/tuning_light_resnet50.jsonl --summary bench/results/tune_light_resnet50.json
    # end to end, tuned vs untuned vs the rivals (bench/w8a8_latency.py --db ...), then:
    python bench/tuning_report.py

Writes ``bench/results/tuning.md`` / ``.json``:

1. per spec: tasks, measurements, tuning seconds, and the sum over the model's *layers* (a task
   counts once per layer that uses it) of the fallback and of the tuned latency of each kernel,
   as the tuner measured them (isolated kernel, warm caches, 1 thread);
2. per task of W8A8: fallback vs best and the time it took;
3. the XGBoost latency predictor on held-out tasks (three seeds): median / p90 absolute relative
   error over every record of the held-out tasks, and over each held-out task's best record;
4. the predicted sum of a model's W8A8 layers (``LatencyTable``, conversions at the graph's
   layer edges included) against its tuned library measured end to end in
   ``w8a8_latency.json`` (1 thread).
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"


def main() -> int:
    import onnx

    from schedules.target_features import detect_host
    from tvmq.frontend import prepare
    from tvmq.pipeline import layer_edges
    from tvmq.tune import LatencyPredictor, LatencyTable, TuningDatabase, device_fingerprint

    features = detect_host()
    light = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light" / "light_resnet50.onnx"
    models = {"mobilenetv2": (ROOT / ".cache" / "models" / "mobilenetv2.onnx", "tuning_mobilenetv2.jsonl",
                              "tune_mobilenetv2.json"),
              "light_resnet50": (light, "tuning_light_resnet50.jsonl", "tune_light_resnet50.json")}
    e2e = {}
    lat_path = RESULTS / "w8a8_latency.json"
    if lat_path.exists():
        for row in json.loads(lat_path.read_text())["results"]:
            if row["threads"] == 1:
                e2e[row["model"]] = {k: v["median_ms"] for k, v in row["stats"].items()}
    out: dict = {}
    lines = []
    for name, (onnx_path, db_name, summary_name) in models.items():
        if not (RESULTS / summary_name).exists():
            continue
        summary = json.loads((RESULTS / summary_name).read_text())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            db = TuningDatabase(RESULTS / db_name)
        dev = device_fingerprint(features, 1)
        pm = prepare(onnx_path)
        specs = sorted({t["spec"] for t in summary["tasks"] if t["spec"] != "conversion"})
        per_spec = {}
        for spec in specs + ["conversion"]:
            ts = [t for t in summary["tasks"] if t["spec"] == spec]
            fb = sum(t["fallback_us"] * len(t["layers"]) for t in ts if t["fallback_us"]) / 1e3
            best = sum(t["best_us"] * len(t["layers"]) for t in ts if t["best_us"]) / 1e3
            per_spec[spec] = {"tasks": len(ts), "measurements": sum(t["total"] for t in ts),
                              "seconds": sum(t["seconds"] for t in ts), "fallback_layers_ms": fb,
                              "tuned_layers_ms": best}
        table = LatencyTable.from_database(db, dev["id"], model=pm, specs=specs, features=features)
        edges = layer_edges(pm)
        predicted = {s: table.total_us({l.name: s for l in pm.layers}, edges) / 1e3 for s in specs}
        err = [LatencyPredictor.evaluate(db.records, seed=s) for s in (0, 1, 2)]
        err_best = [LatencyPredictor.evaluate(db.records, seed=s, best_only=True) for s in (0, 1, 2)]
        measured = e2e.get(name, {}).get("tvmq W8A8 tuned")
        out[name] = {"per_spec": per_spec, "seconds": summary["seconds"], "measured_e2e_ms": measured,
                     "predicted_sum_ms": predicted, "predictor_all": err, "predictor_best": err_best,
                     "tasks": summary["tasks"]}
        lines += [f"## {name} ({len(pm.layers)} layers; {summary['measured']} measurements in "
                  f"{summary['seconds'] / 60:.1f} min, {dev['cpu']}, {dev['isa']}, 1 thread)", "",
                  "| spec | tasks | measurements | tuning s | layers' fallback sum ms | layers' tuned sum ms | speedup |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for spec, v in per_spec.items():
            sp = v["fallback_layers_ms"] / v["tuned_layers_ms"] if v["tuned_layers_ms"] else 0
            lines.append(f"| {spec} | {v['tasks']} | {v['measurements']} | {v['seconds']:.0f} | "
                         f"{v['fallback_layers_ms']:.2f} | {v['tuned_layers_ms']:.2f} | {sp:.2f}x |")
        med = [e["median_ape"] for e in err]
        medb = [e["median_ape"] for e in err_best]
        lines += ["", f"Predictor on held-out tasks ({err[0]['tasks_test']} of {err[0]['tasks_test'] + err[0]['tasks_train']}, "
                  f"seeds 0-2): median abs. error over all their records "
                  f"{', '.join(f'{100 * m:.1f}%' for m in med)}; over their best records "
                  f"{', '.join(f'{100 * m:.1f}%' for m in medb)}."]
        if measured and "w8a8" in predicted:
            lines.append(f"Predicted W8A8 layer sum (measured kernels + conversions): {predicted['w8a8']:.2f} ms; "
                         f"tuned library measured end to end: {measured:.2f} ms "
                         f"({100 * (predicted['w8a8'] / measured - 1):+.1f}%).")
        lines += ["", "| W8A8 task | layers | fallback us | best us | speedup | s |", "|---|---:|---:|---:|---:|---:|"]
        for t in summary["tasks"]:
            if t["spec"] == "w8a8" and t["best_us"]:
                lines.append(f"| {t['workload']} | {len(t['layers'])} | {t['fallback_us']:.1f} | {t['best_us']:.1f} | "
                             f"{t['fallback_us'] / t['best_us']:.2f}x | {t['seconds']:.1f} |")
        lines.append("")
    text = "# Tuning results\n\n" + "\n".join(lines)
    print(text)
    (RESULTS / "tuning.md").write_text(text)
    (RESULTS / "tuning.json").write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
