"""The multiply-accumulate peak of one core: each dot-product instruction tvmq's kernels use,
issued back to back on register accumulators (no loads, no epilogue), in GMAC/s.

The ceiling a conv kernel on that instruction can reach on this machine: ``bench.layer_latency``
prints every layer's GMAC/s as a fraction of it. Each instruction runs in a loop of ``ACCUMULATORS``
independent accumulator vectors (more than its latency x throughput, so the loop is throughput
bound), compiled by TVM for the host and timed over a long call.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from bench import harness as h

ACCUMULATORS = 12  # vectors; 12 x 64 B stays under TVM's 1 KB stack limit (kept in registers)


@dataclass(frozen=True)
class Instruction:
    name: str
    isa: str  # the ``schedules.target_features`` ISA level that has it
    lanes: int  # int32 / float32 accumulator lanes
    macs: int  # multiply-accumulates per instruction (per accumulator vector)
    kind: str  # "vnni", "pmaddwd" (+ an add), "fma"


INSTRUCTIONS = (
    Instruction("vpdpbusd zmm (u8 x s8)", "avx512_vnni", 16, 64, "vnni"),
    Instruction("vpmaddwd + vpaddd zmm (s16 x s16)", "avx512", 16, 32, "pmaddwd"),
    Instruction("vpmaddwd + vpaddd ymm (s16 x s16)", "avx2", 8, 16, "pmaddwd"),
    Instruction("vfmadd zmm (fp32)", "avx512", 16, 16, "fma"),
    Instruction("vfmadd ymm (fp32)", "avx2", 8, 8, "fma"),
)
# the integer instruction of each ISA level's W8A8 kernels
ISA_INSTRUCTION = {"avx512_vnni": INSTRUCTIONS[0], "avx512": INSTRUCTIONS[1], "avx2": INSTRUCTIONS[2]}


def _executes(features: Any, isa: str) -> bool:
    from schedules.target_features import ISA_LEVELS  # deferred: TVM

    return ISA_LEVELS.index(features.isa) <= ISA_LEVELS.index(isa) and isa != "generic"


def _step(ins: Instruction) -> Callable[[Any, Any, Any], Any]:
    """``acc, a, b -> acc'``: one ``ins`` on accumulator vector ``acc``."""
    from tvm import tirx  # deferred: TVM

    n = ins.lanes
    if ins.kind == "fma":
        return lambda acc, a, b: tirx.call_llvm_pure_intrin(f"float32x{n}", "llvm.fma", a, b, acc)
    if ins.kind == "vnni":
        return lambda acc, a, b: tirx.call_llvm_pure_intrin(
            f"int32x{n}", f"llvm.x86.avx512.vpdpbusd.{n * 32}", acc,
            tirx.reinterpret(f"uint8x{4 * n}", a), tirx.reinterpret(f"int8x{4 * n}", b))
    pmadd = "llvm.x86.avx512.pmaddw.d.512" if n == 16 else "llvm.x86.avx2.pmadd.wd"
    # one operand is the accumulator itself: with both loop-invariant, LLVM would hoist the
    # multiply and leave only the adds
    return lambda acc, a, b: acc + tirx.call_llvm_pure_intrin(
        f"int32x{n}", pmadd, tirx.reinterpret(f"int16x{2 * n}", acc), tirx.reinterpret(f"int16x{2 * n}", b))


