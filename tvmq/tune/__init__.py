"""Auto-tuning: every (layer workload, spec) of a model, measured on the target, into an
append-only JSONL database; the latency table the allocator reads.

    >>> from tvmq.tune import tune_model                       # doctest: +SKIP
    >>> summary = tune_model("model.onnx", ["w8a8", "fp32"], db="tuning.jsonl", trials=16)  # doctest: +SKIP
"""

from schedules.target_features import detect_host

from ..frontend import prepare
from .database import DatabaseError, TuningDatabase, TuningRecord, device_fingerprint
from .latency import LatencyTable, conversion_for
from .measure import Measurer, MeasureResult, RunnerMeasurer, ScriptedMeasurer
from .predictor import LatencyPredictor
from .tasks import TuneTask, extract_tasks
from .tuner import Progress, TunedConfigs, TuneSummary, tune

__all__ = ["DatabaseError", "LatencyPredictor", "LatencyTable", "MeasureResult", "Measurer", "Progress",
           "RunnerMeasurer", "ScriptedMeasurer", "TuneSummary", "TuneTask", "TunedConfigs",
           "TuningDatabase", "TuningRecord", "conversion_for", "device_fingerprint", "extract_tasks",
           "tune", "tune_model"]


def tune_model(model, specs, *, db, trials: int = 16, features=None, threads: int = 1,  # type: ignore[no-untyped-def]
               rpc=None, seed: int = 0, progress: bool = True, input_shapes=None, batch_size: int = 1,
               measurer: Measurer | None = None, narrow_weights: bool = False) -> TuneSummary:
    """Extract the tasks of ``model`` for ``specs`` and tune them into ``db`` (a path or a
    ``TuningDatabase``); ``rpc``: ``(tracker_host, port, key)``; ``narrow_weights``: the tasks
    of builds with the recipe's narrow weights (``extract_tasks``)."""
    features = features or detect_host()
    pm = prepare(model, input_shapes=input_shapes, batch_size=batch_size)
    tasks = extract_tasks(pm, list(specs), features, narrow_weights=narrow_weights)
    database = db if isinstance(db, TuningDatabase) else TuningDatabase(db)
    own = measurer is None
    measurer = measurer or RunnerMeasurer(features, threads=threads, rpc=rpc)
    try:
        return tune(tasks, database, measurer, features, trials=trials, seed=seed, progress=progress)
    finally:
        if own:
            measurer.close()
