"""ONNX -> (cleaned ONNX, LayerTable, weights) -> Relax IRModule.

``prepare`` settles everything that depends on the ONNX graph: static input shapes, folded
constants and batch norms, and the ``LayerTable``: one entry per conv / depthwise conv / dense,
named after its ONNX node (or its weight initializer when the node has no name). Each layer's
weight and bias are kept as initializers renamed ``tvmq.<index>.weight`` / ``.bias`` so the Relax
module (imported with ``keep_params_in_input=True``) refers to them by name; every later table
(statistics, sensitivity, latency, plan) is keyed by the layer name.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import helper

from . import onnx_graph as og
from .errors import ModelLoadError, UnsupportedModelError

# Operators tvmq compiles (anything that only feeds constants is folded away before import).
SUPPORTED_OPS = frozenset({
    "Conv", "Gemm", "MatMul", "BatchNormalization", "Relu", "Clip", "Add", "Sub", "Mul", "Div",
    "Sum", "Max", "Min", "Concat", "MaxPool", "AveragePool", "GlobalAveragePool",
    "GlobalMaxPool", "ReduceMean", "Flatten", "Reshape", "Transpose", "Softmax", "HardSigmoid",
    "HardSwish", "Sigmoid", "Tanh", "PRelu", "LeakyRelu", "Pad", "Dropout", "Identity",
    "Constant", "ConstantOfShape", "Shape", "Gather", "Unsqueeze", "Squeeze", "Cast", "LRN",
    "Slice", "Split", "Exp", "Sqrt", "Pow", "Neg", "Abs", "Resize", "ConvTranspose",
})

LAYER_OPS = ("conv2d", "depthwise_conv2d", "dense")

# Element types a tensor of the model may have; the rest (bfloat16, the float8 / float4 / e8m0
# formats, int4 / int2, strings, complex) are refused by name.
SUPPORTED_ELEM_TYPES = frozenset({
    onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
    onnx.TensorProto.INT8, onnx.TensorProto.INT16, onnx.TensorProto.INT32, onnx.TensorProto.INT64,
    onnx.TensorProto.UINT8, onnx.TensorProto.UINT16, onnx.TensorProto.UINT32,
    onnx.TensorProto.UINT64, onnx.TensorProto.BOOL,
})

# Inputs that are parameters of the op, not data: tvmq compiles them only as constants (an
# initializer, a Constant node, or anything folded from constants); as a graph input (a value
# known only at run time) they are refused before import. (Slice's starts / ends / axes / steps,
# Squeeze's axes, Clip's bounds and Gather's indices also work at run time.)
CONSTANT_INPUTS: dict[str, dict[int, str]] = {
    "Reshape": {1: "the target shape"},
    "Pad": {1: "the pads", 2: "the constant value", 3: "the axes"},
    "ReduceMean": {1: "the axes"},
    "Split": {1: "the split sizes"},
    "Unsqueeze": {1: "the axes"},
    "ConstantOfShape": {0: "the shape"},
    "Dropout": {2: "training_mode"},
    "Resize": {1: "the roi", 2: "the scales", 3: "the sizes"},
}


@dataclass(frozen=True)
class LayerInfo:
    """One quantizable layer: its stable name and the facts allocation needs."""

    name: str
    op: str  # one of LAYER_OPS
    node: str  # the ONNX node name
    input_tensor: str  # the (cleaned) ONNX tensor the layer reads
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    weight_shape: tuple[int, ...]
    has_bias: bool
    macs: int
    strides: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)  # top, left, bottom, right
    dilations: tuple[int, int] = (1, 1)
    groups: int = 1

    @property
    def weight_params(self) -> int:
        return int(np.prod(self.weight_shape))

    def weight_bytes(self, bits: int = 32) -> int:
        return (self.weight_params * bits + 7) // 8

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["weight_bytes_fp32"] = self.weight_bytes(32)
        return d


@dataclass(frozen=True)
class LayerTable:
    layers: tuple[LayerInfo, ...]

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, name: str) -> LayerInfo:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(f"no layer {name!r}; layers: {', '.join(l.name for l in self.layers)}")

    @property
    def names(self) -> list[str]:
        return [l.name for l in self.layers]

    @property
    def total_macs(self) -> int:
        return sum(l.macs for l in self.layers)

    def to_json(self) -> list[dict[str, Any]]:
        return [l.to_json() for l in self.layers]


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


@dataclass
class PreparedModel:
    """The cleaned graph and what was learned from it."""

    model: onnx.ModelProto
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    layers: LayerTable
    params: dict[str, np.ndarray]  # initializer name -> value (layer weights and biases only)
    param_layer: dict[str, str] = field(default_factory=dict)  # initializer name -> layer name


def load_model(source: str | os.PathLike | onnx.ModelProto) -> onnx.ModelProto:
    """Read and validate an ONNX model; a clear ``ModelLoadError`` on any problem."""
    if isinstance(source, onnx.ModelProto):
        model = source
        where = "<model>"
    else:
        where = os.fspath(source)
        if not os.path.exists(where):
            raise ModelLoadError(f"ONNX file not found: {where}")
        if os.path.isdir(where):
            raise ModelLoadError(f"expected an ONNX file, got a directory: {where}")
        try:
            model = onnx.load(where)
        except Exception as e:  # protobuf DecodeError, truncated files, external data...
            raise ModelLoadError(f"cannot parse {where} as ONNX (truncated or not an ONNX "
                                 f"file?): {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    if not model.graph.node:
        raise ModelLoadError(f"{where}: the ONNX graph has no nodes (truncated or empty file?)")
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        first = str(e).splitlines()[0]
        # missing type/shape annotations on graph outputs are harmless (tvmq infers every shape
        # itself, as onnxruntime does); anything else the checker finds is a broken model
        if "is required but missing" not in first:
            raise ModelLoadError(f"{where}: invalid ONNX model: {first}") from None
        _check_without_output_types(model, where)
    newest = onnx.defs.onnx_opset_version()
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx") and o.version > newest:
            raise ModelLoadError(f"{where}: opset {o.version} is newer than this onnx package knows ({newest})")
    _check_finite_initializers(model, where)
    return model


def _check_without_output_types(model: onnx.ModelProto, where: str) -> None:
    """The checker stops at a graph output without a type / shape: check a copy whose outputs
    have an (empty) one, so the rest of the graph (undefined tensors...) is still checked."""
    copy = onnx.ModelProto.FromString(model.SerializeToString())
    for o in copy.graph.output:
        t = o.type.tensor_type
        if not t.elem_type:
            t.elem_type = onnx.TensorProto.FLOAT
        t.shape.SetInParent()
    try:
        onnx.checker.check_model(copy)
    except onnx.checker.ValidationError as e:
        raise ModelLoadError(f"{where}: invalid ONNX model: {str(e).splitlines()[0]}") from None


def _check_finite_initializers(model: onnx.ModelProto, where: str) -> None:
    """Weights with NaN or inf compile to a library that answers zeros (integer plans) or NaN:
    refused, naming the initializer. An infinite constant elsewhere (a Clip bound, a mask) is
    legitimate; a NaN constant never is."""
    from onnx import numpy_helper

    weights = {t for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul",
                                                            "BatchNormalization") for t in n.input}
    for init in model.graph.initializer:
        if init.data_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16,
                                  onnx.TensorProto.BFLOAT16) or init.data_location == onnx.TensorProto.EXTERNAL:
            continue
        a = numpy_helper.to_array(init)
        if np.isnan(a).any() or (init.name in weights and not np.all(np.isfinite(a))):
            raise ModelLoadError(f"{where}: initializer {init.name!r} holds {int(np.count_nonzero(~np.isfinite(a)))} "
                                 f"NaN or inf value(s)")


def unsupported_ops(model: onnx.ModelProto) -> list[tuple[str, str]]:
    """``(op_type, node name)`` of every node tvmq cannot compile, in graph order."""
    return [(n.op_type, n.name or f"#{k}") for k, n in enumerate(model.graph.node)
            if n.op_type not in SUPPORTED_OPS or n.domain not in ("", "ai.onnx")]


def check_supported(model: onnx.ModelProto) -> None:
    bad = unsupported_ops(model)
    if bad:
        ops = sorted({op for op, _ in bad})
        listed = ", ".join(f"{op} (node {name!r})" for op, name in bad[:10])
        more = f" and {len(bad) - 10} more" if len(bad) > 10 else ""
        raise UnsupportedModelError(
            f"unsupported operator(s) {', '.join(ops)}: {listed}{more}; supported: "
            f"{', '.join(sorted(SUPPORTED_OPS))}")


def _elem_type_name(t: int) -> str:
    return onnx.TensorProto.DataType.Name(t).lower() if t in onnx.TensorProto.DataType.values() else str(t)


def _supported_elem_types() -> str:
    return ", ".join(sorted(_elem_type_name(t) for t in SUPPORTED_ELEM_TYPES))


def _node_label(n: onnx.NodeProto) -> str:
    out = next((o for o in n.output if o), "")
    return f"{n.op_type} node {n.name!r}" if n.name else f"{n.op_type} node (output {out!r})"


def _refuse(problems: list[str]) -> None:
    if problems:
        more = f"; and {len(problems) - 5} more" if len(problems) > 5 else ""
        raise UnsupportedModelError("; ".join(problems[:5]) + more)


def check_forms(g: og.Graph) -> None:
    """Refuse (one ``UnsupportedModelError`` naming each node, input and form) the forms of
    supported operators that tvmq does not compile, before any folding: element types outside
    ``SUPPORTED_ELEM_TYPES``, training-mode ``BatchNormalization`` / ``Dropout``, ``Dropout``'s
    mask and ``MaxPool``'s indices outputs."""
    problems = []
    ends = [("input", vi) for vi in g.model.graph.input if vi.name not in g.consts]
    for kind, vi in ends + [("output", vi) for vi in g.model.graph.output]:
        t = vi.type.tensor_type.elem_type if vi.type.HasField("tensor_type") else 0
        if t and t not in SUPPORTED_ELEM_TYPES:
            problems.append(f"{kind} {vi.name!r} has "
                            f"element type {_elem_type_name(t)}, which tvmq does not compile "
                            f"(supported: {_supported_elem_types()})")
    for name, value in g.consts.items():
        try:
            t = helper.np_dtype_to_tensor_dtype(np.asarray(value).dtype)
        except (KeyError, ValueError, TypeError):
            t = onnx.TensorProto.UNDEFINED
        if t not in SUPPORTED_ELEM_TYPES:
            problems.append(f"constant {name!r} has element type "
                            f"{_elem_type_name(t) if t else np.asarray(value).dtype}, which tvmq "
                            f"does not compile (supported: {_supported_elem_types()})")
    for n in g.nodes:
        a = og.attrs(n)
        outs = [o for o in n.output if o]
        if n.op_type == "Cast" and a.get("to") not in SUPPORTED_ELEM_TYPES:
            problems.append(f"{_node_label(n)}: a cast to {_elem_type_name(a.get('to', 0))} is not "
                            f"supported (supported element types: {_supported_elem_types()})")
        elif n.op_type == "BatchNormalization" and (a.get("training_mode", 0) or len(outs) > 1):
            problems.append(f"{_node_label(n)}: training mode (training_mode=1, batch statistics, "
                            f"running mean / variance outputs) is not supported; tvmq compiles "
                            f"inference graphs")
        elif n.op_type == "Dropout":
            if len(outs) > 1:
                problems.append(f"{_node_label(n)}: the mask output {outs[1]!r} is not supported; "
                                f"tvmq compiles inference graphs (Dropout as identity)")
            if len(n.input) > 2 and n.input[2]:
                mode = g.consts.get(n.input[2])
                if mode is None or bool(np.asarray(mode).reshape(-1)[0]):
                    problems.append(f"{_node_label(n)}: input 2 {n.input[2]!r} (training_mode) is "
                                    f"{'true' if mode is not None else 'not a constant'}; tvmq "
                                    f"compiles inference graphs (Dropout as identity)")
        elif n.op_type == "MaxPool" and len(outs) > 1:
            problems.append(f"{_node_label(n)}: the Indices output {outs[1]!r} is not supported")
        elif n.op_type == "ConstantOfShape" and "value" in a:
            t = a["value"].data_type
            if t not in SUPPORTED_ELEM_TYPES:
                problems.append(f"{_node_label(n)}: a value of element type {_elem_type_name(t)} is "
                                f"not supported (supported: {_supported_elem_types()})")
    _refuse(problems)


