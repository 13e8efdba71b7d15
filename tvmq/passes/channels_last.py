"""Channels-last propagation through the float ops between NHWC kernels (``LowerToKernels``).

An fp32 build keeps the convs' activations channels-last (``rw.channels_last`` maps an NCHW var
to its NHWC twin). Without this module every other op (a hard-swish written as add / clip /
multiply / divide, a squeeze-and-excitation ``mean`` and scale, a max pool, a global average
pool) read the NCHW view: a transpose out of the kernel and one back into the next, per op.
``propagate`` emits such an op on the NHWC twins instead and gives its result a twin too, so a
chain of them runs channels-last; the NCHW view is a transpose that dead-code elimination drops
where nothing reads it (a free reshape where H = W = 1, where both layouts are the same bytes).

Ops: elementwise ones with numpy broadcasting (every 4-D operand has a twin or is ``[N|1, C|1,
1, 1]``: a per-channel or scalar one, transposed once; a constant, transposed ahead of time),
``mean`` / ``sum`` / ``max`` / ``min`` over H and W, ``max_pool2d`` / ``avg_pool2d`` /
``adaptive_avg_pool2d`` in NCHW. Each element is computed by the same float32 operation in
either layout; only a reduction's summation may run in another order (float rounding).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tvm
from tvm import relax

ELEMENTWISE = frozenset(f"relax.{n}" for n in (
    "add", "subtract", "multiply", "divide", "maximum", "minimum", "power", "clip", "nn.relu",
    "nn.silu", "nn.gelu", "sigmoid", "tanh", "exp", "sqrt", "rsqrt", "negative", "abs", "floor",
    "ceil", "round", "nn.leakyrelu"))
REDUCE = frozenset(("relax.mean", "relax.sum", "relax.max", "relax.min"))
POOL = frozenset(("relax.nn.max_pool2d", "relax.nn.avg_pool2d", "relax.nn.adaptive_avg_pool2d"))
_TO_NHWC, _TO_NCHW = [0, 2, 3, 1], [0, 3, 1, 2]


def _shape(expr: relax.Expr) -> tuple[int, ...] | None:
    sinfo = expr.ty
    if not isinstance(sinfo, relax.TensorType) or sinfo.shape is None:
        return None
    try:
        return tuple(int(d) for d in sinfo.shape.values)
    except (TypeError, AttributeError):  # symbolic dimensions
        return None


def _nhwc_operand(rw: Any, a: relax.Expr, emit: bool = True) -> relax.Expr | None:
    """``a`` as an NHWC operand (its twin; a per-channel / scalar tensor transposed), None where
    it has no cheap NHWC form. Non-tensor arguments (clip's bounds) pass as they are. ``emit``
    False: only whether it has one (``a`` itself stands for the reshape not emitted)."""
    if not isinstance(a.ty, relax.TensorType):
        return a
    if a in rw.channels_last:
        return rw.channels_last[a]
    shape = _shape(a)
    if shape is None or len(shape) > 4:
        return None
    if len(shape) == 0:
        return a
    full = (1,) * (4 - len(shape)) + shape
    if full[2] != 1 or full[3] != 1:  # varies along H or W, without a channels-last twin
        return None
    nhwc = (full[0], 1, 1, full[1])
    if isinstance(a, tvm.ir.Constant) and hasattr(a.value, "numpy"):
        return relax.const(np.ascontiguousarray(a.value.numpy().reshape(nhwc)), a.ty.dtype)
    return rw.builder_.emit(relax.op.reshape(a, nhwc), name_hint="to_nhwc") if emit else a


def _hw_axes(call: relax.Call, ndim: int) -> bool:
    axes = call.attrs.axis
    return axes is not None and sorted(int(a) % ndim for a in axes) == [2, 3]


def _nhwc_call(rw: Any, call: relax.Call) -> relax.Expr | None:
    """``call`` on channels-last operands (None where it cannot run so)."""
    name = call.op.name
    if name in ELEMENTWISE:
        if (not any(a in rw.channels_last for a in call.args)
                or any(_nhwc_operand(rw, a, emit=False) is None for a in call.args)):
            return None  # (checked before any reshape is emitted)
        return relax.Call(call.op, [_nhwc_operand(rw, a) for a in call.args], call.attrs, call.ty_args)
    x = call.args[0]
    if x not in rw.channels_last or _shape(x) is None or len(_shape(x)) != 4:
        return None
    t = rw.channels_last[x]
    if name in REDUCE and _hw_axes(call, 4):
        return getattr(relax.op, name.split(".")[-1])(t, axis=[1, 2], keepdims=bool(call.attrs.keepdims))
    if name in POOL and call.attrs.layout == "NCHW" and call.attrs.out_layout == "NCHW":
        a = call.attrs
        if name == "relax.nn.adaptive_avg_pool2d":
            size = None if a.output_size is None else [int(s) for s in a.output_size]
            return relax.op.nn.adaptive_avg_pool2d(t, size, layout="NHWC")
        pool = relax.op.nn.max_pool2d if name == "relax.nn.max_pool2d" else relax.op.nn.avg_pool2d
        kw: dict[str, Any] = {"count_include_pad": bool(a.count_include_pad)} if name.endswith("avg_pool2d") else {}
        return pool(t, [int(s) for s in a.pool_size], [int(s) for s in a.strides],
                    [int(p) for p in a.padding], [int(d) for d in a.dilation], bool(a.ceil_mode),
                    layout="NHWC", **kw)
    return None


def propagate(rw: Any, binding: relax.VarBinding) -> bool:
    """Emit ``binding`` channels-last through the rewriter ``rw`` if it can run so (then its
    var's NCHW view and twin are registered and True is returned), else emit nothing."""
    call = binding.value
    if not rw.channels_last or not isinstance(call, relax.Call) or not isinstance(call.op, tvm.ir.Op):
        return False
    if call.op.name not in ELEMENTWISE | REDUCE | POOL:
        return False
    out = _shape(binding.var)
    if out is None:
        return False
    visited = relax.Call(call.op, [rw.visit_expr(a) for a in call.args], call.attrs, call.ty_args)
    nhwc = _nhwc_call(rw, visited)
    if nhwc is None:
        return False
    bb = rw.builder_
    y = bb.emit(nhwc, name_hint=f"{binding.var.name}_nhwc")
    emit = bb.emit if isinstance(binding.var, relax.DataflowVar) else bb.emit_output
    if len(out) != 4:  # a reduction without keepdims: [N, C] either way
        new = emit(y, name_hint=binding.var.name)
    elif out[2] == 1 and out[3] == 1:  # the same bytes in both layouts
        new = emit(relax.op.reshape(y, out), name_hint=binding.var.name)
    else:
        new = emit(relax.op.permute_dims(y, _TO_NCHW), name_hint=binding.var.name)
    if len(out) == 4:
        rw.channels_last[new] = y
    rw.set_var_remap(binding.var, new)
    return True
