"""``RealizeIntegers`` (a ``tvm.transform`` module pass): the layers a plan quantizes become
integer-only kernels (W8A8, W4A8, W8A16); bf16 and fp32 layers stay float.

Each quantized layer follows ``tvmq.recipe`` (weights per output channel, bias correction, the
input's quantization, the int32 bias), the recipe sensitivity analysis simulates. A layer whose output is a model output dequantizes straight from its int32 accumulator
(``act(float32(acc + bias) * s_in * s_w)``): logits keep full resolution instead of 256 levels.

Precondition: ``main`` as imported by ``frontend.to_relax`` (as for ``LowerToKernels``), a
``PrecisionPlan`` covering every layer and calibration statistics (``ActivationStats``) of every
layer's input and output.

For a W8A8 layer the rewrite emits, in order: its input as uint8 (the producer's uint8 output
when the producer is an integer layer, else a ``quantize`` kernel with the calibrated scale), the
``schedules`` W8A8 kernel (int8 weights per output channel; W4A8: int4 in -7..7, packed two per
byte, the same kernel after an in-kernel unpack; int32 bias with the input zero point folded in, dyadic requantization, ReLU / ReLU6 as clamp bounds, a residual branch rescaled in
integers) producing uint8, and a ``dequantize`` for any float consumer. The ops between layers
that have an integer form stay integer (``_int_passthrough``, ``_lookup``, ``_int_concat``,
``_int_multiply``, ``_int_shuffle``: pooling, reshapes, slices, gathers, pads, concats, products,
elementwise functions as lookup tables); ``DeadCodeElimination`` then drops every float twin
nobody reads. Any other op runs in float32 between a dequantize and a quantize (a float
island, ``Lowering.islands``), never a refusal. W8A16 layers read int16
activations (symmetric): their producer requantizes into int16 directly (``demand16``, bounded
by ``int16_qmax`` so no accumulator can overflow); other consumers of such a tensor get an exact
int16 -> uint8 requantization, and an int16 input with no integer producer is quantized from
float (or widened losslessly from uint8).

Layout: the uint8 activations of the quantized convs are channels-last (``layout="NHWC"``, the
default; ``"NCHW"`` keeps ONNX's): the input's ``quantize`` writes NHWC, each conv reads and
writes NHWC (residuals too), the integer global average pool and max pool read NHWC and a
``dequantize`` for a float consumer transposes back as it converts. Dense layers, W8A16 layers
and the producers of their int16 inputs stay NCHW; a uint8 tensor one layer writes in one
layout and another reads in the other is transposed once (``Lowering.layout_transforms``, the
manifest's ``layout_transforms``: empty for MobileNetV2, a test checks it).

Postcondition: ``record.islands`` lists every float island; ``record.program`` simulates the
emitted ops in numpy, the bit-exact oracle of the compiled library: the integer ops, the bf16 /
fp32 layers (each in its kernel's summation order, ``KernelDef.float_reference``) and the float
ops that ``numpy_program.float_op`` reproduces (elementwise arithmetic and activations, data
movement, max / global average pooling, means). An output reached only through another op (a softmax) has no oracle
(``simulated()`` is False). ``record.qparams`` has every layer's scales.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import tvm
from tvm import relax, te, tirx

from schedules import elementwise, quant, reference, registry
from schedules.target_features import TargetFeatures
from schedules.workload import LAYOUTS, Conv2dWorkload, Epilogue

from .. import specs
from ..errors import TvmqError
from ..frontend import LayerTable
from ..plan import PrecisionPlan
from ..recipe import QuantizedLayer, int16_qmax, quantize_layer
from .lower_kernels import (FloatCall, KernelCatalog, LayerMatch, LayerMatcher, const_value,
                            emit_float_layer, finish_module, float_call)
from .lower_kernels import ADD, CLIP, MAXIMUM, MINIMUM, PERMUTE, RELU
from .numpy_program import (AVG_POOL, CONCAT, DIVIDE, MAX_POOL, MEAN, MULTIPLY, PAD, PAD_MODES, PRELU, RESHAPE,
                            STRIDED_SLICE, SUBTRACT, TAKE, NumpyProgram, QTensor, avg_pool_geometry, copy_pad,
                            float_op, is_global_avg_pool, max_pool_geometry, pad_pairs, slice_index, take_indices,
                            tensor_args)

# elementwise float ops evaluated on the 256 values of a uint8 tensor (``_IntRewriter._lookup``):
# those numpy_program.float_op reproduces, and these (float64, rounded once to float32)
UNARY_TABLES: dict[Any, Callable[[np.ndarray], np.ndarray]] = {
    tvm.ir.Op.get("relax.sigmoid"): lambda t: (1 / (1 + np.exp(-t.astype(np.float64)))).astype(np.float32),
    tvm.ir.Op.get("relax.tanh"): lambda t: np.tanh(t.astype(np.float64)).astype(np.float32),
    tvm.ir.Op.get("relax.exp"): lambda t: np.exp(t.astype(np.float64)).astype(np.float32),
}
ELEMENTWISE = (ADD, SUBTRACT, MULTIPLY, DIVIDE, MAXIMUM, MINIMUM, RELU, CLIP, PRELU)

# ops with an integer form on a quantized tensor (``_IntRewriter._int_passthrough``)
INT_FORMS = (MEAN, RESHAPE, MAX_POOL, AVG_POOL, STRIDED_SLICE, PAD, PERMUTE, TAKE)
from .records import Island, Lowering

if TYPE_CHECKING:  # (calibration sits above the passes: it compiles with them)
    from ..calibration import ActivationStats


def _act_bounds16(ep: Any, scale: float, qmax: int) -> tuple[int, int]:
    """Clamp bounds of an int16 (symmetric, zero point 0) output limited to ``[-qmax, qmax]``."""
    lo, hi = -qmax, qmax
    if ep.activation == "relu":
        lo = 0
    elif ep.activation == "clip":
        if np.isfinite(ep.clip_min):
            lo = int(np.clip(np.round(ep.clip_min / scale), -qmax, qmax))
        if np.isfinite(ep.clip_max):
            hi = int(np.clip(np.round(ep.clip_max / scale), -qmax, qmax))
    return lo, hi


def _to_layout(a: np.ndarray, src: str, dst: str) -> np.ndarray:
    """A 4-D array from layout ``src`` to ``dst`` (NCHW / NHWC)."""
    if src == dst:
        return a
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1) if dst == "NHWC" else a.transpose(0, 3, 1, 2))


def _raised(ql: QuantizedLayer) -> dict[str, Any]:
    """The manifest's note of the channels whose weight scale was raised for the bias to fit."""
    return {"w_scales_raised_for_bias": list(ql.raised)} if ql.raised else {}


def _act_bounds(ep: Any, scale: float, zp: int) -> tuple[int, int]:
    if ep.activation == "relu":
        return max(0, zp), 255
    if ep.activation == "clip":
        lo = int(np.clip(zp + np.round(ep.clip_min / scale), 0, 255)) if np.isfinite(ep.clip_min) else 0
        hi = int(np.clip(zp + np.round(ep.clip_max / scale), 0, 255)) if np.isfinite(ep.clip_max) else 255
        return lo, hi
    return 0, 255


@dataclass
class IntCall:
    """How the rewriter emits one integer layer: its match, whether its output leaves the model."""

    match: LayerMatch
    edge: bool
    interior: set[relax.Var]  # the chain's vars the call replaces, the tail aside