def check_constant_inputs(g: og.Graph) -> None:
    """After folding: refuse parameter inputs (``CONSTANT_INPUTS``) that are graph inputs, a
    ``Split`` into an empty part, and ``Pow`` of mixed or integer element types (a constant
    exponent of another type than its float base is converted here)."""
    problems = []
    types: dict[str, int] | None = None
    graph_inputs = {v.name for v in g.inputs}
    for n in g.nodes:
        for k, what in CONSTANT_INPUTS.get(n.op_type, {}).items():
            if n.op_type == "Dropout":
                continue  # (checked, with its value, before simplification)
            # (one computed in the graph is left to TVM's importer: a shape from Shape is
            # folded, or imported as a shape expression)
            if k < len(n.input) and n.input[k] in graph_inputs:
                problems.append(f"{_node_label(n)}: input {k} {n.input[k]!r} ({what}) is a graph "
                                f"input, not a constant; tvmq compiles {n.op_type} only with {what} "
                                f"given as an initializer or a Constant")
        if n.op_type == "Split" and len(n.input) > 1 and n.input[1] in g.consts \
                and (np.asarray(g.consts[n.input[1]]) == 0).any():
            problems.append(f"{_node_label(n)}: a split size of 0 (input 1 {n.input[1]!r}: "
                            f"{np.asarray(g.consts[n.input[1]]).tolist()}) is not supported; tvmq "
                            f"compiles non-empty tensors")
        if n.op_type == "Pow":
            types = og.elem_types(g) if types is None else types
            base, exp = (types.get(i, 0) for i in n.input[:2])
            floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE)
            if not base or not exp:  # (untyped by shape inference: left to the importer)
                continue
            if base in floats and exp != base and n.input[1] in g.consts:
                value = np.asarray(g.consts[n.input[1]])
                name = f"{n.input[1]}__as_{_elem_type_name(base)}"
                g.consts[name] = value.astype(helper.tensor_dtype_to_np_dtype(base))
                n.input[1] = name
            elif base not in floats or exp != base:
                problems.append(f"{_node_label(n)}: a base of type {_elem_type_name(base)} and an "
                                f"exponent of type {_elem_type_name(exp)} are not supported; tvmq "
                                f"computes Pow of float tensors of one element type (a constant "
                                f"exponent of another type is converted)")
    _refuse(problems)


