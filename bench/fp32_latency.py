"""fp32 batch-1 CPU latency: tvmq (untuned) side by side with onnxruntime and OpenVINO fp32, in one run."""

from __future__ import annotations

import importlib.util
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import harness as h

VARIANTS = ("tvmq", "onnxruntime", "openvino")
RATIOS = {"onnxruntime": "ratio_tvmq_over_ort", "openvino": "ratio_tvmq_over_ov"}


def bench_pair(case: h.ModelCase, threads: int, args: Any, tmp: Path, skip: dict[str, str]) -> dict[str, Any]:
    """Interleaved rounds for one (model, threads): tvmq, onnxruntime, OpenVINO, tvmq, ..."""
    variants = [v for v in VARIANTS if (v != "tvmq" or case.library is not None) and v not in skip]
    errors = {"tvmq": f"build failed: {case.build_error}"} if case.build_error else {}
    outputs = {v: tmp / f"{case.name}-{threads}-{v}.npz" for v in variants}
    specs = {v: {"kind": v, "input": str(case.input_path), "model": str(case.onnx_path),
                 "library": str(case.library) if case.library else None} for v in variants}
    res = h.run_rounds(case.name, threads, specs, args, outputs, errors)
    stats = {v: h.summarize(s) for v, s in res["samples"].items() if s}
    ratios = {key: (stats["tvmq"]["median_ms"] / stats[v]["median_ms"] if "tvmq" in stats and v in stats else None)
              for v, key in RATIOS.items()}
    diff = (h.rel_max_diff(outputs["tvmq"], outputs["onnxruntime"])
            if all(v in outputs and outputs[v].exists() for v in ("tvmq", "onnxruntime")) else None)
    api = [i["tvmq_api_benchmark"] for i in res["info"].get("tvmq", []) if "tvmq_api_benchmark" in i]
    return {"model": case.name, "threads": threads, "stats": stats, **ratios, "skipped": skip,
            "rel_max_diff": diff, "errors": errors, "per_round": res["per_round"],
            "tvmq_api_benchmark": api, "samples_ms": res["samples"]}


def markdown_table(rows: list[dict[str, Any]], skipped: dict[str, str]) -> str:
    head = ["model", "threads", "tvmq median ms (p10-p90)", "onnxruntime median ms (p10-p90)",
            "OpenVINO median ms (p10-p90)", "ratio tvmq/ort", "ratio tvmq/OpenVINO", "rel. max diff (vs ort)"]
    cells = [[row["model"], row["threads"],
              *["skipped" if v in row["skipped"] else h.fmt_stat(row["stats"].get(v), row["errors"].get(v))
                for v in VARIANTS],
              *[f"{r:.2f}" if (r := row[key]) else "-" for key in RATIOS.values()],
              f"{row['rel_max_diff']:.1e}" if row["rel_max_diff"] is not None else "-"] for row in rows]
    notes = (h.row_notes(rows) + list(dict.fromkeys(f"- {v}: skipped, {why}" for row in rows
                                                    for v, why in row["skipped"].items()))
             + [f"- {name}: skipped, {why}" for name, why in skipped.items()])
    return h.md_table(head, cells, "lr", notes)


def main(argv: Sequence[str] | None = None) -> int:
    args = h.latency_args(argv, __doc__)
    run = h.Run("fp32_latency")
    missing = [m for m in ("openvino",) if importlib.util.find_spec(m) is None]  # found, not imported
    skip = {"openvino": f"openvino not installed: `{h.OV_MISSING}`"} if missing else {}
    found, skipped = h.find_models(args)
    cases = [h.ModelCase(n, p, h.BUILD_DIR / n, h.BUILD_DIR / n / h.INPUT_FILE) for n, p in found.items()]
    for case in cases:
        h.prepare_case(case, rebuild=args.rebuild, seed=args.seed)
    rows = []
    with tempfile.TemporaryDirectory(prefix="tvmq-bench-") as tmp:
        for case in cases:
            for threads in args.thread_list:
                print(f"[{case.name}] threads={threads}: {args.rounds} rounds x ({args.warmup} warmup + "
                      f"{args.repeat} timed) per variant", flush=True)
                rows.append(bench_pair(case, threads, args, Path(tmp), skip))
    tvm = next((c.build_info["tvm_version"] for c in cases if c.build_info.get("tvm_version")), None)
    result = run.record(
        versions=h.versions(tvm, "openvino"),
        settings={"models": args.model_list, "threads": args.thread_list, "rounds": args.rounds,
                  "warmup": args.warmup, "repeat": args.repeat, "seed": args.seed,
                  "openvino_config": {**h.OV_CONFIG, "INFERENCE_NUM_THREADS": "= threads"},
                  "timed_call": {"tvmq": "Module.run(feeds)", "onnxruntime": "InferenceSession.run",
                                 "openvino": "InferRequest.infer(feeds)"}},
        models={c.name: {"onnx": str(c.onnx_path), "build_dir": str(c.build_dir), "build": c.build_info,
                         "build_error": c.build_error} for c in cases},
        skipped=skipped, results=rows)
    header = (f"fp32 batch-1 latency, tvmq (untuned) vs onnxruntime and OpenVINO (f32 precision hint). {h.machine_line(result['machine'])}; "
              f"{args.rounds} rounds x {args.repeat} timed calls per variant, fresh process each; "
              f"{run.load_note()}." + h.interference_note(rows))
    h.write_results(args.out, "fp32_latency", result, f"{header}\n\n{markdown_table(rows, skipped)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
