"""The LLVM CPU name: the host's own where it is known (AMD Zen), never above a limited ISA level."""

from __future__ import annotations

import pytest

from schedules.target_features import host_llvm_cpu

from .isa import COOPERLAKE


@pytest.mark.parametrize("vendor, family, model, avx512, want", [
    ("AuthenticAMD", 25, 17, True, "znver4"), ("AuthenticAMD", 25, 1, False, "znver3"),
    ("AuthenticAMD", 23, 49, False, "znver2"), ("AuthenticAMD", 23, 1, False, "znver1"),
    ("AuthenticAMD", 26, 2, True, "znver5"), ("AuthenticAMD", 21, 2, False, ""),
    ("GenuineIntel", 6, 143, True, ""),
])
def test_host_cpu_names(vendor: str, family: int, model: int, avx512: bool, want: str) -> None:
    info = {"vendor_id": vendor, "cpu family": str(family), "model": str(model)}
    assert host_llvm_cpu(info, {"avx512f"} if avx512 else set()) == want


def test_a_limited_isa_level_drops_the_host_cpu_name() -> None:
    zen4 = COOPERLAKE.__class__(**{**COOPERLAKE.__dict__, "llvm_cpu": "znver4"})
    assert zen4.mcpu == "znver4" and zen4.with_isa("avx512_vnni").mcpu == "znver4"
    # znver4 implies AVX-512: a build limited to AVX2 must not get it
    assert zen4.with_isa("avx2").mcpu == "haswell" and zen4.with_isa("avx512").mcpu == "skylake-avx512"
