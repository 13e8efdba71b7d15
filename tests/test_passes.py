"""The lowering as ``tvm.transform`` passes: TVM's own legalization list reused, every pass timed
by the instrument, what lowering decides in a typed record, user errors crossing the FFI."""

from __future__ import annotations

import pytest
import tvm
from tvm.relax.backend.cpu_generic.pipeline import legalize_passes

from schedules.target_features import detect_host
from tvmq.calibration import ActivationStats
from tvmq.compiler import lower_module, lowering_passes
from tvmq.errors import TvmqError
from tvmq.frontend import prepare, to_relax
from tvmq.passes.records import LoweredLayer, Lowering
from tvmq.plan import PrecisionPlan

from .conftest import FMNIST_DIR

MODEL = FMNIST_DIR / "model.onnx"
FEATURES = detect_host()


def test_lowering_is_a_list_of_tvm_passes_ending_in_tvms_legalization() -> None:
    pm = prepare(MODEL)
    _, params = to_relax(pm)
    to_kernels, legalize = lowering_passes(pm, params, FEATURES, Lowering())
    assert all(isinstance(p, tvm.transform.Pass) for p in to_kernels + legalize)
    names = [p.info.name for p in to_kernels + legalize]
    tvms = [p.info.name for p in legalize_passes(tvm.target.Target(FEATURES.target_json()))]
    assert names[0] == "tvmq.LowerToKernels" and names[-1] == "tvmq.ScheduleGeneric"
    assert names[2:2 + len(tvms)] == tvms  # TVM's CPU legalization, as TVM lists it


def test_each_pass_is_timed_and_each_layer_has_a_typed_record() -> None:
    pm = prepare(MODEL)
    lowered = lower_module(pm, FEATURES)
    for name in ("import", "tvmq.LowerToKernels", "tvmq.BindParams", "LegalizeOps", "FuseTIR",
                 "tvmq.ScheduleGeneric"):
        assert lowered.timings[name] >= 0.0, name
    assert set(lowered.kernels) == set(pm.layers.names)
    for name, k in lowered.kernels.items():
        assert isinstance(k, LoweredLayer)
        assert k.config_source == "fallback" and k.kernel.split("/")[1] == "fp32"
        assert lowered.weight_bytes[name] > 0
    assert lowered.program is None and lowered.switches == []


def test_a_user_error_inside_a_pass_crosses_tvms_ffi_as_itself() -> None:
    """RealizeIntegers reads calibration statistics inside the pass: a layer without them is a
    ``TvmqError`` naming the layer, not the ``RuntimeError`` TVM's FFI makes of other errors."""
    pm = prepare(MODEL)
    plan = PrecisionPlan.uniform(pm.layers, "w8a8")
    empty = ActivationStats({}, samples=1)
    with pytest.raises(TvmqError, match=f"no calibration statistics for the input of layer '{pm.layers.names[0]}'"):
        lower_module(pm, FEATURES, plan=plan, stats=empty)