@relax.expr_functor.mutator
class _IntRewriter(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule, plan: dict[relax.Var, FloatCall | IntCall],
                 owner: RealizeIntegers) -> None:
        super().__init__(mod)
        self.plan = plan
        self.skip: set[relax.Var] = set().union(*(p.interior for p in plan.values()))
        self.owner = owner
        self.shuffles, self.shuffle_inner = _channel_shuffles(mod["main"])
        self.consumers = _layer_consumers(mod["main"], plan)
        self.q: dict[relax.Var, QTensor] = {}  # float var -> its uint8 form
        self.q16: dict[relax.Var, QTensor] = {}  # float var -> its int16 form (zero point 0)
        self.range16: dict[relax.Var, tuple[float, float]] = {}  # calibrated range of an int16 one
        self.program = NumpyProgram()
        self._funcs: dict[tuple, relax.GlobalVar] = {}
        self._relayout: dict[tuple[relax.Var, str], QTensor] = {}
        # float tensors quantized for an integer layer: (var, layer) -> the islands behind them
        self.boundaries: list[tuple[relax.Var, str]] = []
        self.float_layers: set[relax.Var] = set()  # outputs of fp32 / bf16 layers
        self.constants: dict[relax.Var, np.ndarray] = {}  # float ops of constants, evaluated
        # float var -> (its uint8 source, its values [1 or C, 256], NCHW shape): a lookup table of
        # the source (one per channel where per-channel constants, e.g. a batch norm, entered it)
        self.tables: dict[relax.Var, tuple[QTensor, np.ndarray, tuple[int, ...]]] = {}

    # -- small emitters, each recorded for the numpy simulation ----------------------------
    def _func(self, key: tuple, make: Callable[[], list]) -> relax.GlobalVar:
        if key not in self._funcs:
            # opaque to FuseOps (its fusion of reshape + these mis-maps buffers); ScheduleGeneric
            # still schedules them
            made = make()  # TE tensors, or a PrimFunc built directly (already scheduled)
            pf = (made if isinstance(made, tirx.PrimFunc) else te.create_prim_func(made)).with_attrs(
                {"global_symbol": f"tvmq_{key[0]}_{len(self._funcs)}", "op_pattern": 8})
            self._funcs[key] = self.builder_.add_func(pf, f"tvmq_{key[0]}_{len(self._funcs)}")
        return self._funcs[key]

    def _quantize(self, x: relax.Var, shape: tuple[int, ...], scale: float, zp: int,
                  layout: str = "NCHW") -> QTensor:
        """``x`` (float, NCHW ``shape``) as uint8 in ``layout`` (the quantize writes it); a
        function of a uint8 tensor (``tables``) as one uint8 lookup of that tensor."""
        to_nhwc = layout == "NHWC"
        if x in self.tables and self.tables[x][2] == tuple(shape):
            src, values, _ = self.tables[x]
            table = reference.quantize_u8(values, scale, zp)
            return QTensor(self._lookup_call(src, table, shape, layout, "xq"), scale, zp, layout)
        gv = self._func(("quantize", shape, layout), lambda: elementwise.quantize(shape, to_nhwc))
        out_shape = elementwise.nhwc(shape) if to_nhwc else shape
        v = self.builder_.emit(relax.call_tir(gv, [x, relax.const(np.array([scale], np.float32)),
                                                   relax.const(np.array([zp], np.int32))],
                                              relax.TensorType(out_shape, "uint8")), name_hint="xq")
        self.program.record(v, lambda a: _to_layout(reference.quantize_u8(a, scale, zp), "NCHW", layout), [x])
        return QTensor(v, scale, zp, layout)

    def _lookup_call(self, src: QTensor, table: np.ndarray, shape: tuple[int, ...], layout: str,
                     name: str) -> relax.Var:
        """``table[src]`` (NCHW ``shape``, written in ``layout``; ``table`` ``[1 or C, 256]``),
        recorded for the numpy program."""
        dtype, per_channel = str(table.dtype), table.shape[0] > 1
        out_shape = elementwise.nhwc(shape) if layout == "NHWC" else shape
        # one uint8 table, no layout change: AVX2's vpshufb form (6x faster on a Zen 3)
        shuffle = (dtype == "uint8" and not per_channel and src.layout == layout
                   and self.owner.catalog.features.avx2)
        gv = self._func(("lookup", shape, src.layout, layout, dtype, per_channel, shuffle),
                        lambda: elementwise.lookup_u8_shuffle(out_shape) if shuffle else
                        elementwise.lookup_u8(shape, src.layout == "NHWC", layout == "NHWC", dtype, per_channel))
        v = self.builder_.emit(relax.call_tir(gv, [src.var, relax.const(table)], relax.TensorType(out_shape, dtype)),
                               name_hint=name)

        def simulate(a: np.ndarray) -> np.ndarray:
            a = _to_layout(a, src.layout, "NCHW")
            rows = np.arange(table.shape[0]).reshape((1, -1) + (1,) * (a.ndim - 2)) if per_channel else 0
            return _to_layout(table[rows, a], "NCHW", layout)

        self.program.record(v, simulate, [src.var])
        return v

    def _lookup(self, binding: relax.VarBinding, call: relax.Call) -> bool:
        """An elementwise float op whose tensor operands are all functions of one uint8 tensor
        (``tables``; constants scalars or one value per channel) is that function: its 256
        values (per channel), computed here in numpy, become a float32 lookup of the uint8
        tensor (exact by construction: the numpy program reads the same table). False for
        any other op."""
        fn = float_op(call) if call.op in ELEMENTWISE else UNARY_TABLES.get(call.op)
        if fn is None or str(getattr(call.ty, "dtype", "")) != "float32":
            return False
        out_shape = self._shape(binding.var)
        channels = out_shape[1] if len(out_shape) >= 2 else 1
        new_call = self.visit_expr(call)
        source: tuple[QTensor, tuple[int, ...]] | None = None
        operands: list[Any] = []
        for i in tensor_args(call):
            arg = new_call.args[i]
            c = const_value(arg) if not isinstance(arg, relax.Var) else self.constants.get(arg)
            if c is not None and call.op == PRELU and c.ndim == 1:  # slopes along axis 1
                c = c.reshape(-1, *([1] * (len(out_shape) - 2)))
            if c is not None:
                per_channel = c.ndim <= len(out_shape) and c.size == channels and (
                    c.ndim >= len(out_shape) - 1 and c.shape[c.ndim - len(out_shape) + 1] == channels)
                if c.size == 1:
                    operands.append(np.float32(c.reshape(())))
                elif per_channel and len(out_shape) >= 3:
                    operands.append(c.astype(np.float32).reshape(channels, 1))
                else:
                    return False
                continue
            if not isinstance(arg, relax.Var) or arg not in self.tables:
                return False
            qt, values, shape = self.tables[arg]
            if source is not None and (source[0].var is not qt.var or source[1] != shape):
                return False
            source = (qt, shape)
            operands.append(values)
        if source is None or out_shape != source[1]:
            return False
        values = np.asarray(fn(*operands), np.float32)
        values = np.ascontiguousarray(np.broadcast_to(values, (values.shape[0] if values.ndim == 2 else 1, 256)))
        v = self._lookup_call(source[0], values, source[1], "NCHW", binding.var.name)
        if not isinstance(binding.var, relax.DataflowVar):
            v = self.builder_.emit_output(v, name_hint=binding.var.name)
        self.tables[v] = (source[0], values, source[1])
        self.set_var_remap(binding.var, v)
        return True

    def _int_multiply(self, binding: relax.VarBinding, call: relax.Call) -> bool:
        """The product of two uint8 tensors (or tables of them) of rank 4, one broadcast over H
        and W or equal in shape (a squeeze-and-excitation block rescaling its map), read by an
        integer layer: one integer kernel into that layer's input quantization. False
        otherwise (a float island)."""
        if call.op != MULTIPLY or len(self._shape(binding.var)) != 4:
            return False
        layer = self.consumers.get(binding.var)
        if layer is None or self.owner.plan[layer].a_bits != 8:
            return False
        xs = [self.visit_expr(a) for a in call.args]
        if not all(isinstance(x, relax.Var) for x in xs):
            return False
        out_shape = self._shape(binding.var)
        shapes = [self._shape(x) for x in xs]
        if shapes[0] != out_shape:
            xs, shapes = xs[::-1], shapes[::-1]
        if shapes[0] != out_shape or len(shapes[1]) != 4 or any(d not in (1, o) for d, o in zip(shapes[1], out_shape)):
            return False
        qa, qb = (self._u8_or_table(x) for x in xs)
        if qa is None or qb is None:
            return False
        qb = self._in_layout(qb, qa.layout)
        s_out, zp_out = quant.activation_params(*self.owner.stats.get(layer, "in").range(self.owner.method))
        scale = np.float32(qa.scale * qb.scale / s_out)
        a_shape, b_shape = self._shape(qa.var), self._shape(qb.var)
        gv = self._func(("multiply_u8", a_shape, b_shape), lambda: elementwise.multiply_u8(a_shape, b_shape))
        v = self.builder_.emit(relax.call_tir(gv, [qa.var, qb.var, relax.const(np.array([qa.zp, qb.zp, zp_out], np.int32)),
                                                   relax.const(np.array([scale], np.float32))],
                                              relax.TensorType(a_shape, "uint8")), name_hint="mul_q")
        self.program.record(v, lambda a, b: reference.multiply_u8(a, b, qa.zp, qb.zp, float(scale), zp_out),
                            [qa.var, qb.var])
        new = self._dequantize(QTensor(v, s_out, zp_out, qa.layout), out_shape, self._emit_fn(binding.var))
        self.set_var_remap(binding.var, new)
        return True

    def _int_concat(self, binding: relax.VarBinding, call: relax.Call) -> bool:
        """A concat of uint8 tensors (or of lookup tables of them, ``tables``) stays integer:
        inputs of another scale or zero point are requantized, each by one uint8 lookup, to
        the quantization covering all their ranges, then concatenated in their layout. False
        where an input is any other float tensor (the concat is then a float island)."""
        if call.op != CONCAT or not isinstance(call.args[0], relax.Tuple):
            return False
        xs = [self.visit_expr(f) for f in call.args[0].fields]
        rank = len(self._shape(binding.var))
        inputs: list[tuple[QTensor, np.ndarray | None]] = []  # (uint8 source, its values or None)
        for x in xs:
            if not isinstance(x, relax.Var):
                return False
            if self._u8(x) is not None:
                qt = self._u8(x)
                inputs.append((self._in_layout(qt, inputs[0][0].layout) if rank == 4 and inputs else qt, None))
            elif x in self.tables and self.tables[x][2] == self._shape(x):
                inputs.append((self.tables[x][0], self.tables[x][1]))
            else:
                return False
        layout = inputs[0][0].layout if rank == 4 else "NCHW"
        codes = np.arange(256, dtype=np.uint8)
        values = [reference.dequantize_u8(codes, q.scale, q.zp)[None] if t is None else t for q, t in inputs]
        scale, zp = inputs[0][0].scale, inputs[0][0].zp
        if any(t is not None or (q.scale, q.zp) != (scale, zp) for q, t in inputs):
            scale, zp = quant.activation_params(min(float(v.min()) for v in values),
                                                max(float(v.max()) for v in values))
        parts = [q.var if t is None and (q.scale, q.zp) == (scale, zp)
                 else self._lookup_call(q, reference.quantize_u8(v, scale, zp), self._shape(x), layout, "requant_q")
                 for (q, t), v, x in zip(inputs, values, xs)]
        axis = int(call.attrs.axis) % rank
        axis = (0, 3, 1, 2)[axis] if layout == "NHWC" else axis
        v = self.builder_.emit(relax.op.concat(parts, axis), name_hint="concat_q")
        self.program.record(v, lambda *a: np.concatenate(a, axis=axis), parts)
        new = self._dequantize(QTensor(v, scale, zp, layout), self._shape(binding.var), self._emit_fn(binding.var))
        self.set_var_remap(binding.var, new)
        return True

    def _dequantize(self, qt: QTensor, shape: tuple[int, ...], emit: Callable,
                    dtype: str = "uint8") -> relax.Var:
        """The float (NCHW ``shape``) value of ``qt``, whatever its layout."""
        from_nhwc = qt.layout == "NHWC"
        gv = self._func(("dequantize", shape, dtype, qt.layout),
                        lambda: elementwise.dequantize(shape, dtype, from_nhwc))
        v = emit(relax.call_tir(gv, [qt.var, relax.const(np.array([qt.scale], np.float32)),
                                     relax.const(np.array([qt.zp], np.int32))],
                                relax.TensorType(shape, "float32")))
        self.program.record(v, lambda a: reference.dequantize_u8(_to_layout(a, qt.layout, "NCHW"), qt.scale, qt.zp),
                            [qt.var])
        (self.q if dtype == "uint8" else self.q16)[v] = qt
        if dtype == "uint8":
            self.tables[v] = (qt, reference.dequantize_u8(np.arange(256, dtype=np.uint8), qt.scale, qt.zp)[None],
                              shape)
        return v

    def _in_layout(self, qt: QTensor, layout: str) -> QTensor:
        """``qt`` in ``layout``: as it is, or transposed (a layout change between two integer
        ops, recorded in ``Lowering.layout_transforms``; the planner avoids them)."""
        if qt.layout == layout:
            return qt
        key = (qt.var, layout)
        shape = self._shape(qt.var)
        axes = [0, 2, 3, 1] if layout == "NHWC" else [0, 3, 1, 2]
        moved = [a for a in axes if shape[a] != 1]
        if key not in self._relayout and moved == sorted(moved):
            # the same bytes (one pixel, [N, C, 1, 1] of a pooled map, or one channel): a view
            self._relayout[key] = replace(qt, var=self._reshape(qt.var, tuple(shape[i] for i in axes)), layout=layout)
        if key not in self._relayout:
            v = self.builder_.emit(relax.op.permute_dims(qt.var, axes), name_hint="relayout")
            self.program.record(v, lambda a: a.transpose(axes), [qt.var])
            self.owner.record.layout_transforms.append(
                (qt.layout, layout, shape if qt.layout == "NCHW" else tuple(shape[i] for i in (0, 3, 1, 2))))
            self._relayout[key] = replace(qt, var=v, layout=layout)
        return self._relayout[key]

    def _u8_or_table(self, x: relax.Var) -> QTensor | None:
        """``_u8``, or for a lookup table of a uint8 tensor (``tables``) its uint8 form with
        the range of the table's values (one uint8 lookup; exact, and every value it can take
        is in range): an integer op on it (pooling, a residual add) stays integer."""
        qt = self._u8(x)
        if qt is not None or x not in self.tables:
            return qt
        src, values, shape = self.tables[x]
        scale, zp = quant.activation_params(float(values.min()), float(values.max()))
        layout = src.layout if len(shape) == 4 else "NCHW"
        v = self._lookup_call(src, reference.quantize_u8(values, scale, zp), shape, layout, "table_q")
        self.q[x] = QTensor(v, scale, zp, layout)
        return self.q[x]

    def _u8(self, x: relax.Var) -> QTensor | None:
        """``x``'s uint8 form: as produced, or requantized from its int16 form (for a W8A8 /
        W4A8 consumer of a tensor produced for a W8A16 one); None for a float tensor."""
        if x in self.q:
            return self.q[x]
        if x not in self.range16:  # float (an int16 form quantized from it does not count)
            return None
        qt = self.q16[x]
        s8, zp8 = quant.activation_params(*self.range16[x])
        (m,), (sh,) = quant.quantize_multiplier(qt.scale / s8)
        shape = self._shape(qt.var)
        gv = self._func(("requantize_i16_u8", shape), lambda: elementwise.requantize_i16_u8(shape))
        v = self.builder_.emit(relax.call_tir(gv, [qt.var, relax.const(np.array([m, sh, zp8], np.int32))],
                                              relax.TensorType(shape, "uint8")), name_hint="q8")
        self.program.record(v, lambda a: reference.requantize_i16_u8(a, int(m), int(sh), zp8), [qt.var])
        self.q[x] = QTensor(v, s8, zp8)
        return self.q[x]

    def _i16(self, x: relax.Var, ql: QuantizedLayer) -> QTensor:
        """``x``'s int16 form for a W8A16 consumer: as produced (its producer requantized into
        int16), widened from uint8 (lossless, same scale), or quantized from float with the
        consumer's calibrated input range mapped to ``[-qmax, qmax]`` (``ql``)."""
        if x in self.q16:
            return self.q16[x]
        shape = self._shape(x)
        if x in self.q:
            qt = self._in_layout(self.q[x], "NCHW")  # (W8A16 layers run on NCHW)
            gv = self._func(("widen_u8_i16", shape), lambda: elementwise.widen_u8_i16(shape))
            v = self.builder_.emit(relax.call_tir(gv, [qt.var, relax.const(np.array([qt.zp], np.int32))],
                                                  relax.TensorType(shape, "int16")), name_hint="q16")
            self.program.record(v, lambda a: reference.widen_u8_i16(a, qt.zp), [qt.var])
            self.q16[x] = QTensor(v, qt.scale, 0)
            return self.q16[x]
        scale, qmax = ql.in_scale, ql.in_qmax
        self.boundaries.append((x, ql.name))
        gv = self._func(("quantize_i16", shape, qmax), lambda: elementwise.quantize_i16(shape, qmax))
        v = self.builder_.emit(relax.call_tir(gv, [x, relax.const(np.array([scale], np.float32))],
                                              relax.TensorType(shape, "int16")), name_hint="xq16")
        self.program.record(v, lambda a: reference.quantize_i16(a, scale, qmax), [x])
        self.q16[x] = QTensor(v, scale, 0)
        return self.q16[x]

    def _reshape(self, v: relax.Var, shape: tuple[int, ...]) -> relax.Var:
        out = self.builder_.emit(relax.op.reshape(v, shape), name_hint="q_view")
        self.program.record(out, lambda a: a.reshape(shape), [v])
        return out

    def _view(self, v: relax.Var, shape: tuple[int, ...]) -> relax.Var:
        """``v`` as the kernel wants it (e.g. ``[N, C, H*W]`` for a pointwise GEMM): a free reshape."""
        return v if tuple(shape) == self._shape(v) else self._reshape(v, tuple(shape))

    def _emit_fn(self, var: relax.Var) -> Callable:
        if isinstance(var, relax.DataflowVar):
            return lambda e: self.builder_.emit(e, name_hint=var.name)
        return lambda e: self.builder_.emit_output(e, name_hint=var.name)

    @staticmethod
    def _shape(expr: relax.Expr) -> tuple[int, ...]:
        return tuple(int(d) for d in expr.ty.shape)

    # -- bindings ----------------------------------------------------------------------------
    def visit_var_binding_(self, binding: relax.VarBinding) -> None:  # type: ignore[override]
        if binding.var in self.skip:
            return
        p = self.plan.get(binding.var)
        if isinstance(p, IntCall):
            self._int_layer(binding, p)
            return
        if binding.var in self.shuffle_inner:  # (the shuffle's last reshape does it all)
            super().visit_var_binding_(binding)
            return
        if binding.var in self.shuffles and self._int_shuffle(binding):
            return
        if isinstance(p, FloatCall):
            x, residual, new = emit_float_layer(self, binding, p)
            self.float_layers.add(new)
            self.program.record(new, p.simulate, [x] if residual is None else [x, residual], is_float=True)
            return
        value = binding.value
        if isinstance(value, relax.Call) and value.op in INT_FORMS and len(value.args) >= 1:
            x = self.visit_expr(value.args[0])
            if self._u8_or_table(x) is not None and self._int_passthrough(binding, value, x):
                return
        if isinstance(value, relax.Call) and (self._lookup(binding, value) or self._int_concat(binding, value)
                                              or self._int_multiply(binding, value)):
            return
        if isinstance(value, relax.TupleGetItem):  # an item of a split: recorded where the split is
            super().visit_var_binding_(binding)
            tup, index = self.visit_expr(value.tuple_value), int(value.index)
            if isinstance(tup, relax.Var):
                self.program.record(self.visit_expr(binding.var), lambda t: t[index], [tup], is_float=True)
            return
        fn = float_op(value, self.owner.catalog.features.fused_multiply_add) if isinstance(value, relax.Call) else None
        if fn is None:
            super().visit_var_binding_(binding)
            if isinstance(value, relax.Call):  # (what the numpy program lacks, named in the build's note)
                self.program.unsimulated[self.visit_expr(binding.var)] = _op_name(value)
            return
        # a float op tvmq reproduces: re-emitted as it is, and recorded for the numpy program
        new_call = self.visit_expr(value)
        v = self._emit_fn(binding.var)(new_call)
        self.set_var_remap(binding.var, v)
        # the tensor operands in order (a concat's tuple flattened): vars or constants
        operands = [f for i in tensor_args(value) for f in (
            new_call.args[i].fields if isinstance(new_call.args[i], relax.Tuple) else [new_call.args[i]])]
        tensors = [arg for arg in operands if isinstance(arg, relax.Var)]
        consts = {i: const_value(arg) for i, arg in enumerate(operands) if const_value(arg) is not None}
        if len(tensors) + len(consts) < len(operands):
            return  # an argument that is neither a var nor a constant: not simulated

        def simulate(*vals: np.ndarray) -> np.ndarray:
            it = iter(vals)
            return fn(*[consts[i] if i in consts else next(it) for i in range(len(operands))])

        self.program.record(v, simulate, tensors, is_float=True)
        if not tensors:  # an op on constants (a reshape of a PRelu's slopes): its value
            self.constants[v] = simulate()

    def _int_shuffle(self, binding: relax.VarBinding) -> bool:
        """A channel shuffle (``_channel_shuffles``) of a uint8 tensor: one gather of its
        channels in its own layout (no transposes); False for a float tensor."""
        x0, order = self.shuffles[binding.var]
        qt = self._u8(self.visit_expr(x0))
        if qt is None:
            return False
        axis = 3 if qt.layout == "NHWC" else 1
        v = self.builder_.emit(relax.op.take(qt.var, relax.const(order), axis=axis), name_hint="shuffle_q")
        self.program.record(v, lambda a: np.ascontiguousarray(np.take(a, order, axis=axis)), [qt.var])
        new = self._dequantize(replace(qt, var=v), self._shape(binding.var), self._emit_fn(binding.var))
        self.set_var_remap(binding.var, new)
        return True

    def _int_passthrough(self, binding: relax.VarBinding, call: relax.Call, x: relax.Var) -> bool:
        """An op on an integer tensor that has an exact integer form stays integer: pooling
        (global average pooling into its consumer's quantization, the others at the input's),
        reshapes and transposes, strided slices, takes of constant indices (nearest resizes), a
        zero pad with the zero point, edge / reflect pads; False where this form has none (the op
        then runs in float, a float island)."""
        qt = self.q[x]
        out_shape = self._shape(binding.var)
        if call.op == MEAN or (call.op == AVG_POOL and is_global_avg_pool(call)):
            gap = self._int_gap(call, qt, out_shape, self.consumers.get(binding.var))
            if gap is None:
                return False
            qt, made = gap, (gap.var, gap.layout)
        elif call.op in (AVG_POOL, MAX_POOL):
            made = self._int_window_pool(call, qt, out_shape)
        elif call.op in (STRIDED_SLICE, PAD, TAKE):
            made = self._int_data_movement(call, qt)
        elif call.op == PERMUTE:  # (a channel shuffle's transpose: in NCHW order)
            axes = None if call.attrs.axes is None else [int(a) for a in call.attrs.axes]
            src = self._in_layout(qt, "NCHW") if len(self._shape(qt.var)) == 4 else qt
            v = self.builder_.emit(relax.op.permute_dims(src.var, axes), name_hint="permute_q")
            self.program.record(v, lambda a: np.ascontiguousarray(np.transpose(a, axes)), [src.var])
            made = (v, "NCHW")
        else:  # a reshape: of the NCHW order
            made = (self._reshape(self._in_layout(qt, "NCHW").var if len(self._shape(qt.var)) == 4 else qt.var,
                                  out_shape), "NCHW")
        if made is None:
            return False
        v, out_layout = made
        new = self._dequantize(QTensor(v, qt.scale, qt.zp, out_layout), out_shape, self._emit_fn(binding.var))
        self.set_var_remap(binding.var, new)
        return True

    def _int_gap(self, call: relax.Call, qt: QTensor, out_shape: tuple[int, ...], layer: str | None) -> QTensor | None:
        """A mean over H and W (any keepdims) or a global average pool, as integer global
        average pooling (``[N, C, 1, 1]``: the same bytes in either layout), into the
        quantization of the integer ``layer`` it feeds where there is one."""
        nchw = self._shape(call.args[0])
        if len(nchw) != 4:
            return None
        if call.op == MEAN:
            axis = [int(a) % 4 for a in call.attrs.axis] if call.attrs.axis is not None else []
            if sorted(axis) != [2, 3]:
                return None
        elif not is_global_avg_pool(call):
            return None  # only the global average pool (a window over the whole map)
        pooled = (nchw[0], nchw[1], 1, 1)
        nhwc = qt.layout == "NHWC"
        if layer is None or self.owner.plan[layer].a_bits != 8:
            gv = self._func(("gap_u8", nchw, qt.layout), lambda: elementwise.global_avg_pool_u8(nchw, nhwc))
            v = self.builder_.emit(relax.call_tir(gv, [qt.var], relax.TensorType(pooled, "uint8")), name_hint="gap_q")
            self.program.record(v, lambda a: reference.global_avg_pool_u8(_to_layout(a, qt.layout, "NCHW")),
                                [qt.var])
            out = QTensor(v, qt.scale, qt.zp, "NCHW")
        else:
            out = self._gap_requant(qt, nchw, layer)
        v = out.var
        return replace(out, var=v if pooled == out_shape else self._reshape(v, out_shape))

    def _gap_requant(self, qt: QTensor, nchw: tuple[int, ...], layer: str) -> QTensor:
        """Global average pooling into the quantization ``layer`` calibrated for its input (finer
        than the map's: a mean varies less than the pixels it averages)."""
        pooled, nhwc = (nchw[0], nchw[1], 1, 1), qt.layout == "NHWC"
        s_out, zp_out = quant.activation_params(*self.owner.stats.get(layer, "in").range(self.owner.method))
        count = nchw[2] * nchw[3]
        scale = np.float32(qt.scale / (count * s_out))
        gv = self._func(("gap_requant_u8", nchw, qt.layout), lambda: elementwise.global_avg_pool_requant_u8(nchw, nhwc))
        v = self.builder_.emit(relax.call_tir(gv, [qt.var, relax.const(np.array([-count * qt.zp, zp_out], np.int32)),
                                                   relax.const(np.array([scale], np.float32))],
                                              relax.TensorType(pooled, "uint8")), name_hint="gap_q")
        self.program.record(v, lambda a: reference.global_avg_pool_requant_u8(
            _to_layout(a, qt.layout, "NCHW"), qt.zp, float(scale), zp_out), [qt.var])
        return QTensor(v, s_out, zp_out, "NCHW")

    def _int_window_pool(self, call: relax.Call, qt: QTensor, out_shape: tuple[int, ...]) -> tuple[relax.Var, str] | None:
        """A max pool, or an average pool without dilation or ceil mode, on the codes in the
        tensor's layout (max: padding reads code 0, below every value; average: see
        ``elementwise.avg_pool_u8``)."""
        nchw, layout = self._shape(call.args[0]), qt.layout
        nhwc = layout == "NHWC"
        if call.op == MAX_POOL:
            geometry, extra = max_pool_geometry(call, out_shape), []
            make, ref = elementwise.max_pool_u8, reference.max_pool_u8
        else:
            geometry, extra = avg_pool_geometry(call, out_shape), [relax.const(np.array([qt.zp], np.int32))]
            make, ref = elementwise.avg_pool_u8, functools.partial(_with_zp, reference.avg_pool_u8, qt.zp)
        if geometry is None:
            return None
        gv = self._func((make.__name__, nchw, geometry, layout), lambda: make(nchw, *geometry, nhwc_io=nhwc))
        buf = elementwise.nhwc(out_shape) if nhwc else out_shape
        v = self.builder_.emit(relax.call_tir(gv, [qt.var, *extra], relax.TensorType(buf, "uint8")),
                               name_hint=f"{make.__name__}_q")
        self.program.record(v, lambda a: _to_layout(ref(_to_layout(a, layout, "NCHW"), *geometry), "NCHW", layout),
                            [qt.var])
        return v, layout

    def _int_data_movement(self, call: relax.Call, qt: QTensor) -> tuple[relax.Var, str] | None:
        """A strided slice, a take of constant indices, or a constant pad whose value is 0.0 (the
        zero point stands for it exactly), on the integer tensor in its own layout (axes mapped
        for NHWC)."""
        rank = len(self._shape(qt.var))
        axis = (lambda a: (0, 3, 1, 2)[a % 4]) if qt.layout == "NHWC" and rank == 4 else (lambda a: a % rank)
        if call.op == TAKE:  # a gather of constant indices along one axis (a nearest resize)
            taken = take_indices(call)
            if taken is None:
                return None
            index, along = taken[0], axis(taken[1])
            expr = relax.op.take(qt.var, relax.const(index.astype(np.int32)), axis=along, mode="clip")
            v = self.builder_.emit(expr, name_hint="take_q")
            self.program.record(v, lambda a: np.take(a, index, axis=along), [qt.var])
            return v, qt.layout
        if call.op == STRIDED_SLICE:
            index = slice_index(call)
            if index is None:
                return None
            moved = [slice(None)] * rank
            for a, sl in enumerate(index):
                moved[axis(a)] = sl
            axes = [i for i, sl in enumerate(moved) if sl != slice(None)]
            expr = relax.op.strided_slice(qt.var, axes, [moved[i].start or 0 for i in axes],
                                          [moved[i].stop for i in axes], [moved[i].step or 1 for i in axes])
            fn: Callable[[np.ndarray], np.ndarray] = lambda a: np.ascontiguousarray(a[tuple(moved)])
        else:
            attrs = call.attrs
            if attrs.pad_mode not in PAD_MODES and (attrs.pad_mode != "constant" or float(attrs.pad_value) != 0.0):
                return None
            moved_pairs = [(0, 0)] * rank
            for a, pair in enumerate(pad_pairs(call)):
                moved_pairs[axis(a)] = pair
            widths = [w for pair in moved_pairs for w in pair]
            if attrs.pad_mode in PAD_MODES:  # edge / reflect: copies of the codes themselves
                expr = relax.op.nn.pad(qt.var, widths, attrs.pad_mode)
                fn = functools.partial(copy_pad, pairs=moved_pairs, mode=PAD_MODES[attrs.pad_mode])
            else:
                expr = relax.op.nn.pad(qt.var, widths, "constant", float(qt.zp))
                fn = lambda a: np.pad(a, moved_pairs, constant_values=np.uint8(qt.zp))  # noqa: E731
        v = self.builder_.emit(expr, name_hint="slice_q" if call.op == STRIDED_SLICE else "pad_q")
        self.program.record(v, fn, [qt.var])
        return v, qt.layout

    def _packed(self, m: LayerMatch, kernel: Any, wq: np.ndarray, wl: Any, cfg: Any) -> np.ndarray:
        packed = kernel.pack_weight(wq, wl, cfg)
        self.owner.record.weight_bytes[m.layer.name] = int(packed.nbytes)
        return packed

    def _narrowed(self, m: LayerMatch, wl: Any, wq: np.ndarray) -> Any:
        """``wl`` marked ``narrow_weights`` where the layer is a W8A8 ungrouped conv whose int8
        weights fit ``vpmaddubsw`` (``quant.pairs_fit_int16`` over input-channel pairs): the
        recipe's ``narrow_weights`` option makes them so; the AVX2 kernel then takes it."""
        if (self.owner.plan[m.layer.name].name == "w8a8" and isinstance(wl, Conv2dWorkload) and wl.groups == 1
                and quant.pairs_fit_int16(np.moveaxis(wq, 1, -1))):
            return replace(wl, narrow_weights=True)
        return wl

    def _kernel(self, m: LayerMatch, wl: Any) -> tuple[Any, relax.GlobalVar, Any]:
        """The layer's integer kernel for workload ``wl``: (KernelDef, typed GlobalVar, config)."""
        catalog = self.owner.catalog
        kernel = registry.select_for(wl, self.owner.plan[m.layer.name].name, catalog.features)
        gv, cfg = catalog.add_kernel(kernel, wl, m.layer.name)
        return kernel, catalog.typed(self.builder_, gv), cfg

    def _layout(self, m: LayerMatch, var: relax.Var) -> str:
        """The activation layout of integer layer ``m`` (output ``var``): ``RealizeIntegers``'
        ``layout`` for convs with uint8 in and out; NCHW for the int16 ones (W8A16 layers and
        the producers of their inputs: those kernels are NCHW)."""
        spec = self.owner.plan[m.layer.name]
        if (self.owner.layout == "NCHW" or registry.op_of(m.workload) == "dense" or spec.a_bits == 16
                or var in self.owner.demand16):
            return "NCHW"
        return self.owner.layout

    def _quantize_float_residual(self, m: LayerMatch, r: relax.Var, layout: str = "NCHW") -> QTensor:
        """A residual branch computed in float: an fp32 / bf16 layer's output, quantized with
        that layer's calibrated output range, or a float island (a strided slice and a channel
        pad of a shortcut, ...), quantized with the range calibration observed for this
        layer's residual operand."""
        producer = self.plan.get(m.residual)
        stats = self.owner.stats
        if isinstance(producer, FloatCall):
            observed = stats.get(producer.layer, "out")
        else:
            self.boundaries.append((r, m.layer.name))
            if "residual" not in stats.layers.get(m.layer.name, {}):
                raise TvmqError(f"layer {m.layer.name!r}: its residual operand is computed in float "
                                f"by ops that are not layers, and the calibration statistics have no "
                                f"range for it (made by an older tvmq): run `tvmq calibrate` again")
            observed = stats.get(m.layer.name, "residual")
        s_r, zp_r = quant.activation_params(*observed.range(self.owner.method))
        return self._quantize(r, self._shape(r), s_r, zp_r, layout)

    def _int_input(self, m: LayerMatch, layout: str = "NCHW") -> tuple[QTensor, QuantizedLayer, np.ndarray]:
        """The layer's integer input (uint8 in ``layout``, or int16 for W8A16), its
        quantization (``recipe``) and the int32 bias for that input (its zero point folded in)."""
        x = self.visit_expr(m.data)
        o = self.owner
        ql = quantize_layer(m.layer.name, m.weight, m.bias, m.layer.groups, o.plan[m.layer.name], o.stats,
                            o.method, bias_correction=o.bias_correction)
        if ql.int16_input:
            qx = self._i16(x, ql)
        else:
            qx = self._u8(x)
            if qx is None:
                self.boundaries.append((x, m.layer.name))
                qx = self._quantize(x, self._shape(x), ql.in_scale, ql.in_zero_point, layout)
            elif len(self._shape(qx.var)) == 4:
                qx = self._in_layout(qx, layout)
        ql = ql.fit_bias(qx.scale)
        return qx, ql, ql.int32_bias(qx.scale, qx.zp)

    def _int_edge_layer(self, binding: relax.VarBinding, p: IntCall) -> None:
        """An integer layer whose output leaves the model: dequantize straight from int32."""
        m = p.match
        wl = replace(m.workload, epilogue=replace(m.epilogue, out_float=True))
        qx, ql, bias_q = self._int_input(m)
        wq, s_w = ql.wq, ql.w_scale
        scale = (qx.scale * s_w).astype(np.float32)
        wl = self._narrowed(m, wl, wq)
        kernel, gv, cfg = self._kernel(m, wl)
        buf = kernel.output_shape(wl, cfg)
        args = [self._view(qx.var, kernel.input_shape(wl, cfg)),
                relax.const(self._packed(m, kernel, wq, wl, cfg)), relax.const(bias_q),
                relax.const(scale), relax.const(np.array([qx.zp, 0, 0, 0], np.int32))]
        out_shape = tuple(m.layer.output_shape)
        emit = self._emit_fn(binding.var)
        call = relax.call_tir(gv, args, relax.TensorType(buf, "float32"))
        y = emit(call) if tuple(buf) == out_shape else self.builder_.emit(call, name_hint="y")

        def simulate(xv: np.ndarray) -> np.ndarray:
            if registry.op_of(wl) == "dense":
                acc = (xv.astype(np.int64) @ wq.astype(np.int64).T).astype(np.int32)
            else:
                acc = reference.conv2d_int(xv, qx.zp, wq, wl)
            return reference.dequantizing_epilogue(acc, bias_q, scale, wl.epilogue).reshape(buf)

        self.program.record(y, simulate, [qx.var])
        if tuple(buf) != out_shape:
            y2 = emit(relax.op.reshape(y, out_shape))
            self.program.record(y2, lambda a: a.reshape(out_shape), [y])
            y = y2
        self.set_var_remap(binding.var, y)
        self.owner.record.qparams[m.layer.name] = {
            "in": {"scale": qx.scale, "zero_point": qx.zp}, "out": "fp32 (dequantized from int32)",
            "w_scales": s_w.tolist(), "weight_sqnr_db": ql.weight_sqnr_db(),
            "clamp": None, "residual": False, **_raised(ql)}
        self.owner.record.kernels[m.layer.name] = self.owner.catalog.lowered(
            kernel, gv, cfg, wl.epilogue, narrow_weights=getattr(wl, "narrow_weights", False))

    def _int_output(self, m: LayerMatch, var: relax.Var, ep: Epilogue, max_in_scale: float
                    ) -> tuple[tuple[float, float], float, int, int, int, Epilogue]:
        """An integer layer's output: ``(range, scale, zero point, clamp lo, hi, epilogue)``;
        uint8, or int16 where a W8A16 layer reads it (the epilogue then says ``out_int16``).
        ``max_in_scale``: the largest ``s_in * s_w``."""
        out_range = self.owner.stats.get(m.layer.name, "out").range(self.owner.method)
        qmax16 = self.owner.demand16.get(var)
        # a kernel that fuses a residual requantizes with scales <= 0.5 (schedules.quant): where
        # a scale would exceed it, the output range widens until it does not
        floor = (max_in_scale / float(quant.FUSED_REQUANT_SCALE_LIMIT) * (1 + 2 ** -20)
                 if ep.residual and self.owner.requant == "float" else 0.0)
        if qmax16 is None:
            s_out, zp_out = quant.activation_params(*out_range)
            if s_out < floor:
                out_range = tuple(v * floor / s_out * (1 + 2 ** -20) for v in out_range)
                s_out, zp_out = quant.activation_params(*out_range)
            lo, hi = _act_bounds(ep, s_out, zp_out)
        else:  # a W8A16 layer reads this output: requantize straight into int16
            s_out, zp_out = max(abs(out_range[0]), abs(out_range[1]), 1e-12, floor * qmax16) / qmax16, 0
            lo, hi = _act_bounds16(ep, s_out, qmax16)
            ep = replace(ep, out_int16=True)
        return out_range, s_out, zp_out, lo, hi, replace(ep, requant=self.owner.requant)

    def _int_residual(self, m: LayerMatch, ep: Epilogue, layout: str, buf: tuple[int, ...], s_out: float
                      ) -> tuple[relax.Expr, tuple[Any, ...], list[relax.Expr]]:
        """The residual a kernel adds in its epilogue, as uint8 codes in ``layout`` viewed as the
        output ``buf``: (that view, the simulation's residual parameters, the kernel arguments)."""
        r = self.visit_expr(m.residual)
        qr = self._u8_or_table(r) or self._quantize_float_residual(m, r, layout)
        rv = self._view(self._in_layout(qr, layout).var, buf)
        if ep.requant == "float":
            r_scale = quant.residual_scale(qr.scale / s_out)  # (<= 2**22: see there)
            return rv, (qr.zp, r_scale), [rv, relax.const(np.array([qr.zp], np.int32)),
                                          relax.const(np.array([r_scale]))]
        (r_m,), (r_s,) = quant.quantize_multiplier(qr.scale / s_out)
        return rv, (qr.zp, int(r_m), int(r_s)), [rv, relax.const(np.array([qr.zp, r_m, r_s], np.int32))]

    def _int_layer(self, binding: relax.VarBinding, p: IntCall) -> None:
        m = p.match
        if p.edge and not m.epilogue.residual:
            self._int_edge_layer(binding, p)
            return
        wl, ep = m.workload, m.epilogue
        layout = self._layout(m, binding.var)
        qx, ql, bias_q = self._int_input(m, layout)
        wq, s_w = ql.wq, ql.w_scale
        s_in, zp_in = qx.scale, qx.zp
        out_range, s_out, zp_out, lo, hi, ep = self._int_output(m, binding.var, ep, float((s_in * s_w).max()))
        wl = replace(wl, epilogue=ep, **({"layout": layout} if layout != "NCHW" else {}))
        out_dtype = "int16" if ep.out_int16 else "uint8"
        if ep.requant == "float":  # one float32 scale per channel (schedules.quant)
            mult, shift = (s_in * s_w / s_out).astype(np.float32), None
            requant = [relax.const(mult)]
        else:
            mult, shift = quant.quantize_multiplier(s_in * s_w / s_out)
            requant = [relax.const(mult), relax.const(shift)]
        wl = self._narrowed(m, wl, wq)
        kernel, gv, cfg = self._kernel(m, wl)
        buf = kernel.output_shape(wl, cfg)
        args: list[relax.Expr] = [self._view(qx.var, kernel.input_shape(wl, cfg)),
                                  relax.const(self._packed(m, kernel, wq, wl, cfg)),
                                  relax.const(bias_q), *requant,
                                  relax.const(np.array([zp_in, zp_out, lo, hi], np.int32))]
        sim_inputs = [qx.var]
        residual = None
        if ep.residual:
            rv, residual, extra = self._int_residual(m, ep, layout, tuple(buf), s_out)
            args += extra
            sim_inputs.append(rv)
        y = self.builder_.emit(relax.call_tir(gv, args, relax.TensorType(buf, out_dtype)), name_hint="yq")

        def simulate(xv: np.ndarray, rv: np.ndarray | None = None) -> np.ndarray:
            res = None if residual is None else (rv.reshape(wl.out_shape), *residual)
            if registry.op_of(wl) == "dense":
                out = reference.dense_w8a8(xv, wq, bias_q, mult, shift, zp_out, lo, hi, res, np.dtype(out_dtype))
            else:
                out = reference.conv2d_w8a8(xv, wq, bias_q, mult, shift, zp_in, zp_out, lo, hi, wl, res,
                                            np.dtype(out_dtype))
            return out.reshape(buf)

        self.program.record(y, simulate, sim_inputs)
        out_shape = tuple(m.layer.output_shape)
        var_shape = elementwise.nhwc(out_shape) if layout == "NHWC" else out_shape
        yv = y if tuple(buf) == var_shape else self._reshape(y, var_shape)
        new = self._dequantize(QTensor(yv, s_out, zp_out, layout), out_shape, self._emit_fn(binding.var),
                               out_dtype)
        if ep.out_int16:
            self.range16[new] = out_range
        self.set_var_remap(binding.var, new)
        self.owner.record.qparams[m.layer.name] = {
            "in": {"scale": s_in, "zero_point": zp_in}, "out": {"scale": s_out, "zero_point": zp_out},
            "w_scales": s_w.tolist(), "weight_sqnr_db": ql.weight_sqnr_db(),
            "clamp": [lo, hi], "residual": residual is not None, **_raised(ql)}
        self.owner.record.kernels[m.layer.name] = self.owner.catalog.lowered(
            kernel, gv, cfg, ep, layout, narrow_weights=getattr(wl, "narrow_weights", False))


