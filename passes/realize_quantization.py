"""RealizeQuantization: rewrite `tvmq.*` composites into integer Relax ops + requant kernels.

Run after AnnotateQuantizable and calibration, before building. `act_qparams` maps tensor names
(main's input, every composite output, every float tensor a composite reads) to their QParams.

Integer forms (x: int8 with zero point zx; weights symmetric int8; zero points subtracted in int16).
Narrower integers (int4, int2: `QParams` with a smaller [qmin, qmax], `weight_bits` per layer)
use the same forms, held in int8 containers:
    conv2d / matmul  acc = op(x - zx, Wq) + bq (int32);  y = requant(acc, sx*sw[c]/sy) + zy
                     (a depthwise conv reading a float tensor: x quantized per channel,
                     zero point 0, sx[c] per channel in the same requant)
    add              a' = requant((a - za) << 20, sa/2m);  b' likewise;
                     y = requant(a' + b', 2m / (2^20 sy))
                     with m = max(sa, sb)  (TFLite's scheme)
    avg_pool2d       acc = depthwise_conv(x - zx, ones);  y = requant(acc, sx / (sy * kh * kw)) + zy
    mean             acc = sum(x - zx);  y = requant(acc, sx / (sy * count)) + zy
    concat           each input requantized to the output's qparams, then concat
    relu / clip      clip(x, q(lo), q(hi)) on int8; max_pool2d, reshape, permute_dims: int8 as is
ReLU/clip after conv/matmul/add is folded into the requant clamp. `requant` is a call_tir to a
PrimFunc from `tvmq.ir.requant_kernel` (attribute `tvmq.requant`). Layer `<name>`'s integer
output is the binding `<name>_q`. Every quantized tensor also gets a
`dequantize` for float consumers; unused ones are removed by DeadCodeElimination.
"""

from __future__ import annotations

import math
import typing

import numpy as np
import tvm
from tvm import relax

from tvmq.ir import (
    INT32_MAX,
    INT32_MIN,
    const_value,
    emit_like,
    op_name,
    requant_prim_func,
    shape_of,
)
from tvmq.numerics import QParams, Requant, quantize
from tvmq.numerics.weights import quantize_bias, quantize_weight

from .annotate_quantizable import Composite, composite_kind

ADD_LEFT_SHIFT = 20
SAME_SCALE_KINDS = ("relu", "max_pool2d", "reshape", "permute_dims")  # output qparams = input's


def _dtype_range(dtype: str) -> tuple[int, int]:
    info = np.iinfo(dtype)
    return int(info.min), int(info.max)


def _clamp(qp: QParams, lo: float = -math.inf, hi: float = math.inf) -> tuple[int, int]:
    """Integer clamp bounds of an output whose float values are limited to [lo, hi] (one pair
    for every channel of a per-channel output: its bounds must quantize alike, as 0 does)."""
    qlo, qhi = qp.qmin, qp.qmax
    if lo > -math.inf:
        qlo = max(qlo, _one_integer(lo, qp))
    if hi < math.inf:
        qhi = min(qhi, _one_integer(hi, qp))
    return qlo, qhi


def _zero_point(qp: QParams) -> int:
    """The zero point of a tensor (a per-channel one's channels share it: 0)."""
    zps = np.unique(qp.zero_point)
    if zps.size != 1:
        raise ValueError("RealizeQuantization: a per-channel tensor needs one zero point shared "
                         f"by its channels, got {zps.tolist()[:4]}...")
    return int(zps[0])


def _one_integer(value: float, qp: QParams) -> int:
    shape = () if qp.axis is None else (1,) * qp.axis + np.shape(qp.scale)
    q = np.unique(quantize(np.full(shape, value, np.float32), qp))
    if q.size != 1:
        raise ValueError(f"RealizeQuantization: clamp at {value} differs across the channels of "
                         "a per-channel output")
    return int(q[0])


