"""``LowerToKernels``: each conv / depthwise conv / dense layer becomes one ``schedules`` kernel
(a ``tvm.transform`` module pass).

Precondition: ``main`` as imported by ``frontend.to_relax`` (layer weights and biases are function
parameters named ``tvmq.<i>.weight`` / ``tvmq.<i>.bias``), before ``BindParams``.

For every ``conv2d(x, W)`` / ``matmul(x, permute_dims(W))`` whose weight is a layer parameter, the
chain ``-> add(bias) [-> add(residual)] [-> relu | clip | maximum(lo) [-> minimum(hi)]]`` after it
(each link with a single user; with ``hardswish``, instead of the activation, a HardSwish:
``hardswish_links``) is replaced by one ``call_tir`` of the kernel the registry selects, with the
weight packed ahead of time and the epilogue fused. Identical workloads share one ``PrimFunc``.

Postcondition: no ``relax.nn.conv2d`` / ``relax.matmul`` is left on a layer weight; each kernel
``PrimFunc`` carries ``tirx.is_scheduled`` and ``op_pattern = kOpaque`` (so ``FuseOps`` leaves it
alone) and the attribute ``tvmq.layer`` naming its first layer. The ``Lowering`` record given to
the pass gets, per layer, the kernel and configuration chosen (``LoweredLayer``) and the bytes
of its packed weights.

``LayerMatcher`` (finding layers and their epilogue chains) and ``KernelCatalog`` (one PrimFunc
per distinct kernel, workload and configuration) are shared with ``RealizeIntegers``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Callable

import numpy as np
import tvm
from tvm import relax

from schedules import elementwise, registry
from schedules.target_features import TargetFeatures
from schedules.workload import Conv2dWorkload, DenseWorkload, Epilogue

from ..frontend import LayerInfo, LayerTable
from .channels_last import propagate
from .records import LoweredLayer, Lowering, Switch

_OP_OPAQUE = 8  # relax OpPatternKind.kOpaque

# (kernel, workload, layer name) -> (kernel configuration, where it came from)
ConfigChooser = Callable[[registry.KernelDef, Any, str], tuple[Any, str]]


def _op(name: str) -> tvm.ir.Op:
    return tvm.ir.Op.get(name)


CONV2D, MATMUL, ADD = _op("relax.nn.conv2d"), _op("relax.matmul"), _op("relax.add")
RELU, MAXIMUM, MINIMUM = _op("relax.nn.relu"), _op("relax.maximum"), _op("relax.minimum")
RESHAPE, PERMUTE, CLIP = _op("relax.reshape"), _op("relax.permute_dims"), _op("relax.clip")
MULTIPLY, DIVIDE = _op("relax.multiply"), _op("relax.divide")


def const_value(expr: relax.Expr) -> np.ndarray | None:
    """The value of a tensor constant, else None."""
    if isinstance(expr, tvm.ir.Constant) and hasattr(expr.value, "numpy"):
        return expr.value.numpy()
    return None


@dataclass
class LayerMatch:
    """One layer found in ``main``: its input, weights and the epilogue chain it absorbs."""

    layer: LayerInfo
    data: relax.Expr
    weight: np.ndarray
    bias: np.ndarray | None
    residual: relax.Expr | None
    epilogue: Epilogue
    workload: Conv2dWorkload | DenseWorkload
    chain: list[relax.Var]
    tail: relax.Var


def finish_module(rw: relax.PyExprMutator, new_main: relax.Function) -> tvm.IRModule:
    out = rw.builder_.get()
    out.update_func(out.get_global_var("main"), new_main)
    out = relax.transform.Normalize()(out)
    return relax.transform.DeadCodeElimination(["main"])(out)


class _Analysis:
    """Bindings of ``main`` by var, and how many times each var is used."""

    def __init__(self, func: relax.Function) -> None:
        self.value: dict[relax.Var, relax.Expr] = {}
        self.uses: dict[relax.Var, int] = {}
        self.user: dict[relax.Var, relax.VarBinding] = {}
        self.users: dict[relax.Var, list[relax.VarBinding]] = {}
        for block in func.body.blocks:
            for b in block.bindings:
                self.value[b.var] = b.value
                for v in relax.analysis.free_vars(b.value):
                    self.uses[v] = self.uses.get(v, 0) + 1
                    self.user[v] = b
                    self.users.setdefault(v, []).append(b)
        for v in relax.analysis.free_vars(func.body.body):
            self.uses[v] = self.uses.get(v, 0) + 2  # a function output is never fused away

    def single_user(self, var: relax.Var) -> relax.VarBinding | None:
        return self.user.get(var) if self.uses.get(var, 0) == 1 else None


def hardswish_links(x: relax.Var, an: _Analysis) -> tuple[str, list[relax.Var]] | None:
    """A HardSwish of ``x``: ``("hardswish", [add, clip, divide, multiply])`` for
    ``multiply(x, divide(clip(add(x, 3), 0, 6), 6))`` (ONNX HardSwish as TVM imports it), or
    ``("hardswish_mul_div", [add, clip, multiply, divide])`` for ``divide(multiply(x, clip(add(x,
    3), 0, 6)), 6)`` (as exporters spell it out); multiplies' operands in either order, ``x`` with
    exactly these two users and each link one user. Else None."""
    users = an.users.get(x, [])
    if an.uses.get(x) != 2 or len(users) != 2 or not all(isinstance(b.value, relax.Call) for b in users):
        return None
    add = next((b for b in users if b.value.op == ADD), None)
    if add is None or _other_scalar(add.value, x) != 3.0:
        return None
    clip = an.single_user(add.var)
    if clip is None or not isinstance(clip.value, relax.Call) or clip.value.op != CLIP \
            or (float(clip.value.args[1].value), float(clip.value.args[2].value)) != (0.0, 6.0):
        return None
    nxt = an.single_user(clip.var)
    if nxt is None or not isinstance(nxt.value, relax.Call):
        return None
    if nxt.value.op == DIVIDE and nxt.value.args[0].same_as(clip.var) and _other_scalar(nxt.value, clip.var) == 6.0:
        mul = an.single_user(nxt.var)
        if mul is not None and _multiplies(mul, x, nxt.var):
            return "hardswish", [add.var, clip.var, nxt.var, mul.var]
    elif _multiplies(nxt, x, clip.var):
        div = an.single_user(nxt.var)
        if div is not None and isinstance(div.value, relax.Call) and div.value.op == DIVIDE \
                and div.value.args[0].same_as(nxt.var) and _other_scalar(div.value, nxt.var) == 6.0:
            return "hardswish_mul_div", [add.var, clip.var, nxt.var, div.var]
    return None


def _multiplies(b: relax.VarBinding, x: relax.Var, y: relax.Var) -> bool:
    """Whether ``b`` is ``multiply(x, y)`` or ``multiply(y, x)``."""
    if not isinstance(b.value, relax.Call) or b.value.op != MULTIPLY:
        return False
    p, q = b.value.args
    return bool((p.same_as(x) and q.same_as(y)) or (p.same_as(y) and q.same_as(x)))


def _other_scalar(call: relax.Call, prev: relax.Var) -> float | None:
    """The scalar constant operand of a binary ``call`` whose other operand is ``prev``."""
    if len(call.args) != 2 or not any(a.same_as(prev) for a in call.args):
        return None
    other = call.args[1] if call.args[0].same_as(prev) else call.args[0]
    value = const_value(other)
    return float(value.reshape(())) if value is not None and value.size == 1 else None


class LayerMatcher:
    """Finds every layer of ``main`` with the epilogue chain it absorbs (see the module docstring)."""

    def __init__(self, layers: LayerTable, params: dict[str, np.ndarray], param_layer: dict[str, str],
                 hardswish: bool = False) -> None:
        self.layers = layers
        self.params = params
        self.param_layer = param_layer
        self.hardswish = hardswish  # also absorb a HardSwish (``hardswish_links``) as the activation
        self._claimed: set[relax.Var] = set()
        self._hardswish: dict[relax.Var, str] = {}  # the first var of each HardSwish absorbed: its form

    def match(self, mod: tvm.IRModule) -> list[LayerMatch]:
        """Every layer of ``main`` with the epilogue chain it absorbs, in binding order."""
        func = mod["main"]
        an = _Analysis(func)
        params = {p.name: p for p in func.params}
        matches = []
        for block in func.body.blocks:
            for b in block.bindings:
                match = self._match_layer(b, an, params)
                if match is None:
                    continue
                layer, data, weight, chain, tail = match
                bias, residual, ep = self._epilogue(chain, an)
                matches.append(LayerMatch(layer, data, weight, bias, residual, ep,
                                          layer_workload(layer, ep), chain, tail))
        return matches

    # -- matching --------------------------------------------------------------------------
    def _param_name(self, expr: relax.Expr, an: _Analysis, kind: str) -> str | None:
        if isinstance(expr, relax.Var) and expr.name in self.param_layer and expr.name.endswith(kind):
            return expr.name
        return None

    def _match_layer(self, b: relax.VarBinding, an: _Analysis, params: dict) -> Any:
        v = b.value
        if not isinstance(v, relax.Call):
            return None
        if v.op == CONV2D:
            wname = self._param_name(v.args[1], an, ".weight")
        elif v.op == MATMUL:
            w = v.args[1]
            if isinstance(w, relax.Var) and isinstance(an.value.get(w), relax.Call) \
                    and an.value[w].op == PERMUTE and an.uses.get(w) == 1:
                wname = self._param_name(an.value[w].args[0], an, ".weight")
            else:
                wname = None
        else:
            return None
        if wname is None:
            return None
        layer = self.layers[self.param_layer[wname]]
        chain = [b.var]
        return layer, v.args[0], self.params[wname], chain, self._extend_chain(chain, an)

    def _extend_chain(self, chain: list[relax.Var], an: _Analysis) -> relax.Var:
        """Grow ``chain`` over bias add, residual add and activation; returns its tail var.

        A binding joins at most one chain (the two convs of a ResNet block both feed one add:
        the first claims it and takes the other as its residual).
        """
        state = "bias"
        while True:
            if self.hardswish and state in ("bias", "residual", "act"):
                found = hardswish_links(chain[-1], an)
                if found is not None and not self._claimed.intersection(found[1]):
                    chain.extend(found[1])
                    self._hardswish[found[1][0]] = found[0]
                    break
            nxt = an.single_user(chain[-1])
            if nxt is None or not isinstance(nxt.value, relax.Call) or nxt.var in self._claimed:
                break
            call = nxt.value
            if state == "bias" and call.op == ADD and self._bias_name(call, chain[-1], an):
                state = "residual"
            elif state in ("bias", "residual") and call.op == ADD \
                    and self._residual_operand(call, chain[-1]) is not None:
                state = "act"
            elif state in ("bias", "residual", "act") and call.op in (RELU, CLIP):
                state = "done"
            elif state in ("bias", "residual", "act") and call.op in (MAXIMUM, MINIMUM) \
                    and self._scalar_operand(call, chain[-1]) is not None:
                state = "clip2" if call.op == MAXIMUM else "done"
            elif state == "clip2" and call.op == MINIMUM \
                    and self._scalar_operand(call, chain[-1]) is not None:
                state = "done"
            else:
                break
            chain.append(nxt.var)
            if state == "done":
                break
        self._claimed.update(chain)
        return chain[-1]

    @staticmethod
    def _residual_operand(call: relax.Call, prev: relax.Var) -> relax.Expr | None:
        """The other operand of ``add(prev, other)`` when it is a tensor of ``prev``'s shape."""
        other = call.args[1] if call.args[0].same_as(prev) else call.args[0]
        if other.same_as(prev) or const_value(other) is not None:
            return None
        try:
            same = [int(d) for d in other.ty.shape] == [int(d) for d in prev.ty.shape]
        except (AttributeError, TypeError):
            return None
        return other if same and str(other.ty.dtype) == str(prev.ty.dtype) else None

    def _bias_name(self, call: relax.Call, prev: relax.Var, an: _Analysis) -> str | None:
        other = call.args[1] if call.args[0].same_as(prev) else call.args[0]
        if isinstance(other, relax.Var) and other in an.value:
            inner = an.value[other]
            if isinstance(inner, relax.Call) and inner.op == RESHAPE and an.uses.get(other) == 1:
                other = inner.args[0]
        return self._param_name(other, an, ".bias")

    @staticmethod
    def _scalar_operand(call: relax.Call, prev: relax.Var) -> float | None:
        other = call.args[1] if call.args[0].same_as(prev) else call.args[0]
        value = const_value(other)
        if value is None or value.size != 1:
            return None
        return float(value.reshape(()))

    def _epilogue(self, chain: list[relax.Var], an: _Analysis
                  ) -> tuple[np.ndarray | None, relax.Expr | None, Epilogue]:
        bias, residual = None, None
        act, lo, hi = "none", float("-inf"), float("inf")
        for prev, var in zip(chain, chain[1:]):
            call = an.value[var]
            if var in self._hardswish:
                act = self._hardswish[var]
                break
            if call.op == ADD and bias is None and residual is None and self._bias_name(call, prev, an):
                bias = self.params[self._bias_name(call, prev, an)].reshape(-1)
            elif call.op == ADD:
                residual = self._residual_operand(call, prev)
            elif call.op == RELU:
                act = "relu"
            elif call.op == CLIP:
                act, lo, hi = "clip", float(call.args[1].value), float(call.args[2].value)
            elif call.op == MAXIMUM:
                act, lo = "clip", self._scalar_operand(call, prev)
            elif call.op == MINIMUM:
                act, hi = "clip", self._scalar_operand(call, prev)
        if act == "clip" and lo == 0.0 and hi == float("inf"):
            act = "relu"
        ep = Epilogue(bias=bias is not None, activation=act,  # type: ignore[arg-type]
                      clip_min=lo if act == "clip" else 0.0, clip_max=hi if act == "clip" else 0.0,
                      residual=residual is not None)
        return bias, residual, ep



