"""The per-layer quantization recipe: what an integer spec does to one layer's weights, bias and
input. One place, used by both the compiler (``passes.realize_integers`` builds the integer
kernel's arguments from it) and sensitivity analysis (``sensitivity.layer_variant`` simulates
the same layer in float from it), so the allocator ranks exactly what gets compiled.

For a layer with float weights ``W`` (``[K, C/groups, ...]``), bias ``b`` and the calibrated
statistics of its input, at spec ``w<b>a<a>``:

1. ``W_q, s_w = quantize_weights(W, b)``: symmetric per output channel (MSE clipping below 8
   bits, ``schedules.quant``); where the statistics hold the layer's input Hessian
   (``collect(..., hessians=True)``) and the recipe's ``gptq`` option is on, ``W_q`` is rounded
   with error feedback instead (``tvmq.gptq``: GPTQ, same scales); the ``hessian_clipping``
   option (off by default; needs the Hessian too) chooses each channel's clipping for the
   layer's output error under the Hessian instead of the weights' own error: with GPTQ, GPTQ at
   7 factors of the MSE-clipped scales and the best per channel (``gptq_clip_round``); without,
   the best of 36 clipping ratios rounded to nearest (``hessian_scales``); the ``narrow_weights``
   option (off by default) gives ungrouped W8A8 convs weights that AVX2's ``vpmaddubsw`` is
   exact on (``pair_fit``);
2. bias correction (the recipe's ``bias_correction`` option, on by default):
   ``b - E[(s_w W_q - W) x]`` with ``x`` replaced by the calibrated per-channel input mean
   (Nagel et al. 2019): the mean output shift that rounding the weights causes is removed;
3. the input: uint8 with the calibrated range (``a_bits`` 8), or int16 symmetric within
   ``int16_qmax(W_q at 8 bits)`` (``a_bits`` 16), so that no int32 accumulator can overflow;
4. the int32 bias ``round(b / (s_in s_w)) - zp_in sum(W_q)`` of the input that the kernel
   actually reads (a producer's uint8 output may carry its own scale): ``int32_bias``; where a
   channel's bias would not fit in int32, ``fit_bias`` first raises that channel's weight
   scale just enough (what mature quantizers do; never an error).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from schedules import quant

from .errors import TvmqError
from .gptq import MIN_PATCHES_PER_COLUMN, gptq_clip_round, gptq_round, hessian_scales

# the recipe's optional steps and their defaults (``recipe_options``)
RECIPE_DEFAULTS = {"gptq": True, "bias_correction": True, "hessian_clipping": False, "narrow_weights": False}


def recipe_options(stats: Any) -> dict[str, bool]:
    """The optional steps the recipe runs with these calibration statistics: ``gptq`` (on
    where the statistics hold Hessians and ``stats.meta["recipe"]["gptq"]`` is not false) and
    ``bias_correction``; what the manifest records."""
    given = dict(getattr(stats, "meta", {}).get("recipe", {}))
    unknown = set(given) - set(RECIPE_DEFAULTS)
    if unknown:
        raise TvmqError(f"unknown recipe option(s) {sorted(unknown)}; known: {sorted(RECIPE_DEFAULTS)}")
    opts = {**RECIPE_DEFAULTS, **{k: bool(v) for k, v in given.items()}}
    has_h = bool(getattr(stats, "hessians", None))
    opts["gptq"] = opts["gptq"] and has_h
    opts["hessian_clipping"] = opts["hessian_clipping"] and has_h
    return opts


def gptq_applies(stats: Any, name: str, hessian: np.ndarray) -> bool:
    """Whether layer ``name``'s Hessian rests on enough patches (``MIN_PATCHES_PER_COLUMN``)."""
    patches = stats.meta.get("hessian_patches", {}).get(name)
    return patches is None or patches >= MIN_PATCHES_PER_COLUMN * hessian.shape[-1]


