"""The tuning database: an append-only JSONL file, one record per measured candidate.

Each line is one JSON object (schema ``RECORD_SCHEMA``)::

    {"schema": 1, "task": "<workload key>", "kernel": "conv2d/w8a8/avx2", "spec": "w8a8",
     "workload": {...}, "config": {"type": "PointwiseDotConfig", ...},
     "latency": {"median_us": 104.3, "min_us": 103.7, "n": 5, "spread": 0.004} | null,
     "error": null | "build: ...", "device": {"id": "...", "cpu": ..., "isa": ..., "threads": 1, ...},
     "tvmq": "0.1.0", "tvm": "0.27.0", "time": 1795000000.0}

``task`` (the workload key) is a hash of the kernel key, the workload's fields and the
structural hash of the kernel's compute: identical workloads in several layers or models share
it, and a changed compute definition gets a new key (old records stop matching instead of
lying). ``latency.spread`` is the interquartile range over the median. Records are written
(flushed and fsync'ed) as each is measured, so a killed run loses nothing it measured; reading
skips corrupt lines and records of another schema with one warning that says how many and where.
Records from several machines live in one file (or several, ``merge``): every query names the
device.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import platform
import statistics
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from schedules.target_features import TargetFeatures
from schedules.workload import Conv2dWorkload, DenseWorkload, Epilogue

from ..errors import TvmqError

RECORD_SCHEMA = 1
_REQUIRED = ("schema", "task", "kernel", "spec", "workload", "config", "latency", "device")


class DatabaseError(TvmqError):
    """The tuning database cannot be read or written."""


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_fingerprint(features: TargetFeatures, threads: int, cpu: str | None = None) -> dict[str, Any]:
    """What makes latencies comparable: the CPU model and features, and the thread count.
    ``id`` hashes the rest (records merge and are queried by it)."""
    d: dict[str, Any] = {"cpu": cpu if cpu is not None else _cpu_model(), "isa": features.isa,
                         "features": {k: v for k, v in dataclasses.asdict(features).items()
                                      if k not in ("num_cores", "llvm_cpu")},
                         "threads": int(threads)}
    d["id"] = hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]
    return d


@dataclass
class TuningRecord:
    task: str
    kernel: str
    spec: str
    workload: dict[str, Any]
    config: dict[str, Any]
    latency: dict[str, float] | None  # None: the candidate failed (see ``error``)
    device: dict[str, Any]
    error: str | None = None
    tvmq: str = ""
    tvm: str = ""
    time: float = field(default_factory=time.time)
    schema: int = RECORD_SCHEMA

    @property
    def ok(self) -> bool:
        return self.latency is not None

    @property
    def median_us(self) -> float:
        return float(self.latency["median_us"]) if self.latency else float("inf")

    @property
    def min_us(self) -> float:
        """The fastest repeat (older records without one: the median)."""
        return float(self.latency.get("min_us", self.latency["median_us"])) if self.latency else float("inf")

    @property
    def playoff(self) -> bool:
        """A re-measurement of a finalist in the search's playoff (``tuner``), not a search trial."""
        return bool(self.latency and self.latency.get("playoff"))

    @property
    def config_id(self) -> str:
        return json.dumps(self.config, sort_keys=True)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TuningRecord:
        if not isinstance(d, dict) or any(k not in d for k in _REQUIRED):
            raise ValueError("not a tvmq tuning record")
        if d["schema"] != RECORD_SCHEMA:
            raise ValueError(f"record schema {d['schema']!r}, expected {RECORD_SCHEMA}")
        lat = d["latency"]
        if lat is not None and not (isinstance(lat, dict) and float(lat["median_us"]) > 0):
            raise ValueError(f"bad latency {lat!r}")
        if not isinstance(d["device"], dict) or "id" not in d["device"]:
            raise ValueError("record without a device id")
        if not isinstance(d["config"], dict):
            raise ValueError(f"config must be an object, got {type(d['config']).__name__}")
        if d.get("error") is not None and not isinstance(d["error"], str):
            raise ValueError(f"error must be text or null, got {d['error']!r}")
        if lat is None and not d.get("error"):
            raise ValueError("a record without a latency must say its error")
        _check_workload(d["workload"])
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def _check_workload(wl: Any) -> None:
    """A kernel workload must build (the fields of this tvmq's workloads, an epilogue); another
    version's or tool's record is foreign, skipped with the corrupt lines."""
    if not isinstance(wl, dict):
        raise ValueError(f"workload must be an object, got {type(wl).__name__}")
    if wl.get("op") not in ("conv2d", "dense"):
        return  # a conversion's workload (a tensor shape)
    try:
        d = dict(wl)
        op = d.pop("op")
        ep = Epilogue(**d.pop("epilogue"))
        (DenseWorkload if op == "dense" else Conv2dWorkload)(**d, epilogue=ep)
    except KeyError as e:
        raise ValueError(f"foreign workload: no {e.args[0]!r}") from None
    except TypeError as e:
        raise ValueError(f"foreign workload: {e}") from None


