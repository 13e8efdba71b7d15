"""``LatencyTable``: per layer and spec, how long that layer's kernel takes on one device.

It is the only bridge from tuning to allocation. Each entry is the best measured record of the
layer's task on the device (``source: "measured"``), or, for tasks never measured there, the
XGBoost predictor's estimate for the configuration a compile would use, the fallback one
(``"predicted"``). Boundary costs: a layer whose input comes in another format than the one its
spec takes pays a conversion kernel on that input (float -> uint8 / int16 quantize, integer ->
float dequantize), measured as conversion tasks; integer formats convert inside the producing
kernel's epilogue (a W8A8 producer requantizes straight into int16 for a W8A16 consumer) and
float formats need nothing, so those boundaries cost 0.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from schedules import registry, space
from schedules.target_features import TargetFeatures, detect_host

from ..errors import TvmqError
from .. import specs
from .database import TuningDatabase
from .predictor import LatencyPredictor, feature_vector
from .tasks import TuneTask, extract_tasks

def conversion_for(from_spec: str, to_spec: str) -> str | None:
    """The conversion kernel between a producer's spec and a consumer's (None: free)."""
    src_float, dst_float = from_spec in specs.FLOAT, to_spec in specs.FLOAT
    if src_float and not dst_float:
        return "quantize_i16" if to_spec == "w8a16" else "quantize_u8"
    if dst_float and not src_float:
        return "dequantize_u8"
    return None


@dataclass
class LatencyTable:
    device: dict[str, Any]
    layers: dict[str, dict[str, dict[str, Any]]]  # layer -> spec -> {"us", "source", "task", ...}
    conversions: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # layer -> name -> {...}
    predictor_error: dict[str, float] | None = None

    def latency_us(self, layer: str, spec: str) -> float:
        try:
            return float(self.layers[layer][spec]["us"])
        except KeyError:
            raise TvmqError(f"no latency for layer {layer!r} at {spec!r}") from None

    def boundary_us(self, consumer: str, from_spec: str, to_spec: str) -> float:
        """The conversion the consumer's input needs when its producer runs ``from_spec``."""
        name = conversion_for(from_spec, to_spec)
        if name is None:
            return 0.0
        entry = self.conversions.get(consumer, {}).get(name)
        if entry is None:
            raise TvmqError(f"no conversion latency {name} for the input of {consumer!r}")
        return float(entry["us"])

    def total_us(self, plan: Mapping[str, str], edges: list[tuple[str, str]] = ()) -> float:  # type: ignore[assignment]
        """Sum of the plan's layers plus the conversions on ``edges`` (producer, consumer)."""
        total = sum(self.latency_us(l, s) for l, s in plan.items())
        return total + sum(self.boundary_us(b, plan[a], plan[b]) for a, b in edges)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for per_spec in self.layers.values():
            for e in per_spec.values():
                out[e["source"]] = out.get(e["source"], 0) + 1
        return out

    def to_json(self) -> dict[str, Any]:
        return {"schema": 1, "device": self.device, "layers": self.layers,
                "conversions": self.conversions, "predictor_error": self.predictor_error}

    def save(self, path: str | os.PathLike) -> None:
        p = Path(path)
        tmp = p.with_name(f".{p.name}.tmp{os.getpid()}")
        tmp.write_text(json.dumps(self.to_json(), indent=1))
        os.replace(tmp, p)  # never a half-written table

    @classmethod
    def load(cls, path: str | os.PathLike) -> LatencyTable:
        d = json.loads(Path(path).read_text())
        return cls(d["device"], d["layers"], d.get("conversions", {}), d.get("predictor_error"))

    @classmethod
    def from_database(cls, db: TuningDatabase, device: Mapping[str, Any] | str, *,
                      model: Any = None, tasks: list[TuneTask] | None = None,
                      specs: list[str] = ("w8a8",), features: TargetFeatures | None = None,  # type: ignore[assignment]
                      predict: bool = True, seed: int = 0, narrow_weights: bool = False) -> LatencyTable:
        """The table of ``model`` (a prepared model, or its ``tasks``) for ``specs`` on ``device``
        (a fingerprint or its id). Unmeasured entries are predicted (``predict=True``, the
        predictor trained on the device's records; its held-out error is kept) or an error.
        ``narrow_weights``: the kernels of builds with the recipe's narrow weights
        (``extract_tasks``)."""
        features = features or detect_host()
        dev_id = device if isinstance(device, str) else device["id"]
        dev = db.devices().get(dev_id, {"id": dev_id})
        if tasks is None:
            if model is None:
                raise TvmqError("LatencyTable.from_database needs the model or its tasks")
            tasks = extract_tasks(model, list(specs), features, narrow_weights=narrow_weights)
        records = [r for r in db.query(device_id=dev_id) if r.ok]
        predictor = None
        layers: dict[str, dict[str, dict[str, Any]]] = {}
        conversions: dict[str, dict[str, dict[str, Any]]] = {}
        missing: list[TuneTask] = []
        for task in tasks:
            if task.plain_fp32:  # (the allocator prices mixed plans: their fp32 layers are NCHW)
                continue
            best = db.best(task.key, task.spec, dev_id)
            if best is not None:
                entry = {"us": best.median_us, "source": "measured", "task": task.key,
                         "spread": best.latency.get("spread") if best.latency else None}
            elif not predict:
                missing.append(task)
                continue
            else:
                if predictor is None:
                    if len(records) < 8:
                        raise TvmqError(f"{len(records)} record(s) of device {dev_id} in the database: too few "
                                        "to predict unmeasured layers (run tvmq tune first)")
                    predictor = LatencyPredictor(seed).fit(records)
                if task.kind == "conversion":
                    cfg_json: dict[str, Any] = {}
                else:
                    kernel = registry.get(registry.KernelKey.parse(task.kernel))
                    cfg_json = space.config_to_json(kernel.fallback_config(task.workload, features))
                us = float(predictor.predict([feature_vector(task.kernel, task.spec, task.workload_json(),
                                                             cfg_json)])[0])
                entry = {"us": us, "source": "predicted", "task": task.key}
            for layer in task.layers:
                if task.kind == "conversion":
                    conversions.setdefault(layer, {})[task.kernel] = entry
                else:
                    layers.setdefault(layer, {})[task.spec] = entry
        if missing:
            raise TvmqError(f"{len(missing)} task(s) have no record on device {dev_id}, e.g. "
                            f"{missing[0].describe()} [{missing[0].spec}]: tune them or allow prediction")
        err = None
        if predictor is not None and len({r.task for r in records}) >= 5:
            err = LatencyPredictor.evaluate(records, seed=seed, best_only=True)
        return cls(dict(dev), layers, conversions, err)
