"""The bad-input corpus (issue 16): every bad or unusual input a user can give, through the CLI
and the Python API, on the bundled model and small graphs built here.

Each CLI case runs ``tvmq`` in a fresh working directory holding only the case's inputs and
asserts: the exit status; that stderr is exactly one line ``tvmq: error: ...`` saying what the
case names (or, for a documented fallback, exit 0 with its one ``tvmq: warning:`` line); that no
traceback was printed and no signal ended the process; and that the directory afterwards holds
what it held before (nothing partial left behind), except a fallback's declared outputs.
Cases that could crash the interpreter (damaged or foreign shared libraries) run in a
subprocess; the rest run in-process through ``tvmq.cli.main`` (most fail before TVM is
imported), so the corpus runs in well under three minutes.

The case ids start with their class (``args-``, ``onnx-``, ``calib-``, ``plan-``, ``db-``,
``artifact-``, ``output-``, ``budget-``, ``numeric-``, ``tune-``, ``errorpath-``):
``pytest --collect-only -q tests/test_bad_input.py`` counts them per class.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import tvmq
from tvmq import cli

from .conftest import FMNIST_DIR, ROOT

F = str(FMNIST_DIR / "model.onnx")


# ---------------------------------------------------------------------------------------------
# small graphs and damaged files, built here

def tiny_model(*, act: str = "Relu", weight: np.ndarray | None = None, input_dims: list[Any] | None = None,
               output_dims: list[Any] | None = None, opset: int = 17, domain: str = "") -> onnx.ModelProto:
    """Conv 3 -> 4 channels, 3x3, padded, then ``act``: x [1, 3, 8, 8] -> y [1, 4, 8, 8]."""
    w = weight if weight is not None else np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32) * 0.3
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node(act, ["c"], ["y"], name="act", domain=domain)]
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, output_dims if output_dims is not None else [1, 4, 8, 8])
    g = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, input_dims if input_dims is not None else [1, 3, 8, 8])], [out],
        [numpy_helper.from_array(w, "w")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def save(model: onnx.ModelProto, path: Path) -> None:
    path.write_bytes(model.SerializeToString())


def write_png(path: Path, size: int = 12) -> None:
    from PIL import Image

    Image.fromarray((np.arange(size * size * 3) % 255).astype(np.uint8).reshape(size, size, 3)).save(path)


@dataclass
class Fx:
    """Session-wide inputs the cases name in their argv: ``{tiny}``, ``{F}``, ``{out}``, ..."""

    paths: dict[str, str]


@pytest.fixture(scope="session")
def fx(tmp_path_factory: pytest.TempPathFactory, fmnist_compiled: Path) -> Fx:
    d = tmp_path_factory.mktemp("corpus-inputs")
    save(tiny_model(), d / "tiny.onnx")
    rng = np.random.default_rng(0)
    np.savez(d / "tiny_calib.npz", x=rng.standard_normal((4, 3, 8, 8)).astype(np.float32))
    np.save(d / "tiny_calib.npy", rng.standard_normal((4, 3, 8, 8)).astype(np.float32))
    tiny_out = d / "tiny_out"
    tvmq.build(d / "tiny.onnx", tiny_out)
    return Fx({"tiny": str(d / "tiny.onnx"), "F": F, "out": str(fmnist_compiled), "tiny_out": str(tiny_out),
               "calib": str(d / "tiny_calib.npz"), "calib_npy": str(d / "tiny_calib.npy"), "inputs": str(d)})


# ---------------------------------------------------------------------------------------------
# the case runner

@dataclass(frozen=True)
class Case:
    id: str  # "<class>-<what>"
    argv: tuple[str, ...]
    says: str  # a regex the one error line (or the fallback's warning line) must contain
    make: Callable[[Path, Fx], None] | None = None  # writes the case's inputs into the work dir
    code: int = 2
    fallback: bool = False  # a documented fallback: exit 0 and one "tvmq: warning:" line
    keeps: tuple[str, ...] = ()  # files a fallback writes (required to exist afterwards)
    isolated: bool = False  # in a subprocess: a crash would end the test process
    max_s: float | None = None  # an upper bound on the run time (an error "within seconds")


def _snapshot(d: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(d)): (p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else (-1, 0)
            for p in sorted(d.rglob("*"))}


def run_cli(argv: list[str], work: Path, *, isolated: bool, capfd: Any, monkeypatch: Any) -> tuple[int, str, str]:
    if isolated:
        p = subprocess.run([sys.executable, "-m", "tvmq", *argv], capture_output=True, text=True, cwd=work,
                           env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
        assert p.returncode >= 0, f"killed by signal {-p.returncode}: {p.stderr}"
        return p.returncode, p.stdout, p.stderr
    monkeypatch.chdir(work)
    capfd.readouterr()
    code = cli.main(argv)
    out, err = capfd.readouterr()
    return code, out, err


def check_outcome(case: Case, code: int, out: str, err: str) -> str:
    """The assertions every case shares; the line that was checked."""
    assert "Traceback" not in err + out, err
    lines = [l for l in err.strip().splitlines() if l.strip() and not l.startswith("[")]
    assert code == case.code, f"exit {code}, expected {case.code}: {err}"
    if case.fallback:
        assert len(lines) == 1 and lines[0].startswith("tvmq: warning: "), err
    else:
        assert len(lines) == 1 and lines[0].startswith("tvmq: error: "), err
    assert re.search(case.says, lines[0]), f"{lines[0]!r} does not say {case.says!r}"
    return lines[0]


def run_case(case: Case, fx: Fx, tmp_path: Path, capfd: Any, monkeypatch: Any) -> str:
    work = tmp_path / "work"
    work.mkdir()
    if case.make is not None:
        case.make(work, fx)
    before = _snapshot(work)
    argv = [a.format(**fx.paths) for a in case.argv]
    t = time.perf_counter()
    code, out, err = run_cli(argv, work, isolated=case.isolated, capfd=capfd, monkeypatch=monkeypatch)
    seconds = time.perf_counter() - t
    line = check_outcome(case, code, out, err)
    after = _snapshot(work)
    for k in case.keeps:
        assert k in after, f"the fallback did not write {k}"
        after.pop(k)
    assert after == before, f"left behind or changed: {sorted(set(after.items()) ^ set(before.items()))}"
    if case.max_s is not None:
        assert seconds < case.max_s, f"took {seconds:.1f} s"
    return line


def C(id: str, *argv: str, says: str = "", **kw: Any) -> Any:
    case = Case(id, tuple(argv), says, **kw)
    return pytest.param(case, id=id)


# ---------------------------------------------------------------------------------------------
# makers of case inputs

def files(**contents: bytes | str) -> Callable[[Path, Fx], None]:
    def make(work: Path, fx: Fx) -> None:
        for name, data in contents.items():
            p = work / name.replace("__", "/")
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data.encode() if isinstance(data, str) else data)
    return make


def onnx_file(name: str, model_fn: Callable[[], onnx.ModelProto]) -> Callable[[Path, Fx], None]:
    def make(work: Path, fx: Fx) -> None:
        save(model_fn(), work / name)
    return make


def npy(name: str, array_fn: Callable[[], Any], **kw: Any) -> Callable[[Path, Fx], None]:
    def make(work: Path, fx: Fx) -> None:
        a = array_fn()
        if name.endswith(".npz"):
            np.savez(work / name, **a)
        else:
            np.save(work / name, a, **kw)
    return make


def both(*makers: Callable[[Path, Fx], None]) -> Callable[[Path, Fx], None]:
    def make(work: Path, fx: Fx) -> None:
        for m in makers:
            m(work, fx)
    return make


def _truncated(src: str, frac: float = 0.5) -> Callable[[Path, Fx], bytes]:
    def data(work: Path, fx: Fx) -> bytes:
        b = Path(src.format(**fx.paths)).read_bytes()
        return b[: int(len(b) * frac)]
    return data


def copy_of(dst: str, src: str, transform: Callable[[bytes], bytes] = lambda b: b) -> Callable[[Path, Fx], None]:
    def make(work: Path, fx: Fx) -> None:
        p = work / dst
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(transform(Path(src.format(**fx.paths)).read_bytes()))
    return make


def manifest_edit(dst: str, edit: Callable[[dict[str, Any]], Any], src: str = "{out}") -> Callable[[Path, Fx], None]:
    """``dst/`` = a copy of a compiled model with its manifest edited."""
    def make(work: Path, fx: Fx) -> None:
        d = work / dst
        d.mkdir(parents=True, exist_ok=True)
        s = Path(src.format(**fx.paths))
        shutil.copy(s / "model.so", d / "model.so")
        m = json.loads((s / "manifest.json").read_text())
        m2 = edit(m)
        (d / "manifest.json").write_text(json.dumps(m if m2 is None else m2))
    return make


def _half(b: bytes) -> bytes:
    return b[: len(b) // 2]


def _flip(b: bytes) -> bytes:
    a = bytearray(b)
    a[len(a) // 3] ^= 0xFF
    return bytes(a)


def _foreign_so() -> Path:
    """A shared library that is not a tvmq model: one of Python's own extension modules."""
    import _json

    return Path(_json.__file__)


