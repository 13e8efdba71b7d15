"""The command line end to end on the bundled model: compile, bench --compare, info."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from .conftest import FMNIST_DIR, ROOT, fmnist_inputs


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tvmq", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=600)


def test_compile_then_run_in_a_fresh_process(tmp_path: Path) -> None:
    out = tmp_path / "out"
    r = _cli("compile", str(FMNIST_DIR / "model.onnx"), "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert "compiled 7 layers" in r.stdout
    assert "[" in r.stderr  # progress lines
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["inputs"] == [{"name": "input", "shape": [1, 1, 28, 28], "dtype": "float32"}]
    assert manifest["outputs"][0]["name"] == "logits"
    # a fresh interpreter that never sees the ONNX file
    x, _ = fmnist_inputs(1)
    np.save(tmp_path / "x.npy", x)
    code = ("import numpy as np, tvmq, sys; m = tvmq.load(sys.argv[1]); "
            "y = m.run({'input': np.load(sys.argv[2])})['logits']; print(y.shape, int(y.argmax()))")
    p = subprocess.run([sys.executable, "-c", code, str(out / "model.so"), str(tmp_path / "x.npy")],
                       capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("(1, 10)")


def test_bench_compare_reports_both_runtimes(fmnist_compiled: Path) -> None:
    r = _cli("bench", str(fmnist_compiled), "--threads", "1", "--repeat", "5", "--warmup", "1",
             "--compare", str(FMNIST_DIR / "model.onnx"), "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert set(data) == {"tvmq", "onnxruntime"}
    for row in data.values():
        assert row["n"] == 5 and row["threads"] == 1 and 0 < row["median_ms"] < 1000


def test_bench_profile_times_every_kernel_with_its_layers(fmnist_compiled: Path) -> None:
    """``bench --profile``: every kernel function of the manifest is timed inside the runs, once
    per layer it computes, and named with those layers; text and JSON; no ``--compare``."""
    r = _cli("bench", str(fmnist_compiled), "--threads", "1", "--repeat", "3", "--warmup", "1",
             "--profile", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["runs"] == 3 and data["threads"] == 1 and data["total_ms"] > 0
    rows = {row["function"]: row for row in data["functions"]}
    kernels = json.loads((fmnist_compiled / "manifest.json").read_text())["kernels"]
    for layer, k in kernels.items():
        row = rows[k["function"]]
        assert layer in row["layers"]
        assert row["calls"] == len(row["layers"]) and row["ms"] > 0
    assert [row["ms"] for row in data["functions"]] == sorted((row["ms"] for row in data["functions"]),
                                                              reverse=True)
    text = _cli("bench", str(fmnist_compiled), "--threads", "1", "--repeat", "2", "--profile", "--top", "2")
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0].split() == ["ms/run", "share", "calls", "function", "(layers)"]
    assert len(lines) == 1 + 2 + 2 and "ms per run, median of 2, 1 thread(s)" in lines[-1]
    both = _cli("bench", str(fmnist_compiled), "--profile", "--compare", str(FMNIST_DIR / "model.onnx"))
    assert both.returncode == 2 and "does not take --compare" in both.stderr


def test_info_lists_layers() -> None:
    r = _cli("info", str(FMNIST_DIR / "model.onnx"))
    assert r.returncode == 0, r.stderr
    assert "7 layers" in r.stdout and "depthwise_conv2d" in r.stdout


def test_calibrate_writes_statistics(tmp_path: Path) -> None:
    x, _ = fmnist_inputs(6, split="calib")
    np.save(tmp_path / "calib.npy", x)
    out = tmp_path / "calibration.json"
    r = _cli("calibrate", str(FMNIST_DIR / "model.onnx"), "--data", str(tmp_path / "calib.npy"),
             "-o", str(out))
    assert r.returncode == 0, r.stderr
    data = json.loads(out.read_text())
    assert data["samples"] == 6 and len(data["layers"]) == 7
    bad = x.copy()
    bad[0, 0, 0, 0] = np.nan
    np.save(tmp_path / "bad.npy", bad)
    r = _cli("calibrate", str(FMNIST_DIR / "model.onnx"), "--data", str(tmp_path / "bad.npy"))
    assert r.returncode == 2 and "NaN" in r.stderr and "Traceback" not in r.stderr


def test_compile_w8a8_from_the_command_line(tmp_path: Path) -> None:
    x, _ = fmnist_inputs(32, split="calib")
    np.savez(tmp_path / "calib.npz", input=x)
    out = tmp_path / "q"
    r = _cli("compile", str(FMNIST_DIR / "model.onnx"), "--bits", "w8a8", "--calibration",
             str(tmp_path / "calib.npz"), "--range", "percentile", "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert "in w8a8" in r.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["range_method"] == "percentile" and manifest["precision"] == ["w8a8"]
    # narrow (pair-fitted) conv weights by default where the target's W8A8 convs run on AVX2
    assert manifest["recipe"]["narrow_weights"] == (manifest["isa"] == "avx2")
    assert ("fitted to vpmaddubsw's pairs" in r.stderr) == (manifest["isa"] == "avx2")  # said in one line
    if manifest["isa"] == "avx2":  # every ungrouped conv then takes vpmaddubsw
        convs = [k for k in manifest["kernels"].values() if k["kernel"] == "conv2d/w8a8/avx2"]
        assert convs and all(k.get("narrow_weights") for k in convs)
    r = _cli("compile", str(FMNIST_DIR / "model.onnx"), "--bits", "w8a8", "--calibration",
             str(tmp_path / "calib.npz"), "--isa", "avx2", "--exact-weights", "-o", str(tmp_path / "exact"))
    assert r.returncode == 0, r.stderr
    exact = json.loads((tmp_path / "exact" / "manifest.json").read_text())
    assert exact["isa"] == "avx2" and not exact["recipe"]["narrow_weights"]
    r = _cli("compile", str(FMNIST_DIR / "model.onnx"), "--bits", "w8a8", "--narrow-weights", "--exact-weights",
             "-o", str(out))
    assert r.returncode == 2 and "not allowed with argument" in r.stderr
    r = _cli("compile", str(FMNIST_DIR / "model.onnx"), "--bits", "w8a8", "-o", str(out))
    assert r.returncode == 2 and "needs --calibration" in r.stderr
    r = _cli("compile", str(FMNIST_DIR / "model.onnx"), "--bits", "w3a8", "-o", str(out))
    assert r.returncode == 2 and "w_bits must be 4, 8 or 32" in r.stderr


@pytest.mark.parametrize("bits, calibrated", [("w4a8", True), ("w8a16", True), ("bf16", False)])
def test_compile_other_precisions_from_the_command_line(tmp_path: Path, bits: str, calibrated: bool) -> None:
    x, _ = fmnist_inputs(16, split="calib")
    np.savez(tmp_path / "calib.npz", input=x)
    extra = ["--calibration", str(tmp_path / "calib.npz")] if calibrated else []
    out = tmp_path / bits
    r = _cli("compile", str(FMNIST_DIR / "model.onnx"), "--bits", bits, *extra, "-o", str(out))
    assert r.returncode == 0, r.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["precision"] == [bits]
    assert all(bits in k["kernel"] for k in manifest["kernels"].values())
    ratio = {"w4a8": 1 / 8, "w8a16": 1 / 4, "bf16": 1 / 2}[bits]  # of the fp32 bytes, channel padding aside
    assert ratio <= manifest["weight_bytes"] / manifest["weight_bytes_fp32"] <= 1.6 * ratio


def test_compile_no_resume_flag() -> None:
    from tvmq.cli import build_parser

    args = ["compile", "m.onnx", "-o", "out", "--size-budget", "0.7x"]
    assert build_parser().parse_args(args).resume is True
    assert build_parser().parse_args([*args, "--no-resume"]).resume is False
