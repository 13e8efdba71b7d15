"""``QuantSpec`` (what one layer runs in) and ``PrecisionPlan`` (layer name -> spec, exhaustive).

A plan is resolved early and validated against the model's ``LayerTable``: every layer has
exactly one spec, no unknown names. User shortcuts ("w8a8 everywhere, the first and last layer
fp32") are inputs of ``PrecisionPlan.uniform``; code downstream never re-applies precedence rules.
The JSON form is versioned.

    >>> plan = PrecisionPlan.uniform(layers, "w8a8", keep_fp32=["first", "last"])   # doctest: +SKIP
    >>> plan["conv1"]                                                               # doctest: +SKIP
    QuantSpec(w_bits=32, a_bits=32, ...)
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from .errors import TvmqError
from .frontend import LayerTable

PLAN_SCHEMA = 1


class PlanError(TvmqError):
    """A plan that does not fit the model, or a malformed spec / plan file."""


@dataclass(frozen=True)
class QuantSpec:
    """The precision of one layer.

    ``w_bits`` in {4, 8, 32}: weights symmetric, per output channel (32 = fp32, no
    quantization). ``a_bits`` in {8, 16, 32}: the layer's input activation, per tensor,
    asymmetric (``act_symmetric=False``, uint8 with a zero point for 8 bits) or symmetric.
    ``bf16`` runs the layer in bfloat16 (w_bits = a_bits = 16 then).
    """

    w_bits: int = 32
    a_bits: int = 32
    w_per_channel: bool = True
    act_symmetric: bool = False
    bf16: bool = False

    def __post_init__(self) -> None:
        if self.bf16:
            if (self.w_bits, self.a_bits) != (16, 16):
                raise PlanError("a bf16 spec has w_bits = a_bits = 16")
            return
        if self.w_bits not in (4, 8, 32):
            raise PlanError(f"w_bits must be 4, 8 or 32 (fp32), got {self.w_bits}")
        if self.a_bits not in (8, 16, 32):
            raise PlanError(f"a_bits must be 8, 16 or 32 (fp32), got {self.a_bits}")
        if (self.w_bits == 32) != (self.a_bits == 32):
            raise PlanError(f"fp32 weights need fp32 activations and vice versa "
                            f"(w_bits={self.w_bits}, a_bits={self.a_bits})")

    @property
    def is_float(self) -> bool:
        return self.w_bits == 32 or self.bf16

    @property
    def name(self) -> str:
        """The short CLI form: ``w8a8``, ``w4a8``, ``w8a16``, ``bf16``, ``fp32``."""
        if self.bf16:
            return "bf16"
        if self.w_bits == 32:
            return "fp32"
        return f"w{self.w_bits}a{self.a_bits}"

    @classmethod
    def parse(cls, text: str) -> QuantSpec:
        t = text.strip().lower()
        if t == "fp32":
            return cls()
        if t == "bf16":
            return cls(w_bits=16, a_bits=16, bf16=True)
        m = re.fullmatch(r"w(\d+)a(\d+)", t)
        if not m:
            raise PlanError(f"unknown spec {text!r}: expected fp32, bf16 or w<bits>a<bits> "
                            f"(w4a8, w8a8, w8a16)")
        return cls(w_bits=int(m.group(1)), a_bits=int(m.group(2)))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> QuantSpec:
        if not isinstance(d, Mapping):
            raise PlanError(f"a spec must be an object like {{\"w_bits\": 8, \"a_bits\": 8}}, got {d!r}")
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise PlanError(f"unknown QuantSpec field(s) {sorted(unknown)}")
        for k in ("w_bits", "a_bits"):
            if k in d and (isinstance(d[k], bool) or not isinstance(d[k], int)):
                raise PlanError(f"{k} must be an integer (4, 8, 16 or 32), got {d[k]!r}")
        for k in ("w_per_channel", "act_symmetric", "bf16"):
            if k in d and not isinstance(d[k], bool):
                raise PlanError(f"{k} must be true or false, got {d[k]!r}")
        return cls(**d)


FP32 = QuantSpec()
W8A8 = QuantSpec(w_bits=8, a_bits=8)


class PrecisionPlan(Mapping[str, QuantSpec]):
    """An exhaustive, validated mapping ``layer name -> QuantSpec`` (immutable)."""

    def __init__(self, specs: Mapping[str, QuantSpec], layers: LayerTable | None = None) -> None:
        self._specs = dict(specs)
        for name, spec in self._specs.items():
            if not isinstance(spec, QuantSpec):
                raise PlanError(f"plan entry {name!r} is not a QuantSpec: {spec!r}")
        if layers is not None:
            self.validate(layers)

    def __getitem__(self, name: str) -> QuantSpec:
        try:
            return self._specs[name]
        except KeyError:
            raise PlanError(f"the plan has no layer {name!r}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)

    def __repr__(self) -> str:
        counts: dict[str, int] = {}
        for spec in self._specs.values():
            counts[spec.name] = counts.get(spec.name, 0) + 1
        return f"PrecisionPlan({len(self)} layers: {counts})"

    def validate(self, layers: LayerTable) -> None:
        names = set(layers.names)
        unknown = [n for n in self._specs if n not in names]
        missing = [n for n in layers.names if n not in self._specs]
        if unknown or missing:
            parts = []
            if unknown:
                parts.append(f"names layer(s) the model does not have: {unknown[:5]}"
                             + (f" (+{len(unknown) - 5} more)" if len(unknown) > 5 else ""))
            if missing:
                parts.append(f"misses layer(s): {missing[:5]}"
                             + (f" (+{len(missing) - 5} more)" if len(missing) > 5 else ""))
            raise PlanError("the plan " + " and ".join(parts))

    @classmethod
    def uniform(cls, layers: LayerTable, spec: QuantSpec | str, *,
                keep_fp32: Iterable[str] = (), overrides: Mapping[str, QuantSpec | str] | None = None
                ) -> PrecisionPlan:
        """One spec everywhere, except ``keep_fp32`` (layer names, or ``first`` / ``last``)
        and explicit ``overrides`` (applied last)."""
        base = QuantSpec.parse(spec) if isinstance(spec, str) else spec
        names = layers.names
        specs = {n: base for n in names}
        for item in keep_fp32:
            target = {"first": names[0] if names else None, "last": names[-1] if names else None}.get(item, item)
            if target not in specs:
                raise PlanError(f"keep_fp32 names {item!r}, which is not a layer")
            specs[target] = FP32
        for name, s in (overrides or {}).items():
            if name not in specs:
                raise PlanError(f"override names {name!r}, which is not a layer")
            specs[name] = QuantSpec.parse(s) if isinstance(s, str) else s
        return cls(specs, layers)

    def to_json(self) -> dict[str, Any]:
        return {"schema": PLAN_SCHEMA, "layers": {n: s.to_json() for n, s in self._specs.items()}}

    @classmethod
    def from_json(cls, d: Mapping[str, Any], layers: LayerTable | None = None) -> PrecisionPlan:
        if not isinstance(d, Mapping) or d.get("schema") != PLAN_SCHEMA or "layers" not in d:
            raise PlanError(f"not a tvmq plan (schema {PLAN_SCHEMA}): keys {sorted(d) if isinstance(d, Mapping) else type(d).__name__}")
        if not isinstance(d["layers"], Mapping):
            raise PlanError(f"the plan's 'layers' must map layer names to specs, got a "
                            f"{type(d['layers']).__name__}")
        specs = {}
        for n, s in d["layers"].items():
            try:
                specs[n] = QuantSpec.from_json(s)
            except PlanError as e:
                raise PlanError(f"layer {n!r}: {e}") from None
        return cls(specs, layers)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=1))

    @classmethod
    def load(cls, path: str | Path, layers: LayerTable | None = None) -> PrecisionPlan:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise PlanError(f"cannot read plan {path}: {e}") from None
        return cls.from_json(data, layers)