@relax.expr_functor.mutator
class _Realizer(relax.PyExprMutator):
    def __init__(self, mod, act_qparams, requant, rounding, per_channel, weight_bits, weights,
                 channel_qparams, biases):
        super().__init__(mod)
        self.mod_ = mod
        self.act_qparams = act_qparams
        self.channel_qparams = channel_qparams
        self.requant_kind, self.rounding, self.per_channel = requant, rounding, per_channel
        self.weight_bits, self.weights, self.biases = weight_bits, weights, biases
        self.layer = ""  # the binding being realized
        self.q: dict[str, tuple[relax.Expr, QParams]] = {}

    # -- helpers ---------------------------------------------------------------------------
    def _qparams(self, name: str) -> QParams:
        if name not in self.act_qparams:
            raise ValueError(f"RealizeQuantization: no calibrated qparams for tensor {name!r}")
        return self.act_qparams[name]

    def _int_input(self, arg: relax.Var, channel_qp: QParams | None = None
                   ) -> tuple[relax.Expr, QParams]:
        """The integer version of an original float tensor, quantized on first use: `<name>_q`
        with its own qparams, or `<name>_qc` per channel (axis 1) with `channel_qp` for a
        depthwise conv."""
        key = arg.name if channel_qp is None else (arg.name, "channels")
        if key not in self.q:
            qp = self._qparams(arg.name) if channel_qp is None else channel_qp
            axis = -1 if qp.axis is None else qp.axis
            x = relax.op.quantize(self.visit_expr(arg), relax.const(qp.scale),
                                  relax.const(qp.zero_point), axis=axis, out_dtype=qp.dtype)
            if (qp.qmin, qp.qmax) != _dtype_range(qp.dtype):  # int4/int2 in an int8 container
                x = relax.op.clip(self.builder_.emit(x), qp.qmin, qp.qmax)
            suffix = "_q" if channel_qp is None else "_qc"
            self.q[key] = (self.builder_.emit(x, f"{arg.name}{suffix}"), qp)
        return self.q[key]

    def _centered(self, x: relax.Expr, qp: QParams, dtype: str = "int16") -> relax.Expr:
        """x - zero_point, widened to `dtype` (skipped for int8 with zero point 0)."""
        zp = _zero_point(qp)
        if zp == 0 and dtype == "int16":
            return x
        x = self.builder_.emit(relax.op.astype(x, dtype))
        if zp == 0:
            return x
        return self.builder_.emit(relax.op.subtract(x, relax.const(zp, dtype)))

    def _requant(self, acc, real_scale, axis, zero_point, qmin, qmax, out_dtype, emit=True):
        shape = shape_of(acc)
        real_scale = np.atleast_1d(np.asarray(real_scale, dtype=np.float64))
        if real_scale.size == 1:
            axis = None
        rq = Requant.from_scale(real_scale, self.requant_kind, self.rounding)
        if self.requant_kind == "fp32":
            params = [relax.const(rq.scale.astype(np.float32))]
        else:
            params = [relax.const(rq.multiplier.astype(np.int32)),
                      relax.const(rq.shift.astype(np.int32))]
        func = requant_prim_func(shape, real_scale.size, axis, self.requant_kind, self.rounding,
                                 int(zero_point), int(qmin), int(qmax), out_dtype)
        gv = self.builder_.add_func(func, f"tvmq_requant_{self.rounding or 'fp32'}")
        call = relax.call_tir(gv, [acc, *params], relax.TensorType(shape, out_dtype))
        return self.builder_.emit(call) if emit else call

    def _requant_to(self, acc, real_scale, axis, qp: QParams, lo=-math.inf, hi=math.inf):
        qlo, qhi = _clamp(qp, lo, hi)
        return self._requant(acc, real_scale, axis, _zero_point(qp), qlo, qhi, qp.dtype,
                             emit=False)

    # -- composites ------------------------------------------------------------------------
    def _linear(self, comp, inputs, out_qp):
        (x, xqp), = inputs
        root = comp.root
        is_conv = op_name(root) == "relax.nn.conv2d"
        w = const_value(root.args[1])
        axis = 0 if is_conv else 1
        if self.layer in self.weights:
            wq, wqp = self.weights[self.layer]
            if wq.shape != w.shape:
                raise ValueError(f"RealizeQuantization: weights[{self.layer!r}] has shape "
                                 f"{wq.shape}, the layer's weight {w.shape}")
        else:
            wq, wqp = quantize_weight(w, axis=axis, per_channel=self.per_channel,
                                      bits=self.weight_bits.get(self.layer, 8))
        xc = self._centered(x, xqp)
        if is_conv:
            a = root.attrs
            acc = relax.op.nn.conv2d(xc, relax.const(wq), strides=a.strides, padding=a.padding,
                                     dilation=a.dilation, groups=a.groups, out_dtype="int32")
        else:
            acc = relax.op.matmul(xc, relax.const(wq), out_dtype="int32")
        acc = self.builder_.emit(acc)
        out_axis = 1 if is_conv else len(shape_of(root)) - 1
        channels = shape_of(root)[out_axis]
        w_scale = np.broadcast_to(wqp.scale.astype(np.float64), (channels,))
        # input scale per output channel: a depthwise conv's output channel o reads input
        # channel o // multiplier
        x_scale = xqp.scale.astype(np.float64)
        if xqp.axis is not None:
            x_scale = np.repeat(x_scale, channels // x_scale.size)
        bias = self.biases.get(self.layer, comp.bias())
        if bias is not None:
            bq = quantize_bias(bias.reshape(-1), x_scale, w_scale)
            bshape = (1, channels, 1, 1) if is_conv else (channels,)
            acc = self.builder_.emit(relax.op.add(acc, relax.const(bq.reshape(bshape))))
        real = x_scale * w_scale / out_qp.scale.astype(np.float64)  # per channel: its own
        return self._requant_to(acc, real, out_axis, out_qp, *comp.activation())

    def _add(self, comp, inputs, out_qp):
        if len(inputs) == 1:  # x + x: the composite has one parameter (YOLOv8's head)
            inputs = inputs * 2
        (a, aqp), (b, bqp) = inputs
        twice_max = 2.0 * max(float(aqp.scale), float(bqp.scale))
        terms = []
        for x, qp in ((a, aqp), (b, bqp)):
            xc = self._centered(x, qp, "int32")
            xc = self.builder_.emit(relax.op.left_shift(xc, relax.const(ADD_LEFT_SHIFT, "int32")))
            terms.append(self._requant(xc, float(qp.scale) / twice_max, None, 0,
                                       INT32_MIN, INT32_MAX, "int32"))
        acc = self.builder_.emit(relax.op.add(*terms))
        real = twice_max / ((1 << ADD_LEFT_SHIFT) * float(out_qp.scale))
        return self._requant_to(acc, real, None, out_qp, *comp.activation())

    def _relu(self, comp, inputs, out_qp):
        (x, xqp), = inputs
        qlo, qhi = _clamp(xqp, *comp.activation())
        return relax.op.clip(x, qlo, qhi), xqp

    def _same_scale(self, comp, inputs, out_qp):
        """max_pool2d / reshape / permute_dims: the same op on int8, qparams unchanged."""
        (x, xqp), = inputs
        call = relax.Call(comp.root.op, [x, *comp.root.args[1:]], comp.root.attrs)
        return call, xqp

    def _avg_pool2d(self, comp, inputs, out_qp):
        (x, xqp), = inputs
        a = comp.root.attrs
        channels = shape_of(x)[1]
        kh, kw = (int(k) for k in a.pool_size)
        ones = relax.const(np.ones((channels, 1, kh, kw), np.int8))
        acc = self.builder_.emit(relax.op.nn.conv2d(
            self._centered(x, xqp), ones, strides=a.strides, padding=a.padding, groups=channels,
            out_dtype="int32"))
        return self._requant_to(acc, float(xqp.scale) / (float(out_qp.scale) * kh * kw), None,
                                out_qp)

    def _mean(self, comp, inputs, out_qp):
        (x, xqp), = inputs
        a = comp.root.attrs
        shape = shape_of(x)
        axes = [int(i) % len(shape) for i in a.axis] if a.axis is not None else range(len(shape))
        count = int(np.prod([shape[i] for i in axes]))
        acc = self.builder_.emit(relax.op.sum(self._centered(x, xqp, "int32"), axis=list(axes),
                                              keepdims=a.keepdims))
        return self._requant_to(acc, float(xqp.scale) / (float(out_qp.scale) * count), None,
                                out_qp)

    def _concat(self, comp, inputs, out_qp):
        parts = []
        for x, qp in inputs:
            if qp == out_qp:
                parts.append(x)
                continue
            xc = self._centered(x, qp, "int32")
            parts.append(self._requant(xc, float(qp.scale) / float(out_qp.scale), None,
                                       out_qp.zero_point, out_qp.qmin, out_qp.qmax, out_qp.dtype))
        return relax.op.concat(parts, axis=comp.root.attrs.axis)

    _HANDLERS: typing.ClassVar[dict] = {
        "conv2d": _linear, "matmul": _linear, "add": _add, "relu": _relu,
        "max_pool2d": _same_scale, "reshape": _same_scale, "permute_dims": _same_scale,
        "avg_pool2d": _avg_pool2d, "mean": _mean, "concat": _concat,
    }

    # -- bindings --------------------------------------------------------------------------
    def visit_var_binding_(self, binding):
        name = binding.var.name
        kind = composite_kind(self.mod_, binding.value)
        if kind is None:
            emit_like(self, binding.var, self.visit_expr(binding.value))
            return
        comp = Composite(self.mod_[binding.value.op])
        self.layer = name
        channel_qp = self.channel_qparams.get(name)  # a depthwise conv's per-channel input
        inputs = [self._int_input(arg, channel_qp) for arg in binding.value.args]
        out_qp = None if kind in SAME_SCALE_KINDS else self._qparams(name)  # those keep x's
        result = self._HANDLERS[kind](self, comp, inputs, out_qp)
        y, qp = result if isinstance(result, tuple) else (result, out_qp)
        y = self.builder_.emit(y, f"{name}_q")
        self.q[name] = (y, qp)
        deq = relax.op.dequantize(y, relax.const(qp.scale), relax.const(qp.zero_point),
                                  axis=-1 if qp.axis is None else qp.axis)
        emit_like(self, binding.var, deq)


@tvm.transform.module_pass(opt_level=0, name="tvmq.RealizeQuantization")
class RealizeQuantization:
    """Turn annotated composites into int8/int32 Relax ops with mult/shift or FP32 requant.

    Parameters
    ----------
    act_qparams : dict[str, QParams]
        Per-tensor activation qparams from calibration, keyed by tensor name.
    requant : "mult_shift" or "fp32"
    rounding : "double", "single" or "tonearest" for mult_shift; ignored for fp32
    per_channel_weights : bool
        Per-output-channel weight scales (default) or one scale per tensor.
    weight_bits : dict[str, int], optional
        Weight width of conv2d/matmul layers by binding name (default 8; 2..8, held in int8).
        Activation widths come with `act_qparams` (their qmin/qmax).
    weights : dict[str, tuple[numpy.ndarray, QParams]], optional
        Integer weights of conv2d/matmul layers by binding name, with their QParams (symmetric,
        zero point 0, the layer's weight width), used instead of `quantize_weight`'s (e.g.
        learned rounding, tvmq.boosters.adaround); the bias is quantized at their scale.
    channel_qparams : dict[str, QParams], optional
        By depthwise conv2d layer name: the per-channel (axis 1, zero point 0) qparams of the
        float tensor it reads; it quantizes that input per channel (`<tensor>_qc`), each
        channel's scale folded into its output channel's requant, so it costs no integer op.
        Only a depthwise conv may be named (tvmq.realize decides which). (A conv2d whose output
        only depthwise convs read may be given per-channel qparams in `act_qparams`: its
        requant writes each channel at its own scale.)
    biases : dict[str, np.ndarray], optional
        Float32 bias (one value per output channel) of conv2d/matmul layers by binding name,
        used instead of the composite's (a layer without one gets it); the integer bias is
        `quantize_bias` of it, as for the composite's. Bias correction
        (tvmq.boosters.bias_correction) computes them.
    """

    def __init__(self, act_qparams, requant="mult_shift", rounding="double",
                 per_channel_weights=True, weight_bits=None, weights=None,
                 channel_qparams=None, biases=None):
        self.act_qparams = dict(act_qparams)
        self.channel_qparams = dict(channel_qparams or {})
        self.weight_bits = dict(weight_bits or {})
        self.biases = {n: np.asarray(b, np.float32).reshape(-1) for n, b in (biases or {}).items()}
        bad = {n: b for n, b in self.weight_bits.items() if b not in range(2, 9)}
        if bad:
            raise ValueError(f"RealizeQuantization: weight_bits {bad} outside 2..8 (int8 "
                             "containers hold at most 8 bits).")
        self.weights = {name: _checked_weight(name, wq, qp, self.weight_bits.get(name, 8))
                        for name, (wq, qp) in (weights or {}).items()}
        self.requant = requant
        self.rounding = None if requant == "fp32" else rounding
        self.per_channel = per_channel_weights

    def transform_module(self, mod, ctx):
        realizer = _Realizer(mod, self.act_qparams, self.requant, self.rounding, self.per_channel,
                             self.weight_bits, self.weights, self.channel_qparams,
                             self.biases)
        gv = mod.get_global_var("main")
        realizer.builder_.update_func(gv, realizer.visit_expr(mod["main"]))
        mod = realizer.builder_.get()
        mod = relax.transform.DeadCodeElimination(["main"])(mod)
        return mod


def _checked_weight(name: str, wq, qp: QParams, bits: int) -> tuple[np.ndarray, QParams]:
    """A given layer weight as its QParams' dtype, after checking it fits them and `bits`."""
    wq = np.asarray(wq)
    if wq.dtype.kind not in "iu":
        raise ValueError(f"RealizeQuantization: weights[{name!r}] has dtype {wq.dtype}; give "
                         "integers")
    if np.any(qp.zero_point != 0) or qp.bits != bits:
        raise ValueError(f"RealizeQuantization: weights[{name!r}] needs symmetric {bits}-bit "
                         f"QParams (zero point 0), got [{qp.qmin}, {qp.qmax}]")
    if wq.size and (wq.min() < qp.qmin or wq.max() > qp.qmax):
        raise ValueError(f"RealizeQuantization: weights[{name!r}] holds values in "
                         f"[{int(wq.min())}, {int(wq.max())}], outside [{qp.qmin}, {qp.qmax}]")
    return wq.astype(qp.dtype), qp
