"""The tutorials run as they are documented (on the bundled model)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from .conftest import ROOT


def _run(script: str, *args: str) -> str:
    r = subprocess.run([sys.executable, str(ROOT / "tutorials" / script), *args], cwd=ROOT,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


def test_t1_compile(tmp_path: Path) -> None:
    out = _run("t1_compile.py", str(tmp_path))
    assert "fp32: class" in out and "w8a8" in out
    assert (tmp_path / "w8a8" / "model.so").exists()


def test_t2_tune_then_t3_allocate_on_its_database(tmp_path: Path) -> None:
    out = _run("t2_tune.py", str(tmp_path))
    assert "second run: 0 new measurements" in out and "'tuned'" in out
    out = _run("t3_allocate.py", str(tmp_path / "mixed"), str(tmp_path / "tuning.jsonl"))
    assert "allocation optimal" in out and "output SQNR alone" in out
    assert (tmp_path / "mixed" / "report.html").exists()


def test_t4_benchmark(tmp_path: Path) -> None:
    out = _run("t4_benchmark.py", str(tmp_path))
    assert "predictions:" in out and "2 thread(s): median" in out