class TuningDatabase:
    """The records of one JSONL file (``path=None``: in memory only), queried by task and device.

    >>> db = TuningDatabase("tuning.jsonl")             # doctest: +SKIP
    >>> db.best(task_key, "w8a8", device_id)            # doctest: +SKIP
    """

    def __init__(self, path: str | os.PathLike | None = None) -> None:
        self.path = None if path is None else Path(path)
        self.records: list[TuningRecord] = []
        self.skipped: list[tuple[int, str]] = []  # (line number, why) of unreadable lines
        if self.path is not None and self.path.exists():
            self._load(self.path)

    def _load(self, path: Path) -> None:
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError as e:
            raise DatabaseError(f"cannot read tuning database {path}: {e.strerror}") from None
        skipped = []
        for no, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                self.records.append(TuningRecord.from_json(json.loads(line)))
            except (ValueError, TypeError, KeyError) as e:
                skipped.append((no, str(e).splitlines()[0][:80] if str(e) else type(e).__name__))
        if skipped:
            lines = ", ".join(str(n) for n, _ in skipped[:5]) + (" ..." if len(skipped) > 5 else "")
            warnings.warn(f"{path}: skipped {len(skipped)} corrupt or foreign line(s) (line {lines}: "
                          f"{skipped[0][1]})", stacklevel=3)
        self.skipped += skipped

    def append(self, record: TuningRecord) -> None:
        """Add ``record`` and write it to the file at once (one line, flushed, fsync'ed)."""
        self.records.append(record)
        if self.path is None:
            return
        line = json.dumps(record.to_json(), sort_keys=True)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as f:
                # a file killed mid-line would glue the next record onto the partial one
                if f.tell() > 0 and not self._ends_with_newline():
                    f.write("\n")
                f.write(line + "\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise DatabaseError(f"cannot append to tuning database {self.path}: {e.strerror}") from None

    def _ends_with_newline(self) -> bool:
        assert self.path is not None
        with open(self.path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1) == b"\n"

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[TuningRecord]:
        return iter(self.records)

    def query(self, task: str | None = None, spec: str | None = None,
              device_id: str | None = None) -> list[TuningRecord]:
        return [r for r in self.records if (task is None or r.task == task)
                and (spec is None or r.spec == spec)
                and (device_id is None or r.device["id"] == device_id)]

    def ranked_us(self, task: str, spec: str, device_id: str) -> dict[str, float]:
        """What ranks a task's configurations on a device, microseconds by ``config_id``.

        Without a playoff: each configuration's fastest repeat over its records (other processes
        can only slow a repeat down, so on a busy machine the minimum ranks configurations where
        the median follows the load: ResNet-50 W8A8 tuned on a busy 2-core Zen 4, 20.07 ms end to
        end picked by minimum, 20.39 by median, 20.15 untuned). With one (``tuner``'s finalists
        re-measured in alternating rounds): only the finalists, each by the median of its playoff
        rounds' fastest repeats. The search's single measurements fall in different moments, and
        a neighbour that slows a whole window down (a shared VM) can make a slower configuration
        look fastest: on a 2-core Zen 3 VM several search winners were 5-25% slower than the
        fallback when measured side by side."""
        rounds: dict[str, list[float]] = {}
        for r in self.query(task, spec, device_id):
            if r.playoff:
                rounds.setdefault(r.config_id, []).append(r.min_us)
        if rounds:
            return {c: statistics.median(v) for c, v in rounds.items()}
        return self.search_fastest_us(task, spec, device_id)

    def search_fastest_us(self, task: str, spec: str, device_id: str) -> dict[str, float]:
        """Each configuration's fastest repeat over its successful search records (playoff
        records left out), microseconds by ``config_id``."""
        fastest: dict[str, float] = {}
        for r in self.query(task, spec, device_id):
            if r.ok and not r.playoff:
                fastest[r.config_id] = min(fastest.get(r.config_id, math.inf), r.min_us)
        return fastest

    def best(self, task: str, spec: str, device_id: str) -> TuningRecord | None:
        """The record of the best-ranked configuration of a task on a device (``ranked_us``;
        its fastest record), None where nothing was measured there."""
        ranked = self.ranked_us(task, spec, device_id)
        if not ranked:
            return None
        cid = min(ranked, key=lambda c: (ranked[c], c))
        recs = [r for r in self.query(task, spec, device_id) if r.ok and r.config_id == cid]
        return min(recs, key=lambda r: (not r.playoff, r.min_us))

    def devices(self) -> dict[str, dict[str, Any]]:
        return {r.device["id"]: r.device for r in self.records}

    @classmethod
    def merge(cls, paths: Iterable[str | os.PathLike], output: str | os.PathLike | None = None
              ) -> TuningDatabase:
        """The records of several databases (duplicates, the same line twice, dropped), written
        to ``output`` when given."""
        merged = cls(None)
        seen = set()
        for p in paths:
            if not Path(p).is_file():
                raise DatabaseError(f"tuning database not found: {p}" if not Path(p).exists()
                                    else f"tuning database {p} is a directory, not a file")
            for r in cls(p).records:
                key = json.dumps(r.to_json(), sort_keys=True)
                if key not in seen:
                    seen.add(key)
                    merged.records.append(r)
        if output is not None:
            merged.path = Path(output)
            if merged.path.exists():
                raise DatabaseError(f"merge output {output} exists; choose a new file")
            text = "".join(json.dumps(r.to_json(), sort_keys=True) + "\n" for r in merged.records)
            try:
                tmp = merged.path.with_name(f".{merged.path.name}.tmp{os.getpid()}")
                tmp.write_text(text, encoding="utf-8")
                os.replace(tmp, merged.path)  # a reader never sees half the merged file
            except OSError as e:
                raise DatabaseError(f"cannot write {output}: {e.strerror}") from None
        return merged
