"""``tvmq`` command line: each subcommand wraps one library function.

    tvmq compile model.onnx -o out/ [--isa avx2] [--batch-size 1] [--input-shape name=1,3,224,224]
    tvmq compile model.onnx --bits w8a8 --calibration calib.npz [--keep-fp32 first] -o out/
    tvmq bench out/ [--threads 1] [--repeat 50] [--compare model.onnx]
    tvmq bench out/ --profile [--top 20]   # time per compiled function (and its layers) in a run
    tvmq info model.onnx          # layer table, unsupported ops, without compiling
    tvmq calibrate model.onnx --data calib.npz -o calibration.json
    tvmq tune model.onnx --specs w8a8,w4a8,w8a16,bf16,fp32 --trials 16 --db tuning.jsonl [--rpc host:port:key]
    tvmq compile model.onnx ... --db tuning.jsonl    # each kernel on its best measured configuration
    tvmq merge-db a.jsonl b.jsonl -o all.jsonl
    tvmq analyze model.onnx --calibration calib.npz -o sensitivity.json   # per-layer SQNR per spec
    tvmq compile model.onnx --calibration calib.npz --latency-budget 0.8x --db tuning.jsonl -o out/
    tvmq compile ... --size-budget 0.7x -o out/ --no-resume   # recompute what a rerun would reuse
    tvmq report out/

Errors a user can cause print one line ``tvmq: error: ...`` and exit with status 2. Each command
imports what it runs inside its own function, so ``tvmq --help`` and argument errors answer
without importing TVM.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, NoReturn, Sequence

import numpy as np

from schedules.target_features import ISA_LEVELS, detect_host
from schedules.workload import REQUANT_MODES

from .errors import TvmqError
from .specs import NAMES as SPEC_NAMES
from .specs import REDUCED
from .specs import check as check_specs


class _Progress:
    """One line per step with the elapsed time (stderr, so stdout stays parseable)."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.t0 = time.perf_counter()

    def __call__(self, msg: str) -> None:
        if not self.quiet:
            print(f"[{time.perf_counter() - self.t0:6.1f}s] {msg}", file=sys.stderr, flush=True)


def _parse_shapes(items: Sequence[str]) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for item in items:
        name, sep, dims = item.rpartition("=")
        if not sep or not name:
            raise TvmqError(f"--input-shape expects name=d0,d1,..., got {item!r}")
        try:
            shapes[name] = tuple(int(d) for d in dims.split(","))
        except ValueError:
            raise TvmqError(f"--input-shape {item!r}: dimensions must be integers") from None
        if any(d < 1 for d in shapes[name]):
            raise TvmqError(f"--input-shape {item!r}: dimensions must be >= 1")
    return shapes


# ---- checks of paths and arguments, made before any work (nothing is computed, then refused)

def _input_file(path: str | None, what: str, *, folder_ok: bool = False) -> None:
    """``path`` (when given) must exist and be a file (or a folder where ``folder_ok``)."""
    if path is None:
        return
    p = Path(path)
    if not p.exists():
        raise TvmqError(f"{what} not found: {path}")
    if p.is_dir() and not folder_ok:
        raise TvmqError(f"{what} {path} is a directory, not a file")


def _writable_dir(path: Path) -> None:
    """A file can be created in ``path`` (tried: permission bits do not bind root)."""
    import tempfile

    try:
        fd, name = tempfile.mkstemp(dir=path, prefix=".tvmq-probe-")
        os.close(fd)
        os.unlink(name)
    except OSError as e:
        raise TvmqError(f"cannot write into {path}: {e.strerror or e}") from None


def _output_file(path: str, what: str) -> None:
    """``path`` can be written: not a directory, in an existing, writable directory."""
    p = Path(path)
    if p.is_dir():
        raise TvmqError(f"{what} {path} is a directory; give a file name")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise TvmqError(f"cannot write {what} {path}: directory {parent} does not exist")
    _writable_dir(parent)