class KernelCatalog:
    """The kernel PrimFuncs of one lowering: one per distinct (kernel, workload, configuration),
    named ``tvmq_<op>_<precision>_<i>`` in creation order, added to the module through a
    rewriter's block builder (``typed``) so that calls get typed ``GlobalVar``s."""

    def __init__(self, features: TargetFeatures, configs: ConfigChooser | None) -> None:
        self.features = features
        self.configs = configs
        self._cache: dict[tuple[str, str], tuple[relax.GlobalVar, Any]] = {}
        self.funcs: dict[str, tvm.tirx.PrimFunc] = {}  # every new PrimFunc, by name
        self._extra: list[str] = []  # the names of the PrimFuncs that are not layer kernels
        self._typed: dict[str, relax.GlobalVar] = {}
        self.config_source: dict[str, str] = {}  # kernel function name -> where its config came from

    def add_kernel(self, kernel: registry.KernelDef, wl: Any, layer: str) -> tuple[relax.GlobalVar, Any]:
        """The (shared) PrimFunc of ``kernel`` for ``wl`` with its configuration (``configs``)."""
        if self.configs is None:
            cfg, source = kernel.fallback_config(wl, self.features), "fallback"
        else:
            cfg, source = self.configs(kernel, wl, layer)
        key = (str(kernel.key), wl.key() + repr(cfg))
        if key not in self._cache:
            fname = f"tvmq_{kernel.key.op}_{kernel.key.precision}_{len(self._cache)}"
            self.config_source[fname] = source
            pf = kernel.build_primfunc(wl, cfg).with_attrs(
                {"global_symbol": fname, "op_pattern": _OP_OPAQUE, "tvmq.layer": layer})
            self.funcs[fname] = pf
            self._cache[key] = (relax.GlobalVar(fname), cfg)
        return self._cache[key]

    def add_func(self, fname: str, make: Callable[[], tvm.tirx.PrimFunc]) -> relax.GlobalVar:
        """An extra PrimFunc (not a layer kernel), made once."""
        if fname not in self.funcs:
            self.funcs[fname] = make().with_attrs({"global_symbol": fname, "op_pattern": _OP_OPAQUE})
            self._extra.append(fname)
        return relax.GlobalVar(fname)

    def add_all(self, builder: relax.BlockBuilder) -> None:
        """Every PrimFunc into ``builder``'s module: the kernels in creation order, then the rest."""
        for gv, _ in self._cache.values():
            self.typed(builder, gv)
        for name in self._extra:
            self.typed(builder, relax.GlobalVar(name))

    def typed(self, builder: relax.BlockBuilder, gv: relax.GlobalVar) -> relax.GlobalVar:
        """``gv``'s PrimFunc added to ``builder``'s module (once): the typed ``GlobalVar``."""
        if gv.name_hint not in self._typed:
            self._typed[gv.name_hint] = builder.add_func(self.funcs[gv.name_hint], gv.name_hint)
        return self._typed[gv.name_hint]

    def lowered(self, kernel: registry.KernelDef, gv: relax.GlobalVar, cfg: Any,
                epilogue: Epilogue, layout: str = "NCHW", narrow_weights: bool = False) -> LoweredLayer:
        return LoweredLayer(str(kernel.key), gv.name_hint, asdict(cfg), epilogue.to_json(),
                            self.config_source[gv.name_hint], layout, narrow_weights)