def foreign_library(dst: str, record: bool) -> Callable[[Path, Fx], None]:
    """``dst/`` = a foreign ``.so`` named model.so beside a genuine manifest whose library record
    matches it (``record``: as a hand-made manifest would) or is absent (an old manifest)."""
    def make(work: Path, fx: Fx) -> None:
        d = work / dst
        d.mkdir(parents=True)
        shutil.copy(_foreign_so(), d / "model.so")
        m = json.loads((Path(fx.paths["out"]) / "manifest.json").read_text())
        if record:
            from tvmq.runtime import library_record

            m["library"] = library_record(d / "model.so")
        else:
            m.pop("library", None)
        (d / "manifest.json").write_text(json.dumps(m))
    return make


def another_build(dst: str) -> Callable[[Path, Fx], None]:
    """The tiny model's library beside the bundled model's manifest."""
    def make(work: Path, fx: Fx) -> None:
        d = work / dst
        d.mkdir()
        shutil.copy(Path(fx.paths["tiny_out"]) / "model.so", d / "model.so")
        shutil.copy(Path(fx.paths["out"]) / "manifest.json", d / "manifest.json")
    return make


def _workload() -> dict[str, Any]:
    from schedules.workload import Conv2dWorkload

    return {"op": "conv2d", **Conv2dWorkload(batch=1, in_channels=3, height=8, width=8, out_channels=4,
                                             kernel_h=3, kernel_w=3).to_json()}


_WORKLOAD = _workload()


def record_line(**over: Any) -> str:
    """One well-formed tuning record (the fields of ``TuningRecord``), with ``over`` replacing
    fields (None deletes one)."""
    rec: dict[str, Any] = {
        "schema": 1, "task": "0" * 16, "kernel": "conv2d/w8a8/avx2", "spec": "w8a8",
        "workload": _WORKLOAD,
        "config": {"type": "PointwiseDotConfig"}, "latency": {"median_us": 10.0, "min_us": 9.0, "n": 3, "spread": 0.1},
        "error": None, "device": {"id": "abc", "cpu": "x", "isa": "avx2", "threads": 1},
        "tvmq": "0", "tvm": "0", "time": 0.0}
    for k, v in over.items():
        if v is None:
            rec.pop(k, None)
        else:
            rec[k] = v
    return json.dumps(rec) + "\n"


def good_db(work: Path, fx: Fx) -> None:
    (work / "good.jsonl").write_text(record_line())


# ---------------------------------------------------------------------------------------------
# the CLI corpus

ARGS = [
    C("args-bench-repeat-0", "bench", "{out}", "--repeat", "0", says="--repeat: must be >= 1, got 0"),
    C("args-bench-warmup-neg", "bench", "{out}", "--warmup", "-1", says="--warmup: must be >= 0"),
    C("args-bench-threads-neg", "bench", "{out}", "--threads", "-2", says="--threads: must be >= 1"),
    C("args-bench-threads-0", "bench", "{out}", "--threads", "0", says="--threads: must be >= 1"),
    C("args-bench-threads-text", "bench", "{out}", "--threads", "two", says="not an integer: 'two'"),
    C("args-info-batch-neg", "info", "{F}", "--batch-size", "-3", says="--batch-size: must be >= 1, got -3"),
    C("args-info-batch-0", "info", "{F}", "--batch-size", "0", says="--batch-size: must be >= 1"),
    C("args-info-batch-float", "info", "{F}", "--batch-size", "1.5", says="not an integer"),
    C("args-shape-zero", "compile", "{tiny}", "-o", "o", "--input-shape", "x=1,0,8,8", says="dimensions must be >= 1"),
    C("args-shape-negative", "info", "{tiny}", "--input-shape", "x=1,3,-8,8", says="dimensions must be >= 1"),
    C("args-shape-no-equals", "info", "{tiny}", "--input-shape", "x", says="expects name=d0,d1"),
    C("args-shape-no-name", "info", "{tiny}", "--input-shape", "=1,3,8,8", says="expects name=d0,d1"),
    C("args-shape-text", "info", "{tiny}", "--input-shape", "x=1,3,a,8", says="dimensions must be integers"),
    C("args-shape-empty", "info", "{tiny}", "--input-shape", "x=", says="dimensions must be integers"),
    C("args-bits-unknown", "compile", "{tiny}", "-o", "o", "--bits", "w9a8", says="w_bits must be 4, 8 or 32"),
    C("args-bits-garbage", "compile", "{tiny}", "-o", "o", "--bits", "int8", says="unknown spec 'int8'"),
    C("args-isa-unknown", "compile", "{tiny}", "-o", "o", "--isa", "sse2", says="--isa: invalid choice"),
    C("args-range-unknown", "compile", "{tiny}", "-o", "o", "--range", "max", says="--range: invalid choice"),
    C("args-requant-unknown", "compile", "{tiny}", "-o", "o", "--requant", "int", says="--requant: invalid choice"),
    C("args-trials-0", "tune", "{tiny}", "--trials", "0", says="--trials: must be >= 1"),
    C("args-tune-threads-0", "tune", "{tiny}", "--threads", "0", says="--threads: must be >= 1"),
    C("args-tune-specs-unknown", "tune", "{tiny}", "--specs", "w8a8,w2a2", says=r"unknown specs \['w2a2'\]"),
    C("args-tune-specs-empty", "tune", "{tiny}", "--specs", ",", says="unknown specs"),
    C("args-rpc-no-port", "tune", "{tiny}", "--rpc", "localhost", says="--rpc expects TRACKER_HOST:PORT:DEVICE_KEY"),
    C("args-rpc-port-text", "tune", "{tiny}", "--rpc", "localhost:http:key", says="--rpc expects"),
    C("args-rpc-no-key", "tune", "{tiny}", "--rpc", "localhost:9190", says="--rpc expects"),
    C("args-rpc-no-host", "tune", "{tiny}", "--rpc", ":9190:key", says="--rpc expects"),
    C("args-rpc-port-range", "tune", "{tiny}", "--rpc", "localhost:99999:key", says="port"),
    C("args-calibrate-limit-neg", "calibrate", "{tiny}", "--data", "{calib}", "--limit", "-1", says="--limit: must be >= 1"),
    C("args-analyze-limit-0", "analyze", "{tiny}", "--calibration", "{calib}", "--limit", "0", says="--limit: must be >= 1"),
    C("args-calibration-limit-0", "compile", "{tiny}", "-o", "o", "--calibration-limit", "0", says="must be >= 1"),
    C("args-compile-no-output", "compile", "{tiny}", says="the following arguments are required: -o"),
    C("args-compile-nothing", "compile", says="the following arguments are required"),
    C("args-calibrate-no-data", "calibrate", "{tiny}", says="required: --data"),
    C("args-analyze-no-calibration", "analyze", "{tiny}", says="required: --calibration"),
    C("args-merge-no-output", "merge-db", "a.jsonl", says="required: -o"),
    C("args-unknown-command", "bogus", says="invalid choice: 'bogus'"),
    C("args-unknown-option", "info", "{tiny}", "--fast", says="unrecognized arguments: --fast"),
    C("args-no-command", says="required: command"),
    C("args-keep-fp32-unknown", "compile", "{tiny}", "-o", "o", "--bits", "bf16", "--keep-fp32", "conv9",
      says="keep_fp32 names 'conv9'"),
    C("args-int-bits-no-calibration", "compile", "{tiny}", "-o", "o", "--bits", "w8a8", says="needs --calibration"),
    C("args-eval-labels-alone", "compile", "{tiny}", "-o", "o", "--calibration", "{calib}", "--size-budget", "0.7x",
      "--eval-labels", "l.npy", says="--eval-labels needs --eval-data"),
]

