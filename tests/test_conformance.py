"""ONNX conformance node tests for every operator tvmq lists, through ``tvmq.build`` in fp32.

The cases are the installed ``onnx`` wheel's own (``onnx.backend.test.case.node
.collect_testcases``: the models and expected outputs the ONNX backend test suite is generated
from), taken for each operator of ``tvmq.frontend.SUPPORTED_OPS`` (= the README's list, checked
here): the cases whose tested node is that operator, its ``*_expanded`` function-body variants
included. Each case ends one of two ways, and which one is pinned here:

* **passes**: ``tvmq.build`` compiles it and the library's outputs equal the case's expected
  outputs: same shapes and dtypes, integers and bools exactly, floats within ``rtol=1e-5,
  atol=1e-6`` (an fp32 kernel's rounding; every case but one is inside it on an AMD EPYC Zen 4),
  NaN where NaN. The one (``INEXACT_EXPECTED``): its expected values are 4-decimal literals in
  the wheel, one 5.6e-5 off the exact mean of its inputs (0.2841 for 2.5564 / 9 = 0.284044);
  it is compared with the wheel's reference evaluator (``onnx.reference``) at the fp32 tolerance
  and with the literals at the case's own tolerance (``rtol=1e-3``, as the ONNX backend runner);
* **refused**: ``tvmq.build`` raises ``UnsupportedModelError`` (a ``tvmq.TvmqError``) before any
  compile work, one line naming the node (its op) or the model input and the unsupported form;
  ``REFUSED`` lists each form with the cases it covers.

Nothing else: no other exception, no wrong answer, no xfail. Cases whose refusal is a parameter
given as a graph input (Reshape's shape, Pad's pads, ...) are also compiled with those inputs as
initializers (the form tvmq supports): ``test_with_constant_parameters``.

``python -m tests.test_conformance`` prints the counts per operator.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import os
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import tvmq
from tvmq.errors import UnsupportedModelError
from tvmq.frontend import CONSTANT_INPUTS, SUPPORTED_OPS

ROOT = Path(__file__).resolve().parents[1]
RTOL, ATOL = 1e-5, 1e-6
# cases whose expected outputs are literals less exact than fp32 (see above)
INEXACT_EXPECTED = {"test_averagepool_2d_ceil_last_window_starts_on_pad"}

# (case-name pattern, a fragment of the refusal, whether the message names the op (else an input
# or output)); a case whose graph holds an operator tvmq does not list (the function-body
# expansions of Clip, LeakyRelu, PRelu, Softmax, ...) is refused as such, see expected_refusal
_GRAPH_INPUT = "is a graph input, not a constant"
REFUSED: list[tuple[str, str, bool]] = [
    # element types tvmq does not compile: bfloat16, float8 / float4 / e8m0, int4 / int2
    (r"test_cast_.*(BFLOAT16|FLOAT8|FLOAT4|INT4|INT2)", "element type", False),
    (r"test_batchnorm_.*_training_mode$", "training mode", True),
    (r"test_(training_)?dropout_.*mask", "the mask output", True),
    (r"test_training_dropout", "training_mode", True),
    (r"test_identity_sequence$", "is a sequence", False),
    (r"test_identity_opt$", "is an optional", False),
    (r"test_maxpool_with_argmax_", "the Indices output", True),
    # an empty tensor as a model input (ReduceMean's default axes: an empty axes input)
    (r"test_(reshape_allowzero_reordered|reduce_mean_default_axes_|split_zero_size_splits_)",
     "size 0 in dimension 0", False),
    # parameters given as graph inputs (their values known only at run time)
    (r"test_(constant|edge|reflect|wrap)_pad", _GRAPH_INPUT, True),
    (r"test_reduce_mean_", _GRAPH_INPUT, True),
    (r"test_resize_", _GRAPH_INPUT, True),
    (r"test_reshape_", _GRAPH_INPUT, True),
    (r"test_split_variable_parts_", _GRAPH_INPUT, True),
    (r"test_unsqueeze_", _GRAPH_INPUT, True),
    (r"test_constantofshape_", _GRAPH_INPUT, True),
    (r"test_pow_types_(int|float32_u?int)", "a base of type", True),
]
# the same with those parameters as initializers: all pass but these
REFUSED_WITH_CONSTANTS: list[tuple[str, str, bool]] = [
    # linear / cubic Resize in the forms TVM's importer computes differently from ONNX (nearest:
    # tvmq's own gathers, every form passes)
    (r"test_resize_.*_antialias", "antialias=1", True),
    (r"test_resize_.*_half_pixel_symmetric", "half_pixel_symmetric", True),
    (r"test_resize_downsample_scales_(linear|cubic)", "do not give a whole output size", True),
    (r"test_resize_tf_crop_and_resize_axes_", "the axes attribute", True),
    (r"test_pow_types_int", "a base of type", True),
    (r"test_(reshape_allowzero_reordered|split_zero_size_splits_)", "size 0 in dimension 0", False),
]


@functools.lru_cache(maxsize=1)
def conformance_cases() -> tuple[tuple[str, Any], ...]:
    """``(op, case)`` for every node test case of a listed operator, in the wheel's order."""
    from onnx.backend.test.case import node

    with warnings.catch_warnings():  # the generators of other ops warn (casts overflowing)
        warnings.simplefilter("ignore")
        cases = node.collect_testcases()
    out, op = [], None
    for case in cases:
        if "_expanded" not in case.name:
            # a case's tested node is its only node; an expansion follows the case it expands
            nodes = case.model.graph.node
            op = nodes[0].op_type if len(nodes) == 1 else None
        if op in SUPPORTED_OPS:
            out.append((op, case))
    return tuple(out)