@dataclass
class FloatCall:
    """How a rewriter emits one float layer (fp32 or bf16 kernel, float32 in and out)."""

    gv: relax.GlobalVar
    data: relax.Expr
    consts: list[relax.Expr]
    residual: relax.Expr | None
    simulate: Callable[..., np.ndarray]  # numpy, bit for bit (``KernelDef.float_reference``)
    layer: str
    in_shape: tuple[int, ...]  # what the kernel reads (a free view of the layer input)
    layer_in_shape: tuple[int, ...]
    buf_shape: tuple[int, ...]  # what the kernel writes (a free view of the layer output)
    out_shape: tuple[int, ...]
    interior: set[relax.Var]  # the chain's vars the call replaces, the tail aside
    fq: tuple[relax.GlobalVar, relax.Var] | None = None  # switchable: the input's fake_quantize
    layout: str = "NCHW"  # the kernel's activations (NHWC: the rewriter keeps them channels-last)


def float_call(m: LayerMatch, precision: str, catalog: KernelCatalog, record: Lowering, *,
               switchable: bool = False) -> FloatCall:
    """Layer ``m`` on its ``precision`` (``fp32``, or ``bf16``: bf16 weights and inputs, fp32
    accumulation) kernel: the PrimFunc, the packed weight, the record's entries. ``switchable``:
    the weights (and bias) become parameters of ``main`` and the input passes a run-time
    ``fake_quantize`` (``record.switches``, in order)."""
    features = catalog.features
    kernel = registry.select_for(m.workload, precision, features)
    gv, cfg = catalog.add_kernel(kernel, m.workload, m.layer.name)
    packed = kernel.pack_weight(m.weight, m.workload, cfg)
    consts: list[relax.Expr] = [relax.const(packed)]
    record.weight_bytes[m.layer.name] = int(packed.nbytes)
    if m.epilogue.bias:
        consts.append(relax.const(m.bias.astype(np.float32)))
    layout = getattr(m.workload, "layout", "NCHW")
    record.kernels[m.layer.name] = catalog.lowered(kernel, gv, cfg, m.epilogue, layout)
    in_shape, out_shape = tuple(m.layer.input_shape), tuple(m.layer.output_shape)
    to_kernel, from_kernel = ((0, 2, 3, 1), (0, 3, 1, 2)) if layout == "NHWC" else ((0, 1, 2, 3),) * 2

    def simulate(x: np.ndarray, residual: np.ndarray | None = None) -> np.ndarray:
        """numpy, bit for bit: this kernel's summation order and roundings (NCHW in and out)."""
        nchw_out = tuple(m.workload.out_shape[i] for i in from_kernel) if len(out_shape) == 4 else out_shape
        res = None if residual is None else residual.reshape(nchw_out)
        res = res.transpose(to_kernel) if res is not None and res.ndim == 4 else res
        x = x.reshape(in_shape).transpose(to_kernel) if len(in_shape) == 4 else x.reshape(in_shape)
        y = kernel.float_reference(m.workload, cfg, x, m.weight, m.bias, res, fma=features.fused_multiply_add)
        return (y.transpose(from_kernel) if y.ndim == 4 else y).reshape(out_shape)

    call = FloatCall(gv, m.data, consts, m.residual, simulate, m.layer.name,
                     tuple(kernel.input_shape(m.workload, cfg)), tuple(m.layer.input_shape),
                     tuple(kernel.output_shape(m.workload, cfg)), out_shape,
                     {v for v in m.chain if v is not m.tail}, layout=layout)
    if switchable:
        defaults = [packed] + ([m.bias.astype(np.float32)] if m.epilogue.bias else [])
        _make_switchable(call, m, kernel, cfg, defaults, catalog, record)
    return call


