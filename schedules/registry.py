"""The kernel registry: ``KernelKey(op, precision, isa) -> KernelDef``.

Kernels declare themselves: each module of ``KERNEL_MODULES`` exports ``kernels()`` (its
``KernelDef``s, ``schedules.kernel``) and ``CONFIG_TYPES`` (its configuration dataclasses with
their tuning spaces, ``schedules.space.ConfigType``). Loading this module registers them all,
then their derived twins (``schedules.derived``: W4A8, portable bf16, W8A16). ``select`` picks
the best kernel the target's features allow, walking down the ISA levels to the portable one;
a miss names the keys that exist.
"""

from __future__ import annotations

import importlib

from . import derived, space
from .kernel import KernelDef, KernelKey
from .target_features import ISA_LEVELS, TargetFeatures
from .workload import Conv2dWorkload, DenseWorkload, Workload

__all__ = ["KERNEL_MODULES", "OPS", "KernelDef", "KernelKey", "KernelNotFound", "get", "op_of", "register",
           "registered_keys", "select"]

OPS = ("conv2d", "depthwise_conv2d", "dense")

# The kernel modules (under ``schedules``), loaded in this order. The order in which their
# configuration types first appear is the order of the latency predictor's configuration
# one-hot and knob features (``tvmq.tune.predictor``): append new modules at the end.
KERNEL_MODULES = (
    "conv2d.fp32", "conv2d.int8_dispatch", "conv2d.bf16_dot", "dense.bf16_dot", "depthwise.fp32",
    "dense.fp32", "conv2d.int8_portable", "depthwise.int8", "dense.int8", "depthwise.int8_vnni",
    "depthwise.int8_avx2", "dense.int8_dot",
)


class KernelNotFound(LookupError):
    pass


_REGISTRY: dict[KernelKey, KernelDef] = {}


def register(kernel: KernelDef) -> KernelDef:
    if kernel.key in _REGISTRY:
        raise ValueError(f"kernel {kernel.key} registered twice")
    _REGISTRY[kernel.key] = kernel
    return kernel


def registered_keys() -> list[KernelKey]:
    return sorted(_REGISTRY, key=str)


def get(key: KernelKey) -> KernelDef:
    try:
        return _REGISTRY[key]
    except KeyError:
        known = ", ".join(str(k) for k in registered_keys())
        raise KernelNotFound(f"no kernel {key}; registered: {known}") from None


def op_of(workload: Workload) -> str:
    if isinstance(workload, DenseWorkload):
        return "dense"
    if isinstance(workload, Conv2dWorkload):
        return "depthwise_conv2d" if workload.is_depthwise else "conv2d"
    raise TypeError(f"not a workload: {workload!r}")


def select(op: str, precision: str, features: TargetFeatures) -> KernelDef:
    """The best registered kernel for ``op``/``precision`` that ``features`` can run."""
    start = ISA_LEVELS.index(features.isa)
    for isa in ISA_LEVELS[start:]:
        kernel = _REGISTRY.get(KernelKey(op, precision, isa))
        if kernel is not None and (kernel.requires is None or kernel.requires(features)):
            return kernel
    known = ", ".join(str(k) for k in registered_keys())
    raise KernelNotFound(f"no {op}/{precision} kernel runs on a {features.isa} target; "
                         f"registered: {known}")


def select_for(wl: Workload, precision: str, features: TargetFeatures) -> KernelDef:
    """The kernel a model build compiles layer ``wl`` with: ``select``'s, or where that kernel
    does not prefer ``wl`` (``KernelDef.prefers``), the next ISA level's, and so on."""
    kernel = select(op_of(wl), precision, features)
    while kernel.prefers is not None and not kernel.prefers(wl):
        below = ISA_LEVELS.index(kernel.key.isa) + 1
        kernel = select(op_of(wl), precision, features.with_isa(ISA_LEVELS[below]))
    return kernel


def _load() -> None:
    """Register every kernel module's configuration types and kernels, then the derived twins."""
    base = []
    for name in KERNEL_MODULES:
        module = importlib.import_module(f"{__package__}.{name}")
        for ct in module.CONFIG_TYPES:
            space.register_config_type(ct)
        base += [register(k) for k in module.kernels()]
    for k in derived.derive(base):
        register(k)


_load()
