"""ONNX graph clean-up before import: fixed input shapes, constant folding, BN folding.

Everything here works on ``onnx.ModelProto`` with numpy, so that the layer names, the weights and
the folded graph are settled before TVM sees the model:

* inputs get static shapes (the batch dimension from ``batch_size``);
* every subgraph whose inputs are constants is evaluated (``ConstantOfShape`` weights of the
  ``light_*`` zoo models, ``Shape -> Gather -> Reshape`` chains of torch exports);
* ``BatchNormalization`` and per-channel ``Mul`` / ``Add`` after a conv fold into its weights and
  bias; a BN with no conv before it becomes a per-channel ``Mul`` + ``Add``;
* ``Sum``, ``Dropout`` and ``Identity`` become what they mean at inference.
"""

from __future__ import annotations

from collections import Counter
from typing import Iterable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .errors import UnsupportedModelError

# Ops that are never evaluated at compile time even when their inputs are constant.
_NOT_FOLDABLE = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                 "Multinomial", "If", "Loop", "Scan"}


class Graph:
    """A mutable view of an ONNX graph: nodes in order, constants by name."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        g = model.graph
        self.consts: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in g.initializer}
        self.nodes: list[onnx.NodeProto] = list(g.node)
        self.inputs = [i for i in g.input if i.name not in self.consts]
        self.outputs = [o.name for o in g.output]
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)

    def consumers(self) -> dict[str, list[onnx.NodeProto]]:
        uses: dict[str, list[onnx.NodeProto]] = {}
        for n in self.nodes:
            for i in n.input:
                uses.setdefault(i, []).append(n)
        return uses

    def producer(self) -> dict[str, onnx.NodeProto]:
        return {o: n for n in self.nodes for o in n.output}

    def rename_uses(self, old: str, new: str) -> None:
        for n in self.nodes:
            for k, i in enumerate(n.input):
                if i == old:
                    n.input[k] = new
        self.outputs = [new if o == old else o for o in self.outputs]

    def to_model(self) -> onnx.ModelProto:
        m = onnx.ModelProto()
        m.CopyFrom(self.model)
        # IR < 4 requires every initializer to be a graph input too; ours are not
        m.ir_version = max(m.ir_version, 7)
        g = m.graph
        del g.node[:]
        g.node.extend(self.nodes)
        del g.initializer[:]
        g.initializer.extend(numpy_helper.from_array(np.asarray(v), k) for k, v in self.consts.items())
        del g.input[:]
        g.input.extend(self.inputs)
        old_outputs = {o.name: o for o in self.model.graph.output}
        del g.output[:]
        for name in self.outputs:
            g.output.append(old_outputs.get(name) or helper.make_empty_tensor_value_info(name))
        del g.value_info[:]
        return m


def attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _eval_node(node: onnx.NodeProto, values: list[np.ndarray | None], opset: int) -> list[np.ndarray]:
    from onnx.reference import ReferenceEvaluator  # (deferred: heavy, only for constant folding)

    names = [f"i{k}" if v is not None else "" for k, v in enumerate(values)]
    n = helper.make_node(node.op_type, names, [f"o{k}" for k in range(len(node.output))],
                         domain=node.domain)
    n.attribute.extend(node.attribute)
    graph = helper.make_graph(
        [n], "fold",
        [helper.make_tensor_value_info(nm, helper.np_dtype_to_tensor_dtype(np.asarray(v).dtype),
                                       np.asarray(v).shape)
         for nm, v in zip(names, values) if v is not None],
        [helper.make_empty_tensor_value_info(f"o{k}") for k in range(len(node.output))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    feeds = {nm: np.asarray(v) for nm, v in zip(names, values) if v is not None}
    return [np.asarray(o) for o in ReferenceEvaluator(model).run(None, feeds)]


def inline_constant_nodes(g: Graph) -> None:
    kept = []
    for n in g.nodes:
        if n.op_type == "Constant":
            g.consts[n.output[0]] = _eval_node(n, [], g.opset)[0]
        else:
            kept.append(n)
    g.nodes = kept


def static_shapes(g: Graph) -> dict[str, tuple[int, ...]]:
    """Fully static shapes of every tensor ONNX shape inference can resolve."""
    try:
        inferred = onnx.shape_inference.infer_shapes(g.to_model(), strict_mode=False)
    except Exception:  # inference is a help, not a requirement
        return {}
    shapes: dict[str, tuple[int, ...]] = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        t = vi.type.tensor_type
        if t.HasField("shape") and all(d.HasField("dim_value") for d in t.shape.dim):
            shapes[vi.name] = tuple(d.dim_value for d in t.shape.dim)
    for k, v in g.consts.items():
        shapes[k] = tuple(v.shape)
    return shapes


def elem_types(g: Graph) -> dict[str, int]:
    """The ONNX element type (``TensorProto.FLOAT`` ...) of every tensor shape inference can
    type (graph inputs, constants, node outputs)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(g.to_model(), strict_mode=False)
    except Exception:  # inference is a help, not a requirement
        inferred = g.to_model()
    types: dict[str, int] = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
            types[vi.name] = vi.type.tensor_type.elem_type
    for k, v in g.consts.items():
        types[k] = helper.np_dtype_to_tensor_dtype(np.asarray(v).dtype)
    return types