# RealizeIntegers compiles every spec (``tvmq.specs``); W4A8 and W8A8 layers share uint8
# activations, so a boundary between them costs nothing (the producer requantizes straight into
# the consumer's input); bf16 and fp32 layers take and give float32 (dequantize / quantize at
# their boundaries)


@tvm.transform.module_pass(opt_level=0, name="tvmq.RealizeIntegers")
class RealizeIntegers:
    """Lower every layer by ``plan``: W8A8 / W4A8 / W8A16 layers integer-only, bf16 / fp32
    layers on their float kernels (see the module docstring). Fills ``record``: kernels, weight
    bytes, the quantized layers' scales (``qparams``) and the numpy program (``program``).
    ``configs`` as for ``LowerToKernels``; ``requant``: ``float`` (one float32 scale per
    channel) or ``dyadic`` (integer-only multiplier and shift), see ``schedules.quant``."""

    def __init__(self, layers: LayerTable, params: dict[str, np.ndarray], param_layer: dict[str, str],
                 features: TargetFeatures, plan: PrecisionPlan, stats: ActivationStats, record: Lowering,
                 method: str = "minmax", bias_correction: bool | None = None, *, configs: Any = None,
                 requant: str = "float", layout: str = "NHWC") -> None:
        plan.validate(layers)
        unsupported = sorted({s.name for s in plan.values() if s.name not in specs.SPECS})
        if unsupported:
            raise TvmqError(f"specs {unsupported} are not realizable yet ({', '.join(specs.NAMES)} are)")
        self.matcher = LayerMatcher(layers, params, param_layer)
        self.catalog = KernelCatalog(features, configs)
        self.record = record
        self.plan, self.stats, self.method = plan, stats, method
        self.bias_correction = bias_correction
        self.requant = requant  # "float" or "dyadic": the integer layers' requantization
        if layout not in LAYOUTS:
            raise TvmqError(f"unknown activation layout {layout!r}; known: {', '.join(LAYOUTS)}")
        self.layout = layout  # the quantized convs' activations: NHWC (channels last) or NCHW
        # producer output var -> the int16 bound its W8A16 consumers accept (see int16_qmax)
        self.demand16: dict[relax.Var, int] = {}

    @staticmethod
    def _model_outputs(func: relax.Function) -> set[relax.Var]:
        """Vars whose value is a model output (through alias bindings)."""
        edges = set(relax.analysis.free_vars(func.body.body))
        for block in reversed(func.body.blocks):
            for b in reversed(block.bindings):
                if b.var in edges and isinstance(b.value, relax.Var):
                    edges.add(b.value)
        return edges

    def _calls(self, mod: tvm.IRModule) -> dict[relax.Var, FloatCall | IntCall]:
        """Every layer's call, by the tail var of its chain; ``demand16`` of W8A16 consumers."""
        calls: dict[relax.Var, FloatCall | IntCall] = {}
        edges = self._model_outputs(mod["main"])
        for m in self.matcher.match(mod):
            spec = self.plan[m.layer.name]
            if spec.is_float:
                calls[m.tail] = float_call(m, spec.name, self.catalog, self.record)
            else:
                calls[m.tail] = IntCall(m, m.tail in edges, {v for v in m.chain if v is not m.tail})
                if spec.a_bits == 16:
                    qmax = int16_qmax(quant.quantize_weights(m.weight, 8)[0])
                    self.demand16[m.data] = min(qmax, self.demand16.get(m.data, qmax))
        return calls

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        calls = self._calls(mod)
        rw = _IntRewriter(mod, calls, self)
        for p in calls.values():
            if isinstance(p, FloatCall):
                p.gv = self.catalog.typed(rw.builder_, p.gv)
        new_main = rw.visit_expr(mod["main"])
        program = rw.program
        program.params = list(new_main.params)
        tuples: dict[relax.Var, relax.Tuple] = {}  # (a model's outputs, bound as one tuple)
        for block in new_main.body.blocks:
            for b in block.bindings:
                if isinstance(b.value, relax.Var):
                    program.aliases[b.var] = b.value
                elif isinstance(b.value, relax.Tuple):
                    tuples[b.var] = b.value
        body = new_main.body.body
        body = tuples.get(program._resolve(body), body) if isinstance(body, relax.Var) else body
        program.outputs = list(body.fields) if isinstance(body, relax.Tuple) else [body]
        self.record.program = program
        self.record.islands = _islands(new_main, rw)
        return finish_module(rw, new_main)


