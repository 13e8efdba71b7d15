"""Load a compiled model, run it on numpy arrays, time it.

``tvmq.load(path)`` takes ``out/model.so`` (or the ``out/`` folder) and the ``manifest.json``
beside it; nothing of the original ONNX model is needed. Inputs are checked against the
manifest (names, shapes, dtypes) before anything reaches TVM.

Only TVM's runtime is used here (``tvm.runtime``, its Relax VM): a deployment needs
``libtvm_runtime.so``, ``tvm-ffi`` and TVM's Python package, not the compiler library
(``TVM_USE_RUNTIME_LIB=1`` makes ``import tvm`` load the runtime alone).
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .errors import ArtifactError, InputError, TvmqError

_ARCH_REQ_XCOMP_PERM = 0x1023
_XFEATURE_XTILEDATA = 18
_SYS_ARCH_PRCTL = 158


def request_amx_permission() -> bool:
    """Ask Linux for the AMX tile state (needed once per process before any AMX instruction)."""
    try:
        return ctypes.CDLL(None).syscall(_SYS_ARCH_PRCTL, _ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA) == 0
    except (OSError, AttributeError):
        return False


def _tvm() -> Any:
    """TVM's Python package, imported on first use: ``import tvmq`` (the CLI's ``--help``,
    reading a manifest) does not load TVM."""
    import tvm.runtime.vm  # (deferred: see the docstring)

    if "TVM_NUM_THREADS" not in os.environ:
        # TVM reads its concurrency at every parallel launch: from this variable, else from the
        # CPU count, which glibc reads from /sys/devices/system/cpu/online each time (an open,
        # read and close per launch, ~100 per ResNet-50 inference; MobileNetV2 W8A8 2.64 -> 2.25
        # ms per run on an Emerald Rapids core). The same number, kept: TVM's default pool size.
        os.environ["TVM_NUM_THREADS"] = str(tvm.get_global_func("runtime.NumThreads")())
    return tvm


def set_num_threads(threads: int) -> None:
    """Size TVM's thread pool (``threads`` >= 1)."""
    if threads < 1:
        raise TvmqError(f"threads must be >= 1, got {threads}")
    tvm = _tvm()
    tvm.get_global_func("runtime.config_threadpool")(0, int(threads))
    os.environ["TVM_NUM_THREADS"] = str(int(threads))  # what each parallel launch reads (``_tvm``)


@dataclass(frozen=True)
class BenchmarkResult:
    median_ms: float
    mean_ms: float
    min_ms: float
    p10_ms: float
    p90_ms: float
    n: int
    threads: int

    @property
    def spread_ms(self) -> float:
        return self.p90_ms - self.p10_ms

    def to_json(self) -> dict[str, float | int]:
        return {"median_ms": self.median_ms, "mean_ms": self.mean_ms, "min_ms": self.min_ms,
                "p10_ms": self.p10_ms, "p90_ms": self.p90_ms, "n": self.n, "threads": self.threads}

    @classmethod
    def from_samples(cls, samples_ms: list[float], threads: int) -> BenchmarkResult:
        s = sorted(samples_ms)
        q = statistics.quantiles(s, n=10) if len(s) >= 2 else [s[0]] * 9
        return cls(median_ms=statistics.median(s), mean_ms=statistics.fmean(s), min_ms=s[0],
                   p10_ms=q[0], p90_ms=q[-1], n=len(s), threads=threads)


