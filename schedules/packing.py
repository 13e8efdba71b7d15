"""int4 weights: two signed nibbles per byte, the one layout of the kernels and of numpy alike.

The W4A8 kernels pack their W8A8 twin's int8 weight layout (already kernel-packed, e.g.
``[K/oc_bn, C, oc_bn]`` for dense). Its leading axis is the output-channel block; within one
block the remaining ``M`` values, flattened in row-major order, are split into two halves of
``H = ceil(M / 2)``: byte ``j`` of the block holds value ``j`` in its low nibble and value
``j + H`` in its high nibble::

    block b:  values  v[0] v[1] ... v[H-1] | v[H] v[H+1] ... v[M-1] (0)
    byte j:   bit 7 6 5 4 | 3 2 1 0
                 v[j + H] | v[j]           each a 4-bit two's complement value, -8 .. 7

An odd ``M`` is padded with a zero nibble. Unpacking sign-extends with arithmetic shifts of the
byte read as int8: ``v[j] = int8(byte << 4) >> 4``, ``v[j + H] = int8(byte) >> 4``. Pairing
halves (not neighbours) makes the unpack pure SIMD: a run of bytes gives two runs of int8 values
with one vector shift each, no shuffles, and the unpacked block is the int8 layout itself (for an
even ``M`` byte for byte), so the kernel reads it exactly as its W8A8 twin reads its weights:
same compute, same schedule, same numpy reference (an int8 layer whose weights happen to lie in
-8 .. 7). A 1-D array is one block.

Where the unpack runs is a tuning knob (``W4A8Config.unpack``):

* ``"call"``: the whole tensor, once per call, before the kernel (a parallel, vectorised pass;
  the int8 weights then stream from memory at twice the int4 size);
* ``"block"``: one output-channel block at a time, inside the kernel's parallel loop, right
  before that block is used (the int8 block stays in cache; for a conv whose parallel loop also
  runs over output rows it is unpacked once per row: cheap next to a row's multiply-adds).
  Not for the tensorized dot-product convs (``space.tensorized``): TVM's ``compute_at`` cannot
  place a producer in a loop that holds a tensorized block, so they unpack once per call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

INT4_MIN, INT4_MAX = -8, 7
UNPACK_POSITIONS = ("call", "block")


@dataclass(frozen=True)
class W4A8Config:
    """A W4A8 kernel's configuration: its W8A8 twin's (``base``) and where the unpack runs."""

    base: Any
    unpack: str = "call"

    def __post_init__(self) -> None:
        if self.unpack not in UNPACK_POSITIONS:
            raise ValueError(f"W4A8Config.unpack must be one of {UNPACK_POSITIONS}, got {self.unpack!r}")


def packed_length(n: int) -> int:
    return (n + 1) // 2


def packed_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The uint8 shape that holds an int8 array of ``shape``: ``[lead, ceil(M / 2)]``."""
    if len(shape) == 1:
        return (packed_length(shape[0]),)
    return (shape[0], packed_length(math.prod(shape[1:])))


def pack_int4(w: np.ndarray) -> np.ndarray:
    """int8 values in -8..7 -> uint8 (the layout above)."""
    w = np.asarray(w)
    if w.size and (w.min() < INT4_MIN or w.max() > INT4_MAX):
        raise ValueError(f"int4 values must lie in [{INT4_MIN}, {INT4_MAX}], got "
                         f"[{int(w.min())}, {int(w.max())}]")
    blocks = w.reshape(1 if w.ndim == 1 else w.shape[0], -1)
    half = packed_length(blocks.shape[1])
    padded = np.zeros((blocks.shape[0], 2 * half), np.int16)
    padded[:, : blocks.shape[1]] = blocks
    nib = (padded & 0xF).astype(np.uint8)
    return np.ascontiguousarray((nib[:, :half] | (nib[:, half:] << 4)).reshape(packed_shape(w.shape)))


def unpack_int4(p: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """uint8 (``packed_shape(shape)``) -> int8 of ``shape``."""
    p = np.asarray(p, np.uint8)
    if p.shape != packed_shape(tuple(shape)):
        raise ValueError(f"packed shape {p.shape} cannot hold int4 {tuple(shape)} "
                         f"(expected {packed_shape(tuple(shape))})")
    blocks = p.reshape(1 if len(shape) == 1 else shape[0], -1)
    lo = (blocks << 4).view(np.int8) >> 4
    hi = blocks.view(np.int8) >> 4
    m = math.prod(shape) // blocks.shape[0]
    return np.concatenate([lo, hi], axis=1)[:, :m].reshape(shape)


def unpack_expr(byte, high):  # type: ignore[no-untyped-def]
    """TIR: the int8 value of the low (``high`` = 0) or high (1) nibble of the uint8 ``byte``."""
    from tvm import tirx  # (deferred: the numpy packing needs no TVM)

    # low nibble: shift it to the top first; high nibble: already there
    up = (byte << ((1 - high) * 4).astype("uint8")).astype("uint8")
    return tirx.reinterpret("int8", up) >> tirx.const(4, "int8")