def _make_switchable(call: FloatCall, m: LayerMatch, kernel: registry.KernelDef, cfg: Any,
                     defaults: list[np.ndarray], catalog: KernelCatalog, record: Lowering) -> None:
    i = len(record.switches)
    params = [relax.Var(f"sw{i}_{role}", relax.TensorType(a.shape, str(a.dtype)))
              for role, a in zip(("weight", "bias"), defaults)]
    fq = relax.Var(f"sw{i}_fq", relax.TensorType((5,), "float32"))
    shape = tuple(int(d) for d in m.layer.input_shape)
    # never fused: a plain elementwise pass
    gv = catalog.add_func(f"tvmq_fake_quantize_{'x'.join(map(str, shape))}",
                          lambda: tvm.te.create_prim_func(elementwise.fake_quantize(shape)))
    call.consts = list(params)
    call.fq = (gv, fq)
    record.switches.append(Switch(m.layer.name, params, fq, defaults, m, kernel, cfg))


def emit_float_layer(rw: relax.PyExprMutator, binding: relax.VarBinding, p: FloatCall
                     ) -> tuple[relax.Var, relax.Var | None, relax.Var]:
    """Emit ``p`` in place of ``binding`` (the tail of its chain) through the rewriter ``rw``;
    returns (the layer's input, its residual operand or None, the new output var)."""
    if p.layout == "NHWC":
        return _emit_channels_last(rw, binding, p)
    bb = rw.builder_
    x = x_layer = rw.visit_expr(p.data)
    res_layer = None
    if p.fq is not None:  # switchable: the input through its run-time fake quantization
        fq_gv, fq = p.fq
        x = bb.emit(relax.call_tir(fq_gv, [x, fq], relax.TensorType(p.layer_in_shape, "float32")),
                    name_hint="fq")
    if p.in_shape != p.layer_in_shape:  # a free view, e.g. [N, C, H*W]
        x = bb.emit(relax.op.reshape(x, p.in_shape), name_hint="kernel_in")
    args = [x, *p.consts]
    if p.residual is not None:
        res = res_layer = rw.visit_expr(p.residual)
        if p.buf_shape != p.out_shape:
            res = bb.emit(relax.op.reshape(res, p.buf_shape), name_hint="kernel_res")
        args.append(res)
    call = relax.call_tir(p.gv, args, relax.TensorType(p.buf_shape, "float32"))
    emit = bb.emit if isinstance(binding.var, relax.DataflowVar) else bb.emit_output
    if p.buf_shape != p.out_shape:
        y = bb.emit(call, name_hint=f"{binding.var.name}_k")
        new = emit(relax.op.reshape(y, p.out_shape), name_hint=binding.var.name)
    else:
        new = emit(call, name_hint=binding.var.name)
    rw.set_var_remap(binding.var, new)
    return x_layer, res_layer, new


