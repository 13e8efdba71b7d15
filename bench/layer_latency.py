#!/usr/bin/env python3
"""Per-layer kernel latency of every tvmq precision beside onnxruntime, on real layer shapes.

Usage::

    python bench/layer_latency.py [--models mobilenetv2,light_resnet50] [--specs fp32,bf16,w8a8,w4a8,w8a16]
                                  [--threads 1] [--limit N] [--repeat 15] [--min-repeat-ms 20]
                                  [--mobilenetv2 .cache/models/mobilenetv2.onnx]

Method
------
1. **Workloads.** The layers of ``tvmq.frontend.prepare(model).layers`` become kernel workloads
   exactly as ``LowerToKernels`` makes them (``tvmq.passes.lower_kernels.layer_workload``), every
   one with the epilogue ``Epilogue(bias=True, activation="relu")``. Equal workloads are measured
   once; the table keeps the first layer's name and how many layers share the workload.
2. **tvmq kernels.** For each precision (``--specs``; by default every one the kernel registry
   has: fp32, bf16, w8a8, w4a8, w8a16): ``registry.select(op, spec, features)``
   with the host's features, the kernel's fallback configuration (no tuning), ``build_primfunc``,
   ``tvm.compile`` for the host target, and TVM's ``time_evaluator`` (``number=1``,
   ``repeat=--repeat``, ``min_repeat_ms=--min-repeat-ms``: each repeat runs the kernel back to back
   for at least that long and reports the mean; the cell is the median over repeats) on random
   arguments of the PrimFunc's parameter shapes and dtypes (integer kernels: ``qparams = [3, 5,
   0, 255]``, ``[0, 5, 0, 255]`` with int16 activations, multipliers in [2^30, 2^31), shifts
   38..42; bf16 weights are real bf16 values).
3. **onnxruntime.** Per conv workload, a one-layer ONNX model made with ``onnx.helper``:
   ``Conv`` (fp32, with bias) followed by ``Relu`` (the optimizer fuses them into one NCHWc
   ``Conv`` with ``activation=Relu``), and ``QLinearConv`` (uint8 input with zero point 3, int8
   per-output-channel weights, int32 bias, uint8 output with zero point 5), same strides / pads /
   dilations / group. Dense workloads get ``Gemm`` + ``Relu`` (``FusedGemm``) and
   ``com.microsoft.QGemm`` (same types). Sessions: ``intra_op_num_threads=--threads``,
   ``inter_op_num_threads=1``, ``ORT_ENABLE_ALL``, ``CPUExecutionProvider``. The optimizer puts
   layout conversions at the one-layer graph's edges (NCHW <-> NCHWc reorders around the fp32
   conv, NCHW <-> NHWC transposes around the int8 one) that a whole network pays once, not per
   layer; the cells time the optimized graph without them (``strip_layout``: its input and output
   are then the kernel's own layout), the JSON also has the graph as built (``graph``). After
   warmup, single ``InferenceSession.run`` calls are timed (as many as fit in ``repeat x
   min_repeat_ms``, at least 20) and the cell is their median; it includes onnxruntime's per-call
   overhead (measured once on a one-element ``Relu`` model and printed in the header). The node
   types of each optimized model are kept in the JSON.
4. **Interleaved.** For each workload all variants run one after another, so a change in the
   machine's load hits one row rather than one column; each row records how many cores other
   processes kept busy while it was measured (``/proc/stat``).

Results: ``bench/results/layer_latency.json`` (everything: per workload the layers it stands for,
kernel keys and configurations, all repeat times, errors; machine and versions) and
``bench/results/layer_latency.md`` (the tables, also printed). Nothing asserts on timings.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import json
import os
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(BENCH_DIR))

import fp32_latency as fl  # bench/ is on sys.path (above)

# the precisions measured by default, in this order, when the registry has them (--specs)
SPECS = ("fp32", "bf16", "w8a8", "w4a8", "w8a16")
ORT_FP32, ORT_INT8 = "ort_fp32", "ort_int8"
RIVALS = (ORT_FP32, ORT_INT8)
LABELS = {ORT_FP32: "ORT Conv fp32", ORT_INT8: "ORT QLinearConv"}
# (column label, numerator, denominator) of the ratio columns, shown when both are measured
RATIO_COLUMNS = (("w8a8/QLinearConv", "w8a8", ORT_INT8), ("w4a8/w8a8", "w4a8", "w8a8"),
                 ("w8a16/w8a8", "w8a16", "w8a8"))
X_ZP, OUT_ZP = 3, 5
OPSET = 17


# ---------------------------------------------------------------------------------------------
# Workloads
# ---------------------------------------------------------------------------------------------

def label(variant: str) -> str:
    return LABELS.get(variant, f"tvmq {variant}")


def short_name(name: str) -> str:
    """``/features/features.3/conv/conv.0/conv.0.0/Conv`` -> ``features.3/conv.0.0``: drop the
    op type and every path component that only prefixes the next one."""
    parts = [p for p in name.split("/") if p]
    if len(parts) > 1 and parts[-1] in ("Conv", "Gemm", "MatMul"):
        parts = parts[:-1]
    kept = [p for p, nxt in zip(parts, parts[1:] + [""]) if not nxt.startswith(p + ".")]
    return "/".join(kept) or name


def category(wl: Any) -> str:
    if not hasattr(wl, "kernel_h"):
        return "dense"
    if wl.is_depthwise:
        return "depthwise"
    return "1x1" if wl.kernel_h == wl.kernel_w == 1 else "kxk"


def shape_summary(wl: Any) -> str:
    if not hasattr(wl, "kernel_h"):
        return f"{wl.in_features}->{wl.out_features} dense"
    k = f"{wl.kernel_h}x{wl.kernel_w}"
    stride = f"s{wl.stride_h}" if wl.stride_h == wl.stride_w else f"s{wl.stride_h}x{wl.stride_w}"
    hw = f"{wl.height}x{wl.width}"
    if wl.is_depthwise:
        return f"dw {wl.in_channels} {k} {stride} {hw}"
    g = f" g{wl.groups}" if wl.groups > 1 else ""
    d = f" d{wl.dilation_h}" if (wl.dilation_h, wl.dilation_w) != (1, 1) else ""
    return f"{wl.in_channels}->{wl.out_channels} {k} {stride}{g}{d} {hw}"


def distinct_workloads(layers: Any, epilogue: Any) -> list[dict[str, Any]]:
    """One entry per distinct workload, in the order of first appearance."""
    from tvmq.passes.lower_kernels import layer_workload

    by_key: dict[str, dict[str, Any]] = {}
    for layer in layers:
        wl = layer_workload(layer, epilogue)
        entry = by_key.setdefault(wl.key(), {"workload": wl, "layers": []})
        entry["layers"].append(layer.name)
    out = []
    for entry in by_key.values():
        wl = entry["workload"]
        out.append({**entry, "first": entry["layers"][0], "count": len(entry["layers"]),
                    "macs": int(wl.macs), "category": category(wl), "shape": shape_summary(wl)})
    return out


# ---------------------------------------------------------------------------------------------
# tvmq kernels
# ---------------------------------------------------------------------------------------------

def kernel_arguments(func: Any, rng: np.random.Generator) -> list[np.ndarray]:
    """Random values for each parameter of a kernel PrimFunc, realistic where it matters."""
    from schedules.bf16 import to_bf16_bits

    dtypes = {str(p.name): str(p.dtype) for p in func.params}
    values = []
    for p in func.params:
        shape = tuple(int(d) for d in p.shape)
        dtype = str(p.dtype)
        name = str(p.name)
        if name == "qparams":  # (x_zp, out_zp, lo, hi); int16 activations are symmetric
            v = np.array([0 if dtypes.get("data") == "int16" else X_ZP, OUT_ZP, 0, 255], np.int32)
        elif name == "multiplier":
            v = rng.integers(2 ** 30, 2 ** 31, shape, dtype=np.int64).astype(np.int32)
        elif name == "shift":
            v = rng.integers(38, 43, shape).astype(np.int32)
        elif name == "out":
            v = np.zeros(shape, dtype)
        elif dtype == "float32":
            v = (rng.standard_normal(shape) * (1.0 if name == "data" else 0.05)).astype(np.float32)
        elif dtype == "uint16":  # bf16 bit patterns: real bf16 values, no NaN or denormals
            v = to_bf16_bits((rng.standard_normal(shape) * 0.05).astype(np.float32))
        elif dtype == "uint8":  # activations, or int4 weights two per byte
            v = rng.integers(0, 256, shape).astype(np.uint8)
        elif dtype == "int8":
            v = rng.integers(-127, 128, shape).astype(np.int8)
        elif dtype == "int16":  # W8A16 activations, symmetric
            v = rng.integers(-4095, 4096, shape).astype(np.int16)
        elif dtype == "int32":  # bias (and anything else integer)
            v = rng.integers(-2000, 2001, shape).astype(np.int32)
        else:
            v = np.zeros(shape, dtype)
        values.append(v)
    return values


class TvmqKernel:
    """One tvmq kernel compiled for a workload, with its arguments, ready to be timed."""

    def __init__(self, wl: Any, spec: str, features: Any, target: Any, rng: np.random.Generator) -> None:
        import tvm

        from schedules import registry

        t0 = time.perf_counter()
        kernel = registry.select(registry.op_of(wl), spec, features)
        cfg = kernel.fallback_config(wl, features)
        func = kernel.build_primfunc(wl, cfg)
        self.mod = tvm.compile(tvm.IRModule({"main": func}), target=target).jit()
        self.values = kernel_arguments(func, rng)
        self.args = [tvm.runtime.tensor(v) for v in self.values]
        self.info = {"kernel": str(kernel.key), "config": dataclasses.asdict(cfg),
                     "config_type": type(cfg).__name__,
                     "compile_s": round(time.perf_counter() - t0, 3)}
        self.mod["main"](*self.args)  # warm up (time_evaluator warms up once more per call)

    def round(self, repeat: int, min_repeat_ms: int) -> list[float]:
        """``repeat`` times in ms, each the mean of back to back calls for >= min_repeat_ms, on
        freshly allocated arguments (a kernel's time can depend on where its buffers lie by 10%:
        each round gets another placement and the pooled median the typical one)."""
        import tvm

        self.args = [tvm.runtime.tensor(v) for v in self.values]
        res = self.mod.time_evaluator("main", tvm.cpu(), number=1, repeat=repeat,
                                      min_repeat_ms=min_repeat_ms)(*self.args)
        return [float(t) * 1e3 for t in res.results]


def stats(times: Sequence[float]) -> dict[str, Any]:
    s = sorted(times)
    q = statistics.quantiles(s, n=10) if len(s) >= 2 else [s[0]] * 9
    return {"median_ms": statistics.median(s), "p10_ms": q[0], "p90_ms": q[-1], "min_ms": s[0],
            "n": len(s)}


# ---------------------------------------------------------------------------------------------
# onnxruntime rivals
# ---------------------------------------------------------------------------------------------

def rival_model(wl: Any, quantized: bool, rng: np.random.Generator) -> tuple[bytes, dict[str, np.ndarray]]:
    """A one-layer ONNX model of ``wl`` (Conv + Relu / QLinearConv, or Gemm + Relu / QGemm) and
    its feeds."""
    from onnx import TensorProto, helper, numpy_helper

    dense = not hasattr(wl, "kernel_h")
    k = wl.out_features if dense else wl.out_channels
    inits = []

    def init(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    w_float = (rng.standard_normal(wl.weight_shape) * 0.05).astype(np.float32)
    if quantized:
        x = rng.integers(0, 256, wl.data_shape).astype(np.uint8)
        w_scale = (np.abs(w_float).reshape(k, -1).max(axis=1) / 127).astype(np.float32)
        w_q = np.clip(np.round(w_float / w_scale.reshape((k,) + (1,) * (w_float.ndim - 1))),
                      -127, 127).astype(np.int8)
        x_scale, y_scale = np.float32(0.02), np.float32(0.05)
        bias = rng.integers(-2000, 2001, (k,)).astype(np.int32)
        qin = [init("x_scale", x_scale), init("x_zp", np.uint8(X_ZP))]
        qw = [init("w", w_q), init("w_scale", w_scale), init("w_zp", np.zeros(k, np.int8))]
        qy = [init("y_scale", y_scale), init("y_zp", np.uint8(OUT_ZP))]
        if dense:  # QGemm: A, a_scale, a_zp, B, b_scale, b_zp, C, y_scale, y_zp
            nodes = [helper.make_node("QGemm", ["x", *qin, *qw, init("bias", bias), *qy], ["y"],
                                      domain="com.microsoft", transB=1)]
        else:  # QLinearConv: x, x_scale, x_zp, w, w_scale, w_zp, y_scale, y_zp, B
            nodes = [helper.make_node("QLinearConv", ["x", *qin, *qw, *qy, init("bias", bias)],
                                      ["y"], **conv_attributes(wl))]
        elem = TensorProto.UINT8
    else:
        x = rng.standard_normal(wl.data_shape).astype(np.float32)
        w, b = init("w", w_float), init("bias", (rng.standard_normal(k) * 0.1).astype(np.float32))
        main = (helper.make_node("Gemm", ["x", w, b], ["acc"], transB=1) if dense
                else helper.make_node("Conv", ["x", w, b], ["acc"], **conv_attributes(wl)))
        nodes = [main, helper.make_node("Relu", ["acc"], ["y"])]
        elem = TensorProto.FLOAT
    graph = helper.make_graph(nodes, "layer", [helper.make_tensor_value_info("x", elem, wl.data_shape)],
                              [helper.make_tensor_value_info("y", elem, wl.out_shape)], inits)
    opsets = [helper.make_opsetid("", OPSET)]
    if quantized and dense:
        opsets.append(helper.make_opsetid("com.microsoft", 1))
    model = helper.make_model(graph, opset_imports=opsets, producer_name="tvmq-layer-latency")
    model.ir_version = 8
    return model.SerializeToString(), {"x": x}


def conv_attributes(wl: Any) -> dict[str, Any]:
    return {"kernel_shape": [wl.kernel_h, wl.kernel_w], "strides": [wl.stride_h, wl.stride_w],
            "pads": [wl.pad_top, wl.pad_left, wl.pad_bottom, wl.pad_right],
            "dilations": [wl.dilation_h, wl.dilation_w], "group": wl.groups}


def ort_session(model: bytes, threads: int, optimized_path: str | None = None) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    if optimized_path:
        so.optimized_model_filepath = optimized_path
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


LAYOUT_NODES = {("com.microsoft.nchwc", "ReorderInput"), ("com.microsoft.nchwc", "ReorderOutput"),
                ("", "Transpose")}


def strip_layout(opt: Any, feeds: dict[str, np.ndarray], threads: int
                 ) -> tuple[bytes, dict[str, np.ndarray], list[str]] | None:
    """``opt`` (the model as onnxruntime optimized it) without the layout conversions it put at
    the graph's edges (NCHW <-> NCHWc reorders, NCHW <-> NHWC transposes), which a whole network
    pays once rather than per layer: the graph then reads and writes the kernel's own layout.
    Returns the model, random feeds of the new input's shape and the stripped nodes' types, or
    None when there is nothing to strip."""
    import onnx
    from onnx import helper

    g = opt.graph
    nodes = list(g.node)
    in_name, out_name = g.input[0].name, g.output[0].name
    new_in, new_out, stripped = in_name, out_name, []
    if nodes and (nodes[0].domain, nodes[0].op_type) in LAYOUT_NODES and list(nodes[0].input) == [in_name]:
        new_in = nodes[0].output[0]
        stripped.append(nodes.pop(0).op_type)
    if nodes and (nodes[-1].domain, nodes[-1].op_type) in LAYOUT_NODES and list(nodes[-1].output) == [out_name]:
        new_out = nodes[-1].input[0]
        stripped.append(nodes.pop().op_type)
    if not stripped or not nodes:
        return None
    elem = g.input[0].type.tensor_type.elem_type
    # the shapes of the inner tensors: run the optimized graph once with them as outputs
    probe = onnx.ModelProto()
    probe.CopyFrom(opt)
    for name in (new_in, new_out):
        if name not in (in_name, out_name):
            probe.graph.output.append(helper.make_tensor_value_info(name, elem, None))
    sess = ort_session(probe.SerializeToString(), threads)
    got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
    got[in_name] = feeds[in_name]
    in_shape, out_shape = got[new_in].shape, got[new_out].shape
    del sess
    graph = helper.make_graph(nodes, "layer_kernel",
                              [helper.make_tensor_value_info(new_in, elem, in_shape)],
                              [helper.make_tensor_value_info(new_out, elem, out_shape)],
                              list(g.initializer))
    model = helper.make_model(graph, opset_imports=list(opt.opset_import))
    model.ir_version = opt.ir_version
    x = feeds[in_name]
    rng = np.random.default_rng(0)
    x_new = (rng.integers(0, 256, in_shape).astype(x.dtype) if x.dtype == np.uint8
             else rng.standard_normal(in_shape).astype(x.dtype))
    return model.SerializeToString(), {new_in: x_new}, stripped


def session_samples(sess: Any, feeds: dict[str, np.ndarray], budget_s: float, min_n: int) -> list[float]:
    """Times in ms of single ``run`` calls, for ``budget_s`` and at least ``min_n`` calls."""
    samples: list[float] = []
    t_end = time.perf_counter() + budget_s
    while len(samples) < min_n or time.perf_counter() < t_end:
        t = time.perf_counter()
        sess.run(None, feeds)
        samples.append((time.perf_counter() - t) * 1e3)
        if len(samples) >= 20000:
            break
    return samples


class OrtLayer:
    """A one-layer model in onnxruntime, ready to be timed: ``kernel``, the optimized graph
    without the layout conversions onnxruntime puts at its edges (``strip_layout``; the graph
    itself when there are none), and ``graph``, the model as built."""

    def __init__(self, model: bytes, feeds: dict[str, np.ndarray], threads: int, tmp: Path,
                 warmup_s: float) -> None:
        import onnx

        def node_types(m: Any) -> list[str]:
            return [(f"{n.domain}." if n.domain else "") + n.op_type for n in m.graph.node]

        opt_path = tmp / "optimized.onnx"
        self.graph = (ort_session(model, threads, str(opt_path)), feeds)
        opt = onnx.load(str(opt_path))
        self.info: dict[str, Any] = {"graph_nodes": node_types(opt), "optimized_nodes": node_types(opt),
                                     "stripped_nodes": []}
        self.kernel = self.graph
        stripped = strip_layout(opt, feeds, threads)
        if stripped is not None:
            model2, feeds2, gone = stripped
            self.kernel = (ort_session(model2, threads, str(opt_path)), feeds2)
            self.info.update(optimized_nodes=node_types(onnx.load(str(opt_path))), stripped_nodes=gone,
                             input_shape=list(next(iter(feeds2.values())).shape))
        for sess, f in {id(x): x for x in (self.graph, self.kernel)}.values():  # warm up
            session_samples(sess, f, warmup_s, 5)

    def round(self, budget_s: float, min_n: int) -> tuple[list[float], list[float]]:
        """Samples of ``kernel`` and of ``graph`` (the same list when they are the same)."""
        def fresh(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:  # a new placement
            return {n: v.copy() for n, v in feeds.items()}

        k = session_samples(self.kernel[0], fresh(self.kernel[1]), budget_s, min_n)
        g = k if self.graph is self.kernel else session_samples(self.graph[0], fresh(self.graph[1]),
                                                                budget_s, min_n)
        return k, g


def ort_call_overhead_ms(threads: int) -> float:
    """Median ``InferenceSession.run`` time of a one-element ``Relu``: the per-call overhead."""
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "overhead",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    sess = ort_session(model.SerializeToString(), threads)
    feeds = {"x": np.ones(1, np.float32)}
    for _ in range(200):
        sess.run(None, feeds)
    samples = []
    for _ in range(2000):
        t = time.perf_counter()
        sess.run(None, feeds)
        samples.append((time.perf_counter() - t) * 1e3)
    return statistics.median(samples)


# ---------------------------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------------------------

def measure_model(name: str, path: Path, args: argparse.Namespace, features: Any, target: Any,
                  tmp: Path) -> dict[str, Any]:
    from schedules import registry
    from schedules.workload import Epilogue
    from tvmq.frontend import prepare

    epilogue = Epilogue(bias=True, activation="relu")
    layers = prepare(str(path)).layers
    workloads = distinct_workloads(layers, epilogue)
    total = len(workloads)
    if args.limit is not None:
        workloads = workloads[: args.limit]
    print(f"[{name}] {len(layers)} layers, {total} distinct workloads"
          + (f", measuring the first {len(workloads)} (--limit)" if len(workloads) < total else ""),
          flush=True)
    rng = np.random.default_rng(args.seed)
    rows = []
    for i, entry in enumerate(workloads):
        wl = entry["workload"]
        row: dict[str, Any] = {k: v for k, v in entry.items() if k != "workload"}
        row["workload"] = json.loads(wl.key())
        row["op"] = registry.op_of(wl)
        busy0, own0, wall0 = fl._system_busy_s(), time.process_time(), time.perf_counter()
        load0 = os.getloadavg()[0]
        results = measure_workload(wl, args, features, target, rng, tmp)
        busy1, own1, wall = fl._system_busy_s(), time.process_time(), time.perf_counter() - wall0
        row["other_cpu_cores"] = (None if busy0 is None or busy1 is None else
                                  round(max(0.0, ((busy1 - busy0) - (own1 - own0)) / wall), 3))
        row["loadavg_1m"] = [load0, os.getloadavg()[0]]
        row["wall_s"] = round(wall, 2)
        row["results"] = results
        row["ratios"] = ratios(results)
        rows.append(row)
        cells = " ".join(f"{v}="
                         + (f"{results[v]['median_ms']:.3f}" if results[v].get("ok") else "ERR")
                         for v in (*args.spec_list, *RIVALS))
        print(f"  [{i + 1}/{len(workloads)}] {short_name(entry['first'])} x{entry['count']} "
              f"({entry['shape']}): {cells} ms  ({wall:.1f}s)", flush=True)
    sums = summed(rows, args.spec_list)
    by_category = {c: summed([r for r in rows if r["category"] == c], args.spec_list)
                   for c in ("1x1", "kxk", "depthwise", "dense") if any(r["category"] == c for r in rows)}
    return {"onnx": str(path), "layers": len(layers), "distinct_workloads": total,
            "measured_workloads": len(rows), "total_macs": int(layers.total_macs),
            "measured_layers": sum(r["count"] for r in rows), "rows": rows, "sum": sums,
            "by_category": by_category}


def measure_workload(wl: Any, args: argparse.Namespace, features: Any, target: Any,
                     rng: np.random.Generator, tmp: Path) -> dict[str, Any]:
    """Every variant of one workload, in ``--rounds`` interleaved rounds (the order reversed
    every other round); each variant's samples pooled over the rounds."""
    variants: dict[str, Any] = {}
    results: dict[str, Any] = {}
    budget_s = args.repeat * args.min_repeat_ms / 1e3
    for spec in args.spec_list:
        try:
            variants[spec] = TvmqKernel(wl, spec, features, target, rng)
        except Exception as e:  # noqa: BLE001  (reported, the other cells still run)
            results[spec] = {"ok": False, "error": f"{type(e).__name__}: {e}",
                             "traceback": traceback.format_exc(limit=3)}
    for rival, quantized in ((ORT_FP32, False), (ORT_INT8, True)):
        try:
            model, feeds = rival_model(wl, quantized, rng)
            variants[rival] = OrtLayer(model, feeds, args.threads, tmp, max(0.05, budget_s / 10))
        except Exception as e:  # noqa: BLE001
            results[rival] = {"ok": False, "error": f"{type(e).__name__}: {e}"}
    samples: dict[str, list[float]] = {v: [] for v in variants}
    graph_samples: dict[str, list[float]] = {v: [] for v in variants}
    round_medians: dict[str, list[float]] = {v: [] for v in variants}
    per_round = -(-args.repeat // args.rounds)
    order = list(variants)
    for r in range(args.rounds):
        for v in order if r % 2 == 0 else order[::-1]:
            if v in results:  # failed in an earlier round
                continue
            try:
                if isinstance(variants[v], TvmqKernel):
                    got = variants[v].round(per_round, args.min_repeat_ms)
                else:
                    got, graph = variants[v].round(budget_s / args.rounds, 10)
                    graph_samples[v] += graph
            except Exception as e:  # noqa: BLE001
                results[v] = {"ok": False, "error": f"{type(e).__name__}: {e}"}
                continue
            samples[v] += got
            round_medians[v].append(statistics.median(got))
    for v, variant in variants.items():
        if v in results:
            continue
        res = {"ok": True, **variant.info, **stats(samples[v]), "round_medians_ms": round_medians[v]}
        if isinstance(variant, TvmqKernel):
            res["repeat_ms"] = samples[v]
        else:
            res["graph"] = stats(graph_samples[v])
        results[v] = res
    del variants
    return {v: results[v] for v in (*args.spec_list, *RIVALS)}


def median_of(results: dict[str, Any], variant: str) -> float | None:
    r = results.get(variant)
    return r["median_ms"] if r and r.get("ok") else None


def ratios(results: dict[str, Any]) -> dict[str, float | None]:
    def ratio(a: str, b: str) -> float | None:
        x, y = median_of(results, a), median_of(results, b)
        return x / y if x is not None and y else None

    return {"w8a8/ort_int8": ratio("w8a8", ORT_INT8), "w4a8/w8a8": ratio("w4a8", "w8a8"),
            "w8a16/w8a8": ratio("w8a16", "w8a8"), "fp32/ort_fp32": ratio("fp32", ORT_FP32),
            "bf16/fp32": ratio("bf16", "fp32"), "w8a8/fp32": ratio("w8a8", "fp32"),
            "ort_int8/ort_fp32": ratio(ORT_INT8, ORT_FP32)}


def summed(rows: list[dict[str, Any]], specs: Sequence[str]) -> dict[str, Any]:
    """Each variant's median x layer count, summed (``None`` if any workload failed)."""
    out: dict[str, Any] = {"workloads": len(rows), "layers": sum(r["count"] for r in rows),
                           "macs": sum(r["macs"] * r["count"] for r in rows)}
    medians = {}
    for v in (*specs, *RIVALS):
        ts = [median_of(r["results"], v) for r in rows]
        medians[v] = (sum(t * r["count"] for t, r in zip(ts, rows))
                      if rows and all(t is not None for t in ts) else None)
    out["median_ms"] = medians
    graph = {}
    for v in RIVALS:  # the one-layer graphs as built, with their edge layout conversions
        ts = [r["results"][v]["graph"]["median_ms"] if r["results"][v].get("ok") else None for r in rows]
        graph[v] = (sum(t * r["count"] for t, r in zip(ts, rows))
                    if rows and all(t is not None for t in ts) else None)
    out["rival_graph_median_ms"] = graph
    out["ratios"] = ratios({v: {"ok": t is not None, "median_ms": t} for v, t in medians.items()})
    return out


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------

def fmt_ms(t: float | None) -> str:
    if t is None:
        return "err"
    return f"{t:.3f}" if t < 10 else f"{t:.2f}"


def fmt(x: float | None, digits: int = 2) -> str:
    return "" if x is None else f"{x:.{digits}f}"


def gops(macs: int, t: float | None) -> float | None:
    return None if t is None or t <= 0 else 2 * macs / (t * 1e-3) / 1e9


def ratio_columns(specs: Sequence[str]) -> list[tuple[str, str, str]]:
    present = {*specs, *RIVALS}
    return [c for c in RATIO_COLUMNS if c[1] in present and c[2] in present]


def ratio_cells(res: dict[str, Any], specs: Sequence[str]) -> list[str]:
    out = []
    for _, a, b in ratio_columns(specs):
        x, y = median_of(res, a), median_of(res, b)
        out.append(fmt(x / y if x is not None and y else None))
    return out


def model_table(model: dict[str, Any], specs: Sequence[str]) -> str:
    gops_cols = [v for v in ("w8a8", ORT_INT8) if v in (*specs, *RIVALS)]
    head = (["layer (first, count)", "shape", "MMAC"] + [label(s) for s in (*specs, *RIVALS)]
            + [f"GOPS {label(v).split()[-1]}" for v in gops_cols]
            + [c[0] for c in ratio_columns(specs)])
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]

    def cells(res: dict[str, Any], macs: int, rat: dict[str, Any]) -> list[str]:
        return ([fmt_ms(median_of(res, v)) for v in (*specs, *RIVALS)]
                + [fmt(gops(macs, median_of(res, v)), 1) for v in gops_cols]
                + ratio_cells(res, specs))

    for r in model["rows"]:
        lines.append("| " + " | ".join([f"{short_name(r['first'])} x{r['count']}", r["shape"],
                                         f"{r['macs'] / 1e6:.1f}", *cells(r["results"], r["macs"], r["ratios"])]) + " |")
    s = model["sum"]
    res = {v: {"ok": t is not None, "median_ms": t} for v, t in s["median_ms"].items()}
    lines.append("| " + " | ".join([f"**sum** ({s['layers']} layers)", "each x count",
                                     f"{s['macs'] / 1e6:.1f}", *cells(res, s["macs"], s["ratios"])]) + " |")
    return "\n".join(lines)