def _array(value: Any) -> Any:
    return numpy_helper.to_array(value) if isinstance(value, onnx.TensorProto) else value


def _parameter_inputs(model: onnx.ModelProto) -> set[str]:
    """Graph inputs that feed a parameter slot (``CONSTANT_INPUTS``, Pow's exponent)."""
    slots = {op: set(ins) for op, ins in CONSTANT_INPUTS.items() if op != "Dropout"}
    slots["Pow"] = {1}
    fed = {n.input[k] for n in model.graph.node for k in slots.get(n.op_type, ())
           if k < len(n.input) and n.input[k]}
    return fed & {i.name for i in model.graph.input}


def with_constant_parameters(case: Any) -> Any | None:
    """The case with its parameter inputs made initializers (their values from the case's data),
    or None where it has none."""
    names = _parameter_inputs(case.model)
    if not names or "_expanded" in case.name:
        return None
    model = copy.deepcopy(case.model)
    (inputs, outputs), = case.data_sets
    values = {vi.name: _array(v) for vi, v in zip(case.model.graph.input, inputs)}
    kept = [vi for vi in model.graph.input if vi.name not in names]
    del model.graph.input[:]
    model.graph.input.extend(kept)
    model.graph.initializer.extend(numpy_helper.from_array(values[n], n) for n in sorted(names))
    return dataclasses.replace(case, name=f"{case.name}_constant_parameters", model=model,
                        data_sets=[([values[vi.name] for vi in kept], outputs)])


def _compare(name: str, expected: np.ndarray, got: np.ndarray, case: Any,
             reference: np.ndarray | None) -> None:
    assert got.shape == expected.shape and got.dtype == expected.dtype, (
        f"{name}: got {got.dtype}{list(got.shape)}, expected {expected.dtype}{list(expected.shape)}")
    if expected.dtype.kind != "f":
        np.testing.assert_array_equal(got, expected, err_msg=name)
        return
    if reference is not None:  # an inexact literal: the case's own tolerance, then the reference
        np.testing.assert_allclose(got, expected, rtol=case.rtol, atol=case.atol, err_msg=name)
        expected = reference
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL, equal_nan=True, err_msg=name)