def same_pads(size: int, k: int, stride: int, dilation: int, upper: bool) -> tuple[int, int]:
    """(begin, end) padding of ``auto_pad`` SAME_UPPER (``upper``) / SAME_LOWER along one axis:
    output ``ceil(size / stride)``, the odd pixel at the end (UPPER) or the beginning (LOWER)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + (k - 1) * dilation + 1 - size, 0)
    small, big = total // 2, total - total // 2
    return (small, big) if upper else (big, small)


def explicit_auto_pad(g: Graph, shapes: dict[str, tuple[int, ...]]) -> int:
    """``auto_pad`` SAME_UPPER / SAME_LOWER / VALID of 2-D Conv and pooling nodes rewritten as
    explicit ``pads`` (TVM's importer pads such inputs with a separate op, which a layer's kernel
    would pad again). Nodes whose input shape is not static keep their ``auto_pad``. Returns the
    count rewritten."""
    done = 0
    for n in g.nodes:
        if n.op_type not in ("Conv", "MaxPool", "AveragePool"):
            continue
        a = attrs(n)
        mode = a.get("auto_pad", b"NOTSET")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        x_shape = shapes.get(n.input[0], ())
        if mode in ("NOTSET", "") or len(x_shape) != 4:
            continue
        if n.op_type == "Conv":
            if n.input[1] not in g.consts:
                continue
            kernel = tuple(g.consts[n.input[1]].shape[2:])
        else:
            kernel = tuple(a["kernel_shape"])
        strides, dil = tuple(a.get("strides", [1, 1])), tuple(a.get("dilations", [1, 1]))
        if mode == "VALID":
            pads = [0, 0, 0, 0]
        else:
            (t, b), (l, r) = (same_pads(x_shape[2 + i], kernel[i], strides[i], dil[i], mode == "SAME_UPPER")
                              for i in range(2))
            pads = [t, l, b, r]
        kept = [at for at in n.attribute if at.name not in ("auto_pad", "pads")]
        del n.attribute[:]
        n.attribute.extend(kept + [onnx.helper.make_attribute("pads", pads)])
        done += 1
    return done


def fold_constants(g: Graph) -> int:
    """Evaluate every node whose inputs are all constant (and ``Shape`` of static tensors)."""
    shapes = static_shapes(g)
    folded = 0
    kept = []
    for n in g.nodes:
        if n.op_type == "Shape" and n.input[0] in shapes:
            a = attrs(n)  # start / end (opset 15): a slice of the dims, clamped as Python's
            dims = shapes[n.input[0]][a.get("start", 0):a.get("end", None)]
            g.consts[n.output[0]] = np.array(dims, dtype=np.int64)
            folded += 1
            continue
        if (n.op_type not in _NOT_FOLDABLE and n.domain in ("", "ai.onnx")
                and all(i == "" or i in g.consts for i in n.input)
                and not any(o in g.outputs for o in n.output)):
            outs = _eval_node(n, [g.consts[i] if i else None for i in n.input], g.opset)
            for name, value in zip(n.output, outs):
                g.consts[name] = value
            folded += 1
            continue
        kept.append(n)
    g.nodes = kept
    return folded


def drop_unused_outputs(g: Graph, ops: Iterable[str] = ("Dropout", "MaxPool")) -> None:
    """Trailing optional outputs no node reads and the graph does not output (Dropout's mask,
    MaxPool's indices, in older exports) are removed. (Not BatchNormalization's: up to opset 9
    its five outputs mean training mode, read or not, as onnxruntime computes it.)"""
    used = {i for n in g.nodes for i in n.input} | set(g.outputs)
    for n in g.nodes:
        if n.op_type in ops:
            while len(n.output) > 1 and n.output[-1] not in used:
                del n.output[-1]


def simplify_inference_ops(g: Graph) -> None:
    """``Dropout``/``Identity`` -> nothing, ``Sum`` -> ``Add`` chain."""
    kept: list[onnx.NodeProto] = []
    for n in g.nodes:
        if n.op_type in ("Dropout", "Identity") or (n.op_type == "Sum" and len(n.input) == 1):
            if n.output[0] in g.outputs:  # a graph output keeps its name
                kept.append(helper.make_node("Identity", [n.input[0]], [n.output[0]], name=n.name)
                            if n.op_type != "Identity" else n)
            else:
                g.rename_uses(n.output[0], n.input[0])
            continue
        if n.op_type == "Sum":
            ins = list(n.input)
            acc = ins[0]
            for k, other in enumerate(ins[1:]):
                out = n.output[0] if k == len(ins) - 2 else f"{n.output[0]}__sum{k}"
                kept.append(helper.make_node("Add", [acc, other], [out],
                                             name=n.name if k == len(ins) - 2 else f"{n.name}__sum{k}"))
                acc = out
            continue
        kept.append(n)
    g.nodes = kept


def _per_channel(value: np.ndarray, channels: int) -> np.ndarray | None:
    """``value`` as a ``[channels]`` vector if it broadcasts per NCHW channel, else None."""
    v = np.asarray(value, dtype=np.float32)
    if v.size == 1:
        return np.full(channels, float(v.reshape(())), dtype=np.float32)
    squeezed = v.reshape([d for d in v.shape if d != 1]) if v.ndim else v
    if squeezed.shape != (channels,):
        return None
    # the channel axis of a 4-D NCHW tensor: shape [C,1,1] or [1,C,1,1]
    if v.shape in ((channels, 1, 1), (1, channels, 1, 1)):
        return squeezed
    return None


def fold_into_conv(g: Graph) -> int:
    """Fold BatchNormalization / per-channel Mul / Add that directly follow a Conv."""
    folded = 0
    changed = True
    while changed:
        changed = False
        uses = g.consumers()
        prod = g.producer()
        for n in list(g.nodes):
            src = n.input[0] if n.input else ""
            conv = prod.get(src)
            if conv is None or conv.op_type != "Conv" or conv.input[1] not in g.consts:
                continue
            if len(uses.get(src, [])) != 1 or src in g.outputs:
                continue
            w = g.consts[conv.input[1]].astype(np.float32)
            k = w.shape[0]
            b = (g.consts[conv.input[2]].astype(np.float32) if len(conv.input) > 2 and conv.input[2]
                 else np.zeros(k, np.float32))
            if n.op_type == "BatchNormalization" and all(i in g.consts for i in n.input[1:5]):
                eps = attrs(n).get("epsilon", 1e-5)
                gamma, beta, mean, var = (g.consts[i].astype(np.float64) for i in n.input[1:5])
                scale = gamma / np.sqrt(var + eps)
                shift = beta - mean * scale
            elif n.op_type in ("Mul", "Add") and len(n.input) == 2 and n.input[1] in g.consts:
                vec = _per_channel(g.consts[n.input[1]], k)
                if vec is None:
                    continue
                scale = vec if n.op_type == "Mul" else np.ones(k)
                shift = np.zeros(k) if n.op_type == "Mul" else vec
            else:
                continue
            new_w = (w * scale.reshape(-1, 1, 1, 1)).astype(np.float32)
            new_b = (b * scale + shift).astype(np.float32)
            wname, bname = f"{conv.input[1]}__f{folded}", f"{conv.output[0]}__bias{folded}"
            g.consts[wname], g.consts[bname] = new_w, new_b
            ins = list(conv.input) + [""] * (3 - len(conv.input))
            ins[1], ins[2] = wname, bname
            del conv.input[:]
            conv.input.extend(ins)
            out = n.output[0]
            g.nodes.remove(n)
            conv.output[0] = out
            folded += 1
            changed = True
            break
    return folded


def decompose_batch_norm(g: Graph) -> None:
    """A BatchNormalization with no conv to fold into becomes a per-channel Mul + Add."""
    kept = []
    for n in g.nodes:
        if n.op_type == "BatchNormalization" and all(i in g.consts for i in n.input[1:5]):
            eps = attrs(n).get("epsilon", 1e-5)
            gamma, beta, mean, var = (g.consts[i].astype(np.float64) for i in n.input[1:5])
            scale = gamma / np.sqrt(var + eps)
            shift = beta - mean * scale
            sname, tname = f"{n.output[0]}__bn_scale", f"{n.output[0]}__bn_shift"
            g.consts[sname] = scale.astype(np.float32).reshape(-1, 1, 1)
            g.consts[tname] = shift.astype(np.float32).reshape(-1, 1, 1)
            mid = f"{n.output[0]}__bn_mul"
            kept.append(helper.make_node("Mul", [n.input[0], sname], [mid], name=f"{n.name}__mul"))
            kept.append(helper.make_node("Add", [mid, tname], [n.output[0]], name=f"{n.name}__add"))
        else:
            kept.append(n)
    g.nodes = kept


def constants_to_nodes(g: Graph, keep: Iterable[str]) -> None:
    """Every constant not in ``keep`` becomes a ``Constant`` node (inlined by the importer)."""
    keep = set(keep)
    used = {i for n in g.nodes for i in n.input} | set(g.outputs)
    const_nodes = []
    for name in list(g.consts):
        if name in keep:
            continue
        value = g.consts.pop(name)
        if name in used:
            const_nodes.append(helper.make_node(
                "Constant", [], [name], name=f"{name}__const",
                value=numpy_helper.from_array(np.asarray(value), name)))
    g.nodes = const_nodes + g.nodes


def unique_names(nodes: list[onnx.NodeProto]) -> None:
    """Give every node a unique, non-empty name (keeping the ones the model has).

    An unnamed conv / dense is named after its weight initializer (as it was in the model,
    before folding renamed it), anything else unnamed after its op type and position.
    """
    seen: Counter[str] = Counter()
    for k, n in enumerate(nodes):
        if n.name:
            base = n.name
        elif n.op_type in ("Conv", "Gemm", "MatMul") and len(n.input) > 1:
            base = n.input[1].split("__")[0]
        else:
            base = f"{n.op_type}_{k}"
        name = base if seen[base] == 0 else f"{base}_{seen[base]}"
        seen[base] += 1
        n.name = name


def check_single_graph_domain(g: Graph) -> None:
    bad = [f"{n.op_type} (domain {n.domain}, node {n.name!r})" for n in g.nodes
           if n.domain not in ("", "ai.onnx")]
    if bad:
        raise UnsupportedModelError("custom-domain operators are not supported: " + ", ".join(bad))


def _resize_source_coords(mode: str, x: np.ndarray, length_in: int, length_out: int,
                          scale: np.float32) -> np.ndarray | None:
    """ONNX ``Resize``'s ``coordinate_transformation_mode``: the input coordinate of every output
    coordinate ``x`` (float32, in onnxruntime's order of operations); None for a mode this does
    not compute (``tf_crop_and_resize``)."""
    f = np.float32
    half = f(0.5)
    if mode == "half_pixel":
        return (x + half) / scale - half
    if mode == "half_pixel_symmetric":
        adjustment = f(length_out) / (scale * f(length_in))
        offset = f(length_in) / f(2) * (f(1) - adjustment)
        return offset + (x + half) / scale - half
    if mode == "pytorch_half_pixel":
        return (x + half) / scale - half if length_out > 1 else np.zeros_like(x)
    if mode == "align_corners":
        return np.zeros_like(x) if length_out == 1 else x * f(length_in - 1) / f(length_out - 1)
    if mode == "asymmetric":
        return x / scale
    return None


def _nearest_index(mode: str, coord: np.ndarray, length_in: int) -> np.ndarray | None:
    """ONNX ``Resize``'s ``nearest_mode`` on input coordinates, clamped into the input."""
    if mode == "round_prefer_floor":  # a tie goes down, otherwise to nearest
        tie = coord == np.trunc(coord) + np.float32(0.5)
        idx = np.where(tie, np.floor(coord), np.sign(coord) * np.floor(np.abs(coord) + np.float32(0.5)))
    elif mode == "round_prefer_ceil":  # std::round: ties away from zero
        idx = np.sign(coord) * np.floor(np.abs(coord) + np.float32(0.5))
    elif mode == "floor":
        idx = np.floor(coord)
    elif mode == "ceil":
        idx = np.ceil(coord)
    else:
        return None
    return np.clip(idx, 0, length_in - 1).astype(np.int64)


def _text(value: object, default: str) -> str:
    if value is None:
        return default
    return value.decode() if isinstance(value, bytes) else str(value)


def unsigned_gather_indices(g: Graph, shapes: dict[str, tuple[int, ...]]) -> int:
    """``Gather`` with constant indices into a static axis: negative indices made positive and
    the indices unsigned, which TVM's importer takes as they are (signed ones get a run-time
    ``where(i < 0, i + dim, i)`` from the tensor's shape: ops the numpy program and the integer
    data movement cannot see through). Out-of-range indices are left to the importer. Returns
    the count rewritten."""
    done = 0
    for n in g.nodes:
        x_shape = shapes.get(n.input[0]) if n.op_type == "Gather" and n.input[1] in g.consts else None
        idx = np.asarray(g.consts[n.input[1]]) if x_shape else None
        if idx is None or idx.dtype.kind != "i":
            continue
        dim = x_shape[attrs(n).get("axis", 0) % len(x_shape)]
        fixed = np.where(idx < 0, idx + dim, idx)
        if fixed.size and (fixed.min() < 0 or fixed.max() >= dim):
            continue
        name = f"{n.input[1]}__unsigned{dim}"
        g.consts[name] = fixed.astype(np.uint32)
        n.input[1] = name
        done += 1
    return done


def resize_problems(g: Graph, shapes: dict[str, tuple[int, ...]]) -> list[tuple[onnx.NodeProto, str]]:
    """``(node, form)`` for each linear / cubic ``Resize`` in a form that TVM's importer computes
    differently from ONNX (its coordinates use ``input / output`` sizes, not the given scale) or
    not at all; ``nearest`` is computed by tvmq in every form (``resize_nearest_to_gathers``)."""
    problems = []
    for n in g.nodes:
        a = attrs(n)
        if n.op_type != "Resize" or _text(a.get("mode"), "nearest") == "nearest":
            continue
        coord_mode = _text(a.get("coordinate_transformation_mode"), "half_pixel")
        scales = g.consts.get(n.input[2]) if len(n.input) > 2 and n.input[2] else None
        x_shape = shapes.get(n.input[0])
        if a.get("antialias", 0):
            problems.append((n, "antialias=1"))
        elif coord_mode == "half_pixel_symmetric":
            problems.append((n, "coordinate_transformation_mode half_pixel_symmetric"))
        elif "axes" in a:
            problems.append((n, "the axes attribute"))
        elif _text(a.get("keep_aspect_ratio_policy"), "stretch") != "stretch":
            problems.append((n, f"keep_aspect_ratio_policy {_text(a.get('keep_aspect_ratio_policy'), '')}"))
        elif (scales is not None and scales.size and x_shape is not None and len(x_shape) == scales.size
              and any(float(d) * float(s) != np.floor(float(d) * float(s))
                      for d, s in zip(x_shape, scales.reshape(-1)))):
            given = [round(float(v), 6) for v in scales.reshape(-1)]
            problems.append((n, f"scales {given} that do not give a whole output size for input {list(x_shape)}"))
    return problems


def resize_nearest_to_gathers(g: Graph, shapes: dict[str, tuple[int, ...]]) -> int:
    """``Resize`` in mode ``nearest`` (opset 11 and later) with constant scales or sizes and a
    static input becomes one ``Gather`` of constant indices per axis whose indices are not the
    identity, the indices computed here as onnxruntime does (float32 coordinates, its rounding).
    A selection of input elements: exact in fp32, and on uint8 codes an integer data movement in
    quantized plans. Other modes (linear, cubic) and ``tf_crop_and_resize`` stay ``Resize``
    (TVM's importer; the forms it gets wrong are refused by ``resize_problems``). Returns the
    count rewritten."""
    if g.opset < 11:
        return 0
    done = 0
    kept: list[onnx.NodeProto] = []
    for n in g.nodes:
        a = attrs(n)
        x_shape = shapes.get(n.input[0]) if n.op_type == "Resize" else None
        coord_mode = _text(a.get("coordinate_transformation_mode"), "half_pixel")
        consts = [g.consts.get(i) if i else None for i in list(n.input[1:4]) + [""] * (4 - len(n.input))]
        scales, sizes = consts[1], consts[2]
        given = [i for i in n.input[2:4] if i]
        if (x_shape is None or _text(a.get("mode"), "nearest") != "nearest" or coord_mode == "tf_crop_and_resize"
                or any(i not in g.consts for i in given)):
            kept.append(n)
            continue
        rank = len(x_shape)
        axes = [int(ax) % rank for ax in a.get("axes", range(rank))]
        out_shape, scale = list(x_shape), [np.float32(1)] * rank
        policy = _text(a.get("keep_aspect_ratio_policy"), "stretch")
        if sizes is not None and sizes.size and policy != "stretch":  # one scale for every axis
            ratios = [float(size) / x_shape[ax] for ax, size in zip(axes, sizes.reshape(-1))]
            common = min(ratios) if policy == "not_larger" else max(ratios)
            for ax in axes:
                out_shape[ax] = int(common * x_shape[ax] + 0.5)  # (rounded half up)
                scale[ax] = np.float32(common)
        elif sizes is not None and sizes.size:
            for ax, size in zip(axes, sizes.reshape(-1)):
                out_shape[ax] = int(size)
                scale[ax] = np.float32(size) / np.float32(x_shape[ax])
        elif scales is not None and scales.size:
            for ax, s in zip(axes, scales.reshape(-1).astype(np.float32)):
                scale[ax] = np.float32(s)
                out_shape[ax] = int(np.floor(np.float64(x_shape[ax]) * np.float64(s)))
        else:
            kept.append(n)
            continue
        indices = []
        for ax in range(rank):
            coords = _resize_source_coords(coord_mode, np.arange(out_shape[ax], dtype=np.float32),
                                           x_shape[ax], out_shape[ax], scale[ax])
            idx = None if coords is None or out_shape[ax] < 1 else _nearest_index(
                _text(a.get("nearest_mode"), "round_prefer_floor"), coords, x_shape[ax])
            indices.append(idx)
        if any(i is None for i in indices):
            kept.append(n)
            continue
        moved = [ax for ax in range(rank) if not np.array_equal(indices[ax], np.arange(x_shape[ax]))]
        src = n.input[0]
        if not moved:
            kept.append(helper.make_node("Identity", [src], [n.output[0]], name=n.name))
        for k, ax in enumerate(moved):
            name = f"{n.name or n.output[0]}__resize{ax}"
            g.consts[f"{name}_indices"] = indices[ax].astype(np.uint32)  # (unsigned: imported as a plain take)
            out = n.output[0] if k == len(moved) - 1 else f"{name}_out"
            kept.append(helper.make_node("Gather", [src, f"{name}_indices"], [out], name=name, axis=ax))
            src = out
        done += 1
    g.nodes = kept
    return done


def explicit_output_shape(g: Graph, shapes: dict[str, tuple[int, ...]]) -> int:
    """``ConvTranspose``'s ``output_shape`` (which TVM's importer ignores) rewritten as the
    ``pads`` and ``output_padding`` it implies (ONNX: the total padding
    ``stride (in - 1) + output_padding + (k - 1) dilation + 1 - out``, its larger half at the
    beginning unless ``auto_pad`` is SAME_UPPER; a negative total is output padding: more output
    rows at the end). Nodes whose input shape or kernel is not static keep it. Returns
    the count rewritten."""
    done = 0
    for n in g.nodes:
        a = attrs(n)
        x_shape = shapes.get(n.input[0]) if n.op_type == "ConvTranspose" and "output_shape" in a else None
        if x_shape is None or n.input[1] not in shapes:
            continue
        spatial = len(x_shape) - 2
        kernel = list(a.get("kernel_shape", shapes[n.input[1]][2:]))
        strides, dil = list(a.get("strides", [1] * spatial)), list(a.get("dilations", [1] * spatial))
        extra = list(a.get("output_padding", [0] * spatial))
        out = list(a["output_shape"])[-spatial:]
        upper = _text(a.get("auto_pad"), "NOTSET") == "SAME_UPPER"
        begin, end = [0] * spatial, [0] * spatial
        for i in range(spatial):
            total = strides[i] * (x_shape[2 + i] - 1) + extra[i] + (kernel[i] - 1) * dil[i] + 1 - out[i]
            if total < 0:
                extra[i] -= total
            else:
                small, big = total // 2, total - total // 2
                begin[i], end[i] = (small, big) if upper else (big, small)
        kept = [at for at in n.attribute if at.name not in ("auto_pad", "pads", "output_padding", "output_shape")]
        del n.attribute[:]
        n.attribute.extend(kept + [helper.make_attribute("pads", begin + end),
                                   helper.make_attribute("output_padding", extra)])
        done += 1
    return done


def conv_transpose_to_conv(g: Graph, shapes: dict[str, tuple[int, ...]]) -> int:
    """A 2-D ``ConvTranspose`` whose kernel equals its stride (no padding, dilation, groups or
    output padding: the input pixels' windows tile the output without overlap, as the 2x2
    stride-2 upsampling of detection heads) becomes a 1x1 ``Conv`` to ``C_out kh kw`` channels
    and a depth-to-space (``Reshape``, ``Transpose``, ``Reshape``): a layer tvmq quantizes and
    runs on its conv kernels like any other, with the same sums (one product per input channel
    for each output). Other forms stay ``ConvTranspose`` (TVM's importer; float in quantized
    plans). Returns the count rewritten."""
    done = 0
    kept: list[onnx.NodeProto] = []
    for n in g.nodes:
        if n.op_type != "ConvTranspose" or len(n.input) < 2 or n.input[1] not in g.consts:
            kept.append(n)
            continue
        a = attrs(n)
        w = np.asarray(g.consts[n.input[1]])
        x_shape = shapes.get(n.input[0])
        bias = g.consts.get(n.input[2]) if len(n.input) > 2 and n.input[2] else None
        if (w.ndim != 4 or x_shape is None or len(x_shape) != 4 or a.get("group", 1) != 1
                or (len(n.input) > 2 and n.input[2] and bias is None)):
            kept.append(n)
            continue
        cin, cout, kh, kw = w.shape
        nb, _, h, wd = x_shape
        plain = (list(a.get("strides", [1, 1])) == [kh, kw] and not any(a.get("pads", [0] * 4))
                 and list(a.get("dilations", [1, 1])) == [1, 1] and not any(a.get("output_padding", [0, 0]))
                 and list(a.get("output_shape", [h * kh, wd * kw]))[-2:] == [h * kh, wd * kw]
                 and _text(a.get("auto_pad"), "NOTSET") in ("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"))
        if not plain:
            kept.append(n)
            continue
        name = n.name or n.output[0]
        g.consts[f"{name}__weight"] = np.ascontiguousarray(w.transpose(1, 2, 3, 0).reshape(cout * kh * kw, cin, 1, 1))
        ins = [n.input[0], f"{name}__weight"]
        if bias is not None:
            g.consts[f"{name}__bias"] = np.repeat(np.asarray(bias).reshape(-1), kh * kw)
            ins.append(f"{name}__bias")
        g.consts[f"{name}__split"] = np.array([nb, cout, kh, kw, h, wd], np.int64)
        g.consts[f"{name}__joined"] = np.array([nb, cout, h * kh, wd * kw], np.int64)
        kept += [
            helper.make_node("Conv", ins, [f"{name}__taps"], name=name, kernel_shape=[1, 1]),
            helper.make_node("Reshape", [f"{name}__taps", f"{name}__split"], [f"{name}__split_out"],
                             name=f"{name}__split"),
            helper.make_node("Transpose", [f"{name}__split_out"], [f"{name}__spread"], name=f"{name}__spread",
                             perm=[0, 1, 4, 2, 5, 3]),
            helper.make_node("Reshape", [f"{name}__spread", f"{name}__joined"], [n.output[0]], name=f"{name}__joined"),
        ]
        done += 1
    g.nodes = kept
    return done