def _input_specs(g: og.Graph, input_shapes: dict[str, tuple[int, ...]] | None,
                 batch_size: int) -> list[TensorSpec]:
    specs = []
    given = dict(input_shapes or {})
    for vi in g.inputs:
        kind = vi.type.WhichOneof("value")
        if kind != "tensor_type":
            what = {"sequence_type": "a sequence", "optional_type": "an optional",
                    "map_type": "a map", "sparse_tensor_type": "a sparse tensor"}.get(kind or "", "untyped")
            raise UnsupportedModelError(f"input {vi.name!r} is {what}; tvmq compiles models whose "
                                        f"inputs are (dense) tensors")
        t = vi.type.tensor_type
        dtype = helper.tensor_dtype_to_np_dtype(t.elem_type).name if t.elem_type else "float32"
        if vi.name in given:
            shape = tuple(int(d) for d in given.pop(vi.name))
            declared = list(t.shape.dim) if t.HasField("shape") else None
            if declared is not None and len(declared) != len(shape):
                raise UnsupportedModelError(f"input {vi.name!r}: shape {shape} has rank {len(shape)}, the "
                                            f"model's input has rank {len(declared)}")
        else:
            dims = []
            for k, d in enumerate(t.shape.dim):
                if d.HasField("dim_value") and d.dim_value == 0:
                    raise UnsupportedModelError(
                        f"input {vi.name!r} has size 0 in dimension {k} (an empty tensor); tvmq "
                        f"compiles non-empty tensors (if 0 stands for a dynamic size, give the "
                        f"shape explicitly: input_shapes)")
                if d.HasField("dim_value") and d.dim_value > 0:
                    dims.append(d.dim_value)
                elif k == 0:
                    dims.append(batch_size)
                else:
                    raise UnsupportedModelError(
                        f"input {vi.name!r} has a dynamic dimension {k} "
                        f"({d.dim_param or '?'}); give its shape explicitly (input_shapes=; on the command "
                        f"line --input-shape {vi.name}=D0,D1,...)")
            shape = tuple(dims)
        specs.append(TensorSpec(vi.name, shape, dtype))
    if given:
        raise UnsupportedModelError(f"input_shapes names unknown inputs {sorted(given)}; "
                                    f"the model's inputs are {[v.name for v in g.inputs]}")
    return specs