def run_case(case: Any, work: Path) -> tuple[str, str]:
    """Build ``case`` with ``tvmq.build`` (fp32), run it on the case's data and compare:
    ``("passed", "")`` or ``("refused", the one-line message)``; anything else raises."""
    path = work / "model.onnx"
    onnx.save(case.model, str(path))
    try:
        tvmq.build(path, work / "out")
    except UnsupportedModelError as e:
        return "refused", str(e)
    module = tvmq.load(work / "out")
    names = [vi.name for vi in case.model.graph.input
             if vi.name not in {t.name for t in case.model.graph.initializer}]
    for inputs, outputs in case.data_sets:
        feeds = {n: _array(v) for n, v in zip(names, inputs)}
        got = module.run(feeds, check_inputs=False)  # the node tests feed NaN / inf on purpose
        reference = None
        if case.name in INEXACT_EXPECTED:
            from onnx.reference import ReferenceEvaluator  # (only for these cases)

            reference = ReferenceEvaluator(case.model).run(None, feeds)
        for k, vi in enumerate(case.model.graph.output):
            _compare(f"{case.name}: output {vi.name!r}", _array(outputs[k]), got[vi.name], case,
                     None if reference is None else np.asarray(reference[k]))
    return "passed", ""


def expected_refusal(case: Any, table: list[tuple[str, str, bool]]) -> tuple[str, bool] | None:
    """``(message fragment, names the op)`` where ``case`` is to be refused, else None."""
    foreign = sorted({n.op_type for n in case.model.graph.node} - SUPPORTED_OPS)
    if foreign:
        return f"unsupported operator(s) {', '.join(foreign)}", True
    for pattern, fragment, names_op in table:
        if re.match(pattern, case.name):
            return fragment, names_op
    return None


def _check(op: str, case: Any, table: list[tuple[str, str, bool]], tmp_path: Path) -> None:
    outcome, message = run_case(case, tmp_path)
    expected = expected_refusal(case, table)
    if expected is None:
        assert outcome == "passed", f"{case.name}: refused: {message}"
        return
    fragment, names_op = expected
    assert outcome == "refused", f"{case.name} compiled and matched; expected a refusal ({fragment})"
    assert "\n" not in message and fragment in message, message
    assert "inside TVM" not in message and "importer" not in message, message
    if names_op:
        ops = "|".join({op} | {n.op_type for n in case.model.graph.node})
        assert re.search(rf"\b({ops})\b", message), message
    else:
        assert re.search(r"(input|output|constant) '", message), message


CASES = conformance_cases()


@pytest.mark.parametrize("op,case", CASES, ids=[c.name for _, c in CASES])
def test_conformance_case(op: str, case: Any, tmp_path: Path) -> None:
    _check(op, case, REFUSED, tmp_path)


CONSTANT_CASES = [(op, v) for op, c in CASES if (v := with_constant_parameters(c)) is not None]


@pytest.mark.parametrize("op,case", CONSTANT_CASES, ids=[c.name for _, c in CONSTANT_CASES])
def test_with_constant_parameters(op: str, case: Any, tmp_path: Path) -> None:
    _check(op, case, REFUSED_WITH_CONSTANTS, tmp_path)


def test_every_listed_operator_has_cases_and_the_readme_lists_them() -> None:
    ops = {op for op, _ in CASES}
    assert ops == SUPPORTED_OPS, f"listed operators without a conformance case: {SUPPORTED_OPS - ops}"
    text = (ROOT / "README.md").read_text()
    listing = text.split("ONNX operators:", 1)[1].split(". Conv, and", 1)[0]
    listed = set(re.findall(r"\b[A-Z][A-Za-z]+\b", re.sub(r"\([^)]*\)", "", listing)))
    assert listed == SUPPORTED_OPS, (f"in the README only: {sorted(listed - SUPPORTED_OPS)}; "
                                     f"in the code only: {sorted(SUPPORTED_OPS - listed)}")


def test_the_readme_counts() -> None:
    """The README's counts: every case's outcome is pinned (each case test asserts it), so they
    follow from the tables here, for the installed onnx version."""
    refused = [c for _, c in CASES if expected_refusal(c, REFUSED) is not None]
    expansions = [c for c in refused if "_expanded" in c.name]
    text = " ".join((ROOT / "README.md").read_text().split())
    if f"with `onnx` {onnx.__version__}," not in text:
        counted = re.search(r"with `onnx` ([0-9][0-9.]*),", text)
        version = counted.group(1) if counted else "<the README's version>"
        pytest.skip(f"the README's counts are of onnx {version}, not the installed {onnx.__version__}: run "
                    f"`.venv/bin/pip install onnx=={version} && make test`")
    assert (f"of its {len(CASES)} cases {len(CASES) - len(refused)} pass in fp32 and {len(refused)} "
            f"are refused so ({len(expansions)} of them function-body expansions") in text


