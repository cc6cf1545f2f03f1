"""FakeQuantize: the quantization-aware training forward for conv2d / matmul layers.

Run on a float `main` whose weights are function parameters (`tvmq.train.lift_weights`), before
`relax.training.SetupTrainer`. Every `conv2d(x, W)` and `matmul(x, W)` whose weight `W` comes
from a parameter (directly or through `permute_dims`) becomes

    xq, x_int, s_x = fake_quant(x)                  per tensor, symmetric, [-qmax, qmax]
    wq, w_int, s_w = fake_quant(W, axis=out)        per output channel
    y   = op(ste(x, xq), ste(W, wq))                float; carries the gradient
    acc = op(float64(x_int), float64(w_int))        the integer accumulator, exact in float64
    out = ste(y, requant(acc, s_x, s_w))            forward value: the requantized output

where ``ste(v, value) = no_grad(value) + (v - no_grad(v))`` is the straight-through estimator
(forward exactly `value`, gradient identity). `fake_quant` and `requant` are packed functions over
the golden NumPy numerics (`tvmq.numerics`): the output scale is ``s_y = max|acc * s_x * s_w| /
qmax`` and the integer output is ``requantize(acc, Requant.from_scale(s_x * s_w / s_y, kind))``
with kind ``mult_shift`` (Q31 multiplier and shift, double rounding) or ``fp32`` -- so the
forward simulates the requantization arithmetic the deployed model will have. Bias adds and
activations after the layer stay float.
"""

from __future__ import annotations

import json

import numpy as np
import tvm
from tvm import relax

from tvmq.ir import LINEAR_OPS, op_name, rewrite_functions, shape_of
from tvmq.numerics import QParams, Requant, choose_qparams, dequantize, quantize, requantize
from tvmq.numerics.weights import quantize_weight

from . import gradients

REQUANT_KINDS = ("mult_shift", "fp32")
_FAKE_QUANT = "tvmq.fake_quant"
_REQUANT = "tvmq.fake_quant_requant"


@tvm.transform.module_pass(opt_level=0, name="tvmq.FakeQuantize")
class FakeQuantize:
    """Insert fake quantization with simulated requantization around conv2d / matmul layers.

    Parameters
    ----------
    requant : {"mult_shift", "fp32"}
        How the simulated accumulator is rescaled to the output scale.
    bits : int
        Weight, activation and output bit-width, 2..8 (symmetric, narrow range).
    """

    def __init__(self, requant: str = "mult_shift", bits: int = 8):
        if requant not in REQUANT_KINDS:
            raise ValueError(f"requant must be one of {REQUANT_KINDS}, got {requant!r}")
        if not isinstance(bits, int) or not 2 <= bits <= 8:
            raise ValueError(f"bits must be an int in 2..8, got {bits!r}")
        self.requant, self.bits = requant, bits
        gradients.register()
        _register_packed()

    def transform_module(self, mod: tvm.IRModule, ctx) -> tvm.IRModule:
        return rewrite_functions(mod, _Rewriter, self.requant, self.bits)


def weight_param(func: relax.Function, expr: relax.Expr, lookup=None) -> relax.Var | None:
    """The parameter of `func` a weight operand comes from (itself or permute_dims of it, also
    through the variable bound to it: `lookup(var)` gives a variable's bound value)."""
    bound = lookup(expr) if lookup is not None and isinstance(expr, relax.Var) else None
    if op_name(bound) == "relax.permute_dims":
        expr = bound
    if op_name(expr) == "relax.permute_dims":
        expr = expr.args[0]
    return expr if isinstance(expr, relax.Var) and any(expr.same_as(p) for p in func.params[1:]) \
        else None


