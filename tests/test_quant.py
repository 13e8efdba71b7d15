"""The integer arithmetic every int kernel follows: exact checks against big-integer math."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schedules import quant


@given(st.floats(min_value=2.0 ** -31, max_value=1e6, allow_nan=False))
@settings(max_examples=300, deadline=None)
def test_quantize_multiplier_is_accurate(real: float) -> None:
    m, s = quant.quantize_multiplier(real)
    assert 2 ** 30 <= int(m[0]) < 2 ** 31 and quant.MIN_SHIFT <= int(s[0]) <= quant.MAX_SHIFT
    approx = int(m[0]) * 2.0 ** -int(s[0])
    assert abs(approx - real) <= real * 2.0 ** -30


def test_quantize_multiplier_edges() -> None:
    m, s = quant.quantize_multiplier(np.array([0.0, 1.0, 0.5, 2.0 ** -40, 1e-30]))
    assert int(m[0]) == 0
    assert int(m[1]) * 2.0 ** -int(s[1]) == 1.0 and int(m[2]) * 2.0 ** -int(s[2]) == 0.5
    assert int(s[3]) == 62 and int(m[3]) == 2 ** 22  # below 2**-31: shift 62, fewer bits of m
    assert int(m[4]) == 0  # below 2**-63: zero
    for bad in (-1.0, float("nan"), float("inf"), 2.0 ** 31):
        with pytest.raises(ValueError):
            quant.quantize_multiplier(bad)


@given(st.lists(st.integers(-2 ** 31, 2 ** 31 - 1), min_size=1, max_size=16),
       st.floats(min_value=1e-6, max_value=4.0), st.integers(0, 255))
@settings(max_examples=300, deadline=None)
def test_requantize_equals_exact_round_half_up(accs: list[int], real: float, zp: int) -> None:
    m, s = quant.quantize_multiplier(real)
    acc = np.array(accs, np.int32).reshape(1, -1)
    got = quant.requantize(acc, np.repeat(m, acc.shape[1]), np.repeat(s, acc.shape[1]), zp, 0, 255)
    for a, g in zip(accs, got.reshape(-1)):
        exact = Fraction(a) * Fraction(int(m[0]), 2 ** int(s[0]))
        rounded = int((exact + Fraction(1, 2)).__floor__())  # round half up
        assert int(g) == min(max(rounded + zp, 0), 255)


def test_requantize_ties_round_up() -> None:
    m, s = np.array([2 ** 30], np.int32), np.array([31], np.int32)  # M = 0.5 exactly
    acc = np.array([[-3, -1, 1, 3, 5]], np.int32)
    got = quant.requantize(acc.T.reshape(1, 5), np.repeat(m, 5), np.repeat(s, 5), 0, -128, 127)
    assert got.reshape(-1).tolist() == [-1, 0, 1, 2, 3]  # -1.5 -> -1, -0.5 -> 0, 0.5 -> 1, ...


def test_weight_and_activation_quantization() -> None:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((6, 3, 3, 3)) * np.array([1e-4, 1e-2, 1, 10, 100, 0])[:, None, None, None]
    q, scales = quant.quantize_weights(w, 8)
    assert q.dtype == np.int8 and q.min() >= -127 and q.max() <= 127
    assert np.all(np.abs(q[:5]).reshape(5, -1).max(1) == 127) and np.all(q[5] == 0)
    assert np.allclose(q * scales[:, None, None, None], w, atol=scales.max() / 2 + 1e-12)
    q4, _ = quant.quantize_weights(w, 4)
    assert q4.min() >= -7 and q4.max() <= 7
    scale, zp = quant.activation_params(-1.0, 3.0)
    assert quant.quantize(np.array([0.0]), scale, zp, 8, False)[0] == zp  # 0 is exact
    assert quant.quantize(np.array([-1.0, 3.0]), scale, zp, 8, False).tolist() == [0, 255]
    assert quant.activation_params(0.0, 0.0) == (1.0, 0)
    # round half to even, as onnxruntime
    assert quant.quantize(np.array([0.5, 1.5, 2.5]), 1.0, 0, 8, False).tolist() == [0, 2, 2]