ONNX = [
    C("onnx-missing", "info", "nope.onnx", says="ONNX file not found: nope.onnx"),
    C("onnx-directory", "compile", "d.onnx", "-o", "o", make=lambda w, f: (w / "d.onnx").mkdir(), says="got a directory"),
    C("onnx-empty-file", "info", "e.onnx", make=files(**{"e.onnx": b""}), says="no nodes|cannot parse"),
    C("onnx-text-file", "info", "t.onnx", make=files(**{"t.onnx": "hello, not a model\n" * 20}), says="cannot parse"),
    C("onnx-random-bytes", "info", "r.onnx", make=files(**{"r.onnx": bytes(range(256)) * 40}), says="cannot parse"),
    C("onnx-json-file", "compile", "j.onnx", "-o", "o", make=files(**{"j.onnx": '{"graph": {}}'}),
      says="cannot parse|no nodes"),
    C("onnx-truncated-bundled", "compile", "t.onnx", "-o", "o",
      make=lambda w, f: (w / "t.onnx").write_bytes(Path(F).read_bytes()[:20000]), says="truncated"),
    C("onnx-truncated-info", "info", "t.onnx",
      make=lambda w, f: (w / "t.onnx").write_bytes(Path(F).read_bytes()[:1000]), says="truncated|cannot parse|no nodes"),
    C("onnx-no-nodes", "info", "n.onnx", make=onnx_file("n.onnx", lambda: helper.make_model(helper.make_graph(
        [], "g", [], []))), says="no nodes"),
    C("onnx-unsupported-op", "compile", "m.onnx", "-o", "o", make=onnx_file("m.onnx", lambda: tiny_model(act="Erf")),
      says=r"Erf \(node 'act'\)"),
    C("onnx-unsupported-op-info", "info", "m.onnx", make=onnx_file("m.onnx", lambda: tiny_model(act="Erf")),
      says=r"unsupported operator\(s\) Erf"),
    C("onnx-custom-domain", "info", "m.onnx", make=onnx_file("m.onnx", lambda: _custom_domain()),
      says="unsupported operator|invalid ONNX"),
    C("onnx-undefined-tensor", "info", "m.onnx", make=onnx_file("m.onnx", lambda: _undefined_input(True)),
      says="invalid ONNX model"),
    C("onnx-undefined-tensor-output-without-shape", "info", "m.onnx",
      make=onnx_file("m.onnx", lambda: _undefined_input(False)), says="invalid ONNX model"),
    C("onnx-opset-from-the-future", "info", "m.onnx", make=onnx_file("m.onnx", lambda: tiny_model(opset=99)),
      says="invalid ONNX model|opset"),
    C("onnx-dynamic-dim", "info", "m.onnx", make=onnx_file("m.onnx", lambda: tiny_model(input_dims=[1, 3, "h", 8])),
      says="dynamic dimension 2"),
    C("onnx-shape-unknown-input", "info", "{tiny}", "--input-shape", "image=1,3,8,8", says="unknown inputs"),
    C("onnx-shape-rank-mismatch", "info", "{tiny}", "--input-shape", "x=1,3,8", says="rank|dimensions"),
    C("onnx-shape-channels-mismatch", "info", "{tiny}", "--input-shape", "x=1,5,8,8", says="channel|shape"),
    C("onnx-kernel-larger-than-input", "info", "m.onnx", make=onnx_file("m.onnx", lambda: _no_pad(2)),
      says="larger|shape|kernel"),
    C("onnx-batch-on-static-model", "info", "{F}", "--input-shape", "input=1,1,28", says="rank|dimensions"),
    C("onnx-nan-weights", "info", "m.onnx", make=onnx_file("m.onnx", lambda: tiny_model(
        weight=np.full((4, 3, 3, 3), np.nan, np.float32))), says="NaN|inf"),
    C("onnx-inf-weights-compile", "compile", "m.onnx", "-o", "o", make=onnx_file("m.onnx", lambda: tiny_model(
        weight=_with(np.ones((4, 3, 3, 3), np.float32), np.inf))), says="NaN|inf"),
    C("onnx-nan-weights-w8a8", "compile", "m.onnx", "-o", "o", "--bits", "w8a8", "--calibration", "{calib}",
      make=onnx_file("m.onnx", lambda: tiny_model(weight=_with(np.ones((4, 3, 3, 3), np.float32), np.nan))),
      says="NaN|inf"),
    C("onnx-weight-wrong-rank", "info", "m.onnx", make=onnx_file("m.onnx", lambda: tiny_model(
        weight=np.ones((4, 3, 3), np.float32))), says="invalid|shape|weight|rank"),
    C("onnx-compare-not-onnx", "bench", "{out}", "--compare", "x.onnx", "--repeat", "1", "--warmup", "0",
      make=files(**{"x.onnx": "nope"}), says="cannot parse"),
    C("onnx-compare-missing", "bench", "{out}", "--compare", "x.onnx", "--repeat", "1", says="not found"),
    C("onnx-compare-other-input-name", "bench", "{out}", "--compare", "{tiny}", "--repeat", "1", "--warmup", "0",
      says="input"),
]


def _with(a: np.ndarray, value: float) -> np.ndarray:
    a = a.copy()
    a.flat[5] = value
    return a


def _custom_domain() -> onnx.ModelProto:
    m = tiny_model(act="Relu", domain="com.example")
    m.opset_import.append(helper.make_opsetid("com.example", 1))
    return m


def _undefined_input(output_shape: bool) -> onnx.ModelProto:
    """A node reading a tensor nothing defines (the checker skipped it when an output had no shape)."""
    m = tiny_model(output_dims=[1, 4, 8, 8] if output_shape else None)
    if not output_shape:
        m.graph.output[0].type.tensor_type.ClearField("shape")
    m.graph.node[1].input[0] = "ghost"
    return m


def _no_pad(size: int) -> onnx.ModelProto:
    w = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], name="conv")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, size, size])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _images(*names: str, bad: dict[str, bytes] | None = None, dirs: tuple[str, ...] = ()) -> Callable[[Path, Fx], None]:
    def make(work: Path, fx: Fx) -> None:
        d = work / "imgs"
        d.mkdir()
        for n in names:
            write_png(d / n)
        for n, data in (bad or {}).items():
            (d / n).write_bytes(data)
        for n in dirs:
            (d / n).mkdir()
    return make


def _png_bytes() -> bytes:
    import io

    from PIL import Image

    b = io.BytesIO()
    Image.fromarray(np.zeros((12, 12, 3), np.uint8)).save(b, format="PNG")
    return b.getvalue()


def _stats_json(edit: Callable[[dict[str, Any]], None]) -> Callable[[Path, Fx], None]:
    """calibration.json for the tiny model, collected once per session, then ``edit``-ed."""
    def make(work: Path, fx: Fx) -> None:
        d = json.loads(_tiny_stats(fx).read_text())
        edit(d)
        (work / "c.json").write_text(json.dumps(d))
    return make


_STATS: dict[str, Path] = {}


