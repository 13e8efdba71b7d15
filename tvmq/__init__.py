"""tvmq: per-layer mixed-precision compilation of ONNX CNNs on Apache TVM.

``tvmq.load`` needs TVM's runtime only; ``tvmq.build`` (the compiler, ``tvmq.builder``) is
imported on first use, so a deployment that only loads and runs libraries never imports TVM's
compiler.
"""

from typing import Any

from .errors import TvmqError
from .runtime import Module, load
from .version import __version__

__all__ = ["BuildResult", "Module", "TvmqError", "build", "load", "__version__"]


def __getattr__(name: str) -> Any:
    if name in ("build", "BuildResult"):
        from . import builder  # (deferred: the compiler imports TVM's Relax and TIR)

        return getattr(builder, name)
    raise AttributeError(f"module 'tvmq' has no attribute {name!r}")
