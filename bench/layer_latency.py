"""Kernel-level latency on real layer shapes (``--mode``, each its own results file; see bench/README.md):
``layers`` (``layer_latency``) every tvmq precision's kernel per distinct layer workload beside onnxruntime's
one-layer ``Conv`` / ``QLinearConv``; ``peak`` (``dot_peak``) one core's multiply-accumulate peak per
dot-product instruction; ``w4a4`` (``w4a4_storage``) copy vs nibble pack + unpack per layer input."""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
import traceback
from collections import Counter, namedtuple
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from bench import harness as h
from tvmq.runtime import BenchmarkResult, request_amx_permission

SPECS = ("fp32", "bf16", "w8a8", "w4a8", "w8a16")  # measured by default, in this order
ORT_FP32, ORT_INT8 = "ort_fp32", "ort_int8"
RIVALS = (ORT_FP32, ORT_INT8)
LABELS = {ORT_FP32: "ORT Conv fp32", ORT_INT8: "ORT QLinearConv"}
# (column label, numerator, denominator) of the ratio columns, shown when both are measured
RATIO_COLUMNS = (("w8a8/QLinearConv", "w8a8", ORT_INT8), ("w4a8/w8a8", "w4a8", "w8a8"),
                 ("w8a16/w8a8", "w8a16", "w8a8"))
X_ZP, OUT_ZP, OPSET = 3, 5, 17
LAYOUT_NODES = {("com.microsoft.nchwc", "ReorderInput"), ("com.microsoft.nchwc", "ReorderOutput"),
                ("", "Transpose")}
ACCUMULATORS = 12  # vectors; 12 x 64 B stays under TVM's 1 KB stack limit (kept in registers)
AMX_ACCUMULATORS = 4  # tiles tmm0-3, as in the kernels' 2 x 2 blocks (A: tmm4, B: tmm6)
# isa: the ``schedules.target_features`` level that has it; lanes: int32 / float32 accumulator lanes;
# macs: per instruction (per accumulator); kind: "vnni", "pmaddwd" (+ an add), "pmaddubsw" (+ a
# pmaddwd by ones and an add), "fma", "amx"
Instruction = namedtuple("Instruction", "name isa lanes macs kind")
INSTRUCTIONS = (
    Instruction("vpdpbusd zmm (u8 x s8)", "avx512_vnni", 16, 64, "vnni"),
    Instruction("vpmaddwd + vpaddd zmm (s16 x s16)", "avx512", 16, 32, "pmaddwd"),
    Instruction("vpmaddwd + vpaddd ymm (s16 x s16)", "avx2", 8, 16, "pmaddwd"),
    # the rivals' AVX2 int8 instruction, tvmq's for int4 and narrow weights (saturates otherwise)
    Instruction("vpmaddubsw + vpmaddwd(1) + vpaddd ymm (u8 x s8)", "avx2", 8, 32, "pmaddubsw"),
    Instruction("vfmadd zmm (fp32)", "avx512", 16, 16, "fma"),
    Instruction("vfmadd ymm (fp32)", "avx2", 8, 8, "fma"),
    # a 16 x 16 int32 tile += 16 x 64 u8 times 64 x 16 s8 (``AMX_ACCUMULATORS`` tiles in flight)
    Instruction("tdpbusd tmm (u8 x s8, 16 x 16 x 64)", "amx", 256, 16384, "amx"),
)
# the integer instruction of each ISA level's W8A8 kernels
ISA_INSTRUCTION = {"amx": INSTRUCTIONS[6], "avx512_vnni": INSTRUCTIONS[0], "avx512": INSTRUCTIONS[1],
                   "avx2": INSTRUCTIONS[2]}


def _step(ins: Instruction) -> Callable[[Any, Any, Any], Any]:
    """``acc, a, b -> acc'``: one ``ins`` on accumulator vector ``acc``."""
    from tvm import tirx  # deferred: TVM

    n, call, cast = ins.lanes, tirx.call_llvm_pure_intrin, tirx.reinterpret
    if ins.kind == "fma":
        return lambda acc, a, b: call(f"float32x{n}", "llvm.fma", a, b, acc)
    if ins.kind == "vnni":
        return lambda acc, a, b: call(f"int32x{n}", f"llvm.x86.avx512.vpdpbusd.{n * 32}", acc,
                                      cast(f"uint8x{4 * n}", a), cast(f"int8x{4 * n}", b))
    if ins.kind == "pmaddubsw":  # u8 x s8 pairs into int16, the pairs of pairs into int32 by ones
        return lambda acc, a, b: acc + call(
            f"int32x{n}", "llvm.x86.avx2.pmadd.wd",
            call(f"int16x{2 * n}", "llvm.x86.avx2.pmadd.ub.sw", cast(f"uint8x{4 * n}", acc),
                 cast(f"int8x{4 * n}", b)), cast(f"int16x{2 * n}", a))
    pmadd = "llvm.x86.avx512.pmaddw.d.512" if n == 16 else "llvm.x86.avx2.pmadd.wd"
    # one operand is the accumulator itself: with both loop-invariant, LLVM would hoist the
    # multiply and leave only the adds
    return lambda acc, a, b: acc + call(f"int32x{n}", pmadd, cast(f"int16x{2 * n}", acc),
                                        cast(f"int16x{2 * n}", b))


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
                acc[T.Ramp(j * lanes, 1, lanes)] = step(acc[T.Ramp(j * lanes, 1, lanes)],
                                                        a[T.Ramp(0, 1, lanes)], b[T.Ramp(0, 1, lanes)])
        for j in T.unroll(ACCUMULATORS):
            out[T.Ramp(j * lanes, 1, lanes)] = acc[T.Ramp(j * lanes, 1, lanes)]
    return main


