"""tvmq's version (its own module: the manifest and the tuning database record it)."""

__version__ = "0.1.0"
