"""int4 weights: two signed nibbles per byte, the one layout of the kernels and of numpy alike.

Along the innermost axis of an (already kernel-packed) int8 weight array, element ``2i`` goes in
the low nibble and ``2i + 1`` in the high nibble of byte ``i``::

    byte i:   bit 7 6 5 4 | 3 2 1 0
                  w[2i+1] | w[2i]          each a 4-bit two's complement value, -8 .. 7

An odd innermost length is padded with a zero nibble. Unpacking sign-extends with arithmetic
shifts of the byte read as int8: ``w[2i] = int8(byte << 4) >> 4``, ``w[2i+1] = int8(byte) >> 4``.
The W4A8 kernels unpack inside the kernel into the very int8 layout their W8A8 twins read, so
both share the compute, the schedule and the numpy reference (an int8 layer whose weights
happen to lie in -8 .. 7).
"""

from __future__ import annotations

import numpy as np

INT4_MIN, INT4_MAX = -8, 7


def packed_length(n: int) -> int:
    return (n + 1) // 2


def pack_int4(w: np.ndarray) -> np.ndarray:
    """int8 values in -8..7 -> uint8 ``[..., ceil(n / 2)]`` (the layout above)."""
    w = np.asarray(w)
    if w.size and (w.min() < INT4_MIN or w.max() > INT4_MAX):
        raise ValueError(f"int4 values must lie in [{INT4_MIN}, {INT4_MAX}], got "
                         f"[{int(w.min())}, {int(w.max())}]")
    n = w.shape[-1]
    if n % 2:
        w = np.concatenate([w, np.zeros(w.shape[:-1] + (1,), w.dtype)], axis=-1)
    nib = (w.astype(np.int16) & 0xF).astype(np.uint8)
    return np.ascontiguousarray(nib[..., 0::2] | (nib[..., 1::2] << 4))


def unpack_int4(p: np.ndarray, n: int) -> np.ndarray:
    """uint8 ``[..., ceil(n / 2)]`` -> int8 ``[..., n]``."""
    p = np.asarray(p, np.uint8)
    if p.shape[-1] != packed_length(n):
        raise ValueError(f"{p.shape[-1]} bytes cannot hold {n} nibbles")
    lo = (p << 4).view(np.int8) >> 4
    hi = p.view(np.int8) >> 4
    out = np.empty(p.shape[:-1] + (2 * p.shape[-1],), np.int8)
    out[..., 0::2], out[..., 1::2] = lo, hi
    return out[..., :n]


def unpack_expr(packed, index: tuple):  # type: ignore[no-untyped-def]
    """TIR: the int8 value of nibble ``index`` (innermost axis counted in nibbles) of the
    uint8 tensor ``packed``."""
    from tvm import tirx

    *outer, i = index
    byte = packed[(*outer, i // 2)]
    # low nibble (i even): shift it to the top first; high nibble (i odd): already there
    up = (byte << ((1 - i % 2) * 4).astype("uint8")).astype("uint8")
    return tirx.reinterpret("int8", up) >> tirx.const(4, "int8")