@relax.expr_functor.mutator
class _Rewriter(relax.PyExprMutator):
    def __init__(self, mod, requant, bits):
        super().__init__(mod)
        self.requant, self.bits, self.func, self.count = requant, bits, None, 0

    def visit_function_(self, func):
        self.func = func
        return super().visit_function_(func)

    def visit_call_(self, call):
        call = super().visit_call_(call)
        kind = op_name(call)
        if kind not in LINEAR_OPS or self.func is None:
            return call
        w = call.args[1]
        if weight_param(self.func, w, self.lookup_binding) is None or len(shape_of(w)) < 2:
            return call
        if str(call.args[0].ty.dtype) != "float32":
            return call
        return self._fake_quantize(call, "conv" if kind == "relax.nn.conv2d" else "matmul")

    def _fake_quantize(self, call, kind):
        bb, name = self.builder_, f"fq{self.count}"
        self.count += 1
        x, w = call.args
        w_axis = 0 if kind == "conv" else len(shape_of(w)) - 1
        xq, x_int, s_x = self._quantize(x, None, f"{name}_x")
        wq, w_int, s_w = self._quantize(w, w_axis, f"{name}_w")
        x_ste = gradients.straight_through(bb, x, xq, f"{name}_x_ste")
        w_ste = gradients.straight_through(bb, w, wq, f"{name}_w_ste")
        y = bb.emit(relax.Call(call.op, [x_ste, w_ste], call.attrs), f"{name}_y")
        acc_call = relax.Call(call.op, [relax.op.astype(x_int, "float64"),
                                        relax.op.astype(w_int, "float64")],
                              _float64_attrs(call))
        acc = bb.emit(acc_call, f"{name}_acc")
        spec = json.dumps({"kind": self.requant, "bits": self.bits,
                           "axis": 1 if kind == "conv" else -1})
        out_ty = relax.TensorType(shape_of(y), "float32")
        yq = bb.emit(relax.call_dps_packed(_REQUANT, [acc, s_x, s_w, tvm.ir.StringImm(spec)],
                                           out_ty), f"{name}_out_q")
        return gradients.straight_through(bb, y, yq, f"{name}_out")

    def _quantize(self, x, axis, name):
        bb, shape = self.builder_, shape_of(x)
        scale_shape = () if axis is None else (shape[axis],)
        spec = json.dumps({"bits": self.bits, "axis": axis})
        tys = [relax.TensorType(shape, "float32"), relax.TensorType(shape, "float32"),
               relax.TensorType(scale_shape, "float32")]
        fq = bb.emit(relax.call_dps_packed(_FAKE_QUANT, [x, tvm.ir.StringImm(spec)], tys),
                     f"{name}_fq")
        return (bb.emit(relax.TupleGetItem(fq, i), f"{name}_{part}")
                for i, part in enumerate(("q", "int", "scale")))


def _float64_attrs(call):
    """The op's attrs with out_dtype float64 (conv2d/matmul keep an explicit out_dtype)."""
    if op_name(call) == "relax.matmul":
        return tvm.ir.make_node("relax.attrs.MatmulAttrs", out_dtype="float64")
    a = call.attrs
    return tvm.ir.make_node(
        "relax.attrs.Conv2DAttrs", strides=a.strides, padding=a.padding, dilation=a.dilation,
        groups=a.groups, data_layout=a.data_layout, kernel_layout=a.kernel_layout,
        out_layout=a.out_layout, out_dtype="float64")


# ---- packed functions over the golden numerics -------------------------------------------------

def fake_quant(x: np.ndarray, bits: int, axis: int | None):
    """(dequantized, integer values, scale): symmetric narrow-range quantization of `x`.

    Per tensor (activations): ``scale = max|x| / qmax``; per channel along `axis` (weights):
    `tvmq.numerics.weights.quantize_weight`. Integer values are returned as float32.
    """
    if axis is None:
        qp = choose_qparams(x.min(), x.max(), bits=bits, symmetric=True, narrow_range=True)
        q = quantize(x, qp)
    else:
        q, qp = quantize_weight(x, axis=axis, per_channel=True, bits=bits)
    return dequantize(q, qp), q.astype(np.float32), qp.scale.astype(np.float32)


def fake_requant(acc: np.ndarray, s_x: np.ndarray, s_w: np.ndarray, kind: str, bits: int,
                 axis: int) -> np.ndarray:
    """Requantized layer output, dequantized to float32 (see the module docstring).

    `acc` holds the exact integer accumulator (float64); it must fit int32.
    """
    if not np.all(np.abs(acc) <= np.iinfo(np.int32).max):
        raise ValueError("fake-quant accumulator overflows int32; use fewer bits or a smaller "
                         "reduction")
    acc32 = acc.astype(np.int32)
    shape = [1] * acc.ndim
    shape[axis] = -1
    in_scale = np.float64(s_x) * s_w.astype(np.float64)          # per output channel
    amax = np.max(np.abs(acc32) * in_scale.reshape(shape))
    out = choose_qparams(-amax, amax, bits=bits, symmetric=True, narrow_range=True)
    rq = Requant.from_scale(in_scale / np.float64(out.scale), kind,
                            "double" if kind == "mult_shift" else None)
    y = requantize(acc32, rq, zero_point=0, qmin=out.qmin, qmax=out.qmax, axis=axis % acc.ndim)
    return dequantize(y, QParams(out.scale, np.int32(0), out.qmin, out.qmax))


def _register_packed() -> None:
    if tvm.get_global_func(_FAKE_QUANT, allow_missing=True) is not None:
        return

    def _fake_quant(x, spec, out_q, out_int, out_scale):
        s = json.loads(str(spec))
        for out, value in zip((out_q, out_int, out_scale), fake_quant(x.numpy(), s["bits"],
                                                                     s["axis"]), strict=True):
            out.copyfrom(np.array(value.reshape(tuple(out.shape)), order="C"))

    def _requant(acc, s_x, s_w, spec, out):
        s = json.loads(str(spec))
        out.copyfrom(fake_requant(acc.numpy(), s_x.numpy(), s_w.numpy(), s["kind"], s["bits"],
                                  s["axis"]))

    tvm.register_global_func(_REQUANT, _requant)
    tvm.register_global_func(_FAKE_QUANT, _fake_quant)