def _amx_template() -> Any:  # type: ignore[no-untyped-def]
    """``main(a, b, out, n)``: one A and one B tile loaded, then ``n`` iterations of
    ``AMX_ACCUMULATORS`` ``tdpbusd`` on independent accumulator tiles, the first tile stored."""
    from tvm.script import tirx as T  # deferred: TVM

    def intrin(name: str, *args: Any) -> Any:
        return T.evaluate(T.call_llvm_intrin("void", f"llvm.x86.{name}", *args))

    @T.prim_func
    def main(a: T.Buffer((1024,), "uint8"), b: T.Buffer((1024,), "int8"), out: T.Buffer((256,), "int32"),
             n: T.int32):
        T.func_attr({"global_symbol": "main", "tirx.noalias": True})
        cfg = T.decl_buffer((64,), "uint8", scope="local")
        for i in range(64):
            cfg[i] = T.uint8(0)
        cfg[0] = T.uint8(1)
        for t in T.unroll(8):
            cfg[16 + 2 * t] = T.uint8(64)
            cfg[48 + t] = T.uint8(16)
        intrin("ldtilecfg", T.address_of(cfg[0]))
        intrin("tileloadd64", T.uint8(4), T.address_of(a[0]), T.int64(64))
        intrin("tileloadd64", T.uint8(6), T.address_of(b[0]), T.int64(64))
        for t in T.unroll(AMX_ACCUMULATORS):
            intrin("tilezero", T.Cast("uint8", t))
        for i in range(n):
            for t in T.unroll(AMX_ACCUMULATORS):
                intrin("tdpbusd", T.Cast("uint8", t), T.uint8(4), T.uint8(6))
        intrin("tilestored64", T.uint8(0), T.address_of(out[0]), T.int64(64))
    return main


def measure(ins: Instruction, target: Any, seconds: float = 0.3, rounds: int = 5) -> dict[str, Any]:
    """``ins`` back to back on registers: GMAC/s (median of ``rounds`` calls of about ``seconds``)
    and instructions per ns."""
    import tvm  # deferred: TVM

    amx = ins.kind == "amx"
    lib = tvm.compile(tvm.IRModule({"main": _amx_template() if amx else _template(ins)}), target=target)
    f = lib.jit()["main"] if hasattr(lib, "jit") else lib["main"]
    dtype = np.float32 if ins.kind == "fma" else np.int32
    args = [tvm.runtime.tensor(v) for v in (
        (np.ones(1024, np.uint8), np.ones(1024, np.int8), np.zeros(256, np.int32)) if amx else
        (np.ones(ins.lanes, dtype), np.ones(ins.lanes, dtype), np.zeros(ACCUMULATORS * ins.lanes, dtype)))]
    n = 10_000
    while True:  # calibrate the iteration count to ~seconds
        t0 = time.perf_counter()
        f(*args, n)
        if (dt := time.perf_counter() - t0) > seconds / 4:
            break
        n *= 4
    n, rates = int(n * seconds / dt), []
    for _ in range(rounds):
        t0 = time.perf_counter()
        f(*args, n)
        rates.append(n * (AMX_ACCUMULATORS if amx else ACCUMULATORS) / (time.perf_counter() - t0))
    per_s = float(np.median(rates))
    return {"instruction": ins.name, "isa": ins.isa, "gmac_s": per_s * ins.macs / 1e9,
            "instructions_per_ns": per_s / 1e9, "macs_per_instruction": ins.macs, "rates": rates}


def label(variant: str) -> str:
    return LABELS.get(variant, f"tvmq {variant}")


def short_name(name: str) -> str:
    """``/features/features.3/conv/conv.0/conv.0.0/Conv`` -> ``features.3/conv.0.0``."""
    parts = [p for p in name.split("/") if p]
    if len(parts) > 1 and parts[-1] in ("Conv", "Gemm", "MatMul"):
        parts = parts[:-1]
    return "/".join(p for p, nxt in zip(parts, parts[1:] + [""]) if not nxt.startswith(p + ".")) or name


def distinct_workloads(layers: Any, epilogue: Any) -> list[dict[str, Any]]:
    """Each distinct workload: its layers, MACs, category and shape summary."""
    from tvmq.passes.lower_kernels import layer_workload  # deferred: imports TVM

    by_key: dict[str, dict[str, Any]] = {}
    for layer in layers:
        wl = layer_workload(layer, epilogue)
        by_key.setdefault(wl.key(), {"workload": wl, "layers": []})["layers"].append(layer.name)
    out = []
    for e in by_key.values():
        wl = e["workload"]
        if not hasattr(wl, "kernel_h"):
            kind, shape = "dense", f"{wl.in_features}->{wl.out_features} dense"
        else:
            k = f"{wl.kernel_h}x{wl.kernel_w}"
            stride = f"s{wl.stride_h}" if wl.stride_h == wl.stride_w else f"s{wl.stride_h}x{wl.stride_w}"
            kind = "depthwise" if wl.is_depthwise else "1x1" if wl.kernel_h == wl.kernel_w == 1 else "kxk"
            g = f" g{wl.groups}" if wl.groups > 1 else ""
            d = f" d{wl.dilation_h}" if (wl.dilation_h, wl.dilation_w) != (1, 1) else ""
            shape = (f"dw {wl.in_channels} {k} {stride} {wl.height}x{wl.width}" if wl.is_depthwise else
                     f"{wl.in_channels}->{wl.out_channels} {k} {stride}{g}{d} {wl.height}x{wl.width}")
        out.append({**e, "first": e["layers"][0], "count": len(e["layers"]), "macs": int(wl.macs),
                    "category": kind, "shape": shape})
    return out


def kernel_arguments(func: Any, rng: np.random.Generator) -> list[np.ndarray]:
    """Random kernel arguments with realistic requantization parameters and real bf16 values."""
    from schedules.bf16 import to_bf16_bits  # deferred: imports TVM

    dtypes = {str(p.name): str(p.dtype) for p in func.params}
    ints = {"uint8": (0, 256), "int8": (-127, 128), "int16": (-4095, 4096), "int32": (-2000, 2001)}
    values = []
    for p in func.params:
        shape, dtype, name = tuple(int(d) for d in p.shape), str(p.dtype), str(p.name)
        if name == "qparams":
            v = np.array([0 if dtypes.get("data") == "int16" else X_ZP, OUT_ZP, 0, 255], np.int32)
        elif name == "multiplier":
            v = rng.integers(2 ** 30, 2 ** 31, shape, dtype=np.int64).astype(np.int32)
        elif name == "shift":
            v = rng.integers(38, 43, shape).astype(np.int32)
        elif name == "out" or not (dtype in ints or dtype in ("float32", "uint16")):
            v = np.zeros(shape, dtype)
        elif dtype == "float32":
            v = (rng.standard_normal(shape) * (1.0 if name == "data" else 0.05)).astype(np.float32)
        elif dtype == "uint16":  # bf16 bit patterns: real bf16 values, no NaN or denormals
            v = to_bf16_bits((rng.standard_normal(shape) * 0.05).astype(np.float32))
        else:  # activations, int4 weights two per byte, weights, bias
            v = rng.integers(*ints[dtype], shape).astype(dtype)
        values.append(v)
    return values


