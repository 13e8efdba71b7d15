"""tvmq: per-layer mixed-precision compilation of ONNX CNNs on Apache TVM."""

__version__ = "0.1.0"

from .build import BuildResult, build  # noqa: E402
from .errors import TvmqError  # noqa: E402
from .runtime import Module, load  # noqa: E402

__all__ = ["BuildResult", "Module", "TvmqError", "build", "load", "__version__"]
