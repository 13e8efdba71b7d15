#!/usr/bin/env python3
"""Would 4-bit activations *stored* between layers (W4A4 storage) pay on this CPU?

Usage::

    python bench/w4a4_storage.py [--model .cache/models/mobilenetv2.onnx] [--repeat 30]

Without sub-byte arithmetic a 4-bit activation must be unpacked to bytes before any dot-product
instruction reads it, so storing activations as nibbles can only save memory traffic: the
consumer reads half the bytes, and in exchange the producer packs and the consumer unpacks.
For every distinct layer-input tensor of the model (uint8, NCHW) this script times, with TVM's
generic CPU schedule (``tvmq.passes.schedule_generic``, as the compiler would emit them):

- ``copy``: reading the uint8 tensor once and writing it (an upper bound of the traffic a
  layer's input costs: W4A4 saves at most half of it),
- ``pack``: uint8 -> two nibbles a byte (what the producer's epilogue would add),
- ``unpack``: nibbles -> uint8 (what the consumer's input stage would add).

W4A4 storage can pay only where ``pack + unpack < copy / 2``. Results:
``bench/results/w4a4_storage.{json,md}``. (Accuracy is a separate and larger obstacle: 16 levels
per activation tensor; not measured here.)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def kernels(shape: tuple[int, ...]):  # type: ignore[no-untyped-def]
    from tvm import te, tirx

    n, c, h, w = shape
    half = (w + 1) // 2
    x = te.placeholder(shape, "uint8", name="x")
    copy = te.compute(shape, lambda *i: x[i], name="copy")
    packed = te.compute((n, c, h, half), lambda a, b, y, j: (
        tirx.min(x[a, b, y, 2 * j], tirx.const(15, "uint8"))
        | (tirx.min(tirx.if_then_else(2 * j + 1 < w, x[a, b, y, tirx.min(2 * j + 1, w - 1)],
                                      tirx.const(0, "uint8")), tirx.const(15, "uint8")) << tirx.const(4, "uint8"))),
        name="pack")
    p = te.placeholder((n, c, h, half), "uint8", name="p")
    unpacked = te.compute(shape, lambda a, b, y, k: (p[a, b, y, k // 2] >> ((k % 2) * 4).astype("uint8"))
                          & tirx.const(15, "uint8"), name="unpack")
    return {"copy": [x, copy], "pack": [x, packed], "unpack": [p, unpacked]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=str(ROOT / ".cache" / "models" / "mobilenetv2.onnx"))
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--output", default=str(ROOT / "bench" / "results" / "w4a4_storage"))
    args = ap.parse_args()

    import tvm
    from tvm import te

    from schedules.target_features import detect_host
    from tvmq.frontend import prepare
    from tvmq.passes.schedule_generic import schedule_primfunc

    features = detect_host()
    target = tvm.target.Target(features.target_json())
    pm = prepare(args.model)
    shapes: dict[tuple[int, ...], int] = {}
    for layer in pm.layers:
        if len(layer.input_shape) == 4:
            shapes[tuple(layer.input_shape)] = shapes.get(tuple(layer.input_shape), 0) + 1
    rows = []
    rng = np.random.default_rng(0)
    for shape, count in shapes.items():
        row = {"shape": list(shape), "layers": count, "bytes": int(np.prod(shape))}
        for name, tensors in kernels(shape).items():
            func = schedule_primfunc(te.create_prim_func(tensors), features.fp32_lanes)
            mod = tvm.compile(tvm.IRModule({"main": func}), target=target).jit()
            args_ = [tvm.runtime.tensor(rng.integers(0, 256, [int(d) for d in b.shape]).astype("uint8"))
                     for b in func.params]
            t = mod.time_evaluator("main", tvm.cpu(), number=20, repeat=args.repeat, min_repeat_ms=10)(*args_)
            row[name + "_us"] = float(np.median(t.results)) * 1e6
        row["pays"] = row["pack_us"] + row["unpack_us"] < row["copy_us"] / 2
        rows.append(row)
        print(row, flush=True)
    total = {k: sum(r[k] * r["layers"] for r in rows) for k in ("copy_us", "pack_us", "unpack_us")}
    lines = [f"W4A4 activation storage on {features.isa} ({pm.layers.total_macs / 1e6:.0f} MMAC model "
             f"{Path(args.model).name}), medians of {args.repeat} repeats, 1 thread; a layer input's "
             "traffic bound `copy` vs what packing costs.", "",
             "| layer input (NCHW u8) | layers | KB | copy us | pack us | unpack us | pack+unpack < copy/2 |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {'x'.join(map(str, r['shape']))} | {r['layers']} | {r['bytes'] / 1e3:.0f} | "
                     f"{r['copy_us']:.1f} | {r['pack_us']:.1f} | {r['unpack_us']:.1f} | {'yes' if r['pays'] else 'no'} |")
    lines += ["", f"Summed over the model's layers: copy {total['copy_us'] / 1e3:.2f} ms (W4A4 could save at most "
              f"half: {total['copy_us'] / 2e3:.2f} ms), pack + unpack {(total['pack_us'] + total['unpack_us']) / 1e3:.2f} ms."]
    report = "\n".join(lines)
    print("\n" + report)
    Path(args.output + ".md").write_text(report + "\n")
    Path(args.output + ".json").write_text(json.dumps({"rows": rows, "total": total}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
