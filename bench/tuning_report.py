"""Tuning results from the tuning runs' own records (``tvmq tune`` databases and summaries)."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Any

from bench import harness as h

MODELS = {"mobilenetv2": ("tuning_mobilenetv2.jsonl", "tune_mobilenetv2.json"),
          "light_resnet50": ("tuning_light_resnet50.jsonl", "tune_light_resnet50.json")}


def analyze(name: str, onnx_path: Path, summary: dict[str, Any], db_path: Path,
            measured: float | None) -> tuple[dict[str, Any], list[str]]:
    """One model's numbers (per spec, the predicted layer sums, the predictor's errors) and section."""
    from schedules.target_features import detect_host  # deferred: imports TVM
    from tvmq.frontend import prepare
    from tvmq.pipeline import layer_edges
    from tvmq.tune import LatencyPredictor, LatencyTable, TuningDatabase, device_fingerprint

    features = detect_host()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        db = TuningDatabase(db_path)
    dev, pm, tasks = device_fingerprint(features, 1), prepare(onnx_path), summary["tasks"]
    specs = sorted({t["spec"] for t in tasks if t["spec"] != "conversion"})
    table = LatencyTable.from_database(db, dev["id"], model=pm, specs=specs, features=features)
    edges = layer_edges(pm)

    def layers_ms(ts: list[dict[str, Any]], key: str) -> float:
        return sum(t[key] * len(t["layers"]) for t in ts if t[key]) / 1e3

    per_spec = {spec: {"tasks": len(ts), "measurements": sum(t["total"] for t in ts),
                       "seconds": sum(t["seconds"] for t in ts),
                       "fallback_layers_ms": layers_ms(ts, "fallback_us"),
                       "tuned_layers_ms": layers_ms(ts, "best_us")}
                for spec in specs + ["conversion"] for ts in [[t for t in tasks if t["spec"] == spec]]}
    r = {"per_spec": per_spec, "seconds": summary["seconds"], "measured_e2e_ms": measured,
         "predicted_sum_ms": {s: table.total_us({l.name: s for l in pm.layers}, edges) / 1e3 for s in specs},
         "predictor_all": [LatencyPredictor.evaluate(db.records, seed=s) for s in (0, 1, 2)],
         "predictor_best": [LatencyPredictor.evaluate(db.records, seed=s, best_only=True) for s in (0, 1, 2)],
         "tasks": tasks}
    err = r["predictor_all"]
    lines = [f"## {name} ({len(pm.layers)} layers; {summary['measured']} measurements in "
             f"{summary['seconds'] / 60:.1f} min, {dev['cpu']}, {dev['isa']}, 1 thread)", "",
             h.md_table(["spec", "tasks", "measurements", "tuning s", "layers' fallback sum ms",
                         "layers' tuned sum ms", "speedup"],
                        [[spec, v["tasks"], v["measurements"], f"{v['seconds']:.0f}",
                          f"{v['fallback_layers_ms']:.2f}", f"{v['tuned_layers_ms']:.2f}",
                          f"{v['fallback_layers_ms'] / (v['tuned_layers_ms'] or float('inf')):.2f}x"]
                         for spec, v in per_spec.items()], "lr")]
    med = [", ".join(f"{100 * e['median_ape']:.1f}%" for e in es) for es in (err, r["predictor_best"])]
    lines += ["", f"Predictor on held-out tasks ({err[0]['tasks_test']} of "
              f"{err[0]['tasks_test'] + err[0]['tasks_train']}, seeds 0-2): median abs. error over all their "
              f"records {med[0]}; over their best records {med[1]}."]
    if measured and "w8a8" in r["predicted_sum_ms"]:
        p = r["predicted_sum_ms"]["w8a8"]
        lines.append(f"Predicted W8A8 layer sum (measured kernels + conversions): {p:.2f} ms; tuned library "
                     f"measured end to end: {measured:.2f} ms ({100 * (p / measured - 1):+.1f}%).")
    lines += ["", h.md_table(["W8A8 task", "layers", "fallback us", "best us", "speedup", "s"], [
        [t["workload"], len(t["layers"]), f"{t['fallback_us']:.1f}", f"{t['best_us']:.1f}",
         f"{t['fallback_us'] / t['best_us']:.2f}x", f"{t['seconds']:.1f}"]
        for t in tasks if t["spec"] == "w8a8" and t["best_us"]], "lr"), ""]
    return r, lines


def main() -> int:
    args = h.argument_parser(__doc__).parse_args()
    paths = {"mobilenetv2": h.DEFAULT_MOBILENETV2, "light_resnet50": h.LIGHT_RESNET50}
    e2e: dict[str, dict[str, float]] = {}
    if (lat := h.RESULTS_DIR / "w8a8_latency.json").exists():
        for row in json.loads(lat.read_text())["results"]:
            if row["threads"] == 1:
                e2e[row["model"]] = {k: v["median_ms"] for k, v in row["stats"].items()}
    out, lines = {}, []
    for name, (db_name, summary_name) in MODELS.items():
        if (h.RESULTS_DIR / summary_name).exists():
            summary = json.loads((h.RESULTS_DIR / summary_name).read_text())
            out[name], section = analyze(name, paths[name], summary, h.RESULTS_DIR / db_name,
                                         e2e.get(name, {}).get("tvmq W8A8 tuned"))
            lines += section
    h.write_results(Path(args.out), "tuning", out, "# Tuning results\n\n" + "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
