"""tvmq's exceptions: every failure a user can cause is a ``TvmqError`` with a one-line message."""


class TvmqError(Exception):
    """Base class: the message is meant to be printed as is, on one line."""


class ModelLoadError(TvmqError):
    """The ONNX file is missing, unreadable, truncated or invalid."""


class UnsupportedModelError(TvmqError):
    """The model uses operators (or attributes) tvmq does not compile."""


class InputError(TvmqError):
    """Run-time inputs do not match the compiled model (names, shapes, dtypes, values)."""


class ArtifactError(TvmqError):
    """A compiled artifact (model.so, manifest.json) is missing, unreadable or inconsistent."""
