"""An XGBoost latency model over (workload, spec, kernel, configuration) features.

One model serves twice: during tuning it ranks the configurations not yet measured (the cost
model of the search), and after tuning it predicts the latency of (layer, spec) pairs that were
never measured, for the allocator (``LatencyTable``). Features are the workload's shape fields,
the spec and op, the configuration's knobs and the padding they imply (work the kernel does on
padded channels / pixels); the target is log latency. ``evaluate`` reports the error on records
of held-out tasks (whole workloads the model never saw), which is what prediction for an
unmeasured layer is.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import numpy as np

from schedules import registry  # noqa: F401  (loading it registers the kernels' configuration types)
from schedules import space
from schedules.common import ceil_div
from schedules.intrinsics import DOT_PRODUCTS, PIXEL_DOT_PRODUCTS

from .database import TuningRecord

SPECS = ("fp32", "bf16", "w8a8", "w4a8", "w8a16", "conversion")
OPS = ("conv2d", "depthwise_conv2d", "dense", "conversion")
ISAS = ("generic", "avx2", "avx512", "avx512_vnni", "amx")
# the registered configuration types (one-hot) and their numeric knobs, in the order the kernel
# registry registers them (``schedules.registry.KERNEL_MODULES``)
CONFIG_TYPES = space.config_type_names()
KNOBS = space.knob_names()


def _waste(n: int, block: int) -> float:
    return ceil_div(n, block) * block / n if n > 0 and block > 0 else 1.0


def feature_vector(kernel: str, spec: str, workload: dict[str, Any], config: dict[str, Any] | None) -> list[float]:
    """The model's input for one candidate (``workload``/``config``: their JSON forms)."""
    if "shape" in workload:  # a conversion: elements only
        n = math.prod(workload["shape"])
        op, isa, shape = "conversion", "generic", [0.0] * 12
        macs, out_c, out_w, in_c, pixels = n, 0, 0, 0, n
        ep = [0.0] * 5
    else:
        op, _, isa = kernel.split("/")
        if workload["op"] == "dense":
            in_c, out_c, out_w, pixels = workload["in_features"], workload["out_features"], 1, workload["batch"]
            shape = [workload["batch"], in_c, 1, 1, out_c, 1, 1, 1, 0, 1, 1, 1]
            macs = workload["batch"] * in_c * out_c
        else:
            w = workload
            span_h = (w["kernel_h"] - 1) * w["dilation_h"] + 1
            span_w = (w["kernel_w"] - 1) * w["dilation_w"] + 1
            oh = (w["height"] + w["pad_top"] + w["pad_bottom"] - span_h) // w["stride_h"] + 1
            ow = (w["width"] + w["pad_left"] + w["pad_right"] - span_w) // w["stride_w"] + 1
            in_c, out_c, out_w, pixels = w["in_channels"], w["out_channels"], ow, oh * ow
            shape = [w["batch"], in_c, w["height"], w["width"], out_c, w["kernel_h"], w["kernel_w"],
                     w["stride_h"], w["pad_top"] + w["pad_left"], w["groups"], oh, ow]
            macs = w["batch"] * out_c * oh * ow * (in_c // w["groups"]) * w["kernel_h"] * w["kernel_w"]
        e = workload["epilogue"]
        ep = [float(e["bias"]), float(e["activation"] != "none"), float(e["residual"]),
              float(e["out_float"]), float(e.get("out_int16", False))]
    cfg = config or {}
    unpack_block = 0.0
    if cfg.get("type") == "W4A8Config":  # the base kernel's knobs, and where the unpack runs
        unpack_block = float(cfg.get("unpack") == "block")
        cfg = cfg.get("base") or {}
    knobs = [float(cfg.get(k, 0) or 0) for k in KNOBS] + [unpack_block]
    lanes_dot = 0.0
    if "dot" in cfg:
        d = DOT_PRODUCTS.get(cfg["dot"]) or PIXEL_DOT_PRODUCTS.get(cfg["dot"])
        lanes_dot = float(d.lanes) if d else 0.0
    waste = [
        _waste(out_w, int(cfg.get("reg_n", 0))),
        _waste(out_c, int(cfg.get("oc_bn", 0) or cfg.get("k_tile", 0))),
        _waste(in_c, int(cfg.get("ic_bn", 0))),
        _waste(pixels, int(cfg.get("p_tile", 0))),
    ]
    onehot = ([float(op == o) for o in OPS] + [float(spec == s) for s in SPECS]
              + [float(isa == i) for i in ISAS] + [float(cfg.get("type") == t) for t in CONFIG_TYPES])
    return (onehot + [float(v) for v in shape] + ep + knobs + [lanes_dot] + waste
            + [math.log2(max(macs, 1)), math.log2(max(macs, 1)) + math.log2(np.prod(waste))])


def record_features(r: TuningRecord) -> list[float]:
    return feature_vector(r.kernel, r.spec, r.workload, r.config)


class LatencyPredictor:
    """``fit(records)`` then ``predict(rows)`` (rows: ``feature_vector`` lists) in microseconds."""

    def __init__(self, seed: int = 0, n_estimators: int = 300) -> None:
        self.seed = seed
        self.n_estimators = n_estimators
        self.model: Any = None
        self.n_train = 0

    def fit(self, records: Iterable[TuningRecord]) -> LatencyPredictor:
        import xgboost as xgb  # (deferred: ~0.5 s, only when a predictor is trained or used)

        ok = [r for r in records if r.ok]
        if not ok:
            raise ValueError("no successful records to train the latency predictor on")
        x = np.array([record_features(r) for r in ok], dtype=np.float64)
        y = np.log(np.array([r.median_us for r in ok], dtype=np.float64))
        # the native API: xgboost's scikit-learn wrapper would need scikit-learn installed
        params = {"objective": "reg:squarederror", "max_depth": 6, "eta": 0.08, "subsample": 0.9,
                  "colsample_bytree": 0.9, "min_child_weight": 1.0, "seed": self.seed, "nthread": 1,
                  "tree_method": "hist"}
        self.model = xgb.train(params, xgb.DMatrix(x, label=y), num_boost_round=self.n_estimators)
        self.n_train = len(ok)
        return self

    def predict(self, rows: list[list[float]]) -> np.ndarray:
        if self.model is None:
            raise ValueError("the latency predictor is not trained")
        import xgboost as xgb  # (deferred: ~0.5 s, only when a predictor is trained or used)

        return np.exp(self.model.predict(xgb.DMatrix(np.array(rows, dtype=np.float64))))

    def predict_records(self, records: list[TuningRecord]) -> np.ndarray:
        return self.predict([record_features(r) for r in records])

    @classmethod
    def evaluate(cls, records: list[TuningRecord], *, holdout: float = 0.2, seed: int = 0,
                 best_only: bool = False) -> dict[str, float]:
        """Train on the records of a random ``1 - holdout`` of the tasks, test on the rest:
        median / p90 absolute relative error. ``best_only``: test on each held-out task's best
        record only (the latency a compile with that task tuned would get)."""
        ok = [r for r in records if r.ok]
        tasks = sorted({r.task for r in ok})
        rng = np.random.default_rng(seed)
        test_tasks = set(rng.choice(tasks, size=max(1, int(round(holdout * len(tasks)))), replace=False))
        train = [r for r in ok if r.task not in test_tasks]
        test = [r for r in ok if r.task in test_tasks]
        if best_only:
            best: dict[str, TuningRecord] = {}
            for r in test:
                if r.task not in best or r.median_us < best[r.task].median_us:
                    best[r.task] = r
            test = list(best.values())
        model = cls(seed).fit(train)
        pred = model.predict_records(test)
        actual = np.array([r.median_us for r in test])
        err = np.abs(pred - actual) / actual
        return {"median_ape": float(np.median(err)), "p90_ape": float(np.quantile(err, 0.9)),
                "n_train": len(train), "n_test": len(test), "tasks_train": len(tasks) - len(test_tasks),
                "tasks_test": len(test_tasks)}
