"""bfloat16 layers: weights stored as bf16 (2 bytes), inputs rounded to bf16, fp32 accumulation.

bf16 is the upper 16 bits of an IEEE float32. Rounding float32 -> bf16 is round to nearest,
ties to even, on the bit pattern (finite inputs; the compiler rejects NaN/inf inputs upstream)::

    u = bits(x);  bf16 = (u + 0x7FFF + ((u >> 16) & 1)) >> 16;   x_bf16 = float32(bf16 << 16)

The portable kernel (every CPU) is the fp32 kernel with a ``weight_unpack`` stage
(``float32(bits << 16)``) and an input stage that rounds to bf16: the products of bf16 values
are exact in fp32, so it computes what a bf16 dot product with fp32 accumulation computes, in the
fp32 kernel's summation order (``KernelDef.float_reference`` reproduces it bit for bit).

Native kernels (``schedules.conv2d.bf16_dot``, ``schedules.dense.bf16_dot``) run where the target
has AVX512-BF16 (``registry.select`` checks ``TargetFeatures.avx512_bf16``): the input rounded to
bf16 and repacked as channel pairs once per call, uint16 weights with the pairs innermost, one
``vdpbf16ps`` (``schedules.intrinsics_bf16``) per 16 output channels x 2 input channels, fp32
accumulators. Their sums differ from the portable kernel's in order (odd channel of each pair
first) and in denormal handling (DAZ / FTZ), so they have their own exact reference
(``reference.conv2d_bf16_dot`` / ``dense_bf16_dot``). They are cross-compiled on any host and run
only on such CPUs. Depthwise convs (no channel reduction to pair) always take the portable kernel.

On CPUs with AMX-BF16 (``amx_bf16``), convs take the AMX form of the native conv
(``conv2d/bf16/amx``: ``tdpbf16ps`` tiles of up to 16 pixels x 16 channels x 32 input channels,
stride 1; strided convs its ``vdpbf16ps`` form); dense layers keep the AVX512-BF16 kernel.
``tdpbf16ps`` sums a tile op's even and odd channels in two partials (the SDM's pseudo-code), so
that kernel has its own reference (``reference.conv2d_bf16_amx``), not checked on hardware here.
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
    from tvm import tirx  # (deferred: the numpy half of this module needs no TVM)

    u = tirx.reinterpret("uint32", v)
    one = tirx.const(1, "uint32")
    r = (u + tirx.const(0x7FFF, "uint32") + ((u >> tirx.const(16, "uint32")) & one)) \
        & tirx.const(0xFFFF0000, "uint32")
    return tirx.reinterpret("float32", r)


def unpack_expr(bits):  # type: ignore[no-untyped-def]
    """TIR: the float32 value of one uint16 bf16 pattern."""
    from tvm import tirx  # (deferred: the numpy half of this module needs no TVM)

    return tirx.reinterpret("float32", bits.astype("uint32") << tirx.const(16, "uint32"))


def bits_expr(v):  # type: ignore[no-untyped-def]
    """TIR: the uint16 bf16 pattern of one float32 value, round to nearest even (``to_bf16_bits``)."""
    from tvm import tirx  # (deferred: the numpy half of this module needs no TVM)

    u = tirx.reinterpret("uint32", v)
    one = tirx.const(1, "uint32")
    sixteen = tirx.const(16, "uint32")
    return ((u + tirx.const(0x7FFF, "uint32") + ((u >> sixteen) & one)) >> sixteen).astype("uint16")
