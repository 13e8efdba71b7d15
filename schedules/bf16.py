"""bfloat16 layers: weights stored as bf16 (2 bytes), inputs rounded to bf16, fp32 accumulation.

bf16 is the upper 16 bits of an IEEE float32. Rounding float32 -> bf16 is round to nearest,
ties to even, on the bit pattern (finite inputs; the compiler rejects NaN/inf inputs upstream)::

    u = bits(x);  bf16 = (u + 0x7FFF + ((u >> 16) & 1)) >> 16;   x_bf16 = float32(bf16 << 16)

The portable kernel (every CPU) is the fp32 kernel with a ``weight_unpack`` stage
(``float32(bits << 16)``) and an input stage that rounds to bf16: the products of bf16 values
are exact in fp32, so it computes what a bf16 dot product with fp32 accumulation computes, up to
the order of the fp32 additions (the bound the tests state). Native AMX-BF16 / AVX512-BF16
kernels (``tdpbf16ps`` / ``vdpbf16ps``) are not written yet; on those CPUs this fallback runs.
"""

from __future__ import annotations

import numpy as np


def to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> uint16 bf16 bit patterns, round to nearest even."""
    u = np.ascontiguousarray(x, np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def from_bf16_bits(b: np.ndarray) -> np.ndarray:
    return (np.asarray(b, np.uint16).astype(np.uint32) << 16).view(np.float32)


def round_bf16(x: np.ndarray) -> np.ndarray:
    """float32 values rounded to the nearest bf16 (returned as float32)."""
    return from_bf16_bits(to_bf16_bits(x))


def round_expr(v):  # type: ignore[no-untyped-def]
    """TIR: ``round_bf16`` of one float32 value (as float32)."""
    from tvm import tirx

    u = tirx.reinterpret("uint32", v)
    one = tirx.const(1, "uint32")
    r = (u + tirx.const(0x7FFF, "uint32") + ((u >> tirx.const(16, "uint32")) & one)) \
        & tirx.const(0xFFFF0000, "uint32")
    return tirx.reinterpret("float32", r)


def unpack_expr(bits):  # type: ignore[no-untyped-def]
    """TIR: the float32 value of one uint16 bf16 pattern."""
    from tvm import tirx

    return tirx.reinterpret("float32", bits.astype("uint32") << tirx.const(16, "uint32"))