def with_recipe(stats: Any, **options: bool) -> Any:
    """A copy of ``stats`` (``ActivationStats``) whose recipe runs with ``options`` (e.g.
    ``gptq=False``, ``bias_correction=False``)."""
    unknown = set(options) - set(RECIPE_DEFAULTS)
    if unknown:
        raise TvmqError(f"unknown recipe option(s) {sorted(unknown)}; known: {sorted(RECIPE_DEFAULTS)}")
    meta = {**stats.meta, "recipe": {**stats.meta.get("recipe", {}), **options}}
    return dataclasses.replace(stats, meta=meta)


def expected_weight_error(weight: np.ndarray, wq: np.ndarray, s_w: np.ndarray,
                          channel_mean: np.ndarray, groups: int = 1) -> np.ndarray:
    """``E[(W_q - W) x]`` per output channel, ``x`` replaced by its per-channel mean (bias
    correction, Nagel et al. 2019): subtracting it from the bias removes the mean output shift
    that rounding the weights causes. ``weight`` is ``[K, C/groups, ...]``."""
    k = wq.shape[0]
    delta = wq.astype(np.float64) * s_w.reshape((-1,) + (1,) * (wq.ndim - 1)) - weight
    delta = delta.reshape(k, delta.shape[1], -1).sum(axis=2)  # [K, C/groups]
    per_out = np.asarray(channel_mean, np.float64).reshape(groups, delta.shape[1])[
        np.arange(k) // (k // groups)]
    return (delta * per_out).sum(axis=1)


def int16_qmax(wq: np.ndarray) -> int:
    """The largest int16 input magnitude a W8A16 layer with these int8 weights accepts: every
    int32 accumulator then stays below 90% of 2^31 (the rest is the bias' headroom), whatever
    the input. Wide layers (ResNet's 3x3x512) thus get ~12-13 bits, narrow ones all 15."""
    widest = int(np.abs(wq.astype(np.int64)).reshape(wq.shape[0], -1).sum(axis=1).max())
    return int(max(1, min(32767, 0.9 * (2 ** 31 - 1) // max(widest, 1))))


def weight_sqnr_db(w: np.ndarray, wq: np.ndarray, s_w: np.ndarray) -> float:
    """``10 log10(||W||^2 / ||W - s * W_q||^2)``: how much of the layer's weights survive
    quantization (per-layer, data-free; the calibrated output SQNR is the allocator's job)."""
    shape = (-1,) + (1,) * (w.ndim - 1)
    err = float(((w.astype(np.float64) - wq * s_w.reshape(shape)) ** 2).sum())
    sig = float((w.astype(np.float64) ** 2).sum())
    return float("inf") if err == 0 else round(10 * np.log10(sig / err), 2)


# |bias / (s_in s_w)| stays below this: the rest of the int32 range holds zp_in * sum(W_q)
BIAS_LIMIT = 2 ** 30


@dataclass(frozen=True)
class QuantizedLayer:
    """One layer at one integer spec (steps 1-3 of the module docstring)."""

    name: str
    weight: np.ndarray  # the float weights it came from
    wq: np.ndarray  # integer weights (int8 storage; int4 values in -7..7)
    w_scale: np.ndarray  # per output channel
    bias: np.ndarray  # float64, corrected; zeros when the layer has no bias
    in_scale: float  # the input's quantization from its own calibrated range
    in_zero_point: int  # 0 for int16 inputs
    in_qmax: int  # 255 (uint8) or the int16 bound (symmetric, [-qmax, qmax])
    w_bits: int = 8
    raw_bias: np.ndarray | None = None  # float64, before the correction
    channel_mean: np.ndarray | None = None  # the calibrated input channel means (correction)
    groups: int = 1
    raised: tuple[int, ...] = ()  # channels whose weight scale ``fit_bias`` raised

    @property
    def int16_input(self) -> bool:
        return self.in_qmax != 255

    def dequantized_weight(self) -> np.ndarray:
        """``s_w * W_q`` as float32 (what the integer kernel multiplies by, in float)."""
        shape = (-1,) + (1,) * (self.wq.ndim - 1)
        return (self.wq.astype(np.float64) * self.w_scale.reshape(shape)).astype(np.float32)

    def fit_bias(self, in_scale: float) -> QuantizedLayer:
        """This layer, or where a channel's bias would leave the int32 range for an input of
        scale ``in_scale`` (a channel that batch-norm folding nearly zeroed: tiny weights, a
        large bias), a copy with that channel's weight scale raised just enough
        (``|b| / (s_in s_w) <= BIAS_LIMIT``), its weights and bias correction recomputed, and
        the channel listed in ``raised``. The channel then keeps fewer weight levels; its
        output is dominated by the bias anyway."""
        need = np.abs(self.bias) / (in_scale * BIAS_LIMIT)
        over = need > self.w_scale
        if not over.any():
            return self
        s_w = np.where(over, need, self.w_scale)
        hi = 2 ** (self.w_bits - 1) - 1
        shape = (-1,) + (1,) * (self.weight.ndim - 1)
        wq = np.where(over.reshape(shape),  # the other channels keep their (maybe GPTQ) rounding
                      np.clip(np.round(self.weight / s_w.reshape(shape)), -hi, hi), self.wq).astype(np.int8)
        bias = _corrected(self.weight, wq, s_w, self.raw_bias, self.channel_mean, self.groups)
        raised = tuple(sorted(set(self.raised) | {int(c) for c in np.flatnonzero(over)}))
        return replace(self, wq=wq, w_scale=s_w, bias=bias, raised=raised)

    def int32_bias(self, in_scale: float, in_zero_point: int) -> np.ndarray:
        """Step 4: the kernel's int32 bias for an input quantized with ``(in_scale,
        in_zero_point)``, the zero point folded in (after ``fit_bias``, it fits)."""
        w_sum = self.wq.astype(np.int64).reshape(self.wq.shape[0], -1).sum(axis=1)
        bias_q = (np.round(self.bias.astype(np.float64) / (in_scale * self.w_scale)).astype(np.int64)
                  - in_zero_point * w_sum)
        if np.abs(bias_q).max() >= 2 ** 31:
            raise TvmqError(f"layer {self.name!r}: the int32 bias overflows (scales too small)")
        return bias_q.astype(np.int32)

    def weight_sqnr_db(self) -> float:
        return weight_sqnr_db(self.weight, self.wq, self.w_scale)


def _corrected(weight: np.ndarray, wq: np.ndarray, s_w: np.ndarray, raw_bias: np.ndarray | None,
               channel_mean: np.ndarray | None, groups: int) -> np.ndarray:
    """The bias after the correction (``channel_mean`` None: no correction)."""
    b = np.zeros(wq.shape[0]) if raw_bias is None else raw_bias
    if channel_mean is not None and channel_mean.size:
        b = b - expected_weight_error(weight, wq, s_w, channel_mean, groups)
    return b


def pair_fit(spec: Any, weight: np.ndarray, groups: int, narrow: bool) -> bool:
    """Whether the recipe's ``narrow_weights`` option applies to a layer: an ungrouped W8A8
    conv. Its 8-bit weights are then chosen so that every same-signed pair of input channels
    sums to at most 128 (``quant.pairs_fit_int16``): scales from ``quant.pair_fit_scales``, and
    GPTQ's rounding kept inside the pair bound. ``vpmaddubsw`` is exact on them and runs twice
    the products per instruction of the exact ``vpmaddwd`` on AVX2 (the trade onnxruntime and
    OpenVINO make there by saturating or by halving the weights); the layer stays exact integer
    code, at a fraction of a weight bit less where a channel's large weights share a pair."""
    return narrow and spec.w_bits == 8 and spec.a_bits == 8 and weight.ndim == 4 and groups == 1


def quantize_layer(name: str, weight: np.ndarray, bias: np.ndarray | None, groups: int, spec: Any,
                   stats: Any, method: str = "minmax", *, bias_correction: bool | None = None) -> QuantizedLayer:
    """``weight`` / ``bias`` of layer ``name`` at the integer ``spec`` (a ``QuantSpec``), with
    the calibrated statistics ``stats`` (``ActivationStats``: ``stats.get(name, "in")``) and
    its range ``method``; the optional steps as ``recipe_options(stats)`` says
    (``bias_correction`` given: overrides it)."""
    opts = recipe_options(stats)
    if bias_correction is None:
        bias_correction = opts["bias_correction"]
    bits = int(spec.w_bits)
    pairs = pair_fit(spec, weight, groups, opts["narrow_weights"])
    if pairs:
        s_w = quant.pair_fit_scales(weight)
        wq = np.round(weight / s_w.reshape((-1,) + (1,) * (weight.ndim - 1))).astype(np.int8)
    else:
        wq, s_w = quant.quantize_weights(weight, bits)
    hessian = stats.hessian(name) if opts["gptq"] or opts["hessian_clipping"] else None
    if hessian is not None and not gptq_applies(stats, name, hessian):
        hessian = None
    if hessian is not None and opts["hessian_clipping"] and opts["gptq"]:  # steps 1b + 1c together
        wq, s_w = _cached(("gptq_clip", name, bits, groups, pairs), (weight, s_w, hessian),
                          lambda: gptq_clip_round(weight, s_w, bits, hessian, groups, pairs=pairs))
    elif hessian is not None and opts["hessian_clipping"] and not pairs:  # 1b: clipping for the output error
        s_w = _cached(("scales", name, bits, groups), (weight, hessian),
                      lambda: hessian_scales(weight, bits, hessian, groups))
        shape = (-1,) + (1,) * (weight.ndim - 1)
        hi = 2 ** (bits - 1) - 1
        wq = np.clip(np.round(weight / s_w.reshape(shape)), -hi, hi).astype(np.int8)
    elif hessian is not None and opts["gptq"]:
        wq = _gptq_cached(name, weight, s_w, bits, hessian, groups, pairs)
    raw = None if bias is None else np.asarray(bias, np.float64)
    in_stats = stats.get(name, "in")
    mean = np.asarray(in_stats.channel_mean, np.float64) if bias_correction else None
    b = _corrected(weight, wq, s_w, raw, mean, groups)
    lo, hi = in_stats.range(method)
    if spec.a_bits == 16:
        qmax = int16_qmax(wq if bits == 8 else quant.quantize_weights(weight, 8)[0])
        scale, zp = max(abs(lo), abs(hi), 1e-12) / qmax, 0
    else:
        (scale, zp), qmax = quant.activation_params(lo, hi), 255
    return QuantizedLayer(name, weight, wq, s_w, b, scale, zp, qmax, bits, raw, mean, groups)


_GPTQ_CACHE: dict[tuple[Any, ...], np.ndarray] = {}


def _cached(key: tuple[Any, ...], arrays: tuple[np.ndarray, ...], make: Any) -> np.ndarray:
    """``make()``, remembered (in ``_GPTQ_CACHE``) for ``key`` and the contents of ``arrays``."""
    full = key + tuple((a.shape, hash(np.ascontiguousarray(a).tobytes())) for a in arrays)
    if full not in _GPTQ_CACHE:
        if len(_GPTQ_CACHE) > 512:
            _GPTQ_CACHE.clear()
        _GPTQ_CACHE[full] = make()
    return _GPTQ_CACHE[full]


def _gptq_cached(name: str, weight: np.ndarray, s_w: np.ndarray, bits: int, hessian: np.ndarray,
                 groups: int, pairs: bool = False) -> np.ndarray:
    """``gptq_round``, remembered for the same layer, weights, scales, bits and Hessian (the
    sensitivity analysis and the build quantize a layer at the same spec more than once)."""
    key = (name, bits, groups, pairs, weight.shape, hash(np.ascontiguousarray(weight, np.float32).tobytes()),
           hash(np.ascontiguousarray(s_w).tobytes()), hash(np.ascontiguousarray(hessian).tobytes()), hessian.shape)
    if key not in _GPTQ_CACHE:
        if len(_GPTQ_CACHE) > 512:
            _GPTQ_CACHE.clear()
        _GPTQ_CACHE[key] = gptq_round(weight, s_w, bits, hessian, groups, pairs)
    return _GPTQ_CACHE[key]