def _set_input_shapes(g: og.Graph, specs: list[TensorSpec]) -> None:
    new = []
    for vi, spec in zip(g.inputs, specs):
        new.append(helper.make_tensor_value_info(
            spec.name, helper.np_dtype_to_tensor_dtype(np.dtype(spec.dtype)), list(spec.shape)))
    g.inputs = new


def _canonical_dense(g: og.Graph, n: onnx.NodeProto, shapes: dict) -> bool:
    """Rewrite Gemm / MatMul with a constant 2-D weight to ``Gemm(transB=1)``; False if not one."""
    a = og.attrs(n)
    if n.op_type == "Gemm":
        if a.get("transA", 0) or a.get("alpha", 1.0) != 1.0 or n.input[1] not in g.consts:
            return False
        if len(n.input) > 2 and n.input[2] and (a.get("beta", 1.0) != 1.0 or n.input[2] not in g.consts):
            return False
        w = g.consts[n.input[1]]
        if not a.get("transB", 0):
            w = w.T
    elif n.op_type == "MatMul":
        if n.input[1] not in g.consts or len(shapes.get(n.input[0], ())) != 2:
            return False
        w = g.consts[n.input[1]].T
    else:
        return False
    if w.ndim != 2:
        return False
    if len(n.input) > 2 and n.input[2]:
        bias = np.broadcast_to(g.consts[n.input[2]], (w.shape[0],)).astype(np.float32)
        if g.consts[n.input[2]].size not in (1, w.shape[0]):
            return False
        g.consts[n.input[2]] = bias
    wname = f"{n.input[1]}__dense{id(n)}"
    g.consts[wname] = np.ascontiguousarray(w.astype(np.float32))
    ins = [n.input[0], wname] + ([n.input[2]] if len(n.input) > 2 and n.input[2] else [])
    new = helper.make_node("Gemm", ins, list(n.output), name=n.name, transB=1)
    del n.attribute[:]
    n.attribute.extend(new.attribute)
    n.op_type = "Gemm"
    del n.input[:]
    n.input.extend(ins)
    return True