def _with_zp(fn: Callable[..., np.ndarray], zp: int, *args: Any) -> np.ndarray:
    """``fn(*args, zp)`` (a reference whose zero point comes last)."""
    return fn(*args, zp)


def _layer_consumers(func: relax.Function, plan: dict[relax.Var, FloatCall | IntCall]) -> dict[relax.Var, str]:
    """Var -> the integer layer that reads it as its input, directly or through reshapes that
    nothing else uses (a global average pool, flattened, into a classifier)."""
    value = {b.var: b.value for block in func.body.blocks for b in block.bindings}
    uses: dict[relax.Var, list[relax.Var]] = {}
    for v, e in value.items():
        for u in relax.analysis.free_vars(e):
            uses.setdefault(u, []).append(v)
    reads = {p.match.data: p.match.layer.name for p in plan.values() if isinstance(p, IntCall)}
    found: dict[relax.Var, str] = {}
    for v in value:
        w = v
        for _ in range(4):
            if w in reads:
                found[v] = reads[w]
                break
            nxt = uses.get(w, [])
            if len(nxt) != 1 or not (isinstance(value[nxt[0]], relax.Call) and value[nxt[0]].op == RESHAPE):
                break
            w = nxt[0]
    return found


def _channel_shuffles(func: relax.Function) -> tuple[dict[relax.Var, tuple[relax.Var, np.ndarray]], set[relax.Var]]:
    """ShuffleNet's channel shuffle, ``reshape [N, g, C/g, H, W] -> permute (0, 2, 1, 3, 4) ->
    reshape [N, C, H, W]`` of a 4-D tensor (the intermediates used by nothing else): the
    last reshape -> (the 4-D input, the channel order it produces), and the intermediates."""
    value = {b.var: b.value for block in func.body.blocks for b in block.bindings}
    uses: dict[relax.Var, int] = {}
    for e in value.values():
        for v in relax.analysis.free_vars(e) if isinstance(e, relax.Expr) else []:
            uses[v] = uses.get(v, 0) + 1

    def call_of(v: Any, op: Any) -> relax.Call | None:
        e = value.get(v) if isinstance(v, relax.Var) else None
        return e if isinstance(e, relax.Call) and e.op == op else None

    shuffles, inner = {}, set()
    for r2, e in value.items():
        t = e.args[0] if isinstance(e, relax.Call) and e.op == RESHAPE else None
        perm = call_of(t, PERMUTE)
        r1 = perm.args[0] if perm is not None else None
        first = call_of(r1, RESHAPE)
        if first is None or perm.attrs.axes is None or [int(a) for a in perm.attrs.axes] != [0, 2, 1, 3, 4]:
            continue
        x0 = first.args[0]
        shape4, shape5 = [int(d) for d in x0.ty.shape], [int(d) for d in r1.ty.shape]
        if ([int(d) for d in r2.ty.shape] != shape4 or len(shape4) != 4 or len(shape5) != 5
                or shape5[1] * shape5[2] != shape4[1] or uses.get(r1) != 1 or uses.get(t) != 1):
            continue
        g, per = shape5[1], shape5[2]
        shuffles[r2] = (x0, np.arange(shape4[1], dtype=np.int64).reshape(g, per).T.reshape(-1).astype(np.int32))
        inner |= {r1, t}
    return shuffles, inner


