"""Measuring candidates: build a kernel with one configuration and time it.

``RunnerMeasurer`` builds each candidate in this process (a scheduled ``PrimFunc`` compiles in
~0.1 s) and times it through a MetaSchedule runner: ``LocalRunner`` (a worker process on this
machine, so a candidate that crashes takes the worker down, not the tuner) or ``RPCRunner``
(``tvm.rpc`` tracker and servers: measurement on another board). MetaSchedule's own
``LocalBuilder`` is not used: each of its worker processes imports ``tvm.s_tir.tensor_intrin``,
25 s on this machine, for every batch. ``ScriptedMeasurer`` returns latencies from a function
(fast, deterministic unit tests of the search and the database).
"""

from __future__ import annotations

import os
import shutil
from abc import ABC, abstractmethod
import statistics
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Callable

import tvm
from tvm import te
from tvm.s_tir import meta_schedule as ms

from schedules import registry
from schedules.target_features import TargetFeatures

from ..passes.schedule_generic import schedule_primfunc
from ..runtime import request_amx_permission
from .database import device_fingerprint
from .tasks import TuneTask, conversion_compute


@dataclass
class MeasureResult:
    latency: dict[str, float] | None  # median_us, min_us, n, spread (IQR / median)
    error: str | None = None


def latency_stats(samples_s: list[float]) -> dict[str, float]:
    us = sorted(float(s) * 1e6 for s in samples_s)
    med = statistics.median(us)
    q = statistics.quantiles(us, n=4) if len(us) >= 2 else [us[0], us[0], us[0]]
    return {"median_us": med, "min_us": us[0], "n": len(us), "spread": (q[2] - q[0]) / med if med else 0.0}


def build_candidate(task: TuneTask, config: Any, features: TargetFeatures):  # type: ignore[no-untyped-def]
    """The scheduled PrimFunc of ``task`` with ``config`` (conversions: the generic schedule)."""
    if task.kind == "conversion":
        return schedule_primfunc(te.create_prim_func(conversion_compute(task.kernel, task.workload)),
                                 features.fp32_lanes)
    return registry.get(registry.KernelKey.parse(task.kernel)).build_primfunc(task.workload, config)


class Measurer(ABC):
    """Times candidates; ``device`` is the fingerprint the records carry. Implementations:
    ``RunnerMeasurer`` (real timings, local or RPC) and ``ScriptedMeasurer`` (tests)."""

    device: dict[str, Any]

    @abstractmethod
    def measure(self, task: TuneTask, configs: list[Any]) -> list[MeasureResult]:
        """One result per configuration, in order (a failed build or run is a result too)."""

    def close(self) -> None:
        pass