def per_sample_shapes(input_shapes: dict[str, tuple[int, ...]] | None) -> dict[str, tuple[int, ...]] | None:
    """``input_shapes`` at batch 1: calibration and the sensitivity analysis run one sample at a
    time (statistics are per sample), whatever batch the library is built for."""
    if not input_shapes:
        return input_shapes
    return {name: (1, *tuple(shape)[1:]) if len(shape) else tuple(shape) for name, shape in input_shapes.items()}


def prepare(source: str | os.PathLike | onnx.ModelProto, *,
            input_shapes: dict[str, tuple[int, ...]] | None = None,
            batch_size: int = 1) -> PreparedModel:
    """Load, check and clean an ONNX model; build its ``LayerTable``.

    Parameters
    ----------
    source : path or ModelProto
    input_shapes : optional static shapes by input name (needed for dynamic non-batch dims)
    batch_size : the batch used for a dynamic first dimension

    Examples
    --------
    >>> pm = prepare("model.onnx")                      # doctest: +SKIP
    >>> [l.name for l in pm.layers][:2]                 # doctest: +SKIP
    ['/conv1/Conv', '/layer1/layer1.0/conv1/Conv']
    """
    model = load_model(source)
    check_supported(model)
    g = og.Graph(onnx.ModelProto.FromString(model.SerializeToString()))
    specs = _clean_graph(g, input_shapes, batch_size)
    shapes = og.static_shapes(g)
    og.explicit_auto_pad(g, shapes)
    layers, params, param_layer = _extract_layers(g, shapes)
    og.constants_to_nodes(g, keep=params)
    for k, v in params.items():
        g.consts[k] = v
    cleaned = g.to_model()
    outputs = [TensorSpec(name, tuple(shapes.get(name, ())), "float32") for name in g.outputs]
    return PreparedModel(model=cleaned, inputs=specs, outputs=outputs,
                         layers=LayerTable(tuple(layers)), params=params, param_layer=param_layer)