def _is_call_tir(e: relax.Call) -> bool:
    return isinstance(e.op, tvm.ir.Op) and e.op.name == "relax.call_tir"


def _op_name(e: relax.Call) -> str:
    """``mean``, ``nn.pad``, ...; a TIR function by its name (``sigmoid``, ``resize2d``)."""
    if _is_call_tir(e):
        return str(e.args[0].name_hint)
    return e.op.name.removeprefix("relax.") if isinstance(e.op, tvm.ir.Op) else str(e.op)


def _islands(func: relax.Function, rw: _IntRewriter) -> list[Island]:
    """The float ops behind each float tensor an integer layer quantizes (``rw.boundaries``),
    walked back to the integer outputs they dequantize, float layers and model inputs; one
    ``Island`` per connected group of such ops (none for a plain quantize of a model input)."""
    value = {b.var: b.value for block in func.body.blocks for b in block.bindings}
    dequantized = set(rw.q) | set(rw.q16) | set(rw.tables)  # (a lookup reads an integer tensor)
    order = {v: i for i, v in enumerate(value)}
    found: list[tuple[set[relax.Var], set[str], str]] = []
    for start, layer in rw.boundaries:
        ops: set[relax.Var] = set()
        source: set[str] = set()
        stack, seen = [start], set()
        while stack:
            v = stack.pop()
            if v in seen:
                continue
            seen.add(v)
            e = value.get(v)
            if e is None:
                source.add("input")
            elif v in dequantized:
                source.add("integer")
            elif v in rw.float_layers:
                source.add("float layer")
            elif isinstance(e, relax.Var):
                stack.append(e)
            elif isinstance(e, relax.Call):  # a relax op, or a TIR function the importer made
                ops.add(v)
                args = e.args[1].fields if _is_call_tir(e) else e.args
                stack.extend(f for a in args for f in (a.fields if isinstance(a, relax.Tuple) else [a])
                             if isinstance(f, relax.Var))
            elif isinstance(e, relax.Tuple):
                stack.extend(a for a in e.fields if isinstance(a, relax.Var))
        if ops:
            found.append((ops, source, layer))
    # connected groups: boundaries whose float ops overlap make one island
    groups: list[tuple[set[relax.Var], set[str], list[str]]] = []
    for ops, source, layer in found:
        ops, source, feeds = set(ops), set(source), [layer]
        for g in [g for g in groups if g[0] & ops]:
            groups.remove(g)
            ops, source = ops | g[0], source | g[1]
            feeds = g[2] + [f for f in feeds if f not in g[2]]
        groups.append((ops, source, feeds))
    return [Island([(v.name, _op_name(value[v])) for v in sorted(ops, key=order.__getitem__)], feeds,
                   sorted(source)) for ops, source, feeds in groups]
