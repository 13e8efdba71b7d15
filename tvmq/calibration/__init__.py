"""Calibration: unlabeled inputs -> per-tensor activation statistics (one pass, compiled model).

    data = CalibrationData.from_source("calib.npz", inputs=pm.inputs)
    stats = collect("model.onnx", data)           # runs the compiled fp32 model with taps
    stats.save("calibration.json")
    lo, hi = stats.get("conv1", "in").range("percentile")
"""

from .collect import ActivationStats, collect
from .data import CalibrationData
from .observers import Observer, TensorStats

__all__ = ["ActivationStats", "CalibrationData", "Observer", "TensorStats", "collect"]
