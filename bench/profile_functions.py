"""Where the time goes: every PrimFunc of a compiled model, timed alone, times its call count."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import numpy as np


def time_functions(mod: Any, target: Any) -> list[tuple[float, float, int, str, str]]:
    """``(total ms, ms per call, calls, function, layer)`` of every PrimFunc ``main`` calls."""
    import tvm  # deferred: TVM
    from tvm import relax

    calls: dict[str, int] = {}

    def count(expr: relax.Expr) -> None:
        if isinstance(expr, relax.Call) and expr.op == tvm.ir.Op.get("relax.call_tir"):
            calls[expr.args[0].name_hint] = calls.get(expr.args[0].name_hint, 0) + 1

    relax.analysis.post_order_visit(mod["main"], count)
    rng = np.random.default_rng(0)
    rows = []
    for gv, func in mod.functions_items():
        if not isinstance(func, tvm.tirx.PrimFunc) or gv.name_hint not in calls:
            continue
        ex = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target=target)
        tensors = [tvm.runtime.tensor(np.asarray(rng.random([int(d) for d in p.shape])).astype(p.dtype))
                   for p in func.params]
        t = ex.jit().time_evaluator("main", tvm.cpu(), number=5, repeat=5)(*tensors).median
        layer = func.attrs["tvmq.layer"] if func.attrs is not None and "tvmq.layer" in func.attrs else ""
        n = calls[gv.name_hint]
        rows.append((t * 1e3 * n, t * 1e3, n, gv.name_hint, str(layer)))
    return sorted(rows, reverse=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--plan", default=None, help="precision plan (w8a8, or a plan JSON); default fp32")
    ap.add_argument("--stats", default=None, help="calibration statistics JSON (tvmq calibrate)")
    ap.add_argument("--range", default="percentile", help="activation range method of a quantized plan")
    args = ap.parse_args()
    if args.plan and not args.stats:
        ap.error("--plan needs --stats (tvmq calibrate writes them)")
    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    import tvm  # deferred: after TVM_NUM_THREADS is set

    from schedules.target_features import detect_host
    from tvmq.calibration import ActivationStats
    from tvmq.compiler import lower_module
    from tvmq.frontend import prepare
    from tvmq.plan import PrecisionPlan

    features = detect_host()
    pm = prepare(args.model)
    lowering = {}
    if args.plan:
        plan = (PrecisionPlan.load(args.plan, pm.layers) if args.plan.endswith(".json")
                else PrecisionPlan.uniform(pm.layers, args.plan))
        lowering = {"plan": plan, "range_method": args.range, "stats": ActivationStats.load(args.stats)}
    rows = time_functions(lower_module(pm, features, **lowering).mod,
                          tvm.target.Target(features.target_json()))
    print(f"{'total ms':>9} {'ms/call':>8} {'calls':>5}  function (first layer)")
    for tot, per, n, name, layer in rows[: args.top]:
        print(f"{tot:9.3f} {per:8.3f} {n:5d}  {name} {('(' + layer + ')') if layer else ''}")
    print(f"{sum(r[0] for r in rows):9.3f} ms in {len(rows)} functions ({args.threads} thread(s))")
    return 0


if __name__ == "__main__":
    sys.exit(main())
