"""The spec vocabulary: every precision a layer can run in, named once.

A spec's name is also its kernels' precision in ``schedules.registry`` (``conv2d/w4a8/avx2``).
Everything that lists, validates, sizes or counts specs (plans, passes, tuning, sensitivity, the
allocator's problem, the manifest's size accounting, the CLI) reads it from here.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import TvmqError


@dataclass(frozen=True)
class Spec:
    """One precision: bits per stored weight, bits per input activation, float or integer."""

    name: str
    w_bits: int
    a_bits: int
    is_float: bool

    def weight_bytes(self, n_weights: int) -> int:
        """Bytes of ``n_weights`` weights at this width (before any kernel's channel padding)."""
        return (int(n_weights) * self.w_bits + 7) // 8

    def bops(self, macs: int) -> int:
        """Bit operations: MACs x weight bits x activation bits (fp32 counts 32 x 32)."""
        return int(macs) * self.w_bits * self.a_bits


# the order in which tools list, tune and analyze them
SPECS: dict[str, Spec] = {s.name: s for s in (
    Spec("w8a8", 8, 8, False),
    Spec("w4a8", 4, 8, False),
    Spec("w8a16", 8, 16, False),
    Spec("bf16", 16, 16, True),
    Spec("fp32", 32, 32, True),
)}
NAMES = tuple(SPECS)
FLOAT = tuple(n for n, s in SPECS.items() if s.is_float)
# what a layer can run in instead of fp32 (sensitivity analysis measures each)
REDUCED = tuple(n for n in NAMES if n != "fp32")


def get(name: str) -> Spec:
    try:
        return SPECS[name]
    except KeyError:
        raise TvmqError(f"unknown spec {name!r}; known: {', '.join(NAMES)}") from None


def check(names: list[str] | tuple[str, ...], where: str) -> list[str]:
    """``names`` if every one is a spec (and there is one at least), else one clear error."""
    bad = [n for n in names if n not in SPECS]
    if bad or not names:
        raise TvmqError(f"unknown specs {bad or list(names)} in {where}; choose from {', '.join(NAMES)}")
    return list(names)