def _emit_channels_last(rw: relax.PyExprMutator, binding: relax.VarBinding, p: FloatCall
                        ) -> tuple[relax.Var, relax.Var | None, relax.Var]:
    """``emit_float_layer`` for an NHWC kernel: its input and residual come channels-last (the
    NHWC tensor a previous layer wrote, else one transpose, made once per tensor), its output
    goes on channels-last to the next NHWC layer (``rw.channels_last``); the NCHW view of it
    that other users read is a transpose that dead-code elimination drops where none does."""
    bb = rw.builder_
    x_layer = rw.visit_expr(p.data)
    args = [_channels_last(rw, x_layer, p.in_shape), *p.consts]
    res_layer = None
    if p.residual is not None:
        res_layer = rw.visit_expr(p.residual)
        args.append(_channels_last(rw, res_layer, p.buf_shape))
    y = bb.emit(relax.call_tir(p.gv, args, relax.TensorType(p.buf_shape, "float32")),
                name_hint=f"{binding.var.name}_nhwc")
    n, c, h, w = p.out_shape
    if p.buf_shape != (n, h, w, c):  # (grouped: [N, OH, OW, G, K/G], a free view)
        y = bb.emit(relax.op.reshape(y, (n, h, w, c)), name_hint=f"{binding.var.name}_nhwc")
    emit = bb.emit if isinstance(binding.var, relax.DataflowVar) else bb.emit_output
    new = emit(relax.op.permute_dims(y, [0, 3, 1, 2]), name_hint=binding.var.name)
    rw.channels_last[new] = y
    rw.set_var_remap(binding.var, new)
    return x_layer, res_layer, new