class TvmqKernel:
    """One tvmq kernel compiled for a workload (fallback config), with its arguments. The workload as
    ``RealizeIntegers`` lowers a layer of ``spec`` by default: integer kernels requantize in float32,
    uint8-activation convs and fp32 ones are channels-last; ``narrow``: ungrouped W8A8 convs with narrow weights."""

    def __init__(self, wl: Any, spec: str, features: Any, target: Any, rng: np.random.Generator,
                 narrow: bool = False) -> None:
        import tvm  # deferred: TVM

        from schedules import registry

        t0, conv, replace = time.perf_counter(), hasattr(wl, "layout"), dataclasses.replace
        if spec == "fp32" and conv:
            wl = replace(wl, layout="NHWC")
        if spec not in ("fp32", "bf16"):
            wl = replace(wl, epilogue=replace(wl.epilogue, requant="float"))
            if spec in ("w8a8", "w4a8") and conv:
                wl = replace(wl, layout="NHWC")
            if narrow and spec == "w8a8" and conv and wl.groups == 1:
                wl = replace(wl, narrow_weights=True)
        kernel = registry.select_for(wl, spec, features)
        cfg = kernel.fallback_config(wl, features)
        func = kernel.build_primfunc(wl, cfg)
        self.mod = tvm.compile(tvm.IRModule({"main": func}), target=target).jit()
        self.values = kernel_arguments(func, rng)
        self.info = {"kernel": str(kernel.key), "config": dataclasses.asdict(cfg),
                     "config_type": type(cfg).__name__, "compile_s": round(time.perf_counter() - t0, 3)}
        self.mod["main"](*[tvm.runtime.tensor(v) for v in self.values])  # warm up

    def round(self, repeat: int, min_repeat_ms: int) -> list[float]:
        """``repeat`` times (ms) on freshly allocated arguments: placement can matter."""
        import tvm  # deferred: TVM

        args = [tvm.runtime.tensor(v) for v in self.values]
        timer = self.mod.time_evaluator("main", tvm.cpu(), number=1, repeat=repeat,
                                        min_repeat_ms=min_repeat_ms)
        return [float(t) * 1e3 for t in timer(*args).results]


def onnx_model(nodes: list, x: tuple, y: tuple, inits: list = (), opsets: Sequence[Any] = (),
               ir_version: int | None = 8) -> bytes:
    """One graph's serialized model; ``x`` / ``y``: (name, element type, shape) of its input / output."""
    graph = helper.make_graph(nodes, "layer", [helper.make_tensor_value_info(*x)],
                              [helper.make_tensor_value_info(*y)], list(inits))
    model = helper.make_model(graph, opset_imports=list(opsets) or [helper.make_opsetid("", OPSET)],
                              producer_name="tvmq-layer-latency")
    model.ir_version = ir_version
    return model.SerializeToString()


def rival_model(wl: Any, quantized: bool, rng: np.random.Generator) -> tuple[bytes, dict[str, np.ndarray]]:
    """A one-layer ONNX model of ``wl`` (Conv + Relu / QLinearConv, or Gemm + Relu / QGemm), feeds."""
    dense = not hasattr(wl, "kernel_h")
    k, inits = wl.out_features if dense else wl.out_channels, []
    attrs = {} if dense else {"kernel_shape": [wl.kernel_h, wl.kernel_w],
                              "strides": [wl.stride_h, wl.stride_w],
                              "pads": [wl.pad_top, wl.pad_left, wl.pad_bottom, wl.pad_right],
                              "dilations": [wl.dilation_h, wl.dilation_w], "group": wl.groups}

    def init(name: str, value: Any) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    w_float = (rng.standard_normal(wl.weight_shape) * 0.05).astype(np.float32)
    if quantized:
        x = rng.integers(0, 256, wl.data_shape).astype(np.uint8)
        w_scale = (np.abs(w_float).reshape(k, -1).max(axis=1) / 127).astype(np.float32)
        w_scaled = w_float / w_scale.reshape((k,) + (1,) * (w_float.ndim - 1))
        w_q = np.clip(np.round(w_scaled), -127, 127).astype(np.int8)
        bias = rng.integers(-2000, 2001, (k,)).astype(np.int32)
        qin = [init("x_scale", np.float32(0.02)), init("x_zp", np.uint8(X_ZP))]
        qw = [init("w", w_q), init("w_scale", w_scale), init("w_zp", np.zeros(k, np.int8))]
        qy = [init("y_scale", np.float32(0.05)), init("y_zp", np.uint8(OUT_ZP))]
        nodes = [helper.make_node("QGemm", ["x", *qin, *qw, init("bias", bias), *qy], ["y"],
                                  domain="com.microsoft", transB=1) if dense else
                 helper.make_node("QLinearConv", ["x", *qin, *qw, *qy, init("bias", bias)], ["y"], **attrs)]
        elem = TensorProto.UINT8
    else:
        x = rng.standard_normal(wl.data_shape).astype(np.float32)
        w, b = init("w", w_float), init("bias", (rng.standard_normal(k) * 0.1).astype(np.float32))
        nodes = [helper.make_node("Gemm", ["x", w, b], ["acc"], transB=1) if dense
                 else helper.make_node("Conv", ["x", w, b], ["acc"], **attrs),
                 helper.make_node("Relu", ["acc"], ["y"])]
        elem = TensorProto.FLOAT
    opsets = [helper.make_opsetid(*o) for o in [("", OPSET)] + [("com.microsoft", 1)] * (dense and quantized)]
    return onnx_model(nodes, ("x", elem, wl.data_shape), ("y", elem, wl.out_shape), inits, opsets), {"x": x}