def category_table(model: dict[str, Any], specs: Sequence[str]) -> str:
    head = (["kind", "layers", "MMAC"] + [label(s) for s in (*specs, *RIVALS)]
            + [c[0] for c in ratio_columns(specs)])
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for cat, s in model["by_category"].items():
        res = {v: {"ok": t is not None, "median_ms": t} for v, t in s["median_ms"].items()}
        lines.append("| " + " | ".join([cat, str(s["layers"]), f"{s['macs'] / 1e6:.1f}",
                                         *[fmt_ms(s["median_ms"][v]) for v in (*specs, *RIVALS)],
                                         *ratio_cells(res, specs)]) + " |")
    return "\n".join(lines)


def model_notes(name: str, model: dict[str, Any], specs: Sequence[str], spare_cores: float) -> list[str]:
    notes = []
    rows = model["rows"]
    if "w4a8" in specs and "w8a8" in specs:
        faster = [r for r in rows if (r["ratios"]["w4a8/w8a8"] or 1) < 0.95]
        slower = [r for r in rows if (r["ratios"]["w4a8/w8a8"] or 1) > 1.05]
        same = len(rows) - len(faster) - len(slower)
        notes.append(f"{name}: w4a8 at least 5% faster than w8a8 on {len(faster)} workloads "
                     f"({sum(r['count'] for r in faster)} layers), at least 5% slower on "
                     f"{len(slower)} ({sum(r['count'] for r in slower)} layers), within 5% on {same}")
    kernels: dict[str, int] = {}
    for r in rows:
        for v in specs:
            if r["results"][v].get("ok"):
                kernels[r["results"][v]["kernel"]] = kernels.get(r["results"][v]["kernel"], 0) + 1
    notes.append(f"{name} tvmq kernels (workloads): "
                 + ", ".join(f"`{k}` x{n}" for k, n in sorted(kernels.items())))
    ort_nodes: dict[str, int] = {}
    for r in rows:
        for v in RIVALS:
            if r["results"][v].get("ok"):
                res = r["results"][v]
                key = f"{label(v)}: " + "+".join(res["optimized_nodes"]) + (
                    f" (edges stripped: {'+'.join(res['stripped_nodes'])})" if res["stripped_nodes"] else "")
                ort_nodes[key] = ort_nodes.get(key, 0) + 1
    notes.append(f"{name} onnxruntime graphs timed, as optimized (workloads): "
                 + ", ".join(f"{k} x{n}" for k, n in sorted(ort_nodes.items())))
    g = model["sum"]["rival_graph_median_ms"]
    notes.append(f"{name}: onnxruntime's one-layer graphs as built, with the layout conversions "
                 f"it adds at their edges (NCHWc reorders, NHWC transposes; paid once per network, "
                 f"not per layer), sum to {fmt_ms(g[ORT_FP32])} ms (Conv fp32) and "
                 f"{fmt_ms(g[ORT_INT8])} ms (QLinearConv) instead of "
                 f"{fmt_ms(model['sum']['median_ms'][ORT_FP32])} and "
                 f"{fmt_ms(model['sum']['median_ms'][ORT_INT8])}")
    for r in rows:
        for v, res in r["results"].items():
            if not res.get("ok"):
                notes.append(f"{name} {short_name(r['first'])} {label(v)} FAILED: {res['error']}")
    noisy = []
    for r in rows:
        spread = [v for v, res in r["results"].items() if res.get("ok")
                  and min(res["round_medians_ms"]) > 0
                  and max(res["round_medians_ms"]) / min(res["round_medians_ms"]) > fl.NOISY_ROUND_SPREAD]
        if spread:
            noisy.append(f"{short_name(r['first'])} ({', '.join(spread)})")
    if noisy:
        notes.append(f"{name}: noisy (per-round medians more than "
                     f"{(fl.NOISY_ROUND_SPREAD - 1) * 100:.0f}% apart): " + ", ".join(noisy))
    contended = [r for r in rows if (r["other_cpu_cores"] or 0) > spare_cores + 0.1]
    if contended:
        notes.append(f"{name}: other processes wanted more than the {spare_cores:g} spare core(s) "
                     f"while measuring " + ", ".join(f"{short_name(r['first'])} "
                                                     f"({r['other_cpu_cores']:.2f} cores)" for r in contended))
    if model["measured_workloads"] < model["distinct_workloads"]:
        notes.append(f"{name}: only the first {model['measured_workloads']} of "
                     f"{model['distinct_workloads']} workloads measured (--limit): the sums are partial")
    return notes