def _template(ins: Instruction) -> Any:  # type: ignore[no-untyped-def]
    """``main(a, b, out, n)``: ``n`` iterations over ``ACCUMULATORS`` accumulator vectors of
    ``lanes`` (a stack buffer under 1 KB: LLVM keeps it in registers)."""
    from tvm.script import tirx as T  # deferred: TVM

    acc_n, lanes, step = ACCUMULATORS * ins.lanes, ins.lanes, _step(ins)
    dt = "float32" if ins.kind == "fma" else "int32"

    @T.prim_func
    def main(a: T.Buffer((lanes,), dt), b: T.Buffer((lanes,), dt), out: T.Buffer((acc_n,), dt), n: T.int32):
        T.func_attr({"global_symbol": "main", "tirx.noalias": True})
        acc = T.decl_buffer((acc_n,), dt, scope="local")
        for j in T.unroll(ACCUMULATORS):
            acc[T.Ramp(j * lanes, 1, lanes)] = T.Broadcast(T.Cast(dt, 0), lanes)
        for i in range(n):
            for j in T.unroll(ACCUMULATORS):
                acc[T.Ramp(j * lanes, 1, lanes)] = step(acc[T.Ramp(j * lanes, 1, lanes)], a[T.Ramp(0, 1, lanes)],
                                                        b[T.Ramp(0, 1, lanes)])
        for j in T.unroll(ACCUMULATORS):
            out[T.Ramp(j * lanes, 1, lanes)] = acc[T.Ramp(j * lanes, 1, lanes)]
    return main


def peak_kernel(ins: Instruction, target: Any) -> Callable[..., Any]:
    """``f(a, b, out, n)``: ``n`` iterations of ``ACCUMULATORS`` ``ins`` on registers."""
    import tvm  # deferred: TVM

    lib = tvm.compile(tvm.IRModule({"main": _template(ins)}), target=target)
    return lib.jit()["main"] if hasattr(lib, "jit") else lib["main"]


def measure(ins: Instruction, target: Any, seconds: float = 0.3, rounds: int = 5) -> dict[str, Any]:
    """GMAC/s (median of ``rounds`` calls of about ``seconds``) and instructions per ns."""
    import tvm  # deferred: TVM

    f = peak_kernel(ins, target)
    dtype = np.float32 if ins.kind == "fma" else np.int32
    args = [tvm.runtime.tensor(np.ones(ins.lanes, dtype)), tvm.runtime.tensor(np.ones(ins.lanes, dtype)),
            tvm.runtime.tensor(np.zeros(ACCUMULATORS * ins.lanes, dtype))]
    n = 10_000
    while True:  # calibrate the iteration count to ~seconds
        t0 = time.perf_counter()
        f(*args, n)
        dt = time.perf_counter() - t0
        if dt > seconds / 4:
            break
        n *= 4
    n = int(n * seconds / dt)
    rates = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        f(*args, n)
        rates.append(n * ACCUMULATORS / (time.perf_counter() - t0))
    per_s = float(np.median(rates))
    return {"instruction": ins.name, "isa": ins.isa, "gmac_s": per_s * ins.macs / 1e9,
            "instructions_per_ns": per_s / 1e9, "macs_per_instruction": ins.macs, "rates": rates}


def peaks(features: Any) -> dict[str, dict[str, Any]]:
    """Every instruction the host executes, by name, measured on one thread."""
    from tvm.target import Target  # deferred: TVM

    target = Target(features.target_json())
    return {ins.name: measure(ins, target) for ins in INSTRUCTIONS if _executes(features, ins.isa)}


def main(argv: list[str] | None = None) -> int:
    args = h.argument_parser(__doc__).parse_args(argv)
    os.environ["TVM_NUM_THREADS"] = "1"
    from schedules.target_features import detect_host  # deferred: TVM

    features = detect_host()
    info = h.machine_info()
    results = peaks(features)
    rows = [[r["instruction"], r["isa"], r["macs_per_instruction"], f"{r['instructions_per_ns']:.2f}",
             f"{r['gmac_s']:.1f}"] for r in results.values()]
    report = (f"Multiply-accumulate peak of one core, {h.machine_line(info)}: each instruction back to "
              f"back on {ACCUMULATORS} register accumulators (`python -m bench.dot_peak`).\n\n"
              + h.md_table(["instruction", "ISA level", "MAC / instr", "instr / ns", "GMAC/s"], rows, "lllrr"))
    h.write_results(args.out, "dot_peak", {"machine": info, "versions": h.versions(),
                                                 "accumulators": ACCUMULATORS, "peaks": results}, report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
