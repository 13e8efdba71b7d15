"""The search: for each task, measure up to ``trials`` configurations of its template's space.

Per task: the fallback configuration first (it is what an untuned compile runs, so every tuned
result has its baseline), then random candidates until ``warmup`` of the kernel's records exist
on this device, then batches ranked by the XGBoost cost model (``LatencyPredictor``, trained on
every record of the same kernel on this device, so later tasks start from what earlier ones
taught it), a quarter of each batch still random (exploration). Every measured candidate is
appended to the database before the next batch; a task whose records already reach its budget
is skipped, and a rerun after a kill continues with the budget that is left, so an interrupted
and resumed run measures as many candidates as an uninterrupted one. The seed fixes every random
choice (per task: the seed and the task key).

Then a playoff: the fallback and the ``PLAYOFF_SIZE - 1`` fastest other configurations of the
search are measured again in ``PLAYOFF_ROUNDS`` rounds, the order reversed every other round, and
the database ranks them by the median of those rounds (``TuningDatabase.ranked_us``): side by side
in time, so that a moment of load on a shared machine does not crown a slower configuration. A
rerun measures only the rounds the database lacks (after a kill, the rest).
"""

from __future__ import annotations

import json
import math
import sys
from collections import Counter
import time
from dataclasses import dataclass, field
from typing import Any, Callable, TextIO

import numpy as np
import tvm

from schedules import registry, space
from schedules.packing import W4A8Config
from schedules.target_features import TargetFeatures

from ..version import __version__
from .database import TuningDatabase, TuningRecord
from .measure import Measurer
from .predictor import LatencyPredictor, feature_vector
from .tasks import TuneTask, kernel_task_key, shape_key, workload_from_json


@dataclass
class TaskResult:
    task: TuneTask
    measured: int  # new measurements in this run
    total: int  # records of this task on the device
    fallback_us: float | None  # the fallback configuration's fastest run (min_us)
    best_us: float | None  # the fastest run of the best configuration: the one ranked by min_us
    best_config: dict[str, Any] | None
    seconds: float
    status: str  # "tuned" | "cached" | "failed"

    def to_json(self) -> dict[str, Any]:
        return {"task": self.task.key, "kernel": self.task.kernel, "spec": self.task.spec,
                "workload": self.task.describe(), "layers": self.task.layers, "measured": self.measured,
                "total": self.total, "fallback_us": self.fallback_us, "best_us": self.best_us,
                "best_config": self.best_config, "seconds": self.seconds, "status": self.status}


@dataclass
class TuneSummary:
    results: list[TaskResult] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def measured(self) -> int:
        return sum(r.measured for r in self.results)

    def table(self) -> str:
        rows = ["| task | spec | layers | trials (new) | fallback min us | best min us | speedup | s |",
                "|---|---|---|---|---|---|---|---|"]
        for r in self.results:
            sp = (f"{r.fallback_us / r.best_us:.2f}x" if r.fallback_us and r.best_us else "-")
            rows.append(f"| {r.task.describe()} | {r.task.spec} | {len(r.task.layers)} | {r.total} ({r.measured}) | "
                        f"{_fmt(r.fallback_us)} | {_fmt(r.best_us)} | {sp} | {r.seconds:.1f} |")
        rows.append(f"\n{len(self.results)} tasks, {self.measured} new measurements, {self.seconds:.0f} s")
        return "\n".join(rows)


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


