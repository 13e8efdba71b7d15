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
    # the host's own LLVM CPU name where it is known (AMD Zen: ``znver4`` ...), used instead of
    # the feature-matched name: LLVM tunes code per CPU (on Zen 4 it fuses vpmaddwd + vpaddd
    # into vpdpwssd only for znver4); "" where unknown, and dropped by ``with_isa``
    llvm_cpu: str = ""

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
        if self.llvm_cpu:
            return self.llvm_cpu
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
            self, llvm_cpu=self.llvm_cpu if isa == self.isa else "",
            amx_int8=self.amx_int8 and keep["amx"], amx_bf16=self.amx_bf16 and keep["amx"],
            avx512_vnni=self.avx512_vnni and keep["avx512_vnni"],
            avx512_bf16=self.avx512_bf16 and keep["avx512_vnni"],
            avx512f=self.avx512f and keep["avx512"], avx512bw=self.avx512bw and keep["avx512"],
            avx2=self.avx2 and keep["avx2"], fma=self.fma and keep["avx2"])


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of ``/proc/cpuinfo`` (empty where there is none)."""
    info: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                info[key.strip()] = value.strip()
    except OSError:
        pass
    return info


def _cpu_flags() -> set[str]:
    return set(_cpuinfo().get("flags", "").split())


def host_llvm_cpu(info: dict[str, str], flags: set[str]) -> str:
    """The LLVM CPU name of an AMD Zen host (family 17h: znver1 / znver2, 19h: znver3 / znver4 by
    AVX-512, 1Ah: znver5); "" for others (their feature-matched name is the right family)."""
    if info.get("vendor_id") != "AuthenticAMD":
        return ""
    try:
        family, model = int(info.get("cpu family", "")), int(info.get("model", ""))
    except ValueError:
        return ""
    if family == 0x17:
        return "znver2" if model >= 0x30 else "znver1"
    if family == 0x19:
        return "znver4" if "avx512f" in flags else "znver3"
    return "znver5" if family == 0x1A else ""


def _physical_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def detect_host() -> TargetFeatures:
    """Read the host CPU's features from ``/proc/cpuinfo``."""
    info = _cpuinfo()
    flags = set(info.get("flags", "").split())
    return TargetFeatures(
        arch="x86_64" if platform.machine() in ("x86_64", "AMD64") else platform.machine(),
        avx2="avx2" in flags, fma="fma" in flags,
        avx512f="avx512f" in flags, avx512bw="avx512bw" in flags,
        avx512_vnni="avx512_vnni" in flags, avx512_bf16="avx512_bf16" in flags,
        amx_int8="amx_int8" in flags, amx_bf16="amx_bf16" in flags,
        num_cores=_physical_cores(), llvm_cpu=host_llvm_cpu(info, flags))
