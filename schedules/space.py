"""The generic machinery of the tuning spaces: which configurations the tuner may try.

A kernel's configuration (``Conv2dConfig``, ``PointwiseDotConfig``, ...) is the whole set of its
knobs: block sizes that change the packed weight layout as well as the register tiles the
schedule uses. Each kernel module declares its configuration types as ``ConfigType`` records
(the dataclass, the function that lists its candidates, whether it runs a tensor intrinsic),
and the kernel registry (``schedules.registry``) registers them here as it loads the kernels
(import it before using the functions below).
``config_space(start, workload, features)`` lists the candidates around a starting
configuration (the kernel's fallback), first the fallback itself, then the candidates of the
start's type in the fixed order its kernel module gives (the tuner's seed decides what it
samples, not this list). Where two templates implement the same op (a 1x1 conv: the pointwise
GEMM or the NCHWc direct conv), the kernel module offers both templates' candidates: the
template is a knob too.

Configurations serialise to JSON (``config_to_json`` / ``config_from_json``) with their type
name, which is how the tuning database stores them. The registration order of the types is the
order of the latency predictor's one-hot and knob features (``config_type_names``,
``knob_names``).
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from typing import Any, Callable

from .packing import UNPACK_POSITIONS, W4A8Config
from .target_features import TargetFeatures
from .workload import Workload


@dataclass(frozen=True)
class ConfigType:
    """A kernel configuration dataclass as the tuner sees it.

    ``candidates(start, workload, features)`` lists the valid configurations of the kernel that
    ``start`` configures, in a fixed order (``config_space`` puts ``start`` first). ``tensorized``:
    the kernel runs a dot-product tensor intrinsic (its W4A8 twin then unpacks once per call:
    TVM's ``compute_at`` cannot move a producer into a loop that holds a tensorized block)."""

    cls: type
    candidates: Callable[[Any, Workload, TargetFeatures], list[Any]]
    tensorized: bool = False

    @property
    def name(self) -> str:
        return self.cls.__name__

    @property
    def knobs(self) -> tuple[str, ...]:
        """The numeric fields (int, bool), the knobs the latency predictor reads."""
        return tuple(f.name for f in dataclasses.fields(self.cls) if f.type in ("int", "bool", int, bool))


_CONFIG_TYPES: dict[str, ConfigType] = {}


def register_config_type(ct: ConfigType) -> None:
    """Make ``ct`` known to the tuner, the tuning database and the latency predictor (done by
    ``schedules.registry`` for every kernel module it loads; a type shared by two kernel modules
    is registered by the first)."""
    known = _CONFIG_TYPES.get(ct.name)
    if known is not None and known != ct:
        raise ValueError(f"configuration type {ct.name} registered twice, differently")
    _CONFIG_TYPES.setdefault(ct.name, ct)


def _types() -> dict[str, ConfigType]:
    if not _CONFIG_TYPES:
        raise RuntimeError("no kernel configuration types registered: import schedules.registry first "
                           "(it loads the kernels, which declare them)")
    return _CONFIG_TYPES


def config_types() -> list[ConfigType]:
    """Every registered configuration type, in registration order."""
    return list(_types().values())


def config_type_names() -> tuple[str, ...]:
    return tuple(_types())


def knob_names() -> tuple[str, ...]:
    """The knobs of every configuration type, each once, in registration order."""
    return tuple(dict.fromkeys(k for ct in config_types() for k in ct.knobs))


def _type_of(cfg: Any) -> ConfigType:
    ct = _types().get(type(cfg).__name__)
    if ct is None or ct.cls is not type(cfg):
        raise TypeError(f"not a kernel configuration: {cfg!r}")
    return ct


def tensorized(cfg: Any) -> bool:
    """Whether the kernel of ``cfg`` runs a dot-product tensor intrinsic (``ConfigType``)."""
    ct = _types().get(type(cfg).__name__)
    return ct is not None and ct.cls is type(cfg) and ct.tensorized


def config_to_json(cfg: Any) -> dict[str, Any]:
    if isinstance(cfg, W4A8Config):  # the base kernel's configuration, nested
        return {"type": "W4A8Config", "unpack": cfg.unpack, "base": config_to_json(cfg.base)}
    return {"type": _type_of(cfg).name, **dataclasses.asdict(cfg)}


def config_from_json(d: dict[str, Any]) -> Any:
    """Inverse of ``config_to_json``; ``ValueError`` on an unknown type or bad fields."""
    d = dict(d)
    name = d.pop("type", None)
    if name == "W4A8Config":
        if not isinstance(d.get("base"), dict):
            raise ValueError(f"bad W4A8Config fields {d}: no base configuration")
        return W4A8Config(config_from_json(d["base"]), d.get("unpack", "call"))
    types = _types()
    if name not in types:
        raise ValueError(f"unknown configuration type {name!r}; known: {', '.join(types)}")
    try:
        return types[name].cls(**d)
    except TypeError as e:
        raise ValueError(f"bad {name} fields {d}: {e}") from None


def grid(make, **choices) -> list[Any]:  # type: ignore[no-untyped-def]
    """Every combination of ``choices`` that ``make`` accepts (it raises ValueError otherwise),
    each choice's values sorted, the first choice varying slowest."""
    out = []
    names = list(choices)
    for values in itertools.product(*(sorted(set(choices[n])) for n in names)):
        try:
            out.append(make(**dict(zip(names, values))))
        except ValueError:
            continue
    return out


def config_space(start: Any, wl: Workload, features: TargetFeatures) -> list[Any]:
    """The candidate configurations of the kernel whose fallback configuration is ``start``,
    ``start`` first (every candidate is a valid configuration of the same kernel; the
    instruction a dot-product config names is kept). A W4A8 kernel's space is its base
    kernel's times the unpack positions."""
    if isinstance(start, W4A8Config):
        space = [W4A8Config(c, u) for c in config_space(start.base, wl, features) for u in UNPACK_POSITIONS
                 if u == "call" or not tensorized(c)]
    else:
        ct = _types().get(type(start).__name__)
        if ct is None or ct.cls is not type(start):
            raise TypeError(f"no tuning space for configuration {start!r}")
        space = ct.candidates(start, wl, features)
    return [start] + [c for c in space if c != start]
