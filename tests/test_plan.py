"""QuantSpec / PrecisionPlan: parsing, validation against the model, shortcuts, JSON round trip."""

from __future__ import annotations

from pathlib import Path

import pytest

from tvmq.frontend import prepare
from tvmq.plan import FP32, W8A8, PlanError, PrecisionPlan, QuantSpec

from .conftest import FMNIST_DIR


@pytest.fixture(scope="module")
def layers():  # type: ignore[no-untyped-def]
    return prepare(FMNIST_DIR / "model.onnx").layers


@pytest.mark.parametrize("text,w,a", [("w8a8", 8, 8), ("W4A8", 4, 8), ("w8a16", 8, 16), ("fp32", 32, 32)])
def test_spec_parse_and_name(text: str, w: int, a: int) -> None:
    s = QuantSpec.parse(text)
    assert (s.w_bits, s.a_bits) == (w, a)
    assert QuantSpec.parse(s.name) == s


def test_spec_rejects_nonsense() -> None:
    for bad in ("w3a8", "w8a4", "int8", "w8a32"):
        with pytest.raises(PlanError):
            QuantSpec.parse(bad)
    assert QuantSpec.parse("bf16").bf16


def test_uniform_plan_with_shortcuts(layers) -> None:  # type: ignore[no-untyped-def]
    plan = PrecisionPlan.uniform(layers, "w8a8", keep_fp32=["first", "last"],
                                 overrides={layers.names[2]: "w4a8"})
    assert plan[layers.names[0]] == FP32 and plan[layers.names[-1]] == FP32
    assert plan[layers.names[1]] == W8A8
    assert plan[layers.names[2]].name == "w4a8"
    assert len(plan) == len(layers)


def test_plan_must_match_the_model(layers) -> None:  # type: ignore[no-untyped-def]
    specs = {n: W8A8 for n in layers.names}
    del specs[layers.names[3]]
    with pytest.raises(PlanError, match="misses layer"):
        PrecisionPlan(specs, layers)
    specs = {n: W8A8 for n in layers.names} | {"no/such/layer": W8A8}
    with pytest.raises(PlanError, match="does not have: \\['no/such/layer'\\]"):
        PrecisionPlan(specs, layers)
    with pytest.raises(PlanError, match="not a layer"):
        PrecisionPlan.uniform(layers, "w8a8", keep_fp32=["conv99"])


def test_json_round_trip(layers, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    plan = PrecisionPlan.uniform(layers, "w8a8", keep_fp32=["first"])
    plan.save(tmp_path / "plan.json")
    again = PrecisionPlan.load(tmp_path / "plan.json", layers)
    assert dict(again) == dict(plan)
    (tmp_path / "bad.json").write_text('{"layers": {}}')
    with pytest.raises(PlanError, match="not a tvmq plan"):
        PrecisionPlan.load(tmp_path / "bad.json")
