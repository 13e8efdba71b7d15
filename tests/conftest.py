"""Shared fixtures: the bundled Fashion-MNIST CNN compiled once per session."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
FMNIST_DIR = ROOT / "models" / "fmnist_cnn"
MOBILENETV2 = ROOT / ".cache" / "models" / "mobilenetv2.onnx"

os.environ.setdefault("TVM_NUM_THREADS", str(os.cpu_count() or 1))


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
