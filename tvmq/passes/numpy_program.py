"""The numpy program of a lowered quantized graph: the bit-exact oracle of the compiled library.

``RealizeIntegers`` records every op it emits (``NumpyProgram.record``): the integer ops, the
float layers in their kernels' summation order, and the float ops between layers that
``float_op`` reproduces exactly (TVM's legalized TOPI compute: one rounding per elementwise op,
sums in loop order).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import tvm
from tvm import relax

from schedules import reference

from ..errors import TvmqError
from .lower_kernels import ADD, CLIP, MAXIMUM, MINIMUM, PERMUTE, RELU

MEAN, RESHAPE = tvm.ir.Op.get("relax.mean"), tvm.ir.Op.get("relax.reshape")
MAX_POOL, AVG_POOL = tvm.ir.Op.get("relax.nn.max_pool2d"), tvm.ir.Op.get("relax.nn.avg_pool2d")


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

    def record(self, var: relax.Var, fn: Callable[..., np.ndarray], inputs: list[relax.Var],
               *, is_float: bool = False) -> None:
        self.ops[var] = (fn, inputs)
        if is_float:
            self.float_ops.add(var)

    def check_integer_only(self) -> bool:
        """No float op between quantized layers (a plan with no float layer): every integer op
        must be fed by the model's inputs or by other integer ops. Float ops after the last
        integer layer (a softmax on the logits) are allowed. Returns ``simulated()``."""
        floats = sorted({i.name for v, (_, ins) in self.ops.items() if v not in self.float_ops
                         for i in map(self._resolve, ins)
                         if (i not in self.ops or i in self.float_ops) and i not in self.params})
        if floats:
            raise TvmqError(f"not integer-only: {', '.join(floats[:5])} computed by a float op "
                            f"feeds an integer one (a float op between quantized layers)")
        return self.simulated()

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

    def _resolve(self, v: relax.Var) -> relax.Var:
        while v in self.aliases:
            v = self.aliases[v]
        return v

    def _deps(self, v: relax.Var, seen: set[relax.Var]) -> None:
        v = self._resolve(v)
        if v in seen or v in self.params:
            return
        seen.add(v)
        for i in self.ops[v][1]:  # KeyError: an op tvmq does not simulate
            self._deps(i, seen)

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        env: dict[relax.Var, np.ndarray] = dict(zip(self.params, inputs))

        def value(v: relax.Var) -> np.ndarray:
            v = self._resolve(v)
            if v not in env:
                fn, ins = self.ops[v]
                env[v] = fn(*[value(i) for i in ins])
            return env[v]

        return [value(o) for o in self.outputs]


def max_pool_geometry(call: relax.Call, out_shape: tuple[int, ...]) -> tuple | None:
    """(output size, window, strides, dilation, top-left padding) of an NCHW max pool."""
    a = call.attrs
    if a.layout != "NCHW" or a.out_layout != "NCHW" or len(out_shape) != 4:
        return None
    return (tuple(out_shape[2:]), tuple(int(k) for k in a.pool_size), tuple(int(k) for k in a.strides),
            tuple(int(k) for k in a.dilation), (int(a.padding[0]), int(a.padding[1])))


def is_global_avg_pool(call: relax.Call) -> bool:
    """An NCHW average pool whose window is the whole unpadded map."""
    a, shape = call.attrs, [int(d) for d in call.args[0].ty.shape]
    return (len(shape) == 4 and a.layout == "NCHW" and [int(k) for k in a.pool_size] == shape[2:]
            and not any(int(p) for p in a.padding))


def tensor_args(call: relax.Call) -> list[int]:
    """Positions of the tensor arguments of a float op (clip's bounds and reshape's shape are
    attributes, read by ``float_op``)."""
    if call.op == CLIP or call.op == RESHAPE:
        return [0]
    return list(range(len(call.args)))


def float_op(call: relax.Call) -> Callable[..., np.ndarray] | None:
    """numpy for a float op between layers that gives TVM's result bit for bit (its legalized
    TOPI compute: one rounding per elementwise op, sums in loop order), as a function of the
    call's tensor arguments; None for an op tvmq does not reproduce (or one on other types)."""
    if str(getattr(call.ty, "dtype", "")) != "float32":
        return None
    a = call.attrs
    op = call.op
    if op == ADD:
        return lambda x, y: np.add(x, y, dtype=np.float32)
    if op == MAXIMUM:
        return lambda x, y: np.maximum(x, y)
    if op == MINIMUM:
        return lambda x, y: np.minimum(x, y)
    if op == RELU:
        return lambda x: np.maximum(x, np.float32(0))
    if op == CLIP:
        lo, hi = np.float32(call.args[1].value), np.float32(call.args[2].value)
        return lambda x: np.maximum(np.minimum(x, hi), lo)
    if op == RESHAPE:
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
    if op == AVG_POOL and is_global_avg_pool(call):  # topi: the window sum, then one division
        return lambda x: reference.mean_in_order(x, [2, 3], True)
    return None
