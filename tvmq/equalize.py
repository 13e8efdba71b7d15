"""Cross-layer equalization (Nagel et al. 2019, data-free quantization): a model -> model pass
before calibration, exact in fp32.

Two layers in a row, ``L1 -> [Relu | Clip(0, hi) | nothing] -> L2`` (convs or depthwise convs, the
link consumed by ``L2`` alone), compute the same function when output channel ``i`` of ``L1``
(weights and bias) is divided by ``s_i > 0`` and input channel ``i`` of ``L2`` multiplied by it:
ReLU is positively homogeneous, ``relu(x / s) = relu(x) / s``. With
``s_i = sqrt(r1_i / r2_i)`` (``r1_i = max |W1[i]|``, ``r2_i = max |W2[:, i]|``) both ranges become
``sqrt(r1_i r2_i)``: the per-channel ranges of the two weight tensors match, and the activation
between them, divided by ``s_i`` channel by channel, has more equal channel ranges too (what a
per-tensor activation scale needs). Chains (MobileNetV2's expand -> depthwise -> project) are
swept until the scales settle.

A ``Clip(0, hi)`` (ReLU6) is not homogeneous: ``clip(x / s, 0, hi) != clip(x, 0, hi) / s``. To stay
exact, such a link becomes ``Relu`` and ``min(x, hi / s)`` with a per-channel bound (written
``c - relu(c - x)``), which tvmq compiles as a per-channel uint8 lookup table; ``relu6="skip"``
leaves ReLU6 links alone instead.
Any other activation (HardSwish, sigmoid, PRelu) is not homogeneous and its links are skipped.

``equalize`` returns the cleaned model (``frontend.prepare``'s) with the new weights, and a
record of what it did (``metadata_props["tvmq.equalize"]``, read back by ``equalize_record`` and
written to the build manifest).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from . import onnx_graph as og
from .frontend import prepare

RECORD_KEY = "tvmq.equalize"


@dataclass(frozen=True)
class Link:
    """A pair of layers that can be equalized: ``first`` -> (``act`` node or None) -> ``second``."""

    first: str  # layer names
    second: str
    act: str | None  # the activation node's name
    act_op: str  # "none", "relu" or "clip"
    clip_max: float | None = None


def _scalar_const(g: og.Graph, producer: dict[str, onnx.NodeProto], name: str) -> float | None:
    if not name:
        return None
    if name in g.consts:
        v = np.asarray(g.consts[name])
    elif name in producer and producer[name].op_type == "Constant":
        v = numpy_helper.to_array(producer[name].attribute[0].t)
    else:
        return float("nan")
    return float(v.reshape(-1)[0]) if v.size == 1 else float("nan")


def find_links(pm: Any, g: og.Graph) -> list[Link]:
    """The equalizable pairs of ``pm``'s layers in ``g`` (its cleaned graph)."""
    layers = {l.node: l for l in pm.layers if l.op in ("conv2d", "depthwise_conv2d")}
    uses, producer = g.consumers(), g.producer()
    outputs = set(g.outputs)
    links = []
    for n in g.nodes:
        l1 = layers.get(n.name)
        if l1 is None or (l1.op == "conv2d" and l1.groups != 1):
            continue
        t, act, op, hi = n.output[0], None, "none", None
        nxt = uses.get(t, [])
        if t in outputs or len(nxt) != 1:
            continue
        if nxt[0].op_type in ("Relu", "Clip"):
            a = nxt[0]
            if a.op_type == "Clip":
                lo = _scalar_const(g, producer, a.input[1]) if len(a.input) > 1 else None
                hi = _scalar_const(g, producer, a.input[2]) if len(a.input) > 2 else None
                if lo != 0.0 or hi is None or not np.isfinite(hi) or hi <= 0:
                    continue
                op = "clip"
            else:
                op = "relu"
            act, t = a, a.output[0]
            nxt = uses.get(t, [])
            if t in outputs or len(nxt) != 1:
                continue
        l2 = layers.get(nxt[0].name)
        if l2 is None or nxt[0].input[0] != t or (l2.op == "conv2d" and l2.groups != 1):
            continue
        links.append(Link(l1.name, l2.name, None if act is None else act.name, op, hi))
    return links


def _out_range(w: np.ndarray) -> np.ndarray:
    return np.abs(w).reshape(w.shape[0], -1).max(axis=1)


def _in_range(w: np.ndarray, depthwise: bool) -> np.ndarray:
    if depthwise:
        return _out_range(w)
    return np.abs(w).transpose(1, 0, 2, 3).reshape(w.shape[1], -1).max(axis=1)