def strip_layout(opt: Any, feeds: dict[str, np.ndarray], threads: int
                 ) -> tuple[bytes, dict[str, np.ndarray], list[str]] | None:
    """``opt`` without the layout conversions at its edges (a network pays them once, not per
    layer): (model, feeds, stripped node types), or None if there are none."""
    g, nodes = opt.graph, list(opt.graph.node)
    in_name, out_name = g.input[0].name, g.output[0].name
    new_in, new_out, stripped = in_name, out_name, []
    if nodes and (nodes[0].domain, nodes[0].op_type) in LAYOUT_NODES and list(nodes[0].input) == [in_name]:
        new_in = nodes[0].output[0]
        stripped.append(nodes.pop(0).op_type)
    if (nodes and (nodes[-1].domain, nodes[-1].op_type) in LAYOUT_NODES
            and list(nodes[-1].output) == [out_name]):
        new_out = nodes[-1].input[0]
        stripped.append(nodes.pop().op_type)
    if not stripped or not nodes:
        return None
    elem = g.input[0].type.tensor_type.elem_type
    probe = onnx.ModelProto()  # the inner tensors' shapes: run the graph once with them as outputs
    probe.CopyFrom(opt)
    for name in {new_in, new_out} - {in_name, out_name}:
        probe.graph.output.append(helper.make_tensor_value_info(name, elem, None))
    sess = h.ort_session(probe.SerializeToString(), threads)
    got = {**dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds))), in_name: feeds[in_name]}
    in_shape, out_shape = got[new_in].shape, got[new_out].shape
    del sess
    model = onnx_model(nodes, (new_in, elem, in_shape), (new_out, elem, out_shape), g.initializer,
                       opt.opset_import, opt.ir_version)
    x, rng = feeds[in_name], np.random.default_rng(0)
    x_new = (rng.integers(0, 256, in_shape).astype(x.dtype) if x.dtype == np.uint8
             else rng.standard_normal(in_shape).astype(x.dtype))
    return model, {new_in: x_new}, stripped


def session_samples(sess: Any, feeds: dict[str, np.ndarray], budget_s: float, min_n: int) -> list[float]:
    samples: list[float] = []
    t_end = time.perf_counter() + budget_s
    while (len(samples) < min_n or time.perf_counter() < t_end) and len(samples) < 20000:
        t = time.perf_counter()
        sess.run(None, feeds)
        samples.append((time.perf_counter() - t) * 1e3)
    return samples


class OrtLayer:
    """A one-layer model in onnxruntime: ``kernel`` (edges stripped) and ``graph`` (as built)."""

    def __init__(self, model: bytes, feeds: dict[str, np.ndarray], threads: int, tmp: Path,
                 warmup_s: float) -> None:
        def node_types(m: Any) -> list[str]:
            return [(f"{n.domain}." if n.domain else "") + n.op_type for n in m.graph.node]

        opt_path = tmp / "optimized.onnx"
        self.graph = self.kernel = (h.ort_session(model, threads, str(opt_path)), feeds)
        opt = onnx.load(str(opt_path))
        self.info: dict[str, Any] = {"graph_nodes": node_types(opt), "optimized_nodes": node_types(opt),
                                     "stripped_nodes": []}
        if (stripped := strip_layout(opt, feeds, threads)) is not None:
            model2, feeds2, gone = stripped
            self.kernel = (h.ort_session(model2, threads, str(opt_path)), feeds2)
            self.info.update(optimized_nodes=node_types(onnx.load(str(opt_path))), stripped_nodes=gone,
                             input_shape=list(next(iter(feeds2.values())).shape))
        for sess, f in {id(x): x for x in (self.graph, self.kernel)}.values():  # warm up
            session_samples(sess, f, warmup_s, 5)

    def round(self, budget_s: float, min_n: int) -> tuple[list[float], list[float]]:
        k = session_samples(self.kernel[0], {n: v.copy() for n, v in self.kernel[1].items()}, budget_s, min_n)
        if self.graph is self.kernel:
            return k, k
        graph_feeds = {n: v.copy() for n, v in self.graph[1].items()}
        return k, session_samples(self.graph[0], graph_feeds, budget_s, min_n)


def measure_model(name: str, path: Path, args: Any, features: Any, target: Any, tmp: Path) -> dict[str, Any]:
    from schedules import registry  # deferred: imports TVM
    from schedules.workload import Epilogue
    from tvmq.frontend import prepare

    layers = prepare(str(path)).layers
    workloads = distinct_workloads(layers, Epilogue(bias=True, activation="relu"))
    total, workloads = len(workloads), workloads[: args.limit]
    print(f"[{name}] {len(layers)} layers, {total} distinct workloads"
          + (f", measuring the first {len(workloads)} (--limit)" if len(workloads) < total else ""),
          flush=True)
    rng, rows = np.random.default_rng(args.seed), []
    for i, entry in enumerate(workloads):
        wl = entry["workload"]
        meter, load0 = h.CpuMeter(), os.getloadavg()[0]
        results = measure_workload(wl, args, features, target, rng, tmp)
        other, wall = meter.other_cores(), time.perf_counter() - meter.wall
        rows.append({**{k: v for k, v in entry.items() if k != "workload"}, "workload": json.loads(wl.key()),
                     "op": registry.op_of(wl), "other_cpu_cores": None if other is None else round(other, 3),
                     "loadavg_1m": [load0, os.getloadavg()[0]], "wall_s": round(wall, 2), "results": results,
                     "ratios": ratios({v: median_of(results, v) for v in results})})
        cells = " ".join(f"{v}=" + (f"{results[v]['median_ms']:.3f}" if results[v].get("ok") else "ERR")
                         for v in (*args.spec_list, *RIVALS))
        print(f"  [{i + 1}/{len(workloads)}] {short_name(entry['first'])} x{entry['count']} "
              f"({entry['shape']}): {cells} ms  ({wall:.1f}s)", flush=True)
    by_category = {c: summed([r for r in rows if r["category"] == c], args.spec_list)
                   for c in ("1x1", "kxk", "depthwise", "dense") if any(r["category"] == c for r in rows)}
    return {"onnx": str(path), "layers": len(layers), "distinct_workloads": total,
            "measured_workloads": len(rows), "total_macs": int(layers.total_macs),
            "measured_layers": sum(r["count"] for r in rows), "rows": rows,
            "sum": summed(rows, args.spec_list), "by_category": by_category}


