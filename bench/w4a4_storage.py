"""Would 4-bit activations *stored* between layers (W4A4 storage) pay on this CPU?"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

from bench import harness as h


def kernels(shape: tuple[int, ...]) -> dict[str, list[Any]]:
    from tvm import te, tirx  # deferred: TVM

    n, c, hh, w = shape
    half, u8 = (w + 1) // 2, lambda v: tirx.const(v, "uint8")
    x = te.placeholder(shape, "uint8", name="x")
    copy = te.compute(shape, lambda *i: x[i], name="copy")
    packed = te.compute((n, c, hh, half), lambda a, b, y, j: (
        tirx.min(x[a, b, y, 2 * j], u8(15))
        | (tirx.min(tirx.if_then_else(2 * j + 1 < w, x[a, b, y, tirx.min(2 * j + 1, w - 1)], u8(0)),
                    u8(15)) << u8(4))),
        name="pack")
    p = te.placeholder((n, c, hh, half), "uint8", name="p")
    unpacked = te.compute(shape, lambda a, b, y,
                          k: (p[a, b, y, k // 2] >> ((k % 2) * 4).astype("uint8")) & u8(15),
                          name="unpack")
    return {"copy": [x, copy], "pack": [x, packed], "unpack": [p, unpacked]}


def main() -> int:
    args = h.argument_parser(__doc__, model=str(h.DEFAULT_MOBILENETV2), repeat=30).parse_args()
    import tvm  # deferred: TVM
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
    rows, rng = [], np.random.default_rng(0)
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
             f"{Path(args.model).name}), medians of {args.repeat} repeats, 1 thread; a layer input's traffic "
             "bound `copy` vs what packing costs.", "",
             h.md_table(["layer input (NCHW u8)", "layers", "KB", "copy us", "pack us", "unpack us",
                         "pack+unpack < copy/2"],
                        [["x".join(map(str, r["shape"])), r["layers"], f"{r['bytes'] / 1e3:.0f}",
                          *(f"{r[k]:.1f}" for k in ("copy_us", "pack_us", "unpack_us")),
                          "yes" if r["pays"] else "no"] for r in rows], "lrrrrrl")]
    lines += ["",
              f"Summed over the model's layers: copy {total['copy_us'] / 1e3:.2f} ms (W4A4 could save at "
              f"most half: {total['copy_us'] / 2e3:.2f} ms), pack + unpack "
              f"{(total['pack_us'] + total['unpack_us']) / 1e3:.2f} ms."]
    h.write_results(Path(args.out), "w4a4_storage", {"rows": rows, "total": total}, "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