class RunnerMeasurer(Measurer):
    """In-process build, timing through a MetaSchedule runner.

    ``rpc``: ``(tracker_host, tracker_port, key)`` to measure on a device registered with a TVM
    RPC tracker; default: a local worker process with ``threads`` TVM threads. Each candidate
    is run ``repeat`` times, each time as many calls as fill ``min_repeat_ms`` (at least
    ``number``); the statistics are over the ``repeat`` means.
    """

    def __init__(self, features: TargetFeatures, *, threads: int = 1,
                 rpc: tuple[str, int, str] | None = None, repeat: int = 7, number: int = 3,
                 min_repeat_ms: int = 20, timeout_s: float = 60.0, cpu: str | None = None) -> None:
        self.features = features
        self.timeout_s = timeout_s
        self.rpc = rpc
        self.target = tvm.target.Target(features.target_json())
        self.device = device_fingerprint(features, threads, cpu)
        if rpc is not None:
            self.device["rpc_key"] = rpc[2]
        evaluator = ms.runner.EvaluatorConfig(number=number, repeat=repeat, min_repeat_ms=min_repeat_ms,
                                              enable_cpu_cache_flush=False)
        initializer = _amx_initializer if features.amx_int8 else None
        if rpc is None:
            old = os.environ.get("TVM_NUM_THREADS")
            os.environ["TVM_NUM_THREADS"] = str(threads)  # the worker process reads it at start
            try:
                self.runner = ms.runner.LocalRunner(timeout_sec=timeout_s, evaluator_config=evaluator,
                                                    initializer=initializer)
            finally:
                if old is None:
                    os.environ.pop("TVM_NUM_THREADS")
                else:
                    os.environ["TVM_NUM_THREADS"] = old
        else:
            host, port, key = rpc
            self.runner = ms.runner.RPCRunner(
                ms.runner.RPCConfig(tracker_host=host, tracker_port=int(port), tracker_key=key,
                                    session_timeout_sec=int(timeout_s)),
                evaluator_config=evaluator, initializer=initializer)
        self.tmp = tempfile.mkdtemp(prefix="tvmq-tune-")
        self._count = 0

    def measure(self, task: TuneTask, configs: list[Any]) -> list[MeasureResult]:
        results: list[MeasureResult | None] = [None] * len(configs)
        inputs, where = [], []
        for i, cfg in enumerate(configs):
            try:
                func = build_candidate(task, cfg, self.features)
                ex = tvm.compile(tvm.IRModule({"main": func}), target=self.target)
                # a fresh name each time: the runner's worker dlopen()s it, and dlopen returns the
                # library already loaded under a path it has seen
                self._count += 1
                path = os.path.join(self.tmp, f"c{self._count}.so")
                ex.export_library(path)
            except Exception as e:  # a candidate the compiler rejects is a failed record
                results[i] = MeasureResult(None, f"build: {type(e).__name__}: {_last_line(e)}")
                continue
            inputs.append(ms.runner.RunnerInput(path, "cpu", ms.arg_info.ArgInfo.from_prim_func(func)))
            where.append(i)
        if inputs:
            futures = self.runner.run(inputs)
            last = time.monotonic()
            for i, fut in zip(where, futures):
                # a runner whose remote session dies can wait forever (TVM's RPC server keeps the
                # session's socket open when the process serving it is killed): poll, with a deadline
                while not fut.done() and time.monotonic() - last < self.timeout_s + 10:
                    time.sleep(0.01)
                if not fut.done():
                    results[i] = MeasureResult(None, f"run: no answer within {self.timeout_s + 10:.0f} s{self._hint()}")
                    continue
                last = time.monotonic()
                r = fut.result()
                if r.error_msg or not r.run_secs:
                    results[i] = MeasureResult(None, f"run: {_last_line(r.error_msg or 'no timing')}{self._hint()}")
                else:
                    results[i] = MeasureResult(latency_stats([float(s) for s in r.run_secs]))
        for name in os.listdir(self.tmp):
            os.unlink(os.path.join(self.tmp, name))
        return [r for r in results if r is not None]

    def _hint(self) -> str:
        if self.rpc and self.features.amx_int8:
            return (" (an AMX kernel on a remote whose RPC server lacks the AMX permission dies there: start "
                    "the server with `python -m tvmq.tune.rpc_server`)")
        return ""

    def close(self) -> None:
        pool = getattr(self.runner, "pool", None)  # the runner's worker processes, a hung one included
        if pool is not None:
            # kill them first: PopenWorker.kill closes the pipe a hung worker's thread is reading,
            # which blocks on that reader's lock for as long as the read does
            for worker in list(getattr(pool, "_worker_map", {}).values()):
                proc = getattr(worker, "_proc", None)
                if proc is not None:
                    proc.kill()
                    proc.wait()
            threads = getattr(pool, "_threadpool", None)
            if threads is not None:  # the reading threads end on their pipe's EOF
                threads.shutdown(wait=True)
            pool.shutdown(wait=True)
        shutil.rmtree(self.tmp, ignore_errors=True)


def _amx_initializer() -> None:
    request_amx_permission()


def _last_line(e: Any) -> str:
    text = str(e).strip()
    return text.splitlines()[-1][:300] if text else type(e).__name__


class ScriptedMeasurer(Measurer):
    """Latencies from ``fn(task, config) -> microseconds`` (None: the candidate fails), for tests."""

    def __init__(self, fn: Callable[[TuneTask, Any], float | None], device: dict[str, Any] | None = None) -> None:
        self.fn = fn
        self.device = device or {"id": "scripted", "cpu": "scripted", "isa": "generic", "threads": 1}
        self.calls = 0

    def measure(self, task: TuneTask, configs: list[Any]) -> list[MeasureResult]:
        out = []
        for cfg in configs:
            self.calls += 1
            us = self.fn(task, cfg)
            out.append(MeasureResult(None, "scripted failure") if us is None else
                       MeasureResult({"median_us": float(us), "min_us": float(us), "n": 1, "spread": 0.0}))
        return out