class Progress:
    """One status line (rewritten in place on a terminal): task i/n, its trials, best so far,
    estimated time left from the measurement rate so far."""

    def __init__(self, total_trials: int, stream: TextIO | None = None, enabled: bool = True) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.total = max(total_trials, 1)
        self.done = 0
        self.t0 = time.perf_counter()
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()

    def update(self, i: int, n: int, task: TuneTask, trial: int, trials: int, best: float | None,
               advance: int = 0) -> None:
        self.done += advance
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.t0
        left = elapsed / self.done * (self.total - self.done) if self.done else float("nan")
        eta = "?" if math.isnan(left) else f"{int(left // 60)}m{int(left % 60):02d}s"
        bar_w = 20
        fill = int(bar_w * min(self.done / self.total, 1.0))
        line = (f"[{'#' * fill}{'.' * (bar_w - fill)}] task {i}/{n} {task.describe()} [{task.spec}] "
                f"trial {trial}/{trials} best {_fmt(best)} us, left ~{eta}")
        if self.tty:
            self.stream.write("\r" + line[:160].ljust(160))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def finish(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")


MAX_ATTEMPTS = 3  # a configuration whose measurement failed this often is not tried again


def _settled(db: TuningDatabase, task: TuneTask, dev: str) -> set[str]:
    """The configurations of ``task`` that count as done trials on ``dev``: measured, or failed
    ``MAX_ATTEMPTS`` times (a failure alone, an unreachable device say, is retried next run)."""
    recs = db.query(task.key, task.spec, dev)
    failures: dict[str, int] = {}
    for r in recs:
        if not r.ok:
            failures[r.config_id] = failures.get(r.config_id, 0) + 1
    return {r.config_id for r in recs if r.ok} | {c for c, n in failures.items() if n >= MAX_ATTEMPTS}


def _rng(seed: int, key: str) -> np.random.Generator:
    return np.random.default_rng([seed, int(key[:12], 16)])


def tune(tasks: list[TuneTask], db: TuningDatabase, measurer: Measurer, features: TargetFeatures, *,
         trials: int = 16, batch: int = 8, warmup: int = 4, seed: int = 0,
         progress: bool | Progress = True, log: Callable[[str], None] | None = None) -> TuneSummary:
    """Tune every task; records go to ``db`` as they are measured. Returns the summary."""
    t0 = time.perf_counter()
    dev = measurer.device["id"]
    plans = []
    for task in tasks:
        budget = 1 if task.kind == "conversion" else trials
        plans.append((task, budget))
    bar = progress if isinstance(progress, Progress) else Progress(
        sum(max(0, b - len(_settled(db, t, dev))) for t, b in plans), enabled=bool(progress))
    summary = TuneSummary()
    for i, (task, budget) in enumerate(plans, 1):
        ts = time.perf_counter()
        if task.kind == "conversion":
            space_ = [None]
            fallback = None
        else:
            kernel = registry.get(registry.KernelKey.parse(task.kernel))
            fallback = kernel.fallback_config(task.workload, features)
            space_ = kernel.tuning_space(task.workload, features)
        budget = min(budget, len(space_))
        done = _settled(db, task, dev)  # grows with every configuration measured in this run
        measured = 0
        rng = _rng(seed, task.key)
        while len(done) < budget:
            todo = [c for c in space_ if _cid(c) not in done]
            n = min(batch, budget - len(done), len(todo))
            chosen = _choose(todo, n, fallback, task, db, dev, warmup, rng, seed)
            best = _best_us(db, task, dev)
            bar.update(i, len(plans), task, len(done), budget, best)
            results = measurer.measure(task, chosen)
            for cfg, res in zip(chosen, results):
                db.append(TuningRecord(
                    task=task.key, kernel=task.kernel, spec=task.spec, workload=task.workload_json(),
                    config=_cfg_json(cfg), latency=res.latency, device=measurer.device, error=res.error,
                    tvmq=__version__, tvm=tvm.__version__))
                done.add(_cid(cfg))
            measured += len(chosen)
            bar.update(i, len(plans), task, len(done), budget, _best_us(db, task, dev), advance=len(chosen))
        if fallback is not None:
            measured += _playoff(task, fallback, space_, db, measurer, dev)
        recs = db.query(task.key, task.spec, dev)
        ok = [r for r in recs if r.ok]
        ranked = db.ranked_us(task.key, task.spec, dev)
        fb_us = ranked.get(_cid(fallback)) if fallback is not None else (min(ranked.values()) if ranked else None)
        best_r = db.best(task.key, task.spec, dev)
        status = "failed" if not ok else ("tuned" if measured else "cached")
        summary.results.append(TaskResult(
            task, measured, len(recs), fb_us, ranked[best_r.config_id] if best_r else None,
            best_r.config if best_r else None, time.perf_counter() - ts, status))
        if log is not None and not ok:
            log(f"warning: every candidate of {task.describe()} [{task.spec}] failed: "
                f"{recs[-1].error if recs else 'no record'}")
    bar.finish()
    summary.seconds = time.perf_counter() - t0
    return summary


PLAYOFF_SIZE = 4  # the fallback and the three fastest others of the search
PLAYOFF_ROUNDS = 3


def _finalists(task: TuneTask, fallback: Any, space_: list[Any], db: TuningDatabase, dev: str) -> list[Any]:
    """The fallback and the ``PLAYOFF_SIZE - 1`` fastest other configurations by their search
    records; none where nothing else succeeded. (The fallback plays even without a search record
    of its own, which a database written before the kernel's fallback changed lacks.)"""
    by_cid = {_cid(c): c for c in space_}
    fastest = {c: us for c, us in db.search_fastest_us(task.key, task.spec, dev).items() if c in by_cid}
    fb = _cid(fallback)
    others = sorted((c for c in fastest if c != fb), key=lambda c: (fastest[c], c))[: PLAYOFF_SIZE - 1]
    failed = any(r.config_id == fb and not r.ok for r in db.query(task.key, task.spec, dev))
    if not others or (fb not in fastest and failed):
        return []
    return [fallback] + [by_cid[c] for c in others]


def _playoff(task: TuneTask, fallback: Any, space_: list[Any], db: TuningDatabase, measurer: Measurer,
             dev: str) -> int:
    """The finalists' rounds that the database lacks (all of them the first time; after a kill,
    the rest; a finalist that a longer search added, its own), appended as records whose latency
    names the round; how many were measured."""
    finalists = _finalists(task, fallback, space_, db, dev)
    if not finalists:
        return 0
    done = Counter(r.config_id for r in db.query(task.key, task.spec, dev) if r.playoff)
    n = 0
    for rnd in range(PLAYOFF_ROUNDS):
        due = [c for c in finalists if done[_cid(c)] <= rnd]
        if not due:
            continue
        if rnd % 2:
            due.reverse()
        for cfg, res in zip(due, measurer.measure(task, due)):
            latency = None if res.latency is None else {**res.latency, "playoff": rnd + 1}
            db.append(TuningRecord(
                task=task.key, kernel=task.kernel, spec=task.spec, workload=task.workload_json(),
                config=_cfg_json(cfg), latency=latency, device=measurer.device, error=res.error,
                tvmq=__version__, tvm=tvm.__version__))
            done[_cid(cfg)] += latency is not None
            n += 1
    return n


def _cfg_json(cfg: Any) -> dict[str, Any]:
    return {} if cfg is None else space.config_to_json(cfg)


def _cid(cfg: Any) -> str:
    return json.dumps(_cfg_json(cfg), sort_keys=True)


def _best_us(db: TuningDatabase, task: TuneTask, dev: str) -> float | None:
    r = db.best(task.key, task.spec, dev)
    return r.min_us if r else None


def _choose(todo: list[Any], n: int, fallback: Any, task: TuneTask, db: TuningDatabase, dev: str,
            warmup: int, rng: np.random.Generator, seed: int) -> list[Any]:
    chosen: list[Any] = []
    if fallback in todo or (fallback is None and todo):
        chosen.append(todo[0] if fallback is None else fallback)
    rest = [c for c in todo if c not in chosen]
    if len(chosen) >= n or not rest:
        return chosen[:n]
    history = [r for r in db.query(None, task.spec, dev) if r.kernel == task.kernel and r.ok]
    k = n - len(chosen)
    if len(history) < warmup:
        picks = rng.choice(len(rest), size=k, replace=False)
        return chosen + [rest[j] for j in sorted(picks)]
    explore = max(1, k // 4) if k > 1 else 0
    model = LatencyPredictor(seed, n_estimators=100).fit(history)
    wl = task.workload_json()
    scores = model.predict([feature_vector(task.kernel, task.spec, wl, _cfg_json(c)) for c in rest])
    order = list(np.argsort(scores, kind="stable"))
    exploit = [rest[j] for j in order[: k - explore]]
    others = [c for c in rest if c not in exploit]
    if explore and others:
        exploit += [others[j] for j in sorted(rng.choice(len(others), size=min(explore, len(others)), replace=False))]
    return chosen + exploit


class TunedConfigs:
    """The configuration chooser of a compile with a tuning database (``LowerToKernels(configs=)``).

    For each kernel: the best record of its task on this device (source ``"tuned"``); else the
    best record of the same kernel and shapes with another fused epilogue (``"tuned (shapes)"``:
    the same loop nest, a different store); else the fallback configuration (``"fallback"``).
    ``device_id``: the device fingerprint to read; default: the database's records of a CPU
    with these features and ``threads`` threads.
    """

    def __init__(self, db: TuningDatabase, features: TargetFeatures, device_id: str) -> None:
        self.db = db
        self.features = features
        self.device_id = device_id
        self.by_shape: dict[str, TuningRecord] = {}
        for r in db.query(device_id=device_id):
            if not r.ok or "op" not in r.workload:
                continue
            k = shape_key(r.kernel, workload_from_json(r.workload))
            if k not in self.by_shape or r.min_us < self.by_shape[k].min_us:
                self.by_shape[k] = r

    def __call__(self, kernel: registry.KernelDef, wl: Any, layer: str) -> tuple[Any, str]:
        best = self.db.best(kernel_task_key(kernel, wl, self.features), kernel.key.precision, self.device_id)
        source = "tuned"
        if best is None:
            best = self.by_shape.get(shape_key(str(kernel.key), wl))
            source = "tuned (shapes)"
        fallback = kernel.fallback_config(wl, self.features)
        if best is not None:
            try:
                cfg = space.config_from_json(best.config)
            except ValueError:
                cfg = None
            # a record of another configuration kind (e.g. written before W4A8 kernels took a
            # W4A8Config) does not apply
            if cfg is not None and isinstance(cfg, W4A8Config) == isinstance(fallback, W4A8Config):
                return cfg, source
        return fallback, "fallback"
