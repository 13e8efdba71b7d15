"""Observers: what one pass over the calibration set remembers of a tensor, and the ranges
(minmax, percentile, MSE-optimal clipping) derived from it.

Each observer keeps the exact min / max and a uniform random sample of the values (reservoir
sampling, seeded, at most ``capacity`` values), so every range method is computed from the same
single pass and the memory is bounded whatever the calibration set's size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from schedules.quant import activation_params

METHODS = ("minmax", "percentile", "mse")


@dataclass(frozen=True)
class TensorStats:
    """Summary of one tensor over the calibration set (JSON-serialisable)."""

    count: int
    min: float
    max: float
    percentile_lo: float  # the 0.01th percentile
    percentile_hi: float  # the 99.99th
    mse_lo: float  # MSE-optimal clipping range for 8-bit asymmetric quantization
    mse_hi: float
    channel_mean: tuple[float, ...] = ()  # mean per channel (axis 1), for bias correction

    def range(self, method: str) -> tuple[float, float]:
        if method == "minmax":
            return self.min, self.max
        if method == "percentile":
            return self.percentile_lo, self.percentile_hi
        if method == "mse":
            return self.mse_lo, self.mse_hi
        raise ValueError(f"unknown range method {method!r}; known: {', '.join(METHODS)}")

    def to_json(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["channel_mean"] = list(self.channel_mean)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TensorStats:
        return cls(**{**d, "channel_mean": tuple(d.get("channel_mean", ()))})


class Observer:
    """Streaming min / max + reservoir sample of one tensor."""

    # 2**18 values: the 99.99th percentile then rests on ~26 sampled values above it, not ~7 as
    # with 2**16, whose seed-to-seed swing moved MobileNetV2 W8A8's top-1 by ~0.4 pt (1 MiB per
    # observed tensor)
    def __init__(self, capacity: int = 1 << 18, seed: int = 0) -> None:
        self.capacity = capacity
        self.rng = np.random.default_rng(seed)
        self.sample = np.empty(0, np.float32)
        self.seen = 0  # values offered to the reservoir
        self.count = 0  # values observed
        self.channel_sum: np.ndarray | None = None
        self.channel_count = 0
        self.min = np.inf
        self.max = -np.inf

    def update(self, x: np.ndarray) -> None:
        a = np.asarray(x, np.float32)
        if a.ndim >= 2:  # per-channel sums (axis 1) for the channel means
            sums = a.sum(axis=tuple(i for i in range(a.ndim) if i != 1), dtype=np.float64)
            self.channel_sum = sums if self.channel_sum is None else self.channel_sum + sums
            self.channel_count += a.size // a.shape[1]
        v = a.reshape(-1)
        if v.size == 0:
            return
        if not np.all(np.isfinite(v)):
            raise FloatingPointError("non-finite activation values (NaN/inf) during calibration")
        self.min = min(self.min, float(v.min()))
        self.max = max(self.max, float(v.max()))
        self.count += v.size
        if v.size > self.capacity:
            # a uniform subsample of this update first (every update of a tensor has the same
            # size, so the reservoir stays uniform over all values): keeps a pass over large
            # activations cheap
            v = v[self.rng.integers(0, v.size, self.capacity)]
        # reservoir sampling, vectorised: item t (0-based, global) replaces a random slot with
        # probability capacity / (t + 1)
        room = self.capacity - self.sample.size
        if room > 0:
            take = v[:room]
            self.sample = np.concatenate([self.sample, take])
            self.seen += take.size
            v = v[room:]
        if v.size:
            t = self.seen + np.arange(v.size)
            slots = (self.rng.random(v.size) * (t + 1)).astype(np.int64)
            keep = slots < self.capacity
            self.sample[slots[keep]] = v[keep]  # later items win ties, as sequential sampling
            self.seen += v.size

    def stats(self, bits: int = 8) -> TensorStats:
        if self.sample.size == 0:
            raise ValueError("observer saw no values")
        lo_p, hi_p = np.percentile(self.sample, [0.01, 99.99])
        mse_lo, mse_hi = mse_range(self.sample, self.min, self.max, bits)
        return TensorStats(count=int(self.count), min=float(self.min), max=float(self.max),
                           percentile_lo=float(lo_p), percentile_hi=float(hi_p),
                           mse_lo=mse_lo, mse_hi=mse_hi,
                           channel_mean=() if self.channel_sum is None else
                           tuple(float(m) for m in self.channel_sum / max(self.channel_count, 1)))


def _quant_mse(v: np.ndarray, lo: float, hi: float, bits: int) -> float:
    scale, zp = activation_params(lo, hi, bits)
    q = np.clip(np.round(v / scale) + zp, 0, 2 ** bits - 1)
    return float(np.mean(((q - zp) * scale - v) ** 2))


def mse_range(v: np.ndarray, lo: float, hi: float, bits: int = 8, steps: int = 64) -> tuple[float, float]:
    """The clipping range ``[a*lo, a*hi]``, ``a`` in ``(0, 1]``, that minimises the mean squared
    quantization error of the sample (a grid of ``steps`` shrink factors)."""
    if hi <= lo:
        return float(lo), float(hi)
    best = (np.inf, lo, hi)
    for a in np.linspace(1.0, 1.0 / steps, steps):
        err = _quant_mse(v, lo * a, hi * a, bits)
        if err < best[0]:
            best = (err, lo * a, hi * a)
    return float(best[1]), float(best[2])