def test_a_split_size_of_zero_is_refused(tmp_path: Path) -> None:
    """(The wheel's zero-size-split cases have an empty input, refused as such.)"""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Split", ["x", "split"], ["a", "b", "c"], axis=1, name="split3")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in "abc"],
        [numpy_helper.from_array(np.array([2, 0, 2], np.int64), "split")])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    with pytest.raises(UnsupportedModelError, match=r"^Split node 'split3': a split size of 0 "):
        tvmq.build(path, tmp_path / "out")


def test_unused_optional_outputs_are_not_refused(tmp_path: Path) -> None:
    """Older exports list Dropout's mask and MaxPool's indices as outputs no node reads: they
    compile (only a used one is refused), equal to onnxruntime. A BatchNormalization with five
    outputs is training mode up to opset 9 (as onnxruntime computes it), read or not: refused."""
    from onnx import TensorProto, helper

    from .conftest import ort_session

    rng = np.random.default_rng(0)
    c = 4
    inits = [numpy_helper.from_array(rng.standard_normal((c, 3, 3, 3)).astype(np.float32), "w")]
    inits += [numpy_helper.from_array(v.astype(np.float32), n) for n, v in
              (("g", rng.uniform(0.5, 1.5, c)), ("b", rng.standard_normal(c)),
               ("m", rng.standard_normal(c) * 0.1), ("v", rng.uniform(0.5, 1.5, c)))]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["bn"], name="bn"),
             helper.make_node("MaxPool", ["bn"], ["p", "idx"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Dropout", ["p"], ["y", "mask"], name="drop", ratio=0.5)]
    x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])
    y_info = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(helper.make_graph(nodes, "g", [x_info], [y_info], inits),
                                opset_imports=[helper.make_opsetid("", 9)]), str(path))
    x = rng.standard_normal((1, 3, 8, 8)).astype(np.float32)
    got = tvmq.load(tvmq.build(path, tmp_path / "out").library).run({"x": x})["y"]
    np.testing.assert_allclose(got, ort_session(path).run(None, {"x": x})[0], rtol=1e-5, atol=1e-5)

    nodes[1] = helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"],
                                ["bn", "rm", "rv", "sm", "sv"], name="bn")
    onnx.save(helper.make_model(helper.make_graph(nodes, "g", [x_info], [y_info], inits),
                                opset_imports=[helper.make_opsetid("", 9)]), str(path))
    with pytest.raises(UnsupportedModelError, match=r"^BatchNormalization node 'bn': training mode"):
        tvmq.build(path, tmp_path / "out2")


def main() -> None:
    """Counts per operator: cases, passed, refused (by reason); the same with constant
    parameters."""
    from collections import Counter, defaultdict

    for title, cases in (("conformance node cases", CASES),
                         ("with parameters as initializers", CONSTANT_CASES)):
        table: dict[str, Counter] = defaultdict(Counter)
        reasons: Counter = Counter()
        for op, case in cases:
            with tempfile.TemporaryDirectory() as d:
                outcome, message = run_case(case, Path(d))
            table[op][outcome] += 1
            if outcome == "refused":
                fragment = expected_refusal(case, REFUSED if cases is CASES else REFUSED_WITH_CONSTANTS)
                reasons[f"{op}: {fragment[0] if fragment else message}"] += 1
        print(f"\n{title}: {len(cases)} cases, {sum(t['passed'] for t in table.values())} passed, "
              f"{sum(t['refused'] for t in table.values())} refused")
        print("| op | cases | passed | refused |\n|---|---:|---:|---:|")
        for op in sorted(table):
            t = table[op]
            print(f"| {op} | {t['passed'] + t['refused']} | {t['passed']} | {t['refused']} |")
        for reason, n in sorted(reasons.items()):
            print(f"  refused {n:3d}  {reason}")


if __name__ == "__main__":
    os.environ.setdefault("TVM_NUM_THREADS", "1")
    main()
