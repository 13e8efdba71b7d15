"""The numpy program of a lowered quantized graph: the bit-exact oracle of the compiled library.

``RealizeIntegers`` records every op it emits (``NumpyProgram.record``): the integer ops, the
float layers in their kernels' summation order, and the float ops between layers that
``float_op`` reproduces exactly (TVM's legalized TOPI compute: one rounding per elementwise op,
sums in loop order, a matmul's fused multiply-adds; exp, sigmoid, tanh and softmax through the C
library's ``expf``, which the compiled code calls). Quantized builds do not fuse these ops (one
PrimFunc each: ``compiler.lowering_passes``), so no multiply and add are contracted across them.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import numpy as np
import tvm
from tvm import relax

from schedules import reference

from ..errors import TvmqError
from .lower_kernels import ADD, CLIP, MAXIMUM, MINIMUM, PERMUTE, RELU, const_value

MULTIPLY, SUBTRACT = tvm.ir.Op.get("relax.multiply"), tvm.ir.Op.get("relax.subtract")
DIVIDE, PRELU = tvm.ir.Op.get("relax.divide"), tvm.ir.Op.get("relax.nn.prelu")

MEAN, RESHAPE = tvm.ir.Op.get("relax.mean"), tvm.ir.Op.get("relax.reshape")
MAX_POOL, AVG_POOL = tvm.ir.Op.get("relax.nn.max_pool2d"), tvm.ir.Op.get("relax.nn.avg_pool2d")
PAD, STRIDED_SLICE = tvm.ir.Op.get("relax.nn.pad"), tvm.ir.Op.get("relax.strided_slice")
CONCAT, ASTYPE = tvm.ir.Op.get("relax.concat"), tvm.ir.Op.get("relax.astype")
TAKE, SOFTMAX, EXP = tvm.ir.Op.get("relax.take"), tvm.ir.Op.get("relax.nn.softmax"), tvm.ir.Op.get("relax.exp")
SQUEEZE, EXPAND_DIMS = tvm.ir.Op.get("relax.squeeze"), tvm.ir.Op.get("relax.expand_dims")
MATMUL, SIGMOID, TANH = tvm.ir.Op.get("relax.matmul"), tvm.ir.Op.get("relax.sigmoid"), tvm.ir.Op.get("relax.tanh")
SQRT, SPLIT, POWER = tvm.ir.Op.get("relax.sqrt"), tvm.ir.Op.get("relax.split"), tvm.ir.Op.get("relax.power")


@dataclass(frozen=True)
class QTensor:
    var: relax.Var  # uint8 (or int16)
    scale: float
    zp: int
    layout: str = "NCHW"  # of a 4-D tensor: NCHW, or NHWC (channels last)


class NumpyProgram:
    """The quantized graph as numpy, op for op: ``ops[var] = (fn, input vars)``, evaluated on
    demand. Integer ops (quantize, integer layers, requantize, integer pooling, dequantize) and,
    for plans with float layers, the float ops between them (``float_ops``: fp32 / bf16 layers
    in their kernels' summation order, ``kernel.float_reference``, and the elementwise / pooling
    ops tvmq reproduces exactly, ``float_op``): the bit-exact oracle of the compiled library."""

    def __init__(self) -> None:
        self.ops: dict[relax.Var, tuple[Callable[..., np.ndarray], list[relax.Var]]] = {}
        self.float_ops: set[relax.Var] = set()
        self.aliases: dict[relax.Var, relax.Var] = {}
        self.params: list[relax.Var] = []
        self.outputs: list[relax.Var] = []
        self.unsimulated: dict[relax.Var, str] = {}  # ops emitted without a numpy form, by name

    def record(self, var: relax.Var, fn: Callable[..., np.ndarray], inputs: list[relax.Var],
               *, is_float: bool = False) -> None:
        self.ops[var] = (fn, inputs)
        if is_float:
            self.float_ops.add(var)

    def simulated(self) -> bool:
        """Whether every model output is computed by recorded ops from the inputs (False when an
        op tvmq does not reproduce, e.g. a softmax, lies on the way: no exact oracle)."""
        seen: set[relax.Var] = set()
        try:
            for out in self.outputs:
                self._deps(out, seen)
        except KeyError:
            return False
        return True

    def missing(self) -> list[str]:
        """The ops on the way to an output that no recorded op reproduces (their names)."""
        seen: set[relax.Var] = set()
        lost: set[str] = set()

        stack = list(self.outputs)
        while stack:
            v = self._resolve(stack.pop())
            if v in seen or v in self.params:
                continue
            seen.add(v)
            if v not in self.ops:
                lost.add(self.unsimulated.get(v, "an op"))
            else:
                stack.extend(self.ops[v][1])
        return sorted(lost)

    def _resolve(self, v: relax.Var) -> relax.Var:
        while v in self.aliases:
            v = self.aliases[v]
        return v

    def _deps(self, v: relax.Var, seen: set[relax.Var]) -> None:
        stack = [v]
        while stack:
            v = self._resolve(stack.pop())
            if v in seen or v in self.params:
                continue
            seen.add(v)
            stack.extend(self.ops[v][1])  # KeyError: an op tvmq does not simulate

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        env: dict[relax.Var, np.ndarray] = dict(zip(self.params, inputs))
        for out in self.outputs:  # depth first with an explicit stack (graphs deeper than Python's recursion)
            stack = [self._resolve(out)]
            while stack:
                v = stack[-1]
                if v in env:
                    stack.pop()
                    continue
                fn, ins = self.ops[v]
                todo = [i for i in map(self._resolve, ins) if i not in env]
                if todo:
                    stack.extend(todo)
                    continue
                env[v] = fn(*[env[self._resolve(i)] for i in ins])
                stack.pop()
        return [env[self._resolve(o)] for o in self.outputs]


def max_pool_geometry(call: relax.Call, out_shape: tuple[int, ...]) -> tuple | None:
    """(output size, window, strides, dilation, top-left padding) of an NCHW max pool."""
    a = call.attrs
    if a.layout != "NCHW" or a.out_layout != "NCHW" or len(out_shape) != 4:
        return None
    return (tuple(out_shape[2:]), tuple(int(k) for k in a.pool_size), tuple(int(k) for k in a.strides),
            tuple(int(k) for k in a.dilation), (int(a.padding[0]), int(a.padding[1])))


def avg_pool_geometry(call: relax.Call, out_shape: tuple[int, ...]) -> tuple | None:
    """(output size, window, strides, top-left padding, count_include_pad) of an NCHW average
    pool without dilation or ceil mode; None for any other."""
    a = call.attrs
    if (a.layout != "NCHW" or a.out_layout != "NCHW" or len(out_shape) != 4 or bool(a.ceil_mode)
            or any(int(d) != 1 for d in a.dilation)):
        return None
    return (tuple(out_shape[2:]), tuple(int(k) for k in a.pool_size), tuple(int(k) for k in a.strides),
            (int(a.padding[0]), int(a.padding[1])), bool(a.count_include_pad))


def is_global_avg_pool(call: relax.Call) -> bool:
    """An NCHW average pool whose window is the whole unpadded map."""
    a, shape = call.attrs, [int(d) for d in call.args[0].ty.shape]
    return (len(shape) == 4 and a.layout == "NCHW" and [int(k) for k in a.pool_size] == shape[2:]
            and not any(int(p) for p in a.padding))


def slice_index(call: relax.Call) -> tuple[slice, ...] | None:
    """The numpy index of a ``relax.strided_slice`` with constant axes, begins, ends and
    strides (ONNX semantics: ends clamped to the axis, negative positions from the end)."""
    shape = [int(d) for d in call.args[0].ty.shape]
    try:
        axes, begin, end, strides = ([int(v) for v in arg] for arg in call.args[1:5])
    except (TypeError, ValueError, AttributeError):
        return None
    index = [slice(None)] * len(shape)
    for ax, b, e, s in zip(axes, begin, end, strides):
        index[ax % len(shape)] = slice(b, e, s)
    return tuple(index)


def tensor_args(call: relax.Call) -> list[int]:
    """Positions of the tensor arguments of a float op (clip's bounds and reshape's shape are
    attributes, read by ``float_op``)."""
    if call.op in (CLIP, RESHAPE, STRIDED_SLICE, SQUEEZE, EXPAND_DIMS):
        return [0]
    return list(range(len(call.args)))


# pads that copy the tensor's own elements (relax's mode: numpy's), exact on any element type
PAD_MODES = {"replicate": "edge", "reflect": "reflect"}


def pad_pairs(call: relax.Call) -> list[tuple[int, int]]:
    widths = [int(w) for w in call.attrs.pad_width]
    return list(zip(widths[::2], widths[1::2]))


def copy_pad(x: np.ndarray, pairs: list[tuple[int, int]], mode: str) -> np.ndarray:
    return np.pad(x, pairs, mode=mode)  # type: ignore[call-overload]


def take_indices(call: relax.Call) -> tuple[np.ndarray, int] | None:
    """``(indices, axis)`` of a take whose indices are a constant (a nearest ``Resize``'s
    gathers, ``onnx_graph.resize_nearest_to_gathers``), else None."""
    idx = call.args[1]
    if not (isinstance(idx, tvm.ir.Constant) and hasattr(idx.value, "numpy")) or call.attrs.axis is None:
        return None
    return idx.value.numpy().astype(np.int64), int(call.attrs.axis) % len(call.args[0].ty.shape)


# float32 elementwise ops without attributes, one IEEE rounding each (as TOPI computes them)
_ELEMENTWISE: dict[str, Callable[..., np.ndarray]] = {
    "relax.add": lambda x, y: np.add(x, y, dtype=np.float32),
    "relax.subtract": lambda x, y: np.subtract(x, y, dtype=np.float32),
    "relax.multiply": lambda x, y: np.multiply(x, y, dtype=np.float32),
    "relax.divide": lambda x, y: np.divide(x, y, dtype=np.float32),
    "relax.maximum": np.maximum, "relax.minimum": np.minimum,
    "relax.nn.relu": lambda x: np.maximum(x, np.float32(0)),
    "relax.sqrt": lambda x: np.sqrt(x, dtype=np.float32),  # (sqrtss / vsqrtps and numpy: correctly rounded)
}


def float_op(call: relax.Call, fma: bool = True) -> Callable[..., np.ndarray] | None:
    """numpy for a float op between layers that gives TVM's result bit for bit (its legalized
    TOPI compute: one rounding per elementwise op, sums in loop order, with fused multiply-adds
    where the target has them: ``fma``), as a function of the call's tensor arguments; None
    for an op tvmq does not reproduce (or one on other types)."""
    a = call.attrs
    op = call.op
    if op == SPLIT and all(str(getattr(f, "dtype", "")) == "float32" for f in getattr(call.ty, "fields", [])):
        axis, parts = int(a.axis), a.indices_or_sections  # (a tuple: its items are TupleGetItems)
        cuts = int(parts) if hasattr(parts, "value") or isinstance(parts, int) else [int(i) for i in parts]
        return lambda x: tuple(np.split(x, cuts, axis=axis))
    if str(getattr(call.ty, "dtype", "")) != "float32":
        return None
    simple = _ELEMENTWISE.get(str(op.name) if isinstance(op, tvm.ir.Op) else "")
    if simple is not None:
        return simple
    if op == PRELU and int(a.axis) == 1:  # topi: x > 0 ? x : x * slope (slopes along axis 1)
        def prelu(x: np.ndarray, slope: np.ndarray) -> np.ndarray:
            s = slope.reshape(-1, *([1] * (x.ndim - 2))) if slope.ndim == 1 else slope
            return np.where(x > 0, x, np.multiply(x, s, dtype=np.float32))
        return prelu
    if op == CLIP:
        lo, hi = np.float32(call.args[1].value), np.float32(call.args[2].value)
        return lambda x: np.maximum(np.minimum(x, hi), lo)
    if op in (RESHAPE, SQUEEZE, EXPAND_DIMS):
        shape = tuple(int(d) for d in call.ty.shape)
        return lambda x: x.reshape(shape)
    if op == PERMUTE:
        axes = None if a.axes is None else [int(i) for i in a.axes]
        return lambda x: np.transpose(x, axes)
    if op == MEAN:
        ndim = len(call.args[0].ty.shape)
        axes = sorted(int(i) % ndim for i in a.axis) if a.axis is not None else list(range(ndim))
        return lambda x: reference.mean_in_order(x, axes, bool(a.keepdims))
    if op == MAX_POOL:
        geometry = max_pool_geometry(call, tuple(int(d) for d in call.ty.shape))
        if geometry is None:
            return None
        return lambda x: reference.max_pool(x, *geometry, np.float32(-np.inf))
    if op == PAD and a.pad_mode == "constant":
        widths = [int(w) for w in a.pad_width]
        pairs, value = list(zip(widths[::2], widths[1::2])), np.float32(float(a.pad_value))
        return lambda x: np.pad(x, pairs, constant_values=value)
    if op == PAD and a.pad_mode in PAD_MODES:
        return functools.partial(copy_pad, pairs=pad_pairs(call), mode=PAD_MODES[a.pad_mode])
    if op == STRIDED_SLICE:
        index = slice_index(call)
        return None if index is None else (lambda x: np.ascontiguousarray(x[index]))
    if op == CONCAT:
        axis = int(a.axis)
        return lambda *xs: np.concatenate(xs, axis=axis)
    if op == ASTYPE:  # to float32 (the check above): exact from integers and float32
        return lambda x: x.astype(np.float32)
    if op == AVG_POOL and is_global_avg_pool(call):  # topi: the window sum, then one division
        return lambda x: reference.mean_in_order(x, [2, 3], True)
    if op == MATMUL:
        return functools.partial(reference.matmul_in_order, fma=fma)
    exponent = const_value(call.args[1]) if op == POWER else None
    if exponent is not None and exponent.size == 1 and reference.has_libm_expf():  # a constant exponent
        return lambda x, _: reference.power_llvm(x, float(exponent.reshape(())))
    if op == SOFTMAX and reference.has_libm_expf():
        axis = int(a.axis)
        return lambda x: reference.softmax_in_order(x, axis)
    if op in (EXP, SIGMOID, TANH) and reference.has_libm_expf():
        return {EXP: reference.libm_expf, SIGMOID: reference.sigmoid_libm, TANH: reference.tanh_libm}[op]
    if op == TAKE and take_indices(call) is not None:
        index, axis = take_indices(call)  # type: ignore[misc]
        return lambda x, _: np.take(x, index, axis=axis)
    return None
