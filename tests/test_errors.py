"""Bad input gives one clear TvmqError line, never a traceback from inside TVM."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import tvmq
from tvmq import frontend
from tvmq.errors import ArtifactError, InputError, ModelLoadError, UnsupportedModelError

from .conftest import FMNIST_DIR, ROOT


def _tiny_model(op: str = "Relu") -> onnx.ModelProto:
    w = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node(op, ["c"], ["y"], name="act")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], [w])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tvmq", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=600)


def _one_error_line(stderr: str) -> str:
    """The stderr of a failed command: progress lines, then exactly one error line."""
    lines = [l for l in stderr.strip().splitlines() if not l.startswith("[")]
    assert len(lines) == 1 and lines[0].startswith("tvmq: error: "), stderr
    assert "Traceback" not in stderr
    return lines[0]


def test_truncated_onnx_file(tmp_path: Path) -> None:
    data = (FMNIST_DIR / "model.onnx").read_bytes()
    bad = tmp_path / "truncated.onnx"
    bad.write_bytes(data[: len(data) // 3])
    with pytest.raises(ModelLoadError, match="truncated"):
        frontend.load_model(bad)
    r = _cli("compile", str(bad), "-o", str(tmp_path / "out"))
    assert r.returncode == 2
    assert "truncated" in _one_error_line(r.stderr)


def test_missing_onnx_file(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not found"):
        frontend.load_model(tmp_path / "nope.onnx")


def test_unsupported_op_lists_op_and_node_before_compiling(tmp_path: Path) -> None:
    model = _tiny_model("Erf")
    with pytest.raises(UnsupportedModelError, match=r"Erf \(node 'act'\)"):
        frontend.prepare(model)
    path = tmp_path / "erf.onnx"
    onnx.save(model, str(path))
    r = _cli("compile", str(path), "-o", str(tmp_path / "out"))
    assert r.returncode == 2 and "Erf (node 'act')" in _one_error_line(r.stderr)
    assert not (tmp_path / "out").exists()  # nothing was built


def test_dynamic_non_batch_dimension_needs_a_shape() -> None:
    model = _tiny_model()
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "h"
    with pytest.raises(UnsupportedModelError, match="dynamic dimension 2"):
        frontend.prepare(model)
    pm = frontend.prepare(model, input_shapes={"x": (1, 3, 10, 10)})
    assert pm.layers.layers[0].input_shape == (1, 3, 10, 10)


def test_wrong_input_shape_dtype_and_name(fmnist_compiled: Path) -> None:
    m = tvmq.load(fmnist_compiled)
    good = np.zeros((1, 1, 28, 28), np.float32)
    with pytest.raises(InputError, match=r"shape \(1, 1, 32, 32\) but the model was compiled for \(1, 1, 28, 28\)"):
        m.run({"input": np.zeros((1, 1, 32, 32), np.float32)})
    with pytest.raises(InputError, match="dtype float64"):
        m.run({"input": good.astype(np.float64)})
    with pytest.raises(InputError, match="missing \\['input'\\]"):
        m.run({"image": good})
    assert m.run({"input": good})["logits"].shape == (1, 10)


def test_missing_output_directory_and_artifacts(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="compiled model not found"):
        tvmq.load(tmp_path / "missing")
    r = _cli("bench", str(tmp_path / "missing"))
    assert r.returncode == 2 and "compiled model not found" in _one_error_line(r.stderr)
    (tmp_path / "lonely").mkdir()
    (tmp_path / "lonely" / "model.so").write_bytes(b"")
    with pytest.raises(ArtifactError, match="manifest.json missing"):
        tvmq.load(tmp_path / "lonely")


def test_output_path_is_a_file(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ArtifactError, match="not a directory"):
        tvmq.build(FMNIST_DIR / "model.onnx", f)


@pytest.mark.parametrize("damage", ["truncated", "one byte changed"])
def test_a_damaged_library_is_refused_before_it_is_loaded(fmnist_compiled: Path, tmp_path: Path,
                                                          damage: str) -> None:
    """Loading a half-copied model.so crashed the process (a bus error); the manifest's size and
    sha256 of the library now refuse it with one line, from Python and from the CLI."""
    import shutil

    shutil.copy(fmnist_compiled / "manifest.json", tmp_path / "manifest.json")
    data = bytearray((fmnist_compiled / "model.so").read_bytes())
    if damage == "truncated":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 3] ^= 0xFF
    (tmp_path / "model.so").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="truncated or replaced" if damage == "truncated" else "sha256"):
        tvmq.load(tmp_path)
    p = subprocess.run([sys.executable, "-m", "tvmq", "bench", str(tmp_path)], capture_output=True, text=True,
                       cwd=ROOT)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tvmq: error:"), p.stderr


@pytest.mark.parametrize("argv, says", [
    (["bench", "out", "--repeat", "0"], "bench: argument --repeat: must be >= 1, got 0"),
    (["bench", "out", "--warmup", "-1"], "bench: argument --warmup: must be >= 0, got -1"),
    (["bench", "out", "--threads", "-2"], "bench: argument --threads: must be >= 1, got -2"),
    (["info", "m.onnx", "--batch-size", "-3"], "info: argument --batch-size: must be >= 1, got -3"),
    (["tune", "m.onnx", "--db", "d.jsonl", "--threads", "0"], "tune: argument --threads: must be >= 1"),
    (["calibrate", "m.onnx", "--data", "x.npy", "-o", "c.json", "--limit", "-1"], "must be >= 1, got -1"),
    (["compile", "m.onnx", "-o", "out", "--input-shape", "x=1,0,2"], "dimensions must be >= 1"),
    (["compile"], "compile: the following arguments are required"),
    (["bogus"], "invalid choice: 'bogus'"),
])
def test_bad_arguments_are_one_error_line_before_any_work(argv: list[str], says: str, tmp_path: Path) -> None:
    """Counts and sizes are checked by the parser: one ``tvmq: error:`` line, exit 2, nothing
    read or written (``--batch-size -3`` printed a negative MMAC count, ``--repeat 0`` a traceback)."""
    p = subprocess.run([sys.executable, "-m", "tvmq", *argv], capture_output=True, text=True, cwd=tmp_path,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tvmq: error:") and says in lines[0], p.stderr
    assert list(tmp_path.iterdir()) == []