def render(result: dict[str, Any]) -> str:
    m, s = result["machine"], result["settings"]
    flags = ",".join(f for f, on in m["cpu_flags"].items() if on) or "none"
    busy = [r["other_cpu_cores"] for mod in result["models"].values() for r in mod["rows"]
            if r["other_cpu_cores"] is not None]
    out = [f"Per-layer kernel latency, batch 1, {s['threads']} thread(s): tvmq's kernels "
           f"(fallback configs, untuned; ISA level {s['isa']}) beside onnxruntime "
           f"{result['versions']['onnxruntime']} on the same shapes. {m['cpu_model']}, {m['nproc']} "
           f"CPUs ({flags}); load average {m['loadavg_before'][0]:.2f} before, "
           f"{m['loadavg_after'][0]:.2f} after; {result['date_utc'][:16].replace('T', ' ')} UTC"
           + (f"; other processes kept {statistics.fmean(busy):.2f} cores busy on average "
              f"(max {max(busy):.2f})" if busy else "") + ".",
           "",
           (f"Cells: ms per call; each workload's variants are timed in {s['rounds']} interleaved "
           f"rounds and pooled. tvmq: median over {s['rounds'] * -(-s['repeat'] // s['rounds'])} "
           f"repeats of the mean time of back to back calls for >= {s['min_repeat_ms']} ms (TVM "
           f"time_evaluator). onnxruntime: median of single `InferenceSession.run` calls for "
           f"~{s['repeat'] * s['min_repeat_ms']} ms, "
           f"including its per-call overhead ({result['ort_call_overhead_ms'] * 1e3:.1f} us for a "
           "one-element Relu), on the graph onnxruntime's optimizer makes of a one-layer model "
           "minus the layout conversions it puts at the graph's edges (NCHW to NCHWc reorders for "
           "fp32, NHWC transposes for int8: a network pays them once, not per layer; the notes give "
           "the sums with them). Every layer with the epilogue bias + ReLU; ORT Conv fp32 is Conv + "
           "Relu (fused), dense rows use Gemm + Relu and QGemm. GOPS = 2 x MACs / time. Ratios "
           "below 1: the first is faster. The sum row adds each workload's time x its count."), ""]
    for name, model in result["models"].items():
        out += [f"### {name}", "", model_table(model, s["specs"]), "", category_table(model, s["specs"]), ""]
    spare = max(0, m["nproc"] - s["threads"])
    notes = [n for name, model in result["models"].items()
             for n in model_notes(name, model, s["specs"], spare)]
    notes += [f"{n}: SKIPPED, {why}" for n, why in result["skipped"].items()]
    out += [f"- {n}" for n in notes]
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------