def _channels_last(rw: relax.PyExprMutator, x: relax.Expr, shape: tuple[int, ...]) -> relax.Expr:
    """NCHW ``x`` as the NHWC tensor ``shape`` (a view of ``[N, H, W, C]``) an NHWC kernel reads."""
    if x not in rw.channels_last:
        rw.channels_last[x] = rw.builder_.emit(relax.op.permute_dims(x, [0, 2, 3, 1]), name_hint="to_nhwc")
    v = rw.channels_last[x]
    if tuple(int(d) for d in v.ty.shape) != shape:
        v = rw.builder_.emit(relax.op.reshape(v, shape), name_hint="kernel_in")
    return v


@relax.expr_functor.mutator
class _Rewriter(relax.PyExprMutator):
    """Replaces each planned chain tail by its float kernel call; optionally taps every layer's
    input and output."""

    def __init__(self, mod: tvm.IRModule, plan: dict[relax.Var, FloatCall], taps: bool) -> None:
        super().__init__(mod)
        self.plan = plan
        self.skip: set[relax.Var] = set().union(*(p.interior for p in plan.values()))
        self.taps = taps
        self.tapped: list[tuple[str, str, relax.Var]] = []  # (layer, "in" | "out" | "residual", var)
        self.channels_last: dict[relax.Expr, relax.Var] = {}  # NCHW var -> its NHWC twin

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:  # type: ignore[override]
        if binding.var in self.skip:
            return
        p = self.plan.get(binding.var)
        if p is None:
            if not propagate(self, binding):  # (channels-last: the op on the NHWC twins)
                super().visit_var_binding_(binding)
            return
        _, _, new = emit_float_layer(self, binding, p)
        if self.taps:
            x_in = self.visit_expr(p.data)
            self.tapped.append((p.layer, "in", self.builder_.emit_output(x_in, name_hint="tap_in")))
            self.tapped.append((p.layer, "out", self.builder_.emit_output(new, name_hint="tap_out")))
            if p.residual is not None:  # (a float island may compute it: its range, observed)
                r = self.visit_expr(p.residual)
                self.tapped.append((p.layer, "residual", self.builder_.emit_output(r, name_hint="tap_res")))

    def with_taps(self, func: relax.Function) -> relax.Function:
        """``func`` returning ``(original output, *tapped tensors)``."""
        body = func.body
        outputs = self.builder_.normalize(relax.Tuple([body.body, *[v for _, _, v in self.tapped]]))
        seq = self.builder_.normalize(relax.SeqExpr(body.blocks, outputs))
        return relax.Function(func.params, seq, None, func.is_pure, func.attrs)