def _tiny_stats(fx: Fx) -> Path:
    if "p" not in _STATS:
        from tvmq.calibration import collect

        p = Path(fx.paths["inputs"]) / "tiny_calibration.json"
        collect(fx.paths["tiny"], fx.paths["calib"]).save(p)
        _STATS["p"] = p
    return _STATS["p"]


def _set_stat(layer: str, role: str, **values: Any) -> Callable[[dict[str, Any]], None]:
    def edit(d: dict[str, Any]) -> None:
        d["layers"][layer][role].update(values)
    return edit


RNG = np.random.default_rng(1)
GOOD = RNG.standard_normal((4, 3, 8, 8)).astype(np.float32)

CALIB = [
    C("calib-missing", "calibrate", "{tiny}", "--data", "none.npz", "-o", "c.json", says="calibration data not found"),
    C("calib-zero-byte-npz", "calibrate", "{tiny}", "--data", "d.npz", "-o", "c.json",
      make=files(**{"d.npz": b""}), says="cannot read calibration data d.npz"),
    C("calib-zero-byte-npy", "calibrate", "{tiny}", "--data", "d.npy", "-o", "c.json",
      make=files(**{"d.npy": b""}), says="cannot read calibration data d.npy"),
    C("calib-0d-npy", "calibrate", "{tiny}", "--data", "d.npy", "-o", "c.json",
      make=npy("d.npy", lambda: np.float32(3.0)), says="a single number|0-d|samples"),
    C("calib-text-file", "calibrate", "{tiny}", "--data", "d.npy", "-o", "c.json",
      make=files(**{"d.npy": "1 2 3\n"}), says="not a numpy file"),
    C("calib-csv-named-npz", "compile", "{tiny}", "-o", "o", "--bits", "w8a8", "--calibration", "d.npz",
      make=files(**{"d.npz": "a,b\n1,2\n"}), says="not a numpy file"),
    C("calib-pickled-objects", "calibrate", "{tiny}", "--data", "d.npy", "-o", "c.json",
      make=npy("d.npy", lambda: np.array([{"a": 1}], dtype=object), allow_pickle=True),
      says="object arrays|pickle"),
    C("calib-no-pickle-hint", "calibrate", "{tiny}", "--data", "d.npy", "-o", "c.json",
      make=npy("d.npy", lambda: np.array([{"a": 1}], dtype=object), allow_pickle=True), says="^(?!.*allow_pickle)"),
    C("calib-wrong-shape", "calibrate", "{tiny}", "--data", "d.npy", "-o", "c.json",
      make=npy("d.npy", lambda: GOOD[:, :, :4]), says=r"samples of shape \(3, 4, 8\)"),
    C("calib-one-sample-without-batch", "calibrate", "{tiny}", "--data", "d.npy", "-o", "c.json",
      make=npy("d.npy", lambda: GOOD[0]), says="samples of shape"),
    C("calib-int-dtype", "calibrate", "{tiny}", "--data", "d.npy", "-o", "c.json",
      make=npy("d.npy", lambda: GOOD.astype(np.int32)), says="dtype int32"),
    C("calib-complex", "calibrate", "{tiny}", "--data", "d.npy", "-o", "c.json",
      make=npy("d.npy", lambda: GOOD.astype(np.complex64)), says="dtype complex64"),
    C("calib-nan", "calibrate", "{tiny}", "--data", "d.npy", "-o", "c.json",
      make=npy("d.npy", lambda: _with(GOOD, np.nan)), says="1 sample.* NaN or inf"),
    C("calib-inf", "compile", "{tiny}", "-o", "o", "--bits", "w8a8", "--calibration", "d.npy",
      make=npy("d.npy", lambda: _with(GOOD, -np.inf)), says="NaN or inf"),
    C("calib-empty", "calibrate", "{tiny}", "--data", "d.npy", "-o", "c.json",
      make=npy("d.npy", lambda: GOOD[:0]), says="calibration set is empty"),
    C("calib-npz-wrong-keys", "calibrate", "{tiny}", "--data", "d.npz", "-o", "c.json",
      make=npy("d.npz", lambda: {"a": GOOD, "b": GOOD}), says=r"holds arrays \['a', 'b'\]"),
    C("calib-npz-empty-archive", "calibrate", "{tiny}", "--data", "d.npz", "-o", "c.json",
      make=npy("d.npz", lambda: {}), says="holds no arrays|holds arrays"),
    C("calib-no-images", "calibrate", "{tiny}", "--data", "imgs", "-o", "c.json",
      make=_images(), says="no images"),
    C("calib-undecodable-image", "calibrate", "{tiny}", "--data", "imgs", "-o", "c.json",
      make=_images("a.png", bad={"b.jpg": b"not an image at all"}), says="cannot read image .*b.jpg"),
    C("calib-truncated-image", "calibrate", "{tiny}", "--data", "imgs", "-o", "c.json",
      make=_images("a.png", bad={"b.png": _png_bytes()[:40]}), says="cannot read image .*b.png"),
    C("calib-directory-named-jpg", "calibrate", "{tiny}", "--data", "imgs", "-o", "c.json",
      make=_images("a.png", dirs=("x.jpg",)), says="x.jpg.* (is a directory|not a file)"),
    C("calib-images-for-two-channel-model", "calibrate", "m.onnx", "--data", "imgs", "-o", "c.json",
      make=both(_images("a.png"), onnx_file("m.onnx", lambda: _two_channel())), says="samples of shape"),
    C("calib-json-not-json", "compile", "{tiny}", "-o", "o", "--bits", "w8a8", "--calibration", "c.json",
      make=files(**{"c.json": "{nope"}), says="cannot read calibration statistics c.json"),
    C("calib-json-wrong-schema", "compile", "{tiny}", "-o", "o", "--bits", "w8a8", "--calibration", "c.json",
      make=files(**{"c.json": '{"schema": 7, "layers": {}, "samples": 1}'}), says="schema 7"),
    C("calib-json-a-list", "compile", "{tiny}", "-o", "o", "--bits", "w8a8", "--calibration", "c.json",
      make=files(**{"c.json": "[1, 2]"}), says="cannot read calibration statistics"),
    C("calib-json-inverted-range", "compile", "{tiny}", "-o", "o", "--bits", "w8a8", "--calibration", "c.json",
      make=_stats_json(_set_stat("conv", "in", min=5.0, max=-5.0)), says="min .* > max|inverted"),
    C("calib-json-nan-range", "compile", "{tiny}", "-o", "o", "--bits", "w8a8", "--calibration", "c.json",
      make=_stats_json(_set_stat("conv", "out", max=float("nan"))), says="not finite|NaN"),
    C("calib-json-missing-field", "compile", "{tiny}", "-o", "o", "--bits", "w8a8", "--calibration", "c.json",
      make=_stats_json(lambda d: d["layers"]["conv"]["in"].pop("max")), says="cannot read calibration statistics"),
    C("calib-json-other-model", "compile", "{tiny}", "-o", "o", "--bits", "w8a8", "--calibration", "c.json",
      make=_stats_json(lambda d: d.update(layers={"other": d["layers"]["conv"]})),
      says="no calibration statistics .* layer 'conv'"),
    C("calib-huge-values-warn", "calibrate", "{tiny}", "--data", "d.npy", "-o", "c.json",
      make=npy("d.npy", lambda: GOOD * np.float32(1e30)), code=0, fallback=True, keeps=("c.json",),
      says="huge"),
    C("calib-all-zero-warn", "calibrate", "{tiny}", "--data", "d.npy", "-o", "c.json",
      make=npy("d.npy", lambda: np.zeros_like(GOOD)), code=0, fallback=True, keeps=("c.json",), says="constant"),
]


def _two_channel() -> onnx.ModelProto:
    w = numpy_helper.from_array(np.ones((4, 2, 3, 3), np.float32), "w")
    g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], [w])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