def equalize(model: str | os.PathLike | onnx.ModelProto, *, relu6: str = "min", sweeps: int = 20,
             input_shapes: dict[str, tuple[int, ...]] | None = None,
             batch_size: int = 1) -> onnx.ModelProto:
    """The cleaned ``model`` with every equalizable pair of layers equalized (module docstring).

    ``relu6``: ``"min"`` equalizes through ``Clip(0, hi)`` (the link becomes ``Relu`` + a
    per-channel ``Min``; exact), ``"skip"`` leaves those links alone."""
    if relu6 not in ("min", "skip"):
        raise ValueError(f"relu6 must be 'min' or 'skip', not {relu6!r}")
    pm = prepare(model, input_shapes=input_shapes, batch_size=batch_size)
    g = og.Graph(onnx.ModelProto.FromString(pm.model.SerializeToString()))
    links = [l for l in find_links(pm, g) if relu6 == "min" or l.act_op != "clip"]
    wname = {l: n for n, l in pm.param_layer.items() if n.endswith(".weight")}
    info = {l.name: l for l in pm.layers}
    w = {name: g.consts[wname[name]].astype(np.float64) for link in links for name in (link.first, link.second)}
    total = {(l.first, l.second): np.ones(info[l.first].weight_shape[0]) for l in links}
    for _ in range(sweeps):
        moved = 0.0
        for l in links:
            r1 = _out_range(w[l.first])
            r2 = _in_range(w[l.second], info[l.second].op == "depthwise_conv2d")
            ok = (r1 > 0) & (r2 > 0)
            s = np.where(ok, np.sqrt(np.where(ok, r1, 1) / np.where(ok, r2, 1)), 1.0)
            w[l.first] = w[l.first] / s.reshape(-1, 1, 1, 1)
            if info[l.second].op == "depthwise_conv2d":
                w[l.second] = w[l.second] * s.reshape(-1, 1, 1, 1)
            else:
                w[l.second] = w[l.second] * s.reshape(1, -1, 1, 1)
            total[(l.first, l.second)] *= s
            moved = max(moved, float(np.abs(np.log(s)).max()))
        if moved < 1e-4:
            break
    bias_names = {pm.param_layer[n]: n for n in pm.param_layer if n.endswith(".bias")}
    for l in links:
        s = total[(l.first, l.second)]
        if l.first in bias_names:
            b = bias_names[l.first]
            g.consts[b] = (g.consts[b].astype(np.float64) / s).astype(np.float32)
        if l.act_op == "clip":
            _clip_to_relu_min(g, l, (l.clip_max or 0.0) / s)
    for name, v in w.items():
        g.consts[wname[name]] = v.astype(np.float32)
    record = {"links": len(links), "relu6": relu6, "through_relu6": sum(l.act_op == "clip" for l in links),
              "pairs": [[l.first, l.second] for l in links],
              "scale_range": [float(min(s.min() for s in total.values())), float(max(s.max() for s in total.values()))]
              if total else None}
    out = g.to_model()
    del out.metadata_props[:]
    out.metadata_props.extend(p for p in pm.model.metadata_props if p.key != RECORD_KEY)
    out.metadata_props.append(onnx.StringStringEntryProto(key=RECORD_KEY, value=json.dumps(record)))
    return out


def _clip_to_relu_min(g: og.Graph, link: Link, bound: np.ndarray) -> None:
    """``Clip(0, hi)`` -> ``min(relu(x), c) = c - relu(c - relu(x))`` with the per-channel bound
    ``c = hi / s`` (elementwise ops tvmq keeps integer: one per-channel uint8 lookup table after
    the conv's fused ReLU; ONNX ``Min`` imports as a reduction over a stack)."""
    k = next(i for i, n in enumerate(g.nodes) if n.name == link.act)
    clip = g.nodes[k]
    base, const = clip.name, clip.name + "__bound"
    g.consts[const] = bound.astype(np.float32).reshape(1, -1, 1, 1)
    g.nodes[k:k + 1] = [
        helper.make_node("Relu", [clip.input[0]], [base + "__relu"], name=base + "__relu"),
        helper.make_node("Sub", [const, base + "__relu"], [base + "__gap"], name=base + "__gap"),
        helper.make_node("Relu", [base + "__gap"], [base + "__over"], name=base + "__over"),
        helper.make_node("Sub", [const, base + "__over"], [clip.output[0]], name=base + "__min"),
    ]


def equalize_record(model: Any) -> dict[str, Any] | None:
    """What ``equalize`` did to ``model`` (a path or ``ModelProto``), None where it was not
    equalized."""
    try:
        m = model if isinstance(model, onnx.ModelProto) else onnx.load(os.fspath(model), load_external_data=False)
    except Exception:  # an unreadable model is reported by prepare, not here
        return None
    for p in m.metadata_props:
        if p.key == RECORD_KEY:
            return json.loads(p.value)
    return None