@tvm.transform.module_pass(opt_level=0, name="tvmq.LowerToKernels")
class LowerToKernels:
    """Replace each layer of ``layers`` by a scheduled float ``schedules`` kernel call.

    Parameters
    ----------
    layers : the model's LayerTable
    params : parameter name -> numpy value (``tvmq.<i>.weight`` / ``.bias``)
    param_layer : parameter name -> layer name
    features : the target's features (selects kernels and their fallback configs)
    record : the ``Lowering`` this pass fills (kernels, weight bytes, taps, switches)
    taps : also return every layer's input and output (after its fused epilogue): ``main``
        then returns ``(original output, *taps)``, in the order of ``record.taps`` (calibration)
    switchable : every layer's packed weights and bias become parameters of ``main`` (after the
        model's inputs, in ``record.switches`` order) and its input passes a run-time
        ``fake_quantize`` with its own ``fq`` parameter: one build in which each layer can be
        given any precision's weights and input rounding (sensitivity analysis)
    configs : ``(kernel, workload, layer) -> (config, source)``, the configuration of each kernel
        (``tvmq.tune.TunedConfigs``: the tuning database's best); default: the kernel's fallback
        configuration, source ``"fallback"``
    layout : the convs' activations: ``NCHW`` as imported, or ``NHWC`` (channels-last kernels;
        a conv's output goes on NHWC to the convs that read it, as input or residual, and is
        transposed back only for other users: ``record.layout_transforms`` lists the transposes
        left). Not with ``taps`` / ``switchable``, whose tensors are NCHW.
    hardswish : also fuse a HardSwish after a layer (``hardswish_links``) into its epilogue (float
        kernels; not with ``taps`` / ``switchable``, which see each layer's output as a quantized
        build does, without it)
    """

    def __init__(self, layers: LayerTable, params: dict[str, np.ndarray], param_layer: dict[str, str],
                 features: TargetFeatures, record: Lowering, *, taps: bool = False,
                 configs: ConfigChooser | None = None, switchable: bool = False, layout: str = "NCHW",
                 hardswish: bool = False) -> None:
        if layout not in ("NCHW", "NHWC") or (layout == "NHWC" and (taps or switchable)):
            raise ValueError(f"layout {layout!r} (NHWC is not for taps / switchable lowering)")
        if hardswish and (taps or switchable):
            raise ValueError("hardswish fusion is not for taps / switchable lowering (their layer outputs "
                             "are the ones before the activation a quantized build keeps apart)")
        self.matcher = LayerMatcher(layers, params, param_layer, hardswish=hardswish)
        self.catalog = KernelCatalog(features, configs)
        self.record = record
        self.taps = taps
        self.switchable = switchable
        self.layout = layout

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        matches = self.matcher.match(mod)
        if self.layout == "NHWC":
            for m in matches:
                if isinstance(m.workload, Conv2dWorkload):
                    m.workload = replace(m.workload, layout="NHWC")
        plan = {m.tail: float_call(m, "fp32", self.catalog, self.record, switchable=self.switchable)
                for m in matches}
        if not plan:
            return mod
        rw = _Rewriter(mod, plan, self.taps)
        self.catalog.add_all(rw.builder_)
        for p in plan.values():
            p.gv = self.catalog.typed(rw.builder_, p.gv)
            if p.fq is not None:
                p.fq = (self.catalog.typed(rw.builder_, p.fq[0]), p.fq[1])
        new_main = rw.visit_expr(mod["main"])
        if self.taps:
            new_main = rw.with_taps(new_main)
            self.record.taps = [(layer, role) for layer, role, _ in rw.tapped]
        if self.record.switches:
            extra = [v for s in self.record.switches for v in (*s.params, s.fq)]
            new_main = relax.Function(list(new_main.params) + extra, new_main.body,
                                      new_main.ret_struct_info if hasattr(new_main, "ret_struct_info")
                                      else None, new_main.is_pure, new_main.attrs)
        out = finish_module(rw, new_main)
        if self.layout == "NHWC":
            self.record.layout_transforms.extend(layout_transposes(out["main"]))
        return out