DB = [
    C("db-merge-missing-input", "merge-db", "good.jsonl", "typo.jsonl", "-o", "all.jsonl", make=good_db,
      says="not found: typo.jsonl"),
    C("db-merge-directory-input", "merge-db", "good.jsonl", "d", "-o", "all.jsonl",
      make=both(good_db, lambda w, f: (w / "d").mkdir()), says="d.* (is a directory|not a file)"),
    C("db-merge-output-exists", "merge-db", "good.jsonl", "-o", "good.jsonl", make=good_db, says="exists"),
    C("db-merge-output-directory", "merge-db", "good.jsonl", "-o", "d", make=both(good_db, lambda w, f: (w / "d").mkdir()),
      says="exists|directory"),
    C("db-merge-output-in-missing-dir", "merge-db", "good.jsonl", "-o", "no/such/all.jsonl", make=good_db,
      says="no/such"),
    C("db-compile-db-missing", "compile", "{tiny}", "-o", "o", "--db", "typo.jsonl", "-q",
      says="tuning database not found: typo.jsonl"),
    C("db-compile-db-directory", "compile", "{tiny}", "-o", "o", "--db", "d", make=lambda w, f: (w / "d").mkdir(),
      says="tuning database .*d.* (is a directory|not a file)"),
    C("db-budget-db-missing", "compile", "{tiny}", "-o", "o", "--calibration", "{calib}", "--latency-budget", "0.9x",
      "--db", "typo.jsonl", says="tuning database not found"),
    C("db-foreign-record-fallback", "compile", "{tiny}", "-o", "o", "-q", "--db", "f.jsonl",
      make=files(**{"f.jsonl": record_line(workload={"op": "conv2d", "n": 1})}), code=0, fallback=True,
      keeps=("o", "o/model.so", "o/manifest.json"), says=r"skipped 1 corrupt or foreign line"),
    C("db-corrupt-lines-fallback", "compile", "{tiny}", "-o", "o", "-q", "--db", "f.jsonl",
      make=files(**{"f.jsonl": "{not json\n" + record_line()[:30] + "\n"}), code=0, fallback=True,
      keeps=("o", "o/model.so", "o/manifest.json"), says=r"skipped 2 corrupt or foreign line"),
    C("db-merge-foreign-record-fallback", "merge-db", "f.jsonl", "-o", "all.jsonl",
      make=files(**{"f.jsonl": record_line() + record_line(latency={"median_us": -1})}), code=0, fallback=True,
      keeps=("all.jsonl",), says="skipped 1 corrupt or foreign line"),
    C("db-tune-db-directory", "tune", "{tiny}", "--db", "d", make=lambda w, f: (w / "d").mkdir(),
      says="tuning database .*d.* (is a directory|not a file)"),
    C("db-tune-db-unwritable", "tune", "{tiny}", "--db", "/proc/t.jsonl", says="cannot write"),
]

ARTIFACT = [
    C("artifact-missing", "bench", "nope", says="compiled model not found"),
    C("artifact-empty-dir", "bench", "d", make=lambda w, f: (w / "d").mkdir(), says="compiled model not found"),
    C("artifact-no-manifest", "bench", "d", make=copy_of("d/model.so", "{out}/model.so"), says="manifest.json missing"),
    C("artifact-manifest-not-json", "bench", "d", make=both(copy_of("d/model.so", "{out}/model.so"),
                                                            files(**{"d__manifest.json": "{"})), says="cannot read"),
    C("artifact-manifest-a-list", "bench", "d", make=manifest_edit("d", lambda m: [m]), says="not a tvmq manifest"),
    C("artifact-manifest-no-inputs", "bench", "d", make=manifest_edit("d", lambda m: m.pop("inputs") and None),
      says="not a tvmq manifest"),
    C("artifact-manifest-inputs-malformed", "bench", "d",
      make=manifest_edit("d", lambda m: m.update(inputs=[{"name": "input"}])), says="manifest"),
    C("artifact-manifest-inputs-not-list", "bench", "d", make=manifest_edit("d", lambda m: m.update(inputs="input")),
      says="manifest"),
    C("artifact-manifest-shape-text", "bench", "d",
      make=manifest_edit("d", lambda m: m["inputs"][0].update(shape="1x1x28x28")), says="manifest"),
    C("artifact-manifest-dtype-bogus", "bench", "d",
      make=manifest_edit("d", lambda m: m["inputs"][0].update(dtype="float128x")), says="manifest"),
    C("artifact-manifest-library-malformed", "bench", "d", make=manifest_edit("d", lambda m: m.update(library="x")),
      says="malformed 'library' record"),
    C("artifact-truncated-so", "bench", "d", make=both(manifest_edit("d", lambda m: None),
                                                       copy_of("d/model.so", "{out}/model.so", _half)),
      says="truncated or replaced", isolated=True),
    C("artifact-flipped-byte-so", "bench", "d", make=both(manifest_edit("d", lambda m: None),
                                                          copy_of("d/model.so", "{out}/model.so", _flip)),
      says="sha256 differs", isolated=True),
    C("artifact-empty-so", "bench", "d", make=both(manifest_edit("d", lambda m: None),
                                                   copy_of("d/model.so", "{out}/model.so", lambda b: b"")),
      says="truncated or replaced", isolated=True),
    C("artifact-another-build", "bench", "d", make=another_build("d"), says="is .* bytes|sha256", isolated=True),
    C("artifact-foreign-so-recorded", "bench", "d", make=foreign_library("d", True), says="not a tvmq|cannot load",
      isolated=True),
    C("artifact-foreign-so-old-manifest", "bench", "d", make=foreign_library("d", False),
      says="not a tvmq|cannot load", isolated=True),
    C("artifact-so-path-given-directly", "bench", "d/model.so", make=foreign_library("d", False),
      says="not a tvmq|cannot load", isolated=True),
    C("artifact-half-so-old-manifest", "bench", "d", isolated=True,
      make=both(manifest_edit("d", lambda m: m.pop("library") and None), copy_of("d/model.so", "{out}/model.so", _half)),
      says="cannot load|truncated|not a"),
    C("artifact-info-folder-without-manifest", "info", "d", make=lambda w, f: (w / "d").mkdir(),
      says="not a compiled tvmq model"),
    C("artifact-info-manifest-missing-kernels", "info", "d", make=manifest_edit("d", lambda m: m.pop("kernels") and None),
      says="not a compiled tvmq model"),
    C("artifact-report-empty-dir", "report", "d", make=lambda w, f: (w / "d").mkdir(), says="report.json"),
    C("artifact-report-missing-dir", "report", "nope", says="nope"),
]

OUTPUT = [
    C("output-compile-o-is-file", "compile", "{tiny}", "-o", "f", make=files(f="x"), says="not a directory"),
    C("output-compile-o-under-file", "compile", "{tiny}", "-o", "f/out", make=files(f="x"), says="f"),
    C("output-compile-o-unwritable", "compile", "{tiny}", "-o", "/proc/tvmq-corpus/out",
      says="cannot (create|write)", max_s=5.0),
    C("output-compile-o-unwritable-existing", "compile", "{tiny}", "-o", "/proc/self",
      says="cannot (create|write)", max_s=5.0),
    C("output-budget-o-is-file", "compile", "{tiny}", "-o", "f", "--calibration", "{calib}", "--size-budget", "0.7x",
      make=files(f="x"), says="not a directory", max_s=5.0),
    C("output-calibrate-o-dir", "calibrate", "{tiny}", "--data", "{calib}", "-o", "d",
      make=lambda w, f: (w / "d").mkdir(), says="d.* is a directory", max_s=5.0),
    C("output-calibrate-o-missing-dir", "calibrate", "{tiny}", "--data", "{calib}", "-o", "no/c.json",
      says="no/c.json|directory .*no", max_s=5.0),
    C("output-calibrate-o-unwritable", "calibrate", "{tiny}", "--data", "{calib}", "-o", "/proc/c.json",
      says="cannot write", max_s=5.0),
    C("output-tune-summary-dir", "tune", "{tiny}", "--db", "t.jsonl", "--summary", "d",
      make=lambda w, f: (w / "d").mkdir(), says="d.* is a directory", max_s=5.0),
    C("output-analyze-o-dir", "analyze", "{tiny}", "--calibration", "{calib}", "-o", "d",
      make=lambda w, f: (w / "d").mkdir(), says="d.* is a directory", max_s=5.0),
    C("output-merge-o-unwritable", "merge-db", "good.jsonl", "-o", "/proc/all.jsonl", make=good_db,
      says="cannot write"),
]

