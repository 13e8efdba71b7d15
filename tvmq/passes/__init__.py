"""tvmq's Relax passes, each a ``tvm.transform`` module pass (``compiler.lowering_passes``
puts them in one ``Sequential`` with TVM's own):

1. ``LowerToKernels`` (fp32) or ``RealizeIntegers`` (a precision plan): every layer becomes a
   call of a ``schedules`` kernel; what they decide goes into a ``records.Lowering``;
2. TVM's CPU legalization (``legalize_passes``: ops -> TIR, constant folding, fusion);
3. ``ScheduleGeneric``: a CPU schedule for every PrimFunc no kernel owns.

Errors a user can cause are ``TvmqError``s; raised inside a pass they cross TVM's FFI, which
turns unknown exception types into ``RuntimeError``: registered (``register_errors``, which
the compiler calls before it runs them), they come back as themselves.
"""

import tvm_ffi

from .. import errors

_registered: set[type] = set()


def register_errors(cls: type = errors.TvmqError) -> None:
    """``cls`` and every subclass defined so far cross TVM's FFI as themselves."""
    if cls not in _registered:
        tvm_ffi.register_error(cls)
        _registered.add(cls)
    for sub in cls.__subclasses__():
        register_errors(sub)