def measure_workload(wl: Any, args: Any, features: Any, target: Any, rng: np.random.Generator,
                     tmp: Path) -> dict[str, Any]:
    """Every variant of one workload in ``--rounds`` interleaved rounds (the order reversed every
    other round), the samples pooled; a variant that fails is reported, the others still run."""
    results: dict[str, Any] = {}
    variants: dict[str, Any] = {}

    def failed(v: str, e: Exception, **more: Any) -> None:
        results[v] = {"ok": False, "error": f"{type(e).__name__}: {e}", **more}

    for spec in args.spec_list:
        try:
            variants[spec] = TvmqKernel(wl, spec, features, target, rng, args.narrow_weights)
        except Exception as e:  # noqa: BLE001
            failed(spec, e, traceback=traceback.format_exc(limit=3))
    for rival, quantized in ((ORT_FP32, False), (ORT_INT8, True)):
        try:
            variants[rival] = OrtLayer(*rival_model(wl, quantized, rng), args.threads, tmp,
                                       max(0.05, args.repeat * args.min_repeat_ms / 1e4))
        except Exception as e:  # noqa: BLE001
            failed(rival, e)
    samples, graph_samples, round_medians = ({v: [] for v in variants} for _ in range(3))
    budget_s, order = args.repeat * args.min_repeat_ms / 1e3, list(variants)
    for r in range(args.rounds):
        for v in [v for v in (order if r % 2 == 0 else order[::-1]) if v not in results]:
            try:
                if isinstance(variants[v], TvmqKernel):
                    got = variants[v].round(-(-args.repeat // args.rounds), args.min_repeat_ms)
                else:
                    got, graph = variants[v].round(budget_s / args.rounds, 10)
                    graph_samples[v] += graph
            except Exception as e:  # noqa: BLE001
                failed(v, e)
                continue
            samples[v] += got
            round_medians[v].append(statistics.median(got))
    for v, variant in variants.items():
        if v not in results:
            extra = ({"repeat_ms": samples[v]} if isinstance(variant, TvmqKernel)
                     else {"graph": BenchmarkResult.from_samples(graph_samples[v], args.threads).to_json()})
            stats = BenchmarkResult.from_samples(samples[v], args.threads).to_json()
            results[v] = {"ok": True, **variant.info, **stats, "round_medians_ms": round_medians[v], **extra}
    return {v: results[v] for v in (*args.spec_list, *RIVALS)}


def median_of(results: dict[str, Any], variant: str) -> float | None:
    r = results.get(variant)
    return r["median_ms"] if r and r.get("ok") else None


def div(x: float | None, y: float | None) -> float | None:
    return x / y if x is not None and y else None


def ratios(medians: dict[str, float | None]) -> dict[str, float | None]:
    pairs = [("w8a8", ORT_INT8), ("w4a8", "w8a8"), ("w8a16", "w8a8"), ("fp32", ORT_FP32), ("bf16", "fp32"),
             ("w8a8", "fp32"), (ORT_INT8, ORT_FP32)]
    return {f"{a}/{b}": div(medians.get(a), medians.get(b)) for a, b in pairs}


def summed(rows: list[dict[str, Any]], specs: Sequence[str]) -> dict[str, Any]:
    """Each variant's median x layer count, summed (None if any failed); the rivals' graphs too."""
    def total(times: list[float | None]) -> float | None:
        return sum(t * r["count"] for t, r in zip(times, rows)) if rows and None not in times else None

    medians = {v: total([median_of(r["results"], v) for r in rows]) for v in (*specs, *RIVALS)}
    graph = {v: total([r["results"][v]["graph"]["median_ms"] if r["results"][v].get("ok") else None
                       for r in rows]) for v in RIVALS}
    return {"workloads": len(rows), "layers": sum(r["count"] for r in rows),
            "macs": sum(r["macs"] * r["count"] for r in rows), "median_ms": medians,
            "rival_graph_median_ms": graph, "ratios": ratios(medians)}


def fmt_ms(t: float | None) -> str:
    return "err" if t is None else f"{t:.3f}" if t < 10 else f"{t:.2f}"


def fmt(x: float | None, digits: int = 2) -> str:
    return "" if x is None else f"{x:.{digits}f}"


def table(model: dict[str, Any], specs: Sequence[str], by_layer: bool, peak_gops: float | None = None,
          amx_gops: float | None = None) -> str:
    """The per-workload table (with GOPS, w8a8's share of the instruction's peak, and the sum
    row) or the per-kind one. ``amx_gops``: the AMX peak, for the rows whose w8a8 kernel is the
    AMX one (the others, and the sum, against ``peak_gops``)."""
    variants = (*specs, *RIVALS)
    cols = [c for c in RATIO_COLUMNS if c[1] in variants and c[2] in variants]
    gops = [v for v in ("w8a8", ORT_INT8) if v in variants] if by_layer else []
    with_peak = bool(peak_gops) and "w8a8" in gops

    def rate(t: float | None, macs: int) -> float | None:
        return None if not t or t <= 0 else 2 * macs / t / 1e6

    def cells(medians: dict[str, float | None], macs: int, peak: float | None = peak_gops) -> list[str]:
        w8a8 = rate(medians.get("w8a8"), macs)
        return ([fmt_ms(medians[v]) for v in variants] + [fmt(rate(medians[v], macs), 1) for v in gops]
                + ([fmt(None if w8a8 is None or not peak else w8a8 / peak * 100, 0)] if with_peak else [])
                + [fmt(div(medians[a], medians[b])) for _, a, b in cols])

    head = ([label(v) for v in variants] + [f"GOPS {label(v).split()[-1]}" for v in gops]
            + (["w8a8 % of peak"] if with_peak else []) + [c[0] for c in cols])
    if not by_layer:
        return h.md_table(["kind", "layers", "MMAC", *head], [
            [cat, s["layers"], f"{s['macs'] / 1e6:.1f}", *cells(s["median_ms"], s["macs"])]
            for cat, s in model["by_category"].items()], "lr")
    rows = [[f"{short_name(r['first'])} x{r['count']}", r["shape"], f"{r['macs'] / 1e6:.1f}",
             *cells({v: median_of(r["results"], v) for v in variants}, r["macs"],
                    amx_gops if str(r["results"].get("w8a8", {}).get("kernel", "")).endswith("/amx")
                    else peak_gops)] for r in model["rows"]]
    s = model["sum"]
    rows.append([f"**sum** ({s['layers']} layers)", "each x count", f"{s['macs'] / 1e6:.1f}",
                 *cells(s["median_ms"], s["macs"])])
    return h.md_table(["layer (first, count)", "shape", "MMAC", *head], rows, "llr")


def model_notes(name: str, model: dict[str, Any], specs: Sequence[str], spare_cores: float) -> list[str]:
    """W4A8 vs W8A8, the kernels and graphs that ran, the edge-conversion sums, failures, noise."""
    def count_of(keys: Sequence[str]) -> str:
        return ", ".join(f"{k} x{n}" for k, n in sorted(Counter(keys).items()))

    rows, notes, s = model["rows"], [], model["sum"]
    if "w4a8" in specs and "w8a8" in specs:
        faster = [r for r in rows if (r["ratios"]["w4a8/w8a8"] or 1) < 0.95]
        slower = [r for r in rows if (r["ratios"]["w4a8/w8a8"] or 1) > 1.05]
        notes.append(f"{name}: w4a8 at least 5% faster than w8a8 on {len(faster)} workloads "
                     f"({sum(r['count'] for r in faster)} layers), at least 5% slower on {len(slower)} "
                     f"({sum(r['count'] for r in slower)} layers), within 5% on "
                     f"{len(rows) - len(faster) - len(slower)}")
    ok = [(v, r["results"][v]) for r in rows for v in (*specs, *RIVALS) if r["results"][v].get("ok")]
    g = s["rival_graph_median_ms"]
    def graph(v: str, res: dict[str, Any]) -> str:
        gone = res["stripped_nodes"]
        return f"{label(v)}: " + "+".join(res["optimized_nodes"]) + (
            f" (edges stripped: {'+'.join(gone)})" if gone else "")

    notes += [f"{name} tvmq kernels (workloads): "
              + count_of([f"`{res['kernel']}`" for v, res in ok if v in specs]),
              f"{name} onnxruntime graphs timed, as optimized (workloads): "
              + count_of([graph(v, res) for v, res in ok if v in RIVALS]),
              f"{name}: onnxruntime's one-layer graphs as built, with the layout conversions it adds at "
              "their edges (NCHWc reorders, NHWC transposes; paid once per network, not per layer), sum to "
              f"{fmt_ms(g[ORT_FP32])} ms (Conv fp32) and {fmt_ms(g[ORT_INT8])} ms (QLinearConv) instead of "
              f"{fmt_ms(s['median_ms'][ORT_FP32])} and {fmt_ms(s['median_ms'][ORT_INT8])}"]
    notes += [f"{name} {short_name(r['first'])} {label(v)} FAILED: {res['error']}"
              for r in rows for v, res in r["results"].items() if not res.get("ok")]
    noisy = [f"{short_name(r['first'])} ({', '.join(spread)})" for r in rows
             if (spread := [v for v, res in r["results"].items() if res.get("ok") and min(
                 m := res["round_medians_ms"]) > 0 and max(m) / min(m) > h.NOISY_ROUND_SPREAD])]
    if noisy:
        notes.append(f"{name}: noisy (per-round medians more than {(h.NOISY_ROUND_SPREAD - 1) * 100:.0f}% "
                     "apart): " + ", ".join(noisy))
    if contended := [r for r in rows if (r["other_cpu_cores"] or 0) > spare_cores + 0.1]:
        where = ", ".join(f"{short_name(r['first'])} ({r['other_cpu_cores']:.2f} cores)" for r in contended)
        notes.append(f"{name}: other processes wanted more than the {spare_cores:g} spare core(s) while "
                     f"measuring {where}")
    if model["measured_workloads"] < model["distinct_workloads"]:
        notes.append(f"{name}: only the first {model['measured_workloads']} of {model['distinct_workloads']} "
                     "workloads measured (--limit): the sums are partial")
    return notes


def render(result: dict[str, Any]) -> str:
    m, s = result["machine"], result["settings"]
    busy = [r["other_cpu_cores"] for mod in result["models"].values() for r in mod["rows"]
            if r["other_cpu_cores"] is not None]
    out = [f"Per-layer kernel latency, batch 1, {s['threads']} thread(s): tvmq's kernels (fallback configs, "
           f"untuned; ISA level {s['isa']}) beside onnxruntime {result['versions']['onnxruntime']} on the "
           f"same shapes. {h.machine_line(m, ',')}; load average {m['loadavg_before'][0]:.2f} before, "
           f"{m['loadavg_after'][0]:.2f} after; {result['date_utc'][:16].replace('T', ' ')} UTC"
           + (f"; other processes kept {statistics.fmean(busy):.2f} cores busy on average "
              f"(max {max(busy):.2f})" if busy else "") + ".", "",
           f"Cells: ms per call; each workload's variants in {s['rounds']} interleaved rounds, pooled. tvmq: "
           f"median of {s['rounds'] * -(-s['repeat'] // s['rounds'])} repeats of back to back calls for >= "
           f"{s['min_repeat_ms']} ms (TVM time_evaluator). onnxruntime: median of single "
           f"`InferenceSession.run` calls for ~{s['repeat'] * s['min_repeat_ms']} ms, with its per-call "
           f"overhead ({result['ort_call_overhead_ms'] * 1e3:.1f} us for a one-element Relu), on its "
           "optimized one-layer graph minus the layout conversions at its edges (a network pays them once; "
           "the notes give the sums with them). tvmq's kernels as the models lower them: w8a8 / w4a8 / fp32 convs "
           "channels-last, integer kernels with float32 requantization. Epilogue bias + ReLU (ORT: Conv + "
           "Relu fused, Gemm + Relu and QGemm for dense). GOPS = 2 x MACs / time; ratios below 1: the first "
           "is faster; the sum row adds each workload's time x its count.", ""]
    peak, amx = result.get("peak"), result.get("peak_amx")
    peak_gops, amx_gops = (2 * p["gmac_s"] * s["threads"] if p else None for p in (peak, amx))
    for p, gops in ((peak, peak_gops), (amx, amx_gops)):
        if p:
            out += [f"Peak: `{p['instruction']}` back to back on registers (`--mode peak`, same machine, "
                    f"same run) {p['gmac_s']:.1f} GMAC/s per core = {gops:.1f} GOPS on {s['threads']} "
                    "thread(s); `w8a8 % of peak` is the w8a8 kernel's GOPS over its instruction's peak"
                    + (" (rows on AMX kernels: the AMX peak; the sum: the VNNI one)." if amx else "."), ""]
    for name, model in result["models"].items():
        out += [f"### {name}", "", table(model, s["specs"], True, peak_gops, amx_gops), "",
                table(model, s["specs"], False), ""]
    spare = max(0, m["nproc"] - s["threads"])
    notes = [n for name, model in result["models"].items()
             for n in model_notes(name, model, s["specs"], spare)]
    out += [f"- {n}" for n in notes + [f"{n}: SKIPPED, {why}" for n, why in result["skipped"].items()]]
    return "\n".join(out) + "\n"


def pack_kernels(shape: tuple[int, ...]) -> dict[str, list[Any]]:
    """TE ``copy``, ``pack`` (two 4-bit values per byte) and ``unpack`` of a uint8 NCHW tensor."""
    from tvm import te, tirx  # deferred: TVM

    (n, c, hh, w), half, u8 = shape, (shape[3] + 1) // 2, (lambda v: tirx.const(v, "uint8"))
    x = te.placeholder(shape, "uint8", name="x")
    p = te.placeholder((n, c, hh, half), "uint8", name="p")
    return {"copy": [x, te.compute(shape, lambda *i: x[i], name="copy")],
            "pack": [x, te.compute((n, c, hh, half), lambda a, b, y, j: (
                tirx.min(x[a, b, y, 2 * j], u8(15))
                | (tirx.min(tirx.if_then_else(2 * j + 1 < w, x[a, b, y, tirx.min(2 * j + 1, w - 1)], u8(0)),
                            u8(15)) << u8(4))), name="pack")],
            "unpack": [p, te.compute(shape, lambda a, b, y, k: (
                p[a, b, y, k // 2] >> ((k % 2) * 4).astype("uint8")) & u8(15), name="unpack")]}


def w4a4_main(args: Any, path: Path, features: Any, target: Any) -> None:
    """``--mode w4a4``: without sub-byte arithmetic 4-bit activations only save traffic: per layer
    input, ``copy`` vs ``pack`` + ``unpack``; storage pays only if pack + unpack < copy / 2."""
    import tvm  # deferred: TVM
    from tvm import te

    from tvmq.frontend import prepare
    from tvmq.passes.schedule_generic import schedule_primfunc

    pm = prepare(str(path))
    shapes = Counter(tuple(l.input_shape) for l in pm.layers if len(l.input_shape) == 4)
    rows, rng = [], np.random.default_rng(args.seed)
    for shape, count in shapes.items():
        row = {"shape": list(shape), "layers": count, "bytes": int(np.prod(shape))}
        for name, tensors in pack_kernels(shape).items():
            func = schedule_primfunc(te.create_prim_func(tensors), features.fp32_lanes)
            mod = tvm.compile(tvm.IRModule({"main": func}), target=target).jit()
            values = [tvm.runtime.tensor(rng.integers(0, 256, [int(d) for d in b.shape]).astype("uint8"))
                      for b in func.params]
            timer = mod.time_evaluator("main", tvm.cpu(), number=20, repeat=args.repeat, min_repeat_ms=10)
            row[name + "_us"] = float(np.median(timer(*values).results)) * 1e6
        row["pays"] = row["pack_us"] + row["unpack_us"] < row["copy_us"] / 2
        rows.append(row)
        print(row, flush=True)
    total = {k: sum(r[k] * r["layers"] for r in rows) for k in ("copy_us", "pack_us", "unpack_us")}
    lines = [f"W4A4 activation storage on {features.isa} ({pm.layers.total_macs / 1e6:.0f} MMAC model "
             f"{path.name}), medians of {args.repeat} repeats, 1 thread; a layer input's traffic "
             "bound `copy` vs what packing costs.", "",
             h.md_table(["layer input (NCHW u8)", "layers", "KB", "copy us", "pack us", "unpack us",
                         "pack+unpack < copy/2"],
                        [["x".join(map(str, r["shape"])), r["layers"], f"{r['bytes'] / 1e3:.0f}",
                          *(f"{r[k]:.1f}" for k in ("copy_us", "pack_us", "unpack_us")),
                          "yes" if r["pays"] else "no"] for r in rows], "lrrrrrl"), "",
             f"Summed over the model's layers: copy {total['copy_us'] / 1e3:.2f} ms (W4A4 could save at "
             f"most half: {total['copy_us'] / 2e3:.2f} ms), pack + unpack "
             f"{(total['pack_us'] + total['unpack_us']) / 1e3:.2f} ms."]
    h.write_results(args.out, "w4a4_storage", {"rows": rows, "total": total}, "\n".join(lines))


def main(argv: Sequence[str] | None = None) -> int:
    p = h.argument_parser(
        __doc__, mode=("layers", "what to measure (default layers; w4a4: the first of --models)",
                       {"choices": ["layers", "peak", "w4a4"]}), **h.model_options(threads="1"),
        specs=(None, f"comma-separated tvmq precisions (default: the registry's, {','.join(SPECS)} first)",
               {"dest": "spec_list", "type": lambda t: [s.strip() for s in t.split(",") if s.strip()]}),
        limit=(None, "measure only the first N distinct workloads of each model (quick runs)", {"type": int}),
        repeat=(15, "timed repeats per tvmq kernel, over all rounds (default 15)"),
        rounds=(3, "interleaved rounds per workload, the repeats split between them (default 3)"),
        min_repeat_ms=(20, "minimum duration of one repeat in ms (default 20)"),
        seed=(0, "seed of the random arguments (default 0)"),
        narrow_weights=(False, "layers: W8A8 convs with the recipe's narrow weights (vpmaddubsw on AVX2)"))
    args = p.parse_args(argv)
    if len(args.thread_list) != 1:
        p.error("--threads takes one thread count here")
    args.threads = args.thread_list[0]
    if args.spec_list == []:
        p.error("--specs is empty")
    if min(args.repeat, args.rounds, 1 if args.limit is None else args.limit) < 1 or args.min_repeat_ms < 0:
        p.error("--repeat, --rounds and --limit must be >= 1, --min-repeat-ms >= 0")
    os.environ["TVM_NUM_THREADS"] = str(args.threads)  # before tvm is imported: it sizes the pool
    import tvm  # deferred: after TVM_NUM_THREADS is set

    from schedules import registry
    from schedules.target_features import ISA_LEVELS, detect_host

    known = {k.precision for k in registry.registered_keys()}
    if args.spec_list is None:
        args.spec_list = [s for s in SPECS if s in known] + sorted(known - set(SPECS))
    elif unknown := [s for s in args.spec_list if s not in known]:
        p.error(f"unknown precision(s) {unknown}; the kernel registry has {sorted(known)}")
    versions = h.versions(tvm.__version__)  # taken at the start: the sources the kernels were built from
    features = detect_host()
    target = tvm.target.Target(features.target_json())
    if args.mode == "peak":  # every instruction the host executes, one thread
        request_amx_permission()
        info = h.machine_info()
        results = {i.name: measure(i, target) for i in INSTRUCTIONS if i.isa != "generic"
                   and ISA_LEVELS.index(features.isa) <= ISA_LEVELS.index(i.isa)}
        rows = [[r["instruction"], r["isa"], r["macs_per_instruction"], f"{r['instructions_per_ns']:.2f}",
                 f"{r['gmac_s']:.1f}"] for r in results.values()]
        report = (f"Multiply-accumulate peak of one core, {h.machine_line(info)}: each instruction back to "
                  f"back on {ACCUMULATORS} register accumulators, AMX on {AMX_ACCUMULATORS} accumulator "
                  "tiles (`python -m bench.layer_latency --mode peak`).\n\n" + h.md_table(
                      ["instruction", "ISA level", "MAC / instr", "instr / ns", "GMAC/s"], rows, "lllrr"))
        h.write_results(args.out, "dot_peak", {"machine": info, "versions": h.versions(),
                                               "accumulators": ACCUMULATORS, "peaks": results}, report)
        return 0
    found, skipped = h.find_models(args)
    if args.mode == "w4a4":
        if not found:
            sys.exit(f"layer_latency: error: no model found: {skipped}")
        w4a4_main(args, next(iter(found.values())), features, target)
        return 0
    run = h.Run("layer_latency")
    instruction = ISA_INSTRUCTION.get(features.isa if features.isa != "amx" else "avx512_vnni")
    if args.narrow_weights and features.isa == "avx2":
        instruction = next(i for i in INSTRUCTIONS if i.kind == "pmaddubsw")
    request_amx_permission()
    peak = None if instruction is None else measure(instruction, target)
    peak_amx = measure(ISA_INSTRUCTION["amx"], target) if features.isa == "amx" else None
    relu = onnx_model([helper.make_node("Relu", ["x"], ["y"])], ("x", TensorProto.FLOAT, [1]),
                      ("y", TensorProto.FLOAT, [1]))
    sess, feeds = h.ort_session(relu, args.threads), {"x": np.ones(1, np.float32)}
    overhead = h.median_ms(lambda: sess.run(None, feeds), warmup=200, repeat=2000)  # onnxruntime's per call
    print(f"onnxruntime per-call overhead (one-element Relu): {overhead * 1e3:.1f} us", flush=True)
    with tempfile.TemporaryDirectory(prefix="tvmq-layer-") as tmp:
        models = {name: measure_model(name, path, args, features, target, Path(tmp))
                  for name, path in found.items()}
    settings = {
        "models": args.model_list, "specs": args.spec_list, "threads": args.threads, "limit": args.limit,
        "repeat": args.repeat, "rounds": args.rounds, "min_repeat_ms": args.min_repeat_ms, "seed": args.seed,
        "narrow_weights": args.narrow_weights,
        "epilogue": "Epilogue(bias=True, activation='relu'); integer specs requant='float'",
        "layout": "w8a8 / w4a8 / fp32 convs NHWC (as the models lower them), the rest NCHW", "isa": features.isa,
        "target": features.target_json(), "features": dataclasses.asdict(features),
        "tvmq_qparams": [X_ZP, OUT_ZP, 0, 255], "tvmq_qparams_int16_activations": [0, OUT_ZP, 0, 255],
        "ort_session": {"intra_op_num_threads": args.threads, "inter_op_num_threads": 1,
                        "graph_optimization_level": "ORT_ENABLE_ALL", "providers": ["CPUExecutionProvider"]},
        "timed_call": {"tvmq": "time_evaluator('main', number=1, repeat, min_repeat_ms)",
                       "onnxruntime": "InferenceSession.run(None, feeds), one call per sample"}}
    result = run.record(versions=versions, settings=settings, ort_call_overhead_ms=overhead, peak=peak,
                        peak_amx=peak_amx, models=models, skipped=skipped)
    h.write_results(args.out, "layer_latency", result, render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