BUDGET = [
    C("budget-latency-negative", "compile", "{tiny}", "-o", "o", "--calibration", "{calib}", "--latency-budget", "-1",
      "--db", "good.jsonl", make=good_db, says="budget '-1'", max_s=5.0),
    C("budget-latency-zero", "compile", "{tiny}", "-o", "o", "--calibration", "{calib}", "--latency-budget", "0x",
      "--db", "good.jsonl", make=good_db, says="must be positive", max_s=5.0),
    C("budget-latency-garbage", "compile", "{tiny}", "-o", "o", "--calibration", "{calib}", "--latency-budget", "fast",
      "--db", "good.jsonl", make=good_db, says="cannot read budget 'fast'", max_s=5.0),
    C("budget-latency-size-unit", "compile", "{tiny}", "-o", "o", "--calibration", "{calib}", "--latency-budget", "2MB",
      "--db", "good.jsonl", make=good_db, says="does not fit a latency budget", max_s=5.0),
    C("budget-size-negative", "compile", "{tiny}", "-o", "o", "--calibration", "{calib}", "--size-budget=-0.5x",
      says="budget '-0.5x'", max_s=5.0),
    C("budget-size-time-unit", "compile", "{tiny}", "-o", "o", "--calibration", "{calib}", "--size-budget", "3ms",
      says="does not fit a size budget", max_s=5.0),
    C("budget-bops-unit", "compile", "{tiny}", "-o", "o", "--calibration", "{calib}", "--bops-budget", "1MB",
      says="does not fit a bops budget", max_s=5.0),
    C("budget-latency-without-db", "compile", "{tiny}", "-o", "o", "--calibration", "{calib}", "--latency-budget", "0.8x",
      says="needs measured latencies", max_s=5.0),
    C("budget-with-bits", "compile", "{tiny}", "-o", "o", "--calibration", "{calib}", "--size-budget", "0.7x",
      "--bits", "w8a8", says="give one or the other"),
    C("budget-without-calibration", "compile", "{tiny}", "-o", "o", "--size-budget", "0.7x", says="needs --calibration"),
    C("budget-calibration-missing", "compile", "{tiny}", "-o", "o", "--calibration", "none.npz", "--size-budget", "0.7x",
      says="calibration data not found", max_s=5.0),
    C("budget-specs-unknown", "compile", "{tiny}", "-o", "o", "--calibration", "{calib}", "--size-budget", "0.7x",
      "--specs", "w8a8,int3", says=r"unknown specs \['int3'\]", max_s=5.0),
    C("budget-eval-data-missing", "compile", "{tiny}", "-o", "o", "--calibration", "{calib}", "--size-budget", "0.7x",
      "--eval-data", "none.npz", says="none.npz", max_s=5.0),
    C("budget-eval-labels-missing", "compile", "{tiny}", "-o", "o", "--calibration", "{calib}", "--size-budget", "0.7x",
      "--eval-data", "{calib}", "--eval-labels", "typo.npy", says="typo.npy", max_s=5.0),
    C("budget-eval-labels-wrong-count", "compile", "{tiny}", "-o", "o", "--calibration", "{calib}", "--size-budget",
      "0.7x", "--eval-data", "{calib}", "--eval-labels", "l.npy", make=npy("l.npy", lambda: np.arange(3)),
      says="3 labels for 4 evaluation inputs", max_s=5.0),
    C("budget-eval-labels-float", "compile", "{tiny}", "-o", "o", "--calibration", "{calib}", "--size-budget",
      "0.7x", "--eval-data", "{calib}", "--eval-labels", "l.npy", make=npy("l.npy", lambda: np.full(4, 0.5)),
      says="class indices", max_s=5.0),
    C("budget-eval-labels-not-numpy", "compile", "{tiny}", "-o", "o", "--calibration", "{calib}", "--size-budget",
      "0.7x", "--eval-data", "{calib}", "--eval-labels", "l.npy", make=files(**{"l.npy": "1,2,3,4"}),
      says="not a numpy file", max_s=5.0),
    # the mixed path takes --input-shape like every other command (issue 15): checked before any work
    C("budget-dynamic-dim-without-shape", "compile", "m.onnx", "-o", "o", "--calibration", "{calib}",
      "--size-budget", "0.6x", make=onnx_file("m.onnx", lambda: tiny_model(input_dims=[1, 3, "h", "w"])),
      says="dynamic dimension 2.*--input-shape x=", max_s=5.0),
    C("budget-shape-unknown-input", "compile", "{tiny}", "-o", "o", "--calibration", "{calib}", "--size-budget",
      "0.6x", "--input-shape", "image=1,3,8,8", says="unknown inputs", max_s=5.0),
    C("budget-shape-garbage", "compile", "{tiny}", "-o", "o", "--calibration", "{calib}", "--size-budget",
      "0.6x", "--input-shape", "x=1,3,h,8", says="dimensions must be integers", max_s=5.0),
    C("budget-shape-rank-mismatch", "compile", "{tiny}", "-o", "o", "--calibration", "{calib}", "--size-budget",
      "0.6x", "--input-shape", "x=1,3,8", says="rank", max_s=5.0),
    C("budget-shape-other-than-the-calibration-samples", "compile", "m.onnx", "-o", "o", "--calibration", "{calib}",
      "--size-budget", "0.6x", "--input-shape", "x=1,3,16,8",
      make=onnx_file("m.onnx", lambda: tiny_model(input_dims=[1, 3, "h", "w"], output_dims=[1, 4, "h", "w"])),
      says=r"samples of shape \(3, 8, 8\), the model takes \(3, 16, 8\)", max_s=5.0),
    C("onnx-analyze-dynamic-dim-without-shape", "analyze", "m.onnx", "--calibration", "{calib}",
      make=onnx_file("m.onnx", lambda: tiny_model(input_dims=[1, 3, "h", "w"])),
      says="dynamic dimension 2.*--input-shape", max_s=5.0),
    C("args-analyze-shape-unknown-input", "analyze", "{tiny}", "--calibration", "{calib}",
      "--input-shape", "image=1,3,8,8", says="unknown inputs", max_s=5.0),
    C("calib-analyze-missing", "analyze", "{tiny}", "--calibration", "none.npz", says="calibration data not found",
      max_s=5.0),
    C("args-analyze-shape-garbage", "analyze", "{tiny}", "--calibration", "{calib}",
      "--input-shape", "x=1,3,8,-8", says="dimensions must be >= 1", max_s=5.0),
]

TUNE = [
    C("tune-rpc-dead-tracker", "tune", "{tiny}", "--trials", "1", "--rpc", "127.0.0.1:1:k", "--db", "t.jsonl",
      says="cannot reach the RPC tracker at 127.0.0.1:1", max_s=15.0),
]

CLI_CASES = ARGS + ONNX + CALIB + DB + ARTIFACT + OUTPUT + BUDGET + TUNE


@pytest.mark.parametrize("case", CLI_CASES)
def test_cli_case(case: Case, fx: Fx, tmp_path: Path, capfd: Any, monkeypatch: Any) -> None:
    run_case(case, fx, tmp_path, capfd, monkeypatch)