def _clean_graph(g: og.Graph, input_shapes: dict[str, tuple[int, ...]] | None,
                 batch_size: int) -> list[TensorSpec]:
    """Fix the input shapes, fold constants and batch norms, name every node uniquely (in
    place); the input specs."""
    og.check_single_graph_domain(g)
    specs = _input_specs(g, input_shapes, batch_size)
    _set_input_shapes(g, specs)
    og.inline_constant_nodes(g)
    og.drop_unused_outputs(g)
    check_forms(g)
    og.simplify_inference_ops(g)
    # to a fixed point: a folded shape (Shape -> Gather -> Concat -> Reshape) makes the tensors
    # after it static, whose Shape then folds (SVTR's attention reshapes, paddle2onnx)
    for _ in range(16):
        if not og.fold_constants(g):
            break
    check_constant_inputs(g)
    shapes = og.static_shapes(g)
    _refuse([f"{_node_label(n)}: mode {og.attrs(n).get('mode', b'').decode()} with {form} is not supported "
             f"(Resize: mode nearest in every form; linear and cubic without antialias, axes or an aspect "
             f"policy, at scales that give whole output sizes)" for n, form in og.resize_problems(g, shapes)])
    og.explicit_output_shape(g, shapes)
    og.unsigned_gather_indices(g, shapes)
    if og.resize_nearest_to_gathers(g, shapes) + og.conv_transpose_to_conv(g, shapes):
        og.fold_constants(g)
    og.fold_into_conv(g)
    og.decompose_batch_norm(g)
    og.fold_constants(g)
    og.unique_names(g.nodes)
    return specs


def _extract_layers(g: og.Graph, shapes: dict) -> tuple[list[LayerInfo], dict[str, np.ndarray], dict[str, str]]:
    """The layers of ``g`` in node order (convs with constant weights, canonical dense), each
    given a unique name and fresh parameter names ``tvmq.{index}.weight`` / ``.bias`` (a weight
    shared by two nodes is duplicated): (layers, params, param -> layer)."""
    layers: list[LayerInfo] = []
    params: dict[str, np.ndarray] = {}
    param_layer: dict[str, str] = {}
    used_names: set[str] = set()
    for n in g.nodes:
        info = _layer_info(g, n, shapes)
        if info is None:
            continue
        name = n.name or n.input[1]
        base, k = name, 1
        while name in used_names:
            name, k = f"{base}_{k}", k + 1
        used_names.add(name)
        index = len(layers)
        info = dataclasses.replace(info, name=name)
        layers.append(info)
        wname = f"tvmq.{index}.weight"
        params[wname] = np.ascontiguousarray(g.consts[n.input[1]].astype(np.float32))
        param_layer[wname] = name
        ins = list(n.input)
        ins[1] = wname
        if info.has_bias:
            bname = f"tvmq.{index}.bias"
            params[bname] = np.ascontiguousarray(g.consts[n.input[2]].astype(np.float32).reshape(-1))
            param_layer[bname] = name
            ins[2] = bname
        del n.input[:]
        n.input.extend(ins)
    return layers, params, param_layer


def _layer_info(g: og.Graph, n: onnx.NodeProto, shapes: dict) -> LayerInfo | None:
    """The (unnamed) layer of node ``n``, or None where ``n`` is not one."""
    if n.op_type == "Conv":
        if n.input[1] not in g.consts or len(shapes.get(n.input[0], ())) != 4:
            return None
        return _conv_info(g, n, shapes)
    if n.op_type in ("Gemm", "MatMul") and _canonical_dense(g, n, shapes):
        w = g.consts[n.input[1]]
        x_shape = shapes.get(n.input[0]) or ()
        if len(x_shape) != 2:
            return None
        return LayerInfo(name="", op="dense", node=n.name, input_tensor=n.input[0],
                         input_shape=tuple(x_shape),
                         output_shape=(x_shape[0], w.shape[0]), weight_shape=tuple(w.shape),
                         has_bias=len(n.input) > 2 and bool(n.input[2]),
                         macs=int(x_shape[0] * w.shape[0] * w.shape[1]))
    return None