def time_calls(fn: Any, *, warmup: int = 10, repeat: int = 50, threads: int = 1) -> BenchmarkResult:
    """Median and spread of ``repeat`` calls of ``fn()`` after ``warmup`` (wall clock)."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t) * 1e3)
    return BenchmarkResult.from_samples(samples, threads)


@dataclass(frozen=True)
class ProfileRow:
    """One compiled function of a model: ``calls`` per run, ``ms`` per run (its calls summed,
    median over the runs), the layers it computes (the manifest's ``kernels``)."""

    function: str
    calls: int
    ms: float
    layers: tuple[str, ...]


@dataclass(frozen=True)
class Profile:
    """Where one run's time goes: ``rows`` largest first; ``total_ms`` the median wall time of
    an instrumented run (the rest over the rows' sum: the VM and the instrumentation)."""

    rows: tuple[ProfileRow, ...]
    total_ms: float
    runs: int
    threads: int

    def to_json(self) -> dict[str, Any]:
        return {"total_ms": self.total_ms, "runs": self.runs, "threads": self.threads,
                "functions": [{"function": r.function, "calls": r.calls, "ms": r.ms, "layers": list(r.layers)}
                              for r in self.rows]}

    def table(self, top: int | None = None) -> str:
        """The rows as text: ms per run, share of the total, calls, function (its layers)."""
        lines = [f"{'ms/run':>8} {'share':>6} {'calls':>5}  function (layers)"]
        for r in self.rows[:top]:
            layers = ", ".join(r.layers[:3]) + (f", ... ({len(r.layers)})" if len(r.layers) > 3 else "")
            lines.append(f"{r.ms:8.3f} {r.ms / self.total_ms:6.1%} {r.calls:5d}  {r.function}"
                         + (f" ({layers})" if layers else ""))
        rest = self.total_ms - sum(r.ms for r in self.rows)
        lines.append(f"{rest:8.3f} {rest / self.total_ms:6.1%} {'':5}  (VM and instrumentation: the rest)")
        lines.append(f"{self.total_ms:8.3f} ms per run, median of {self.runs}, {self.threads} thread(s)")
        return "\n".join(lines)


class Module:
    """A compiled tvmq model: ``run``, ``benchmark`` and ``profile``."""

    def __init__(self, library: Path, manifest: dict[str, Any]) -> None:
        tvm = _tvm()

        self.library = library
        self.manifest = manifest
        if manifest.get("isa") == "amx":
            request_amx_permission()
        self.inputs, self.output_names = _io_specs(library, manifest)
        try:
            self._lib = tvm.runtime.load_module(str(library))
            self._dev = tvm.cpu()
            self._vm = tvm.runtime.vm.VirtualMachine(self._lib, self._dev)
        except Exception as e:  # a shared library that is not a tvmq model (no Relax VM inside)
            text = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            raise ArtifactError(f"cannot load {library}: not a tvmq model library ({text})") from None

    @property
    def input_names(self) -> list[str]:
        return [n for n, _, _ in self.inputs]

    def _convert(self, feeds: Mapping[str, np.ndarray] | np.ndarray) -> list[Any]:
        tvm = _tvm()
        if isinstance(feeds, np.ndarray):
            if len(self.inputs) != 1:
                raise InputError(f"the model has {len(self.inputs)} inputs "
                                 f"{self.input_names}: pass a dict")
            feeds = {self.inputs[0][0]: feeds}
        if not isinstance(feeds, Mapping):
            raise InputError(f"inputs must be a dict name -> numpy array, got {type(feeds).__name__}")
        unknown = sorted(set(feeds) - set(self.input_names))
        missing = [n for n in self.input_names if n not in feeds]
        if unknown or missing:
            raise InputError(f"input names do not match the model: missing {missing}, "
                             f"unknown {unknown}; expected {self.input_names}")
        args = []
        for name, shape, dtype in self.inputs:
            value = feeds[name]
            if not isinstance(value, np.ndarray):
                value = np.asarray(value)
            if value.dtype != np.dtype(dtype):
                raise InputError(f"input {name!r}: dtype {value.dtype} but the model was compiled "
                                 f"for {dtype}")
            if tuple(value.shape) != shape:
                raise InputError(f"input {name!r}: shape {tuple(value.shape)} but the model was "
                                 f"compiled for {shape}")
            # (np.require, not np.ascontiguousarray: that one turns a rank-0 array into rank 1)
            args.append(tvm.runtime.tensor(np.require(value, requirements="C"), self._dev))
        return args

    def _outputs(self, result: Any) -> dict[str, np.ndarray]:
        items = list(result) if not hasattr(result, "numpy") else [result]
        return {name: t.numpy() for name, t in zip(self.output_names, items)}

    def run(self, feeds: Mapping[str, np.ndarray] | np.ndarray, *,
            check_inputs: bool = True) -> dict[str, np.ndarray]:
        """Run the model: ``{input name: array}`` -> ``{output name: array}`` (ONNX names).

        ``check_inputs``: refuse float inputs holding NaN or inf (an ``InputError``): the integer
        layers would turn them into ordinary numbers and a confident answer. Off, they run
        through (fp32 layers propagate NaN as IEEE arithmetic does, where the kernels allow)."""
        args = self._convert(feeds)
        if check_inputs:
            _check_finite(feeds if not isinstance(feeds, np.ndarray) else {self.inputs[0][0]: feeds})
        return self._outputs(self._vm["main"](*args))

    def benchmark(self, feeds: Mapping[str, np.ndarray] | np.ndarray | None = None, *,
                  warmup: int = 10, repeat: int = 50, threads: int | None = None) -> BenchmarkResult:
        """Time ``repeat`` calls after ``warmup`` (random inputs unless ``feeds`` is given)."""
        args, n_threads = self._timing_setup(feeds, warmup, repeat, threads)
        main = self._vm["main"]
        return time_calls(lambda: main(*args), warmup=warmup, repeat=repeat, threads=n_threads)

    def profile(self, feeds: Mapping[str, np.ndarray] | np.ndarray | None = None, *,
                warmup: int = 3, repeat: int = 10, threads: int | None = None) -> Profile:
        """Time every compiled function inside ``repeat`` runs after ``warmup`` (the Relax VM's
        instrument hook around each call; random inputs unless ``feeds`` is given): where the
        time goes, per kernel, in the graph as it runs (caches warm from the layers before)."""
        args, n_threads = self._timing_setup(feeds, warmup, repeat, threads)
        vm = _tvm().runtime.vm.VirtualMachine(self._lib, self._dev)  # its own VM: ``run`` stays unhooked
        main = vm["main"]
        for _ in range(warmup):
            main(*args)
        started: dict[str, float] = {}
        run: dict[str, list[float]] = {}

        def instrument(func: Any, symbol: str, before: bool, ret: Any, *call_args: Any) -> int:
            now = time.perf_counter()
            if before:
                started[symbol] = now
            else:
                run.setdefault(symbol, []).append(now - started.pop(symbol, now))
            return 0  # VMInstrumentReturnKind.NoOp: run the call as usual

        vm.set_instrument(instrument)
        runs, walls = [], []
        for _ in range(repeat):
            run = {}
            t = time.perf_counter()
            main(*args)
            walls.append((time.perf_counter() - t) * 1e3)
            runs.append(run)
        layers: dict[str, list[str]] = {}
        for layer, k in (self.manifest.get("kernels") or {}).items():
            layers.setdefault(k.get("function", ""), []).append(layer)
        rows = [ProfileRow(f, len(runs[0].get(f, [])), statistics.median(sum(r.get(f, [])) * 1e3 for r in runs),
                           tuple(layers.get(f, []))) for f in {f for r in runs for f in r}]
        rows.sort(key=lambda r: -r.ms)
        return Profile(tuple(rows), statistics.median(walls), repeat, n_threads)

    def _timing_setup(self, feeds: Mapping[str, np.ndarray] | np.ndarray | None, warmup: int, repeat: int,
                      threads: int | None) -> tuple[list[Any], int]:
        """The arguments (random where ``feeds`` is None) and the thread count, the pool sized."""
        if repeat < 1 or warmup < 0:
            raise TvmqError(f"repeat must be >= 1 and warmup >= 0, got repeat={repeat}, warmup={warmup}")
        if threads is not None and threads < 1:
            raise TvmqError(f"threads must be >= 1, got {threads}")
        n_threads = threads or int(os.environ.get("TVM_NUM_THREADS", "0")) or (os.cpu_count() or 1)
        set_num_threads(n_threads)
        if feeds is None:
            rng = np.random.default_rng(0)
            feeds = {n: rng.standard_normal(s).astype(d) for n, s, d in self.inputs}
        return self._convert(feeds), n_threads


def load(path: str | os.PathLike) -> Module:
    """Load ``model.so`` (or a folder holding it) and its ``manifest.json``."""
    p = Path(path)
    if p.is_dir():
        p = p / "model.so"
    if not p.exists():
        raise ArtifactError(f"compiled model not found: {p} (run `tvmq compile` first)")
    mpath = p.with_name("manifest.json")
    if not mpath.exists():
        raise ArtifactError(f"manifest.json missing next to {p}")
    try:
        manifest = json.loads(mpath.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ArtifactError(f"cannot read {mpath}: {e}") from None
    if not isinstance(manifest, dict) or "inputs" not in manifest or "outputs" not in manifest:
        raise ArtifactError(f"{mpath} is not a tvmq manifest")
    check_library(p, manifest.get("library"))
    if manifest.get("library") is None:
        check_elf(p)  # an older manifest: no record to compare, at least a complete ELF file
    return Module(p, manifest)


def _check_finite(feeds: Mapping[str, Any]) -> None:
    for name, value in feeds.items():
        a = np.asarray(value)
        if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
            bad = int(np.count_nonzero(~np.isfinite(a)))
            raise InputError(f"input {name!r}: {bad} NaN or inf value(s) (pass check_inputs=False to run "
                             f"them anyway)")


def _io_specs(library: Path, manifest: dict[str, Any]) -> tuple[list[tuple[str, tuple[int, ...], str]], list[str]]:
    """The manifest's inputs (name, shape, dtype) and output names, checked."""
    try:
        inputs = [(str(i["name"]), tuple(int(d) for d in i["shape"]), np.dtype(i["dtype"]).name)
                  for i in manifest["inputs"]]
        outputs = [str(o["name"]) for o in manifest["outputs"]]
        if not isinstance(manifest["inputs"], list) or not isinstance(manifest["outputs"], list):
            raise TypeError("inputs and outputs must be lists")
    except (KeyError, TypeError, ValueError) as e:
        raise ArtifactError(f"the manifest beside {library} has malformed inputs / outputs "
                            f"({type(e).__name__}: {e})") from None
    return inputs, outputs


def check_elf(path: Path) -> None:
    """A 64-bit little-endian ELF shared object whose section headers lie inside the file (a
    truncated copy ends before them): dlopen of a truncated library can kill the process."""
    import struct

    with open(path, "rb") as f:
        head = f.read(64)
    size = path.stat().st_size
    if len(head) < 64 or head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
        raise ArtifactError(f"{path} is not a shared library (no 64-bit ELF header)")
    e_type = struct.unpack_from("<H", head, 16)[0]
    shoff = struct.unpack_from("<Q", head, 40)[0]
    shentsize, shnum = struct.unpack_from("<HH", head, 58)
    if e_type != 3 or shoff + shentsize * shnum > size:
        raise ArtifactError(f"{path} is a truncated or damaged shared library ({size} bytes; its section "
                            f"headers end at byte {shoff + shentsize * shnum})")


def library_record(path: Path) -> dict[str, Any]:
    """What the manifest records of ``model.so``: its size and sha256."""
    data = path.read_bytes()
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def check_library(path: Path, record: Any) -> None:
    """``path`` must be the library the manifest was written with (size, then sha256): loading a
    truncated or swapped shared library can crash the process (a bus error), so it is refused
    before ``dlopen``. Manifests written before the record existed are not checked."""
    if record is None:
        return
    if not isinstance(record, dict) or not isinstance(record.get("bytes"), int):
        raise ArtifactError(f"the manifest beside {path} has a malformed 'library' record")
    size = path.stat().st_size
    if size != record["bytes"]:
        raise ArtifactError(f"{path} is {size} bytes, the manifest says {record['bytes']}: a truncated or "
                            f"replaced library (rebuild it with `tvmq compile`)")
    if library_record(path)["sha256"] != record.get("sha256"):
        raise ArtifactError(f"{path} is not the library its manifest was written with (sha256 differs): "
                            f"rebuild it with `tvmq compile`")