def layout_transposes(func: relax.Function) -> list[tuple[str, str, tuple[int, ...]]]:
    """Every NCHW <-> NHWC transpose of a 4-D tensor in ``func``: (from, to, NCHW shape)."""
    found = []

    def visit(expr: relax.Expr) -> None:
        if isinstance(expr, relax.Call) and expr.op == PERMUTE and expr.attrs.axes is not None:
            axes = [int(a) for a in expr.attrs.axes]
            shape = [int(d) for d in expr.args[0].ty.shape]
            if axes == [0, 2, 3, 1]:
                found.append(("NCHW", "NHWC", tuple(shape)))
            elif axes == [0, 3, 1, 2]:
                found.append(("NHWC", "NCHW", (shape[0], shape[3], shape[1], shape[2])))

    relax.analysis.post_order_visit(func, visit)
    return found


def layer_workload(layer: LayerInfo, ep: Epilogue) -> Conv2dWorkload | DenseWorkload:
    """The kernel workload of one layer of the LayerTable with epilogue ``ep``."""
    if layer.op == "dense":
        n, c = layer.input_shape
        return DenseWorkload(int(n), int(c), int(layer.weight_shape[0]), ep)
    n, c, h, w = layer.input_shape
    k, _, r, s = layer.weight_shape
    t, l, bo, ri = layer.pads
    return Conv2dWorkload(int(n), int(c), int(h), int(w), int(k), int(r), int(s),
                          layer.strides[0], layer.strides[1], t, l, bo, ri,
                          layer.dilations[0], layer.dilations[1], layer.groups, ep)