def _conv_info(g: og.Graph, n: onnx.NodeProto, shapes: dict) -> LayerInfo:
    a = og.attrs(n)
    w = g.consts[n.input[1]]
    if w.ndim != 4:
        raise UnsupportedModelError(f"Conv node {n.name!r}: only 2-D convolutions are supported "
                                    f"(weight rank {w.ndim})")
    x_shape = shapes[n.input[0]]
    out_shape = shapes.get(n.output[0])
    kh, kw = w.shape[2], w.shape[3]
    strides = tuple(a.get("strides", [1, 1]))
    dil = tuple(a.get("dilations", [1, 1]))
    pads = list(a.get("pads", [0, 0, 0, 0]))  # auto_pad is explicit by now (og.explicit_auto_pad)
    top, left, bottom, right = int(pads[0]), int(pads[1]), int(pads[2]), int(pads[3])
    groups = int(a.get("group", 1))
    if out_shape is None:
        oh = (x_shape[2] + top + bottom - (kh - 1) * dil[0] - 1) // strides[0] + 1
        ow = (x_shape[3] + left + right - (kw - 1) * dil[1] - 1) // strides[1] + 1
        out_shape = (x_shape[0], w.shape[0], oh, ow)
    if len(x_shape) == 4 and x_shape[1] != w.shape[1] * groups:
        raise UnsupportedModelError(f"node {n.name!r}: its input has {x_shape[1]} channels, its weight "
                                    f"takes {w.shape[1] * groups} (input shape {tuple(x_shape)})")
    if len(out_shape) == 4 and min(out_shape[2], out_shape[3]) < 1:
        raise UnsupportedModelError(f"node {n.name!r}: a {kh}x{kw} kernel over a {x_shape[2]}x{x_shape[3]} "
                                        f"input (padded {top + bottom}, {left + right}) leaves no output")
    depthwise = groups > 1 and groups == x_shape[1] == w.shape[0]
    macs = int(np.prod(out_shape) * w.shape[1] * kh * kw)
    return LayerInfo(name="", op="depthwise_conv2d" if depthwise else "conv2d", node=n.name,
                     input_tensor=n.input[0],
                     input_shape=tuple(x_shape), output_shape=tuple(out_shape),
                     weight_shape=tuple(w.shape), has_bias=len(n.input) > 2 and bool(n.input[2]),
                     macs=macs, strides=(int(strides[0]), int(strides[1])), pads=(top, left, bottom, right),
                     dilations=(int(dil[0]), int(dil[1])), groups=groups)


def _relax_converters(table: dict[str, Any]) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """The converters ``_ops_as_relax_ops`` puts in the importer's ``table``: subclasses of
    its ``Clip``, ``Pad`` and ``Gather`` that emit Relax ops where their inputs allow and
    defer to the original otherwise."""
    from tvm import relax  # (deferred: reading and checking a model needs no TVM)

    original_clip, original_pad, original_gather = table["Clip"], table["Pad"], table["Gather"]

    def _bound(expr: Any, attr_value: Any, default: float) -> float | None:
        if expr is None:
            return float(attr_value) if attr_value is not None else default
        value = expr.value.numpy() if isinstance(expr, tvm_ir_constant()) else None
        return float(value.reshape(())) if value is not None and value.size == 1 else None

    def _clip(x: Any, lo: float, hi: float) -> Any:
        """``relax.clip`` with bounds in ``x``'s type: a NaN bound is no bound (as onnxruntime);
        an integer tensor's missing bounds are its type's range (not infinities)."""
        lo = -np.inf if np.isnan(lo) else lo
        hi = np.inf if np.isnan(hi) else hi
        dtype = str(x.ty.dtype)
        if dtype.startswith(("int", "uint")):
            info = np.iinfo(np.dtype(dtype))
            return relax.op.clip(x, int(max(lo, info.min)), int(min(hi, info.max)))
        return relax.op.clip(x, lo, hi)

    class Clip(original_clip):  # type: ignore[misc, valid-type]
        @classmethod
        def _impl_v1(cls, bb, inputs, attr, params):  # type: ignore[no-untyped-def]
            lo = float(attr.get("min", -np.inf))
            hi = float(attr.get("max", np.inf))
            return _clip(inputs[0], lo, hi)

        @classmethod
        def _impl_v11(cls, bb, inputs, attr, params):  # type: ignore[no-untyped-def]
            return cls._impl_v13(bb, inputs, attr, params)

        @classmethod
        def _impl_v13(cls, bb, inputs, attr, params):  # type: ignore[no-untyped-def]
            lo = _bound(inputs[1] if len(inputs) > 1 else None, None, -np.inf)
            hi = _bound(inputs[2] if len(inputs) > 2 else None, None, np.inf)
            if lo is None or hi is None:  # data-dependent bounds
                return original_clip._impl_v13(bb, inputs, attr, params)
            return _clip(inputs[0], lo, hi)

    class Pad(original_pad):  # type: ignore[misc, valid-type]
        @classmethod
        def _lower_pad(cls, bb, inputs, attr, params, allowed_modes):  # type: ignore[no-untyped-def]
            mode = {"constant": "constant", "edge": "replicate", "reflect": "reflect"}.get(
                attr.get("mode", b"constant").decode("utf-8"))
            if mode is None:
                return original_pad._lower_pad(bb, inputs, attr, params, allowed_modes)
            before, after, value = cls._parse_pads_and_axes(inputs, params)
            widths = [int(w) for pair in zip(before, after) for w in pair]
            return relax.op.nn.pad(inputs[0], widths, mode, float(value or 0.0))

    class Gather(original_gather):  # type: ignore[misc, valid-type]
        @classmethod
        def _impl_v13(cls, bb, inputs, attr, params):  # type: ignore[no-untyped-def]
            data, indices = inputs[0], inputs[1]
            if (isinstance(indices, tvm_ir_constant()) and str(indices.value.dtype).startswith("uint")
                    and not isinstance(data, relax.ShapeExpr)):
                # (onnx_graph.unsigned_gather_indices: in range by construction; "clip" keeps
                # TOPI from warning, once per take, that "fast" trusts them)
                return relax.op.take(data, indices, attr.get("axis", 0), mode="clip")
            return original_gather._impl_v13(bb, inputs, attr, params)

    return {"Clip": Clip, "Pad": Pad, "Gather": Gather}


