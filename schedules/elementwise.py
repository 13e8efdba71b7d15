"""Small integer-boundary kernels: quantize, dequantize, integer global average pool.

Defined so that numpy computes the very same IEEE float32 operations (``reference``):

* ``quantize``: ``q = clip(floor(x / scale + 0.5) + zp, 0, 255)`` (float32; round half up; NaN
  maps to an unspecified value: calibration and inputs are checked for NaN beforehand)
* ``dequantize``: ``x = float32(q - zp) * scale``
* ``global_avg_pool_u8``: ``(sum + count // 2) // count`` per channel, int32 (scale and zero
  point unchanged: the mean of ``q - zp`` is ``mean(q) - zp``)

Scales and zero points are run-time arguments (``scale f32[1]``, ``zp s32[1]``).
"""

from __future__ import annotations

from tvm import te, tirx


def quantize(shape: tuple[int, ...]) -> list[te.Tensor]:
    x = te.placeholder(shape, "float32", name="x")
    scale = te.placeholder((1,), "float32", name="scale")
    zp = te.placeholder((1,), "int32", name="zp")

    def q(*idx):  # type: ignore[no-untyped-def]
        f = tirx.floor(x[idx] / scale[0] + tirx.const(0.5, "float32"))
        # bound before the int cast (huge inputs would overflow int32); exact: |f| > 512 clamps anyway
        f = tirx.min(tirx.max(f, tirx.const(-512.0, "float32")), tirx.const(512.0, "float32"))
        v = f.astype("int32") + zp[0]
        return tirx.min(tirx.max(v, 0), 255).astype("uint8")

    return [x, scale, zp, te.compute(shape, q, name="quantize")]


def dequantize(shape: tuple[int, ...]) -> list[te.Tensor]:
    q = te.placeholder(shape, "uint8", name="q")
    scale = te.placeholder((1,), "float32", name="scale")
    zp = te.placeholder((1,), "int32", name="zp")
    out = te.compute(shape, lambda *i: (q[i].astype("int32") - zp[0]).astype("float32") * scale[0],
                     name="dequantize")
    return [q, scale, zp, out]


def global_avg_pool_u8(shape: tuple[int, int, int, int]) -> list[te.Tensor]:
    n_, c_, h_, w_ = shape
    q = te.placeholder(shape, "uint8", name="q")
    rh = te.reduce_axis((0, h_), "rh")
    rw = te.reduce_axis((0, w_), "rw")
    total = te.compute((n_, c_), lambda n, c: te.sum(q[n, c, rh, rw].astype("int32"), axis=[rh, rw]),
                       name="sum")
    count = h_ * w_
    out = te.compute((n_, c_, 1, 1), lambda n, c, i, j: tirx.floordiv(
        total[n, c] + count // 2, count).astype("uint8"), name="mean")
    return [q, out]