def _output_dir(path: str) -> None:
    """``path`` is (or can be created as) a writable directory."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise TvmqError(f"output path exists and is not a directory: {path}")
    q = p
    while not q.exists():
        q = q.parent
    if not q.is_dir():
        raise TvmqError(f"cannot create output directory {path}: {q} is a file")
    _writable_dir(q)


def _check_tracker(host: str, port: int, key: str, timeout: float = 5.0) -> None:
    """The RPC tracker answers (its magic number) within ``timeout`` seconds, and ``key`` is
    registered with it: otherwise one clear error now, not a minute of retries per candidate."""
    import socket
    import struct

    magic = 0x2F271  # tvm.rpc.base.RPC_TRACKER_MAGIC
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(struct.pack("<i", magic))
            answer = b""
            while len(answer) < 4:
                chunk = sock.recv(4 - len(answer))
                if not chunk:
                    break
                answer += chunk
            if len(answer) < 4 or struct.unpack("<i", answer)[0] != magic:
                raise TvmqError(f"{host}:{port} is not a TVM RPC tracker (it did not answer the tracker "
                                f"handshake)")
            request = json.dumps([3]).encode()  # TrackerCode.SUMMARY
            sock.sendall(struct.pack("<i", len(request)) + request)
            size = struct.unpack("<i", _recv_exactly(sock, 4))[0]
            summary = json.loads(_recv_exactly(sock, size))
    except OSError as e:
        raise TvmqError(f"cannot reach the RPC tracker at {host}:{port}: {e.strerror or e}") from None
    queues = summary[1].get("queue_info", {}) if isinstance(summary, list) and len(summary) > 1 else {}
    if isinstance(queues, dict) and key not in queues:
        raise TvmqError(f"no device is registered as {key!r} with the RPC tracker at {host}:{port} "
                        f"(registered: {', '.join(sorted(queues)) or 'none'})")


def _recv_exactly(sock, n: int) -> bytes:  # type: ignore[no-untyped-def]
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise OSError("the tracker closed the connection")
        data += chunk
    return data


def _check_compile(args: argparse.Namespace) -> None:
    """Every path and value of ``tvmq compile`` before any work."""
    from .frontend import load_model

    _parse_shapes(args.input_shape)  # the arguments first, then the files
    _output_dir(args.output)
    _input_file(args.db, "tuning database")
    _input_file(args.calibration, "calibration data", folder_ok=True)
    mixed = args.latency_budget or args.size_budget or args.bops_budget
    if args.eval_labels and not args.eval_data:
        raise TvmqError("--eval-labels needs --eval-data (the inputs the labels belong to)")
    if (args.eval_data or args.eval_labels) and not mixed:
        raise TvmqError("--eval-data / --eval-labels belong to a mixed-precision compile (with a budget)")
    if mixed:
        from .pipeline import check_budgets

        if args.bits != "fp32" or args.keep_fp32:
            raise TvmqError("--bits/--keep-fp32 fix the plan; a budget lets tvmq choose it: give one or the other")
        if args.calibration is None:
            raise TvmqError("a mixed-precision compile needs --calibration (the unlabeled inputs)")
        check_specs([s.strip() for s in args.specs.split(",") if s.strip()], "--specs")
        check_budgets(latency=args.latency_budget, size=args.size_budget, bops=args.bops_budget, db=args.db)
        _input_file(args.eval_data, "evaluation data", folder_ok=True)
        _input_file(args.eval_labels, "evaluation labels")
    load_model(args.model)



def _features(isa: str | None):  # type: ignore[no-untyped-def]
    host = detect_host()
    if isa is None:
        return host
    try:
        return host.with_isa(isa)
    except ValueError as e:
        raise TvmqError(str(e)) from None


def _quantization(args: argparse.Namespace, features, progress, model=None):  # type: ignore[no-untyped-def]
    """``--bits`` / ``--calibration`` -> (plan, stats), or (None, None) for fp32."""
    from .plan import PrecisionPlan, QuantSpec

    spec = QuantSpec.parse(args.bits)
    if spec.name == "fp32" and not args.keep_fp32:
        return None, None
    if spec.is_float:  # bf16 (with or without fp32 layers): no calibration needed
        from .frontend import prepare

        pm = prepare(args.model, input_shapes=_parse_shapes(args.input_shape), batch_size=args.batch_size)
        keep = [k for k in (args.keep_fp32 or "").split(",") if k]
        return PrecisionPlan.uniform(pm.layers, spec, keep_fp32=keep), None
    if args.calibration is None:
        raise TvmqError(f"--bits {args.bits} needs --calibration (a .npy/.npz file, a folder of "
                        f"images, or the calibration.json written by `tvmq calibrate`)")
    from .calibration import ActivationStats, CalibrationData, collect
    from .frontend import prepare
    from .recipe import with_recipe

    model = args.model if model is None else model
    pm = prepare(model, input_shapes=_parse_shapes(args.input_shape), batch_size=args.batch_size)
    keep = [k for k in (args.keep_fp32 or "").split(",") if k]
    plan = PrecisionPlan.uniform(pm.layers, spec, keep_fp32=keep)
    if str(args.calibration).endswith(".json"):
        stats = ActivationStats.load(args.calibration)
        if (args.gptq or args.hessian_clipping) and not stats.hessians:
            flag = "--gptq" if args.gptq else "--hessian-clipping"
            raise TvmqError(f"{flag} needs Hessians in {args.calibration}: `tvmq calibrate --gptq`")
    else:
        data = CalibrationData.from_source(args.calibration, pm.inputs, limit=args.calibration_limit)
        progress(f"calibrating on {len(data)} samples")
        stats = collect(model, data, features=features, progress=progress,
                        hessians=args.gptq or args.hessian_clipping,
                        input_shapes=_parse_shapes(args.input_shape), batch_size=args.batch_size)
    return plan, with_recipe(stats, gptq=args.gptq, bias_correction=args.bias_correction,
                             hessian_clipping=args.hessian_clipping, narrow_weights=_narrow_weights(args, features, progress))


def _ptq_model(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """The model to compile: ``args.model``, equalized with ``--equalize``."""
    if not getattr(args, "equalize", False):
        return args.model
    from .equalize import equalize

    return equalize(args.model, input_shapes=_parse_shapes(getattr(args, "input_shape", [])),
                    batch_size=getattr(args, "batch_size", 1))


def cmd_compile(args: argparse.Namespace) -> int:
    from .builder import build

    _check_compile(args)
    progress = _Progress(args.quiet)
    features = _features(args.isa)
    if args.latency_budget or args.size_budget or args.bops_budget:
        return _compile_mixed(args, features, progress)
    model = _ptq_model(args)
    plan, stats = _quantization(args, features, progress, model)
    result = build(model, args.output, features=features,
                   input_shapes=_parse_shapes(args.input_shape), batch_size=args.batch_size,
                   plan=plan, stats=stats, range_method=args.range, db=args.db,
                   threads=args.threads, requant=args.requant, progress=progress)
    m = result.manifest_data
    progress(f"wrote {result.library} and {result.manifest}")
    precision = m["precision"] if isinstance(m["precision"], str) else "+".join(m["precision"])
    print(f"compiled {len(m['layers'])} layers ({m['total_macs'] / 1e6:.1f} MMAC, "
          f"{m['weight_bytes'] / 1e6:.2f} MB of weights, {m['weight_bytes_fp32'] / 1e6:.2f} MB as fp32) "
          f"in {precision} for {m['isa']} "
          f"in {sum(result.timings.values()):.1f}s -> {result.library}")
    return 0


def _compile_mixed(args: argparse.Namespace, features, progress) -> int:  # type: ignore[no-untyped-def]
    from .pipeline import compile_mixed

    if args.bits != "fp32" or args.keep_fp32:
        raise TvmqError("--bits/--keep-fp32 fix the plan; a budget lets tvmq choose it: give one or the other")
    if args.calibration is None:
        raise TvmqError("a mixed-precision compile needs --calibration (the unlabeled inputs)")
    specs = [s.strip() for s in args.specs.split(",") if s.strip()]
    r = compile_mixed(args.model, args.calibration, args.output, latency_budget=args.latency_budget,
                      size_budget=args.size_budget, bops_budget=args.bops_budget, db=args.db,
                      specs=specs, threads=args.threads, features=features, range_method=args.range,
                      eval_data=args.eval_data, eval_labels=args.eval_labels, resume=args.resume,
                      requant=args.requant, equalize=args.equalize, gptq=args.gptq,
                      bias_correction=args.bias_correction, hessian_clipping=args.hessian_clipping,
                      narrow_weights=_narrow_weights(args, features, progress), input_shapes=_parse_shapes(args.input_shape),
                      batch_size=args.batch_size, progress=progress)
    counts = ", ".join(f"{s} x{list(r.plan.values()).count(s)}" for s in specs if s in r.plan.values())
    pred = f"{r.predicted_ms:.2f} ms predicted, " if args.db else ""
    meas = f"{r.measured_ms:.2f} ms measured" if r.measured_ms is not None else "not measured"
    print(f"compiled {len(r.plan)} layers ({counts}); allocation {r.allocation.status}"
          f"{', binding: ' + ', '.join(r.allocation.binding) if r.allocation.binding else ''}; "
          f"{r.build.manifest_data['weight_bytes'] / 1e6:.2f} MB of weights; {pred}{meas} "
          f"({args.threads} thread(s)) -> {r.build.library}" + (f"; report {r.report}" if r.report else ""))
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    from .calibration import ActivationStats, CalibrationData, collect
    from .frontend import prepare
    from .sensitivity import analyze

    from .recipe import with_recipe

    shapes = {"input_shapes": _parse_shapes(args.input_shape), "batch_size": args.batch_size}
    _output_file(args.output, "-o")
    _input_file(args.stats, "--stats")
    _input_file(args.calibration, "calibration data", folder_ok=True)
    progress = _Progress(args.quiet)
    features = _features(args.isa)
    pm = prepare(args.model, **shapes)  # the model and its input shapes, before any work
    model = _ptq_model(args)
    data = CalibrationData.from_source(args.calibration, pm.inputs, limit=args.limit)
    stats = (ActivationStats.load(args.stats) if args.stats
             else collect(model, data, features=features, progress=progress,
                          hessians=args.gptq or args.hessian_clipping, **shapes))
    stats = with_recipe(stats, gptq=args.gptq, bias_correction=args.bias_correction,
                        hessian_clipping=args.hessian_clipping, narrow_weights=_narrow_weights(args, features, progress))
    specs = [s.strip() for s in args.specs.split(",") if s.strip()]
    r = analyze(model, stats, data, specs=specs, range_method=args.range, features=features,
                output=args.output, progress=progress,
                contexts=["alone", "w8a8"] if args.w8a8_context else ["alone"], **shapes)
    print(f"{'layer':<48} " + " ".join(f"{s:>8}" for s in r.specs) + "   (output SQNR dB, layer alone)")
    for layer in r.layers:
        print(f"{layer[:48]:<48} " + " ".join(f"{r.sqnr_db(layer, s):>8.1f}" for s in r.specs))
    print(f"{len(r.layers)} layers on {r.meta['samples']} samples -> {args.output}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import render

    path = render(args.output_dir)
    print(f"wrote {path}")
    return 0


def _ort_session(path: str, threads: int):  # type: ignore[no-untyped-def]
    try:
        import onnxruntime as ort
    except ImportError:
        raise TvmqError("--compare needs onnxruntime: pip install onnxruntime") from None
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def cmd_bench(args: argparse.Namespace) -> int:
    from .runtime import BenchmarkResult, load

    _input_file(args.compare, "--compare model")
    m = load(args.model)
    rng = np.random.default_rng(0)
    feeds = {n: rng.standard_normal(s).astype(d) for n, s, d in m.inputs}
    if args.profile:
        if args.compare:
            raise TvmqError("--profile times tvmq's own functions: it does not take --compare")
        p = m.profile(feeds, warmup=args.warmup, repeat=args.repeat, threads=args.threads)
        print(json.dumps(p.to_json()) if args.json else p.table(args.top))
        return 0
    r = m.benchmark(feeds, warmup=args.warmup, repeat=args.repeat, threads=args.threads)
    rows = [("tvmq", r)]
    if args.compare:
        from .frontend import load_model

        load_model(args.compare)  # a clear error for a bad file before onnxruntime sees it
        sess = _ort_session(args.compare, r.threads)
        theirs = sorted(i.name for i in sess.get_inputs())
        if theirs != sorted(feeds):
            raise TvmqError(f"--compare {args.compare} takes inputs {theirs}, the compiled model "
                            f"{sorted(feeds)}: not the same model")
        ort_feeds = dict(feeds)
        for _ in range(args.warmup):
            sess.run(None, ort_feeds)
        samples = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            sess.run(None, ort_feeds)
            samples.append((time.perf_counter() - t) * 1e3)
        rows.append(("onnxruntime", BenchmarkResult.from_samples(samples, r.threads)))
    if args.json:
        print(json.dumps({name: res.to_json() for name, res in rows}))
        return 0
    print(f"{'runtime':<12} {'threads':>7} {'median ms':>10} {'p10-p90 ms':>16} {'n':>5}")
    for name, res in rows:
        print(f"{name:<12} {res.threads:>7} {res.median_ms:>10.3f} "
              f"{res.p10_ms:>7.3f}-{res.p90_ms:<8.3f} {res.n:>5}")
    if len(rows) == 2:
        print(f"tvmq / onnxruntime = {rows[0][1].median_ms / rows[1][1].median_ms:.2f}x (medians)")
    return 0


def _info_compiled(folder: Path) -> int:
    """What a compiled model runs: each layer's precision and kernel, and its float islands."""
    try:
        m = json.loads((folder / "manifest.json").read_text())
        plan, kernels, islands = m.get("plan") or {}, m["kernels"], m.get("float_islands", [])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise TvmqError(f"{folder}: not a compiled tvmq model ({e})") from None
    print(f"{m.get('source_model', '?')} compiled for {m.get('isa', '?')}, precision {m.get('precision')}")
    from .plan import QuantSpec

    layers = plan.get("layers", {}) if isinstance(plan, dict) else {}
    print(f"{'layer':<48} {'spec':<6} kernel")
    for name, k in kernels.items():
        spec = QuantSpec.from_json(layers[name]).name if name in layers else "fp32"
        print(f"{name[:48]:<48} {spec:<6} {k.get('kernel', '?')}")
    print(f"{len(islands)} float island(s)")
    for i, island in enumerate(islands):
        ops = ", ".join(f"{o['op']} ({o['var']})" for o in island["ops"])
        print(f"  island {i}: {ops} -> {', '.join(island['feeds'])}: {island['reason']}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from .frontend import prepare

    if Path(args.model).is_dir():
        return _info_compiled(Path(args.model))
    pm = prepare(args.model, input_shapes=_parse_shapes(args.input_shape), batch_size=args.batch_size)
    print(f"inputs:  {[s.to_json() for s in pm.inputs]}")
    print(f"outputs: {[s.to_json() for s in pm.outputs]}")
    print(f"{'layer':<48} {'op':<17} {'weight':<18} {'MMAC':>8}")
    for l in pm.layers:
        print(f"{l.name[:48]:<48} {l.op:<17} {str(l.weight_shape):<18} {l.macs / 1e6:>8.2f}")
    print(f"{len(pm.layers)} layers, {pm.layers.total_macs / 1e6:.1f} MMAC")
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from .calibration import CalibrationData, collect
    from .frontend import prepare

    _output_file(args.output, "-o")
    progress = _Progress(args.quiet)
    shapes = _parse_shapes(args.input_shape)
    model = _ptq_model(args)
    pm = prepare(model, input_shapes=shapes, batch_size=args.batch_size)
    data = CalibrationData.from_source(args.data, pm.inputs, limit=args.limit)
    progress(f"{len(data)} calibration samples")
    stats = collect(model, data, features=_features(args.isa), progress=progress, input_shapes=shapes,
                    batch_size=args.batch_size, hessians=args.gptq)
    stats.save(args.output)
    print(f"calibrated the inputs and outputs of {len(stats.layers)} layers on {stats.samples} samples "
          f"-> {args.output}")
    return 0


def _ptq_options(p: argparse.ArgumentParser) -> None:
    """The post-training steps of the quantization recipe (``tvmq.equalize``, ``tvmq.recipe``)."""
    p.add_argument("--equalize", action="store_true",
                   help="cross-layer equalization before calibration (exact in fp32)")
    p.add_argument("--gptq", action="store_true",
                   help="round weights with GPTQ error feedback (calibration sums each layer's Hessian)")
    p.add_argument("--hessian-clipping", action="store_true",
                   help="choose each weight channel's clipping for the layer's output error on the calibration "
                        "inputs (their Hessian) instead of the weights' own error")
    p.add_argument("--no-bias-correction", dest="bias_correction", action="store_false",
                   help="keep the biases as they are (default: corrected for the weights' mean rounding error)")
    _weights_options(p, "W8A8 convs get 8-bit weights whose input-channel pairs fit vpmaddubsw, exact on them "
                        "and twice the products of AVX2's vpmaddwd (MobileNetV2: 95.9%% agreement with fp32 "
                        "instead of 96.6%%)")


def _weights_options(p: argparse.ArgumentParser, what: str) -> None:
    """``--narrow-weights`` / ``--exact-weights``; neither: ``_narrow_weights`` decides."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("--narrow-weights", action="store_true", default=None,
                   help=f"{what}; the default where the target's best W8A8 instruction is AVX2's (no AVX-512)")
    g.add_argument("--exact-weights", dest="narrow_weights", action="store_false", default=None,
                   help="full-range 8-bit W8A8 conv weights (the default on AVX-512, VNNI and AMX targets)")


def _narrow_weights(args: argparse.Namespace, features: Any, progress: Callable[[str], None]) -> bool:
    """The recipe's ``narrow_weights``: as ``--narrow-weights`` / ``--exact-weights`` say, else on
    where the target's W8A8 convs run on AVX2 (narrow weights change nothing elsewhere but
    cost a little accuracy); the default choice is said in one line."""
    if getattr(args, "narrow_weights", None) is not None:
        return bool(args.narrow_weights)
    if features.isa != "avx2":
        return False
    progress("AVX2 target: W8A8 conv weights fitted to vpmaddubsw's pairs (--exact-weights: full range)")
    return True


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` under a temporary name, then rename: a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise TvmqError(f"cannot write {path}: {e.strerror}") from None


def _parse_rpc(text: str | None) -> tuple[str, int, str] | None:
    if text is None:
        return None
    host, _, rest = text.partition(":")
    port, _, key = rest.partition(":")
    if not host or not port.isdigit() or not key:
        raise TvmqError(f"--rpc expects TRACKER_HOST:PORT:DEVICE_KEY, got {text!r}")
    if not 1 <= int(port) <= 65535:
        raise TvmqError(f"--rpc {text!r}: port must be in 1..65535")
    return host, int(port), key


def cmd_tune(args: argparse.Namespace) -> int:
    from .frontend import prepare
    from .tune import RunnerMeasurer, TuningDatabase, extract_tasks, tune

    specs = check_specs([s.strip().lower() for s in args.specs.split(",") if s.strip()], "--specs")
    if args.trials < 1:
        raise TvmqError(f"--trials must be >= 1, got {args.trials}")
    if args.summary:
        _output_file(args.summary, "--summary")
    if Path(args.db).is_dir():
        raise TvmqError(f"tuning database {args.db} is a directory, not a file")
    if not Path(args.db).exists():
        _output_file(args.db, "tuning database")
    elif not os.access(args.db, os.W_OK):
        raise TvmqError(f"cannot write tuning database {args.db}: not writable")
    rpc = _parse_rpc(args.rpc)
    if rpc is not None:
        _check_tracker(*rpc)
    features = _features(args.isa)
    progress = _Progress(args.quiet)
    pm = prepare(args.model, input_shapes=_parse_shapes(args.input_shape), batch_size=args.batch_size)
    narrow = "w8a8" in specs and _narrow_weights(args, features, progress)
    tasks = extract_tasks(pm, specs, features, narrow_weights=narrow)
    db = TuningDatabase(args.db)
    progress(f"{len(tasks)} tasks ({sum(t.kind == 'kernel' for t in tasks)} kernels, "
             f"{sum(t.kind == 'conversion' for t in tasks)} conversions) for {len(pm.layers)} layers x "
             f"{len(specs)} specs; {len(db)} records in {args.db}")
    measurer = RunnerMeasurer(features, threads=args.threads, rpc=rpc)
    try:
        summary = tune(tasks, db, measurer, features, trials=args.trials, seed=args.seed,
                       progress=not args.quiet, log=progress)
    finally:
        measurer.close()
    print(summary.table())
    if args.summary:
        _write_atomic(Path(args.summary), json.dumps({"seconds": summary.seconds, "measured": summary.measured,
                                                  "device": measurer.device,
                                                  "tasks": [r.to_json() for r in summary.results]}, indent=1))
    return 0


def cmd_merge_db(args: argparse.Namespace) -> int:
    from .tune import TuningDatabase

    for path in args.inputs:
        _input_file(path, "tuning database")
    if Path(args.output).exists():
        raise TvmqError(f"merge output {args.output} exists; choose a new file")
    _output_file(args.output, "merge output")
    merged = TuningDatabase.merge(args.inputs, args.output)
    print(f"{len(merged)} records from {len(merged.devices())} device(s) -> {args.output}")
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line ``tvmq: error: ...`` (exit 2), like every other
    error a user can cause, instead of the usage text and argparse's own line."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix("tvmq").strip()
        self.exit(2, f"tvmq: error: {command + ': ' if command else ''}{message}\n")


def _at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer >= ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


COUNT, NONNEGATIVE = _at_least(1), _at_least(0)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="tvmq", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    for add in (_compile_parser, _tune_parser, _analyze_parser, _report_parser, _merge_db_parser,
                _bench_parser, _info_parser, _calibrate_parser):
        add(sub)
    return p


def _compile_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    c = sub.add_parser("compile", help="ONNX -> out/model.so + out/manifest.json")
    c.add_argument("model")
    c.add_argument("-o", "--output", required=True, help="output directory (created)")
    c.add_argument("--isa", choices=ISA_LEVELS,
                   help="limit kernels to this ISA level (default: detected from the CPU)")
    c.add_argument("--batch-size", type=COUNT, default=1)
    c.add_argument("--input-shape", action="append", default=[], metavar="NAME=D0,D1,...")
    c.add_argument("--bits", default="fp32",
                   help="precision of every layer: " + ", ".join(SPEC_NAMES) + " (default fp32; the "
                        "integer ones need --calibration)")
    c.add_argument("--keep-fp32", default="", metavar="LAYERS",
                   help="comma-separated layer names (or first, last) kept in fp32")
    c.add_argument("--calibration", metavar="DATA",
                   help=".npy/.npz samples, a folder of images, or a calibration.json")
    c.add_argument("--calibration-limit", type=COUNT, default=None, metavar="N")
    c.add_argument("--range", default="minmax", choices=["minmax", "percentile", "mse"],
                   help="how activation ranges are taken from the calibration statistics")
    _ptq_options(c)
    c.add_argument("--requant", default=REQUANT_MODES[0], choices=REQUANT_MODES,
                   help="how integer layers requantize: float (one float32 scale per channel, the "
                        "default) or dyadic (integer-only multiplier and shift, for CPUs without "
                        "floating point); both bit-exact against their numpy program")
    _mixed_arguments(c)
    c.add_argument("--db", metavar="TUNING.jsonl",
                   help="tuning database (tvmq tune): kernels take their best measured configuration")
    c.add_argument("--threads", type=COUNT, default=1,
                   help="the thread count whose tuning records --db uses (default 1)")
    c.add_argument("-q", "--quiet", action="store_true")
    c.set_defaults(func=cmd_compile)


def _mixed_arguments(c: argparse.ArgumentParser) -> None:
    """The options of a mixed-precision compile (``tvmq compile`` with a budget)."""
    c.add_argument("--latency-budget", metavar="0.8x|3.5ms",
                   help="mixed precision: end-to-end latency budget (x: of uniform W8A8); needs --db")
    c.add_argument("--size-budget", metavar="0.6x|2MB", help="mixed precision: weight bytes budget")
    c.add_argument("--bops-budget", metavar="0.5x|N", help="mixed precision: bit-operations budget")
    c.add_argument("--specs", default=",".join(SPEC_NAMES),
                   help="candidate specs of a mixed-precision compile")
    c.add_argument("--eval-data", metavar="DATA",
                   help="mixed precision: inputs to compare fp32 / W8A8 / chosen on (agreement in the report)")
    c.add_argument("--eval-labels", metavar="LABELS.npy", help="with --eval-data: class indices (top-1)")
    c.add_argument("--no-resume", dest="resume", action="store_false",
                   help="mixed precision: recompute every step; by default a rerun into the same -o "
                        "reuses its calibration.json, sensitivity.json, latency_table.json and w8a8/ "
                        "where they were made from the same model, data and options")


def _tune_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    t = sub.add_parser("tune", help="measure every kernel of a model at every spec into a JSONL database")
    t.add_argument("model")
    t.add_argument("--specs", default="w8a8", help="comma-separated: " + ",".join(SPEC_NAMES))
    t.add_argument("--trials", type=COUNT, default=16, help="configurations measured per task (default 16)")
    t.add_argument("--db", default="tuning.jsonl", help="append-only database; a rerun resumes")
    t.add_argument("--isa", choices=ISA_LEVELS)
    t.add_argument("--threads", type=COUNT, default=1, help="TVM threads while measuring (default 1)")
    t.add_argument("--rpc", metavar="HOST:PORT:KEY",
                   help="measure on the device registered as KEY with the TVM RPC tracker at HOST:PORT")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--summary", metavar="FILE.json", help="also write the summary as JSON")
    t.add_argument("--batch-size", type=COUNT, default=1)
    t.add_argument("--input-shape", action="append", default=[], metavar="NAME=D0,D1,...")
    _weights_options(t, "tune the kernels of builds with pair-fitted W8A8 conv weights (compile --narrow-weights)")
    t.add_argument("-q", "--quiet", action="store_true")
    t.set_defaults(func=cmd_tune)


def _analyze_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    a = sub.add_parser("analyze", help="per-layer sensitivity (output SQNR) of every candidate spec")
    a.add_argument("model")
    a.add_argument("--calibration", required=True, help=".npy/.npz samples or a folder of images")
    a.add_argument("--stats", help="calibration.json from `tvmq calibrate` (else computed)")
    a.add_argument("--specs", default=",".join(REDUCED))
    a.add_argument("--limit", type=COUNT, default=32, help="samples used (default 32)")
    a.add_argument("--batch-size", type=COUNT, default=1)
    a.add_argument("--input-shape", action="append", default=[], metavar="NAME=D0,D1,...",
                   help="static shape of an input with dynamic dimensions (compile with the same)")
    a.add_argument("--range", default="minmax", choices=["minmax", "percentile", "mse"])
    _ptq_options(a)
    a.add_argument("--w8a8-context", action="store_true",
                   help="also measure each layer with every other layer at W8A8")
    a.add_argument("-o", "--output", default="sensitivity.json", help="resumable JSON")
    a.add_argument("--isa", choices=ISA_LEVELS)
    a.add_argument("-q", "--quiet", action="store_true")
    a.set_defaults(func=cmd_analyze)


def _report_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    r = sub.add_parser("report", help="(re)draw out/report.html from out/report.json")
    r.add_argument("output_dir")
    r.set_defaults(func=cmd_report)


def _merge_db_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    g = sub.add_parser("merge-db", help="merge tuning databases (records of several machines)")
    g.add_argument("inputs", nargs="+")
    g.add_argument("-o", "--output", required=True)
    g.set_defaults(func=cmd_merge_db)


def _bench_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    b = sub.add_parser("bench", help="time a compiled model (optionally onnxruntime beside it)")
    b.add_argument("model", help="out/ folder or out/model.so")
    b.add_argument("--threads", type=COUNT, default=None)
    b.add_argument("--warmup", type=NONNEGATIVE, default=10)
    b.add_argument("--repeat", type=COUNT, default=50)
    b.add_argument("--compare", metavar="MODEL.onnx", help="also time onnxruntime on this model")
    b.add_argument("--json", action="store_true")
    b.add_argument("--profile", action="store_true",
                   help="time each compiled function inside --repeat runs (the Relax VM's instrument hook): "
                        "where the time goes, with the layers each function computes")
    b.add_argument("--top", type=COUNT, default=20, help="--profile: the functions shown (default 20)")
    b.set_defaults(func=cmd_bench)


def _info_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    i = sub.add_parser("info", help="layer table of an ONNX model (no compilation), or what a compiled "
                                    "model's folder runs: each layer's spec and kernel, its float islands")
    i.add_argument("model", help="an ONNX model, or a folder tvmq compile wrote")
    i.add_argument("--batch-size", type=COUNT, default=1)
    i.add_argument("--input-shape", action="append", default=[], metavar="NAME=D0,D1,...")
    i.set_defaults(func=cmd_info)


def _calibrate_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    k = sub.add_parser("calibrate", help="activation statistics over unlabeled inputs")
    k.add_argument("model")
    k.add_argument("--data", required=True, help=".npy / .npz file or a folder of images")
    k.add_argument("--limit", type=COUNT, default=None, help="use the first N samples")
    k.add_argument("-o", "--output", default="calibration.json")
    k.add_argument("--batch-size", type=COUNT, default=1)
    k.add_argument("--input-shape", action="append", default=[], metavar="NAME=D0,D1,...",
                   help="static shape of an input with dynamic dimensions (compile with the same)")
    k.add_argument("--isa", choices=ISA_LEVELS)
    k.add_argument("--equalize", action="store_true",
                   help="calibrate the cross-layer equalized model (compile it with --equalize too)")
    k.add_argument("--gptq", action="store_true", help="also sum each layer's input Hessian (for --gptq)")
    k.add_argument("-q", "--quiet", action="store_true")
    k.set_defaults(func=cmd_calibrate)


def _one_line(text: str) -> str:
    return "; ".join(line.strip() for line in str(text).strip().splitlines() if line.strip())


def _show_warning(message, category, filename, lineno, file=None, line=None):  # type: ignore[no-untyped-def]
    """Warnings (a tuning database's skipped lines, a degenerate calibration range) as one line
    ``tvmq: warning: ...`` instead of Python's two-line form with a source line."""
    print(f"tvmq: warning: {_one_line(str(message))}", file=sys.stderr, flush=True)


def _log_unexpected(command: str, exc: BaseException) -> Path | None:
    """The traceback of an error tvmq did not expect, in a log file for the bug report."""
    import tempfile
    import traceback

    try:
        fd, name = tempfile.mkstemp(prefix=f"tvmq-{command or 'main'}-", suffix=".log")
        with os.fdopen(fd, "w") as f:
            f.write(f"tvmq {' '.join(sys.argv[1:])}\n\n")
            f.write("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
        return Path(name)
    except OSError:
        return None


def _silence_native_stderr() -> None:
    """After the error line: TVM's C++ destructors print warnings at exit (``BlockBuilder
    destroyed with remaining blocks``) that are no news to the user; fd 2 goes to /dev/null."""
    try:
        sys.stderr.flush()
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
    except OSError:
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """The ``tvmq`` command. One error path: tvmq's own errors (``TvmqError``, a bad argument)
    print one line ``tvmq: error: ...`` and return 2; anything else prints one line naming the
    command and a log file holding the traceback, and returns 1; Ctrl-C returns 130."""
    import warnings

    code = _main(list(sys.argv[1:]) if argv is None else list(argv), warnings)
    if code not in (0,) and argv is None:  # the real command line, not a caller's in-process run
        _silence_native_stderr()
    return code


def _main(argv: list[str], warnings) -> int:  # type: ignore[no-untyped-def]
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help (0) or a bad argument (2, its line already printed)
        return int(e.code or 0)
    command = getattr(args, "command", "") or ""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # library deprecations are not the user's business
        warnings.simplefilter("default", UserWarning)  # tvmq's own (one line each)
        warnings.showwarning = _show_warning
        try:
            return int(args.func(args))
        except TvmqError as e:
            print(f"tvmq: error: {_one_line(str(e))}", file=sys.stderr, flush=True)
            return 2
        except KeyboardInterrupt:
            print("tvmq: interrupted", file=sys.stderr, flush=True)
            return 130
        except Exception as e:  # a bug: one line, the traceback in a log file
            log = _log_unexpected(command, e)
            where = f"; the traceback is in {log}" if log else ""
            print(f"tvmq: error: {command}: unexpected {type(e).__name__}: "
                  f"{_one_line(str(e))[:300]}{where} (a tvmq bug: please report it with that file)",
                  file=sys.stderr, flush=True)
            return 1


if __name__ == "__main__":
    sys.exit(main())