def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(fl.ALL_MODELS),
                   help=f"comma-separated subset of {','.join(fl.ALL_MODELS)} (default: all)")
    p.add_argument("--specs", default=None,
                   help=f"comma-separated tvmq precisions (default: every one the kernel registry "
                        f"has, {','.join(SPECS)} first)")
    p.add_argument("--threads", type=int, default=1, help="threads for TVM and onnxruntime (default 1)")
    p.add_argument("--limit", type=int, default=None,
                   help="measure only the first N distinct workloads of each model (quick runs)")
    p.add_argument("--repeat", type=int, default=15,
                   help="timed repeats per tvmq kernel, over all rounds (default 15)")
    p.add_argument("--rounds", type=int, default=3,
                   help="interleaved rounds per workload, the repeats split between them (default 3)")
    p.add_argument("--min-repeat-ms", type=int, default=20,
                   help="minimum duration of one repeat in ms (default 20)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random arguments (default 0)")
    p.add_argument("--mobilenetv2", type=Path, default=fl.DEFAULT_MOBILENETV2,
                   help="MobileNetV2 ONNX file (default .cache/models/mobilenetv2.onnx)")
    p.add_argument("--output", type=Path, default=fl.RESULTS_DIR / "layer_latency.json",
                   help="JSON result path; the .md table goes beside it")
    args = p.parse_args(argv)
    args.model_list = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in args.model_list if m not in fl.ALL_MODELS]
    if unknown:
        p.error(f"unknown model(s) {unknown}; choose from {list(fl.ALL_MODELS)}")
    args.spec_list = (None if args.specs is None
                      else [s.strip() for s in args.specs.split(",") if s.strip()])
    if args.spec_list is not None and not args.spec_list:
        p.error("--specs is empty")
    args.error = p.error  # the precisions are checked against the registry once tvm is imported
    if args.threads < 1 or args.repeat < 1 or args.rounds < 1 or args.min_repeat_ms < 0:
        p.error("--threads, --repeat and --rounds must be >= 1, --min-repeat-ms >= 0")
    if args.limit is not None and args.limit < 1:
        p.error("--limit must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # before tvm is imported: the runtime sizes its thread pool from it
    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    import onnxruntime
    import tvm

    from schedules import registry
    from schedules.target_features import detect_host

    known = {k.precision for k in registry.registered_keys()}
    if args.spec_list is None:
        args.spec_list = [s for s in SPECS if s in known] + sorted(known - set(SPECS))
    elif unknown := [s for s in args.spec_list if s not in known]:
        args.error(f"unknown precision(s) {unknown}; the kernel registry has {sorted(known)}")
    versions = {"tvm": tvm.__version__, "onnxruntime": onnxruntime.__version__,
                "onnx": fl.package_version("onnx"), "numpy": np.__version__,
                "tvmq_git": fl.git_revision(), "tvmq_sources_sha256": fl.tvmq_source_hash()}
    started = _dt.datetime.now(_dt.timezone.utc)
    load_before = os.getloadavg()
    print(f"load average before: {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}",
          flush=True)
    features = detect_host()
    target = tvm.target.Target(features.target_json())
    found, skipped = fl.find_models(args)
    overhead = ort_call_overhead_ms(args.threads)
    print(f"onnxruntime per-call overhead (one-element Relu): {overhead * 1e3:.1f} us", flush=True)
    models = {}
    with tempfile.TemporaryDirectory(prefix="tvmq-layer-") as tmp:
        for name, path in found.items():
            models[name] = measure_model(name, path, args, features, target, Path(tmp))
    load_after = os.getloadavg()
    result = {
        "benchmark": "layer_latency",
        "date_utc": started.isoformat(timespec="seconds"),
        "duration_s": round((_dt.datetime.now(_dt.timezone.utc) - started).total_seconds(), 1),
        "machine": {**fl.machine_info(), "loadavg_before": load_before, "loadavg_after": load_after},
        "versions": versions,  # taken at the start: the sources the kernels were built from
        "settings": {"models": args.model_list, "specs": args.spec_list, "threads": args.threads,
                     "limit": args.limit, "repeat": args.repeat, "rounds": args.rounds, "min_repeat_ms": args.min_repeat_ms,
                     "seed": args.seed, "epilogue": "Epilogue(bias=True, activation='relu')",
                     "isa": features.isa, "target": features.target_json(),
                     "features": dataclasses.asdict(features),
                     "tvmq_qparams": [X_ZP, OUT_ZP, 0, 255],
                     "tvmq_qparams_int16_activations": [0, OUT_ZP, 0, 255],
                     "ort_session": {"intra_op_num_threads": args.threads, "inter_op_num_threads": 1,
                                     "graph_optimization_level": "ORT_ENABLE_ALL",
                                     "providers": ["CPUExecutionProvider"]},
                     "timed_call": {"tvmq": "time_evaluator('main', number=1, repeat, min_repeat_ms)",
                                    "onnxruntime": "InferenceSession.run(None, feeds), one call per sample"}},
        "ort_call_overhead_ms": overhead,
        "models": models,
        "skipped": skipped,
    }
    report = render(result)
    print("\n" + report)
    fl.write_results(args.output, result, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