@contextlib.contextmanager
def _ops_as_relax_ops():  # type: ignore[no-untyped-def]
    """Import ``Clip`` with constant bounds as ``relax.clip``, a ``Pad`` (constant, edge or
    reflect) as ``relax.nn.pad`` and a ``Gather`` of unsigned constant indices as one
    ``relax.take`` (for the duration of one import).

    TVM 0.27's importer lowers both straight to TIR calls (``emit_te``): that hides ReLU6 from
    the epilogue fusion of ``LowerToKernels`` and costs a full extra pass over memory per layer
    (``Max``/``Min`` are worse: ``stack`` + reduce), and it hides a pad's widths and value from
    ``RealizeIntegers`` (an integer pad with the zero point) and the numpy program. This is the
    one place tvmq touches the importer's converter table; the original table is restored on exit.
    """
    from tvm.relax.frontend.onnx import onnx_frontend as of  # (deferred: as above)

    original_map = of._get_convert_map
    converters = _relax_converters(original_map())

    def patched_map():  # type: ignore[no-untyped-def]
        return {**original_map(), **converters}

    of._get_convert_map = patched_map
    try:
        yield
    finally:
        of._get_convert_map = original_map


def tvm_ir_constant():  # type: ignore[no-untyped-def]
    import tvm  # (deferred: reading and checking a model needs no TVM)

    return tvm.ir.Constant


def to_relax(pm: PreparedModel):  # type: ignore[no-untyped-def]
    """Import the cleaned model: ``(IRModule, params)`` with layer weights as named params."""
    from tvm import relax  # (deferred: reading and checking a model needs no TVM)
    from tvm.relax.frontend.onnx import from_onnx  # (deferred: as above)

    try:
        with _ops_as_relax_ops():
            mod = from_onnx(pm.model, shape_dict={s.name: list(s.shape) for s in pm.inputs},
                            keep_params_in_input=True)
    except Exception as e:
        raise UnsupportedModelError(f"TVM's ONNX importer rejected the model: "
                                    f"{type(e).__name__}: {str(e).strip().splitlines()[-1]}") from None
    mod, params = relax.frontend.detach_params(mod)
    func = mod["main"]
    num_input = int(func.attrs["num_input"])
    names = [p.name for p in func.params[num_input:]]
    values = {n: v.numpy() for n, v in zip(names, params.get("main", []))}
    return mod, values
