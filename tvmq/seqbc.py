"""Sequential (empirical) bias correction: each integer layer's bias shifted so that the mean of
its quantized output, fed by the quantized model's own upstream layers, equals the fp32 model's
(Nagel et al. 2019, "empirical" bias correction; numpy only).

The analytic correction of ``tvmq.recipe`` (step 2) removes the mean output shift that rounding a
layer's *weights* causes, for the fp32 input mean. What it cannot see: the shift that the
quantization of everything upstream leaves in the layer's input and that nonlinearities (a
ReLU6 clipping noisy values, a clamp at the uint8 range) turn into a mean error, and the one
the layer's own activation clipping causes. ``sequential_bias_correction`` measures it: it
lowers the plan with the recipe as it stands (no codegen), runs the numpy program
(``NumpyProgram.run_batched``: the exact integers the library computes) on ``samples``
calibration samples layer by layer in graph order, and after each integer layer compares the
per-channel mean of its dequantized output with the fp32 model's on the same samples (one
calibration pass over them); the difference, in whole bias units, goes into the layer's int32
bias before the layers after it are computed (``iterations`` times: a clamped output moves
less than its bias). The shifts are stored in the statistics (``meta["bias_shifts"]``, keyed by
spec, range method and recipe options: ``recipe.shift_key``) and the recipe adds them to the
bias wherever ``sequential_bias_correction`` is on, in sensitivity analysis and builds alike.
The shifts depend on the plan they were measured with (upstream layers' errors): a uniform
plan's shifts, used for one layer at a time in sensitivity analysis, are an approximation
there.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable

import numpy as np

# most of the int32 range stays for zp_in * sum(W_q) (as recipe.BIAS_LIMIT)
_BIAS_BOUND = 2 ** 30


def shrunk_mean(err: np.ndarray) -> np.ndarray:
    """The per-channel mean of ``err`` (``[samples, channels]``), shrunk towards 0 by its
    sampling noise (James-Stein, positive part: ``mean * max(0, 1 - se^2 / mean^2)``): a shift
    that the samples do not agree on (a classifier's logits, the 7x7 layers before it: errors
    that depend on the image) is not applied, a consistent one is, nearly whole."""
    n = err.shape[0]
    mean = err.mean(axis=0)
    if n < 2:
        return mean
    se2 = err.var(axis=0, ddof=1) / n
    with np.errstate(divide="ignore", invalid="ignore"):
        keep = np.where(mean != 0, np.maximum(0.0, 1.0 - se2 / (mean * mean)), 0.0)
    return mean * keep


def fp32_outputs(pm: Any, data: Any, features: Any) -> dict[str, list[np.ndarray]]:
    """``layer -> [one NCHW float32 array per sample]``: every layer's fp32 output (after its
    fused epilogue), from the compiled fp32 model with taps (as ``collect``)."""
    import tvm
    from tvm import relax

    from .compiler import codegen, lower_module

    lowered = lower_module(pm, features, taps=True)
    vm = relax.VirtualMachine(codegen(lowered.mod, features), tvm.cpu())
    outs: dict[str, list[np.ndarray]] = {}
    for feed in data.samples(batch=1):
        result = list(vm["main"](*[tvm.runtime.tensor(feed[s.name]) for s in pm.inputs]))
        for (layer, role), value in zip(lowered.taps, result[1:]):
            if role == "out":
                outs.setdefault(layer, []).append(value.numpy())
    return outs


def linear_region_error(f: np.ndarray, q: np.ndarray, qint: np.ndarray | None,
                        clamp: tuple[int, int] | None) -> np.ndarray:
    """``[samples, channels]``: the mean of ``f - q`` per sample and channel (axis 1 of both,
    ``[samples, channels, ...]``) over the elements where neither output is clamped: the integer
    one strictly inside ``clamp``, the fp32 one strictly inside its own extremes (a ReLU6's 0
    and 6). A bias moves exactly those; a clipped value's error is not a bias."""
    mask = (f > f.min()) & (f < f.max())
    if qint is not None and clamp is not None:
        mask &= (qint > clamp[0]) & (qint < clamp[1])
    axes = tuple(range(2, f.ndim))
    count = mask.sum(axis=axes)
    total = np.where(mask, f - q, 0.0).sum(axis=axes)
    return np.where(count > 0, total / np.maximum(count, 1), 0.0)


