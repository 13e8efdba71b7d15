"""Shared fixtures (the bundled Fashion-MNIST CNN compiled once per session), and what a reader
of a CI log needs to know: at the start, the CPU and the ISA levels the kernels will run at; at
the end, the skips grouped by reason (each reason names the command or CPU that runs them)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
FMNIST_DIR = ROOT / "models" / "fmnist_cnn"
MOBILENETV2 = ROOT / ".cache" / "models" / "mobilenetv2.onnx"

os.environ.setdefault("TVM_NUM_THREADS", str(os.cpu_count() or 1))


def pytest_sessionstart(session: pytest.Session) -> None:
    """Every test process (xdist workers too): the AMX tile state, which Linux grants a process
    only on request, before any kernel runs a tile instruction (as ``tvmq.load`` does for a user);
    then the CPU and the levels the kernels run at, at the top of the log."""
    from tvmq.runtime import request_amx_permission

    from .isa import HOST, describe_host

    if HOST.amx_int8 and not request_amx_permission():
        pytest.exit("this CPU has AMX but Linux refused the tile state (arch_prctl XTILEDATA)", 1)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(describe_host())


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:  # type: ignore[no-untyped-def]
    """Skips grouped by reason, with the tests each reason holds back."""
    groups: dict[str, list[str]] = {}
    for rep in terminalreporter.stats.get("skipped", []):
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        reason = reason.removeprefix("Skipped: ")
        test = rep.nodeid.split("::", 1)[-1].split("[", 1)[0]
        groups.setdefault(reason, []).append(test)
    if not groups:
        return
    terminalreporter.section("skips by reason")
    for reason, tests in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        names = sorted(set(tests))
        shown = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
        terminalreporter.write_line(f"{len(tests):3d} skipped: {reason}")
        terminalreporter.write_line(f"      ({shown})")


def light_model(name: str) -> Path:
    import onnx

    return Path(onnx.__file__).parent / "backend" / "test" / "data" / "light" / f"light_{name}.onnx"


def fmnist_inputs(n: int | None = None, split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    d = np.load(FMNIST_DIR / "data.npz")
    x, y = d[f"{split}_x"], d[f"{split}_y"]
    if n is not None:
        x, y = x[:n], y[:n]
    x = ((x.astype(np.float32) / 255.0 - 0.2860) / 0.3530).reshape(-1, 1, 28, 28)
    return x, y.astype(np.int64)


def ort_session(path: str | Path, threads: int = 1):  # type: ignore[no-untyped-def]
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="session")
def fmnist_compiled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import tvmq

    out = tmp_path_factory.mktemp("fmnist")
    tvmq.build(FMNIST_DIR / "model.onnx", out)
    return out
