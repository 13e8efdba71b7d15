"""The ISA levels a test runs at, whatever CPU the suite happens to run on.

A kernel test's expectation often depends on the kernel ``registry.select`` picks (its blocking,
padding, configuration space, instruction). So such tests do not use the host's best level
alone: checks that only select, pack or cross-compile run for **every** ISA level on a model CPU
of that level (``PROFILES``), whatever the host is; checks that execute run for every level this
host can execute (``executable_levels``) and skip, naming the ``/proc/cpuinfo`` flag, for the
others (``isa_params``). Levels that would build the very same kernel (same key, vector width,
register count and FMA contraction) are run once.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from schedules import registry
from schedules.target_features import ISA_LEVELS, TargetFeatures, detect_host

HOST = detect_host()

# the /proc/cpuinfo flag that an ISA level needs (what a skip tells the reader to look for)
CPU_FLAG = {"amx": "amx_int8", "avx512_vnni": "avx512_vnni", "avx512": "avx512f", "avx2": "avx2"}

# one model CPU of each kind seen (num_cores fixed: it changes nothing a kernel test checks)
SAPPHIRERAPIDS = TargetFeatures(avx2=True, fma=True, avx512f=True, avx512bw=True, avx512_vnni=True,
                                avx512_bf16=True, amx_int8=True, amx_bf16=True, num_cores=2)
COOPERLAKE = SAPPHIRERAPIDS.with_isa("avx512_vnni")  # AVX512-VNNI + AVX512-BF16 (also Zen 4)
CASCADELAKE = replace(COOPERLAKE, avx512_bf16=False)  # AVX512-VNNI without BF16
SKYLAKE = SAPPHIRERAPIDS.with_isa("avx512")
HASWELL = SAPPHIRERAPIDS.with_isa("avx2")
X86_64 = SAPPHIRERAPIDS.with_isa("generic")
PROFILES = {"amx": SAPPHIRERAPIDS, "avx512_vnni": COOPERLAKE, "avx512": SKYLAKE, "avx2": HASWELL,
            "generic": X86_64}


def can_execute(isa: str, host: TargetFeatures = HOST) -> bool:
    """Whether ``host`` runs the instructions of ``isa`` (its best level is that level or above)."""
    return ISA_LEVELS.index(host.isa) <= ISA_LEVELS.index(isa)


def _kernel_identity(op: str, precision: str, features: TargetFeatures) -> tuple:
    kernel = registry.select(op, precision, features)
    return (kernel.key, features.fp32_lanes, features.vector_registers, features.fused_multiply_add)


def executable_levels(op: str | None = None, precision: str | None = None,
                      host: TargetFeatures = HOST) -> list[str]:
    """The ISA levels ``host`` executes, best first; with ``op`` / ``precision``, only those
    whose kernels differ."""
    levels = ISA_LEVELS[ISA_LEVELS.index(host.isa):]
    if op is None or precision is None:
        return list(levels)
    seen, distinct = set(), []
    for isa in levels:  # the first (best) level of each group that builds the same kernel
        ident = _kernel_identity(op, precision, host.with_isa(isa))
        if ident not in seen:
            seen.add(ident)
            distinct.append(isa)
    return distinct


def skip_reason(isa: str, checked_by: str = "") -> str:
    also = f" ({checked_by})" if checked_by else ""
    return (f"this CPU ({HOST.isa}) cannot execute {isa} instructions: run `make test` on a CPU whose "
            f"/proc/cpuinfo lists {CPU_FLAG[isa]}{also}")


def isa_params(op: str, precision: str, checked_by: str = "") -> list:  # type: ignore[type-arg]
    """pytest params for an executing test of ``op`` / ``precision``: every level the host
    executes whose kernel differs, and every level it cannot execute whose kernel (on the model
    CPU of that level) is different again, skipping with the flag to look for."""
    levels = executable_levels(op, precision)
    seen = {_kernel_identity(op, precision, HOST.with_isa(isa)) for isa in levels}
    params = [pytest.param(isa) for isa in levels]
    for isa in reversed(ISA_LEVELS):  # a group's lowest level names the least the CPU needs
        if can_execute(isa):
            continue
        ident = _kernel_identity(op, precision, PROFILES[isa])
        if ident not in seen:
            seen.add(ident)
            params.append(pytest.param(isa, marks=pytest.mark.skip(reason=skip_reason(isa, checked_by))))
    return sorted(params, key=lambda p: ISA_LEVELS.index(p.values[0]))


def describe_host() -> str:
    """One line for the start of a test run: the CPU and the levels its kernels will run at."""
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            model = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), model)
    except OSError:
        pass
    flags = [f for f in ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "amx_int8",
                         "amx_bf16") if getattr(HOST, f)]
    cannot = [isa for isa in ISA_LEVELS if not can_execute(isa)]
    return (f"tvmq tests on: {model} ({HOST.num_cores} cores; {' '.join(flags) or 'no SIMD flags read'}); "
            f"kernels executed at ISA levels: {', '.join(executable_levels())}; "
            f"only cross-compiled (their executions skip): {', '.join(cannot) or 'none'}")
