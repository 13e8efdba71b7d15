"""CPU features that pick a kernel, and the TVM target that goes with them.

LLVM's host detection is not trusted: under KVM this Sapphire Rapids host reports itself as
"rocketlake" (no AMX), and ``mcpu=native`` silently becomes generic x86. So the features are read
from ``/proc/cpuinfo`` and ``mcpu`` is always set explicitly.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, replace
from typing import Any

ISA_LEVELS = ("amx", "avx512_vnni", "avx512", "avx2", "generic")


@dataclass(frozen=True)
class TargetFeatures:
    """What the target CPU can do, as the kernel registry needs to know it."""

    arch: str = "x86_64"
    avx2: bool = False
    fma: bool = False
    avx512f: bool = False
    avx512bw: bool = False
    avx512_vnni: bool = False
    avx512_bf16: bool = False
    amx_int8: bool = False
    amx_bf16: bool = False
    num_cores: int = 1

    @property
    def isa(self) -> str:
        """The best ISA level, one of ``ISA_LEVELS``."""
        if self.amx_int8:
            return "amx"
        if self.avx512_vnni:
            return "avx512_vnni"
        if self.avx512f:
            return "avx512"
        if self.avx2:
            return "avx2"
        return "generic"

    @property
    def fused_multiply_add(self) -> bool:
        """Whether code compiled for this target fuses ``a * b + c`` into one FMA (LLVM contracts
        float multiply-adds where the CPU it compiles for has FMA: every ``mcpu`` above
        ``x86-64`` here, and AArch64). The float kernels' exact numpy reference needs to know."""
        return self.arch == "aarch64" or (self.arch == "x86_64" and self.mcpu != "x86-64")

    @property
    def fp32_lanes(self) -> int:
        if self.avx512f:
            return 16
        if self.avx2:
            return 8
        return 4

    @property
    def vector_registers(self) -> int:
        return 32 if self.avx512f else 16

    @property
    def mcpu(self) -> str:
        """The LLVM CPU name whose feature set matches (never ``native``). AVX512-BF16 needs
        ``cooperlake`` (Cascade Lake + ``avx512bf16``) or ``sapphirerapids``: LLVM cannot select
        ``vdpbf16ps`` for ``cascadelake``."""
        if self.arch != "x86_64":
            return "generic"
        if self.amx_int8:
            return "sapphirerapids"
        if self.avx512_bf16:
            return "cooperlake"
        if self.avx512_vnni:
            return "cascadelake"
        if self.avx512f:
            return "skylake-avx512"
        if self.avx2:
            return "haswell"
        return "x86-64"

    def target_json(self) -> dict[str, Any]:
        return {"kind": "llvm", "mcpu": self.mcpu, "num-cores": self.num_cores}

    def with_isa(self, isa: str) -> TargetFeatures:
        """The same CPU limited to an ISA level (e.g. to test the portable fallback)."""
        if isa not in ISA_LEVELS:
            raise ValueError(f"unknown ISA level {isa!r}; known: {', '.join(ISA_LEVELS)}")
        rank = ISA_LEVELS.index(isa)
        keep = {level: ISA_LEVELS.index(level) >= rank for level in ISA_LEVELS}
        return replace(
            self,
            amx_int8=self.amx_int8 and keep["amx"], amx_bf16=self.amx_bf16 and keep["amx"],
            avx512_vnni=self.avx512_vnni and keep["avx512_vnni"],
            avx512_bf16=self.avx512_bf16 and keep["avx512_vnni"],
            avx512f=self.avx512f and keep["avx512"], avx512bw=self.avx512bw and keep["avx512"],
            avx2=self.avx2 and keep["avx2"], fma=self.fma and keep["avx2"])


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _physical_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def detect_host() -> TargetFeatures:
    """Read the host CPU's features from ``/proc/cpuinfo``."""
    flags = _cpu_flags()
    return TargetFeatures(
        arch="x86_64" if platform.machine() in ("x86_64", "AMD64") else platform.machine(),
        avx2="avx2" in flags, fma="fma" in flags,
        avx512f="avx512f" in flags, avx512bw="avx512bw" in flags,
        avx512_vnni="avx512_vnni" in flags, avx512_bf16="avx512_bf16" in flags,
        amx_int8="amx_int8" in flags, amx_bf16="amx_bf16" in flags,
        num_cores=_physical_cores())