def test_rpc_tracker_that_is_not_a_tracker(fx: Fx, tmp_path: Path, capfd: Any, monkeypatch: Any) -> None:
    """tune-: a port that accepts connections but does not speak the tracker protocol."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    port = server.getsockname()[1]
    try:
        case = Case("tune-rpc-not-a-tracker", ("tune", "{tiny}", "--trials", "1", "--rpc", f"127.0.0.1:{port}:k",
                                               "--db", "t.jsonl"), "not a TVM RPC tracker|cannot reach", max_s=15.0)
        run_case(case, fx, tmp_path, capfd, monkeypatch)
    finally:
        server.close()


# ---------------------------------------------------------------------------------------------
# the Python API: plans, run() inputs, tuning records, observers

def _plan_file(tmp_path: Path, content: Any) -> Path:
    p = tmp_path / "plan.json"
    p.write_text(content if isinstance(content, str) else json.dumps(content))
    return p


W8 = {"w_bits": 8, "a_bits": 8}


@pytest.mark.parametrize("content, says", [
    pytest.param({"schema": 1, "layers": [W8]}, "'layers' must map layer names", id="plan-layers-a-list"),
    pytest.param({"schema": 1, "layers": {"conv": {"w_bits": "8", "a_bits": 8}}}, r"w_bits must be an integer.*'8'",
                 id="plan-bits-a-string"),
    pytest.param({"schema": 1, "layers": {"conv": {"w_bits": 5, "a_bits": 8}}}, r"w_bits must be 4, 8 or 32 \(fp32\), got 5",
                 id="plan-bits-5"),
    pytest.param({"schema": 1, "layers": {"conv": {"w_bits": 8, "a_bits": 32}}}, "fp32 weights need fp32",
                 id="plan-bits-mixed-fp32"),
    pytest.param({"schema": 1, "layers": {"conv": {"w_bits": 8, "a_bits": 8, "bf16": True}}}, "bf16 spec",
                 id="plan-bf16-with-bits"),
    pytest.param({"schema": 1, "layers": {"conv": {"w_bits": 8, "a_bits": 8, "mode": 1}}}, r"unknown QuantSpec field",
                 id="plan-unknown-field"),
    pytest.param({"schema": 1, "layers": {"conv": "w8a8"}}, "must be an object|must map", id="plan-spec-a-string"),
    pytest.param({"schema": 1, "layers": {"conv": {"w_bits": True, "a_bits": 8}}}, "w_bits must be an integer",
                 id="plan-bits-a-bool"),
    pytest.param({"schema": 1, "layers": {"conv": {"w_bits": 8, "a_bits": 8, "w_per_channel": "yes"}}},
                 "w_per_channel must be true or false", id="plan-flag-a-string"),
    pytest.param({"schema": 2, "layers": {}}, "not a tvmq plan", id="plan-wrong-schema"),
    pytest.param({"layers": {}}, "not a tvmq plan", id="plan-no-schema"),
    pytest.param([1, 2], "not a tvmq plan", id="plan-a-list"),
    pytest.param("{oops", "cannot read plan", id="plan-not-json"),
    pytest.param({"schema": 1, "layers": {"conv": W8, "conv9": W8}}, r"does not have: \['conv9'\]", id="plan-unknown-layer"),
    pytest.param({"schema": 1, "layers": {}}, r"misses layer\(s\): \['conv'\]", id="plan-missing-layer"),
])
def test_plan_file(content: Any, says: str, tmp_path: Path) -> None:
    from tvmq.frontend import prepare
    from tvmq.plan import PlanError, PrecisionPlan

    layers = prepare(tiny_model()).layers
    with pytest.raises(PlanError, match=says) as e:
        PrecisionPlan.load(_plan_file(tmp_path, content), layers)
    assert "\n" not in str(e.value)


def test_plan_missing_file(tmp_path: Path) -> None:
    """plan-: a plan path that does not exist."""
    from tvmq.plan import PlanError, PrecisionPlan

    with pytest.raises(PlanError, match="cannot read plan"):
        PrecisionPlan.load(tmp_path / "nope.json")


@pytest.fixture(scope="module")
def fm(fx: Fx):  # type: ignore[no-untyped-def]
    return tvmq.load(fx.paths["out"])


GOOD_IMG = np.zeros((1, 1, 28, 28), np.float32)


@pytest.mark.parametrize("feeds, says", [
    pytest.param({"input": np.zeros((1, 1, 32, 32), np.float32)}, r"shape \(1, 1, 32, 32\)", id="run-wrong-shape"),
    pytest.param({"input": GOOD_IMG.astype(np.float64)}, "dtype float64", id="run-wrong-dtype"),
    pytest.param({"image": GOOD_IMG}, r"missing \['input'\]", id="run-wrong-name"),
    pytest.param({"input": GOOD_IMG, "extra": GOOD_IMG}, r"unknown \['extra'\]", id="run-extra-input"),
    pytest.param({}, r"missing \['input'\]", id="run-no-input"),
    pytest.param([GOOD_IMG], "must be a dict", id="run-a-list"),
    pytest.param({"input": "image.png"}, "dtype <U9|dtype", id="run-a-string"),
    pytest.param({"input": None}, "dtype object|dtype", id="run-none"),
    pytest.param({"input": np.full((1, 1, 28, 28), np.nan, np.float32)}, r"NaN or inf .*check_inputs", id="numeric-all-nan"),
    pytest.param({"input": _with(GOOD_IMG, np.inf)}, "1 NaN or inf value", id="numeric-one-inf"),
    pytest.param({"input": _with(GOOD_IMG, -np.inf)}, "NaN or inf", id="numeric-minus-inf"),
])
def test_run_inputs(fm: Any, feeds: Any, says: str) -> None:
    from tvmq.errors import InputError

    with pytest.raises(InputError, match=says) as e:
        fm.run(feeds)
    assert "\n" not in str(e.value)


def test_run_nan_unchecked_runs(fm: Any) -> None:
    """numeric-: ``check_inputs=False`` lets NaN through to the kernels (what comes out is not
    specified: max-based ReLU and pooling drop NaN, unlike onnxruntime; the README says so)."""
    out = fm.run({"input": np.full((1, 1, 28, 28), np.nan, np.float32)}, check_inputs=False)["logits"]
    assert out.shape == (1, 10)


def test_run_good_input_still_answers(fm: Any) -> None:
    """numeric-: the checks refuse nothing valid (finite extremes included)."""
    x = GOOD_IMG.copy()
    x.flat[0] = np.finfo(np.float32).max
    assert fm.run({"input": GOOD_IMG})["logits"].shape == (1, 10)
    assert fm.run(x)["logits"].shape == (1, 10)


def test_benchmark_does_not_check_inputs(fm: Any) -> None:
    """numeric-: timing NaN feeds is allowed (no per-call check in ``benchmark``)."""
    r = fm.benchmark({"input": np.full((1, 1, 28, 28), np.nan, np.float32)}, warmup=0, repeat=2, threads=1)
    assert r.n == 2


@pytest.mark.parametrize("kwargs, says", [
    pytest.param({"repeat": 0}, "repeat must be >= 1", id="numeric-benchmark-repeat-0"),
    pytest.param({"warmup": -1}, "warmup >= 0, got repeat=50, warmup=-1", id="numeric-benchmark-warmup-neg"),
    pytest.param({"threads": -2}, "threads must be >= 1", id="numeric-benchmark-threads-neg"),
])
def test_benchmark_arguments(fm: Any, kwargs: dict[str, int], says: str) -> None:
    from tvmq.errors import TvmqError

    with pytest.raises(TvmqError, match=says):
        fm.benchmark(**kwargs)


@pytest.mark.parametrize("line, why", [
    pytest.param("{not json", "Expecting", id="db-not-json"),
    pytest.param("[1, 2]", "not a tvmq tuning record", id="db-a-list"),
    pytest.param(record_line(schema=2), "schema 2", id="db-other-schema"),
    pytest.param(record_line(latency={"median_us": -3}), "bad latency", id="db-negative-latency"),
    pytest.param(record_line(latency={"median_us": "fast"}), "latency|could not convert", id="db-text-latency"),
    pytest.param(record_line(device={"cpu": "x"}), "device id", id="db-no-device-id"),
    pytest.param(record_line(workload={"op": "conv2d", "n": 1}), "workload", id="db-foreign-workload"),
    pytest.param(record_line(workload={k: v for k, v in _WORKLOAD.items() if k != "epilogue"}),
                 "epilogue", id="db-workload-without-epilogue"),
    pytest.param(record_line(config=[1]), "config", id="db-config-a-list"),
    pytest.param(record_line(task=None), "not a tvmq tuning record", id="db-missing-field"),
    pytest.param(record_line(error=7), "error", id="db-error-not-text"),
])
def test_database_skips_bad_records_with_one_warning(line: str, why: str, tmp_path: Path) -> None:
    from tvmq.tune import TuningDatabase

    p = tmp_path / "t.jsonl"
    p.write_text(record_line() + line.rstrip("\n") + "\n" + record_line(task="1" * 16))
    with pytest.warns(UserWarning) as w:
        db = TuningDatabase(p)
    assert len(w) == 1 and "skipped 1 corrupt or foreign line(s) (line 2" in str(w[0].message)
    assert re.search(why, db.skipped[0][1]), db.skipped
    assert [r.task for r in db] == ["0" * 16, "1" * 16]


def test_failed_measurements_are_retried_up_to_a_limit(tmp_path: Path) -> None:
    """tune-: a failed measurement is recorded as failed, not as a done trial: the next run
    measures it again, until it has failed ``MAX_ATTEMPTS`` times (the RPC case of the issue:
    ``--trials 1`` twice skipped the task forever)."""
    from schedules.target_features import detect_host
    from tvmq.frontend import prepare
    from tvmq.tune import ScriptedMeasurer, TuningDatabase, extract_tasks, tune
    from tvmq.tune.tuner import MAX_ATTEMPTS

    features = detect_host()
    tasks = [t for t in extract_tasks(prepare(tiny_model()), ["fp32"], features) if t.kind == "kernel"][:1]
    db = TuningDatabase(tmp_path / "t.jsonl")
    failing = ScriptedMeasurer(lambda task, cfg: None)
    statuses = []
    for _ in range(MAX_ATTEMPTS + 1):
        s = tune(tasks, db, failing, features, trials=1, progress=False)
        statuses.append((s.results[0].status, s.results[0].measured))
    assert statuses == [("failed", 1)] * MAX_ATTEMPTS + [("failed", 0)]
    assert all(not r.ok and r.error == "scripted failure" for r in db)
    ok = ScriptedMeasurer(lambda task, cfg: 5.0)  # a device that works now: measured, counted once
    db2 = TuningDatabase(tmp_path / "t2.jsonl")
    tune(tasks, db2, failing, features, trials=1, progress=False)
    s = tune(tasks, db2, ok, features, trials=1, progress=False)
    assert (s.results[0].status, s.results[0].measured, s.results[0].best_us) == ("tuned", 1, 5.0)
    s = tune(tasks, db2, ok, features, trials=1, progress=False)
    assert (s.results[0].status, s.results[0].measured) == ("cached", 0)


@pytest.mark.parametrize("values, says", [
    pytest.param(np.zeros((2, 4)), "constant", id="numeric-observer-constant"),
    pytest.param(np.full((2, 4), 3e12), "constant|huge", id="numeric-observer-huge-constant"),
    pytest.param(np.linspace(-2e9, 2e9, 8).reshape(2, 4), "huge", id="numeric-observer-huge"),
])
def test_degenerate_ranges_warn(values: np.ndarray, says: str) -> None:
    from tvmq.calibration import ActivationStats
    from tvmq.calibration.observers import Observer

    obs = Observer(capacity=64)
    obs.update(values.astype(np.float32))
    stats = ActivationStats({"conv": {"in": obs.stats(), "out": obs.stats()}}, 1)
    with pytest.warns(UserWarning, match=says) as w:
        stats.check_ranges()
    assert len(w) == 1


def test_normal_ranges_do_not_warn() -> None:
    """numeric-: the check is quiet on ordinary statistics."""
    import warnings

    from tvmq.calibration import ActivationStats
    from tvmq.calibration.observers import Observer

    obs = Observer(capacity=64)
    obs.update(np.linspace(-3, 5, 16, dtype=np.float32).reshape(2, 8))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ActivationStats({"conv": {"in": obs.stats(), "out": obs.stats()}}, 1).check_ranges()


def test_observer_refuses_non_finite() -> None:
    """numeric-: a NaN activation is an error, not a range."""
    from tvmq.calibration.observers import Observer

    with pytest.raises(FloatingPointError):
        Observer().update(np.array([[1.0, np.nan]], np.float32))


# ---------------------------------------------------------------------------------------------
# the one error path

def test_unexpected_error_is_one_line_and_a_log(tmp_path: Path, capfd: Any, monkeypatch: Any) -> None:
    """errorpath-: a bug (any exception that is not a TvmqError) prints one line naming the
    command and the log file that holds the traceback, and exits 1."""
    def boom(args: Any) -> int:
        raise KeyError("epilogue")

    monkeypatch.setattr(cli, "cmd_info", boom)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    code = cli.main(["info", "x.onnx"])
    err = capfd.readouterr().err
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1, err
    m = re.fullmatch(r"tvmq: error: info: unexpected KeyError: 'epilogue'; the traceback is in (\S+) .*", lines[0])
    assert m, lines[0]
    log = Path(m.group(1))
    assert log.parent == tmp_path and "Traceback" in log.read_text() and "KeyError" in log.read_text()


def test_interrupt_exits_130(capfd: Any, monkeypatch: Any) -> None:
    """errorpath-: Ctrl-C is one line and status 130."""
    def interrupted(args: Any) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_info", interrupted)
    assert cli.main(["info", "x.onnx"]) == 130
    assert capfd.readouterr().err.strip() == "tvmq: interrupted"


def test_multiline_error_message_is_one_line(capfd: Any, monkeypatch: Any) -> None:
    """errorpath-: a TvmqError whose text has line breaks still prints one line."""
    from tvmq.errors import TvmqError

    def fails(args: Any) -> int:
        raise TvmqError("first\nsecond\n")

    monkeypatch.setattr(cli, "cmd_info", fails)
    assert cli.main(["info", "x.onnx"]) == 2
    assert capfd.readouterr().err == "tvmq: error: first; second\n"


NATIVE_WARNING = """
import atexit, os, sys
from tvmq import cli
# what TVM's C++ destructors do at exit after a failure inside its importer
atexit.register(lambda: os.write(2, b"Warning: BlockBuilder destroyed with remaining blocks!\\n"))
sys.argv = ["tvmq", *sys.argv[1:]]
sys.exit(cli.main())
"""


@pytest.mark.parametrize("argv, code", [(["info", "nope.onnx"], 2), (["--help"], 0)])
def test_no_native_warning_after_the_error_line(argv: list[str], code: int, tmp_path: Path) -> None:
    """errorpath-: TVM printed ``Warning: BlockBuilder destroyed with remaining blocks!`` after
    the error line (its destructors, at exit); the command line's error path sends the native
    stderr to /dev/null once its line is out. A command that succeeds keeps stderr as it is
    (the control: the simulated destructor message is seen there)."""
    p = subprocess.run([sys.executable, "-c", NATIVE_WARNING, *argv], capture_output=True, text=True,
                       cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert p.returncode == code, p.stderr
    if code:
        assert p.stderr == "tvmq: error: ONNX file not found: nope.onnx\n"
    else:
        assert "BlockBuilder destroyed" in p.stderr


def test_grouped_conv_with_wrong_channels_is_refused_before_tvm(tmp_path: Path, capfd: Any, monkeypatch: Any) -> None:
    """onnx-: 3 input channels in 2 groups reached TVM's importer (and its destructor warning)."""
    m = tiny_model()
    m.graph.node[0].attribute.append(helper.make_attribute("group", 2))
    save(m, tmp_path / "m.onnx")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["compile", "m.onnx", "-o", "o"]) == 2
    err = capfd.readouterr().err
    lines = [l for l in err.strip().splitlines() if not l.startswith("[")]  # progress lines aside
    assert len(lines) == 1 and lines[0].startswith("tvmq: error: ") and "channels" in lines[0], err
    assert not (tmp_path / "o").exists()