def sequential_bias_correction(model: Any, stats: Any, data: Any, plan: Any, method: str = "minmax", *,
                               samples: int = 64, iterations: int = 2, features: Any = None,
                               progress: Callable[[str], None] = lambda msg: None) -> Any:
    """A copy of ``stats`` holding the sequential bias shifts of every integer layer of ``plan``
    (a ``PrecisionPlan`` or a spec name: uniform), measured on the first ``samples`` samples of
    ``data`` (anything ``collect`` takes) with range ``method``, and with the recipe's
    ``sequential_bias_correction`` on. Records ``meta["bias_shift_seconds"]``."""
    from .calibration import CalibrationData  # deferred: imports TVM
    from .compiler import lower_module
    from .frontend import prepare
    from .plan import PrecisionPlan
    from .recipe import recipe_options, shift_key, with_recipe
    from schedules.target_features import detect_host

    t0 = time.perf_counter()
    pm = prepare(model)
    if not isinstance(plan, PrecisionPlan):
        plan = PrecisionPlan.uniform(pm.layers, plan)
    if not isinstance(data, CalibrationData):
        data = CalibrationData.from_source(data, pm.inputs)
    n = min(samples, len(data))
    data = CalibrationData({k: v[:n] for k, v in data.arrays.items()}, pm.inputs)
    base = with_recipe(stats, sequential_bias_correction=False)
    opts = recipe_options(base)
    features = features or detect_host()
    progress(f"sequential bias correction: fp32 means of {n} samples")
    ref = fp32_outputs(pm, data, features)
    lowered = lower_module(pm, features, plan=plan, stats=base, range_method=method)
    program = lowered.program
    if program is None:
        from .errors import TvmqError
        raise TvmqError("sequential bias correction needs an integer plan")
    shifts: dict[str, dict[str, list[float]]] = {}

    def on_layer(name: str, lo: Any, values: list[np.ndarray], recompute: Callable[[], list[np.ndarray]]) -> None:
        if lo.activation not in (None, "none") and not os.environ.get("TVMQ_SEQBC_ALL"):
            return  # see the module docstring: a clamped output's mean error is not a bias
        f = np.stack(ref[name]).astype(np.float64)  # [samples, 1, C, ...] NCHW
        f = f.reshape((f.shape[0],) + f.shape[2:])
        total = np.zeros(lo.bias.shape, np.int64)
        for _ in range(iterations):
            qint = np.stack([np.asarray(a).reshape(lo.shape) for a in values])
            qint = np.moveaxis(qint.reshape((qint.shape[0],) + qint.shape[2:]), lo.channel_axis, 1)
            q = qint.astype(np.float64)
            if lo.scale is not None:
                q = (q - lo.zp) * lo.scale
            err = linear_region_error(f, q, qint if lo.scale is not None else None, lo.clamp)
            delta = np.round(shrunk_mean(err) / lo.unit).astype(np.int64)
            if os.environ.get("TVMQ_SEQBC_DEBUG"):
                print(f"{name[-28:]:28s} |err| {np.abs(err.mean(0)).mean():.4f} |shrunk| {np.abs(shrunk_mean(err)).mean():.4f} delta {np.abs(delta).mean():.1f}", flush=True)
            new = np.clip(lo.bias.astype(np.int64) + delta, -_BIAS_BOUND, _BIAS_BOUND)
            delta = new - lo.bias
            if not delta.any():
                break
            lo.bias[...] = new.astype(np.int32)
            total += delta
            values = recompute()
        key = shift_key(plan[name], method, opts["gptq"], opts["bias_correction"])
        shifts.setdefault(key, {})[name] = (total * lo.unit).tolist()

    progress(f"sequential bias correction: {len(program.layer_outputs)} integer layers on {n} samples")
    program.run_batched([[feed[s.name] for s in pm.inputs] for feed in data.samples(batch=1)], on_layer)
    meta = dict(base.meta)
    merged = {k: dict(v) for k, v in meta.get("bias_shifts", {}).items()}
    for k, v in shifts.items():
        merged.setdefault(k, {}).update(v)
    meta["bias_shifts"] = merged
    meta["bias_shift_samples"] = n
    meta["bias_shift_seconds"] = round(time.perf_counter() - t0, 2)
    import dataclasses
    return with_recipe(dataclasses.replace(base, meta=meta), sequential_bias_correction=True)
