"""The lowering as ``tvm.transform`` passes: TVM's own legalization list reused, every pass timed
by the instrument, what lowering decides in a typed record, user errors crossing the FFI."""

from __future__ import annotations

import numpy as np
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


@pytest.mark.parametrize("case", ["sum_hw", "max_pool", "sum_c"])
@pytest.mark.parametrize("channels", [48, 40])
def test_a_channels_last_reduction_combines_whole_vectors(case: str, channels: int) -> None:
    """``ScheduleGeneric`` on a reduction over the outer axes of an NHWC tensor (a mean over H
    and W, a max pool): the channel loop is vectorised inside the reduction loops, and the
    result equals the naive loop nest's bit for bit (each channel summed in the same order). A
    reduction over the contiguous axis keeps the scalar schedule. 40 channels: 8-lane vectors."""
    from tvm import te, topi  # (TE: only this test builds PrimFuncs by hand)

    from tvmq.passes.schedule_generic import schedule_primfunc

    x = te.placeholder((1, 9, 10, channels), "float32", name="x")
    y = {"sum_hw": lambda: topi.sum(x, axis=[1, 2], keepdims=True),
         "max_pool": lambda: topi.nn.pool2d(x, [3, 3], [2, 2], [1, 1], [1, 1, 1, 1], "max", layout="NHWC"),
         "sum_c": lambda: topi.sum(x, axis=[3], keepdims=True)}[case]()
    naive = te.create_prim_func([x, y])
    scheduled = schedule_primfunc(naive, 16)
    assert ("T.vectorized" in scheduled.script()) == (case != "sum_c")
    target = tvm.target.Target(detect_host().target_json())
    a = np.random.default_rng(0).standard_normal((1, 9, 10, channels)).astype(np.float32)
    outs = []
    for f in (naive, scheduled):
        ex = tvm.compile(tvm.IRModule({"main": f}), target=target).jit()
        b = tvm.runtime.tensor(np.zeros([int(d) for d in y.shape], "float32"))
        ex["main"](tvm.runtime.tensor(a), b)
        outs.append(b.numpy())
    np.testing.assert_array_equal(outs[1], outs[0])
