"""FoldBatchNorm: fold per-channel scale/shift constants into the preceding conv2d / matmul.

Run after `relax.transform.DecomposeOpsForInference()` (which turns `R.nn.batch_norm` into
subtract/divide/multiply/add by per-channel constants) and FoldConstant. For a linear op
y = W * x + b whose output feeds only `y (+|-|*|/) c` with a constant c that is per output channel
(or scalar), the op is replaced by one with

    *: W' = W * c, b' = b * c      /: W' = W / c, b' = b / c
    +: b' = b + c                  -: b' = b - c

so a Conv -> BatchNorm chain becomes `conv2d(x, W') + b'` with b' of shape (1, C, 1, 1)
(matmul: W is (K, N) and b' has shape (N,)). Everything stays float32; arithmetic is float64.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from tvmq.ir import const_value, count_uses, op_name, rewrite_functions, shape_of

_FOLDABLE = ("relax.add", "relax.subtract", "relax.multiply", "relax.divide")


def _per_channel(c: np.ndarray, out_shape: tuple[int, ...], axis: int) -> np.ndarray | None:
    """c as a (C,) vector when it broadcasts against `out_shape` only along `axis`, else None."""
    channels = out_shape[axis]
    if c.ndim > len(out_shape):
        return None
    full = (1,) * (len(out_shape) - c.ndim) + c.shape
    if any(d != 1 for i, d in enumerate(full) if i != axis % len(out_shape)):
        return None
    vec = c.reshape(-1).astype(np.float64)
    return np.broadcast_to(vec, (channels,)).copy() if vec.size in (1, channels) else None


class _Linear:
    """A float conv2d or matmul with constant weight, and optional constant per-channel bias."""

    def __init__(self, call: relax.Call, weight: np.ndarray, bias: np.ndarray | None):
        self.call, self.weight, self.bias = call, weight.astype(np.float64), bias
        self.is_conv = op_name(call) == "relax.nn.conv2d"
        self.out_shape = shape_of(call)
        self.axis = 1 if self.is_conv else len(self.out_shape) - 1

    @property
    def channels(self) -> int:
        return self.out_shape[self.axis]

    def scale(self, s: np.ndarray) -> None:
        w_shape = (-1, 1, 1, 1) if self.is_conv else (1, -1)
        self.weight = self.weight * s.reshape(w_shape)
        if self.bias is not None:
            self.bias = self.bias * s

    def emit(self) -> relax.Expr:
        weight = relax.const(self.weight.astype(np.float32))
        a = self.call.attrs
        if self.is_conv:
            y = relax.op.nn.conv2d(self.call.args[0], weight, strides=a.strides, padding=a.padding,
                                   dilation=a.dilation, groups=a.groups)
            bias_shape = (1, self.channels, 1, 1)
        else:
            y = relax.op.matmul(self.call.args[0], weight)
            bias_shape = (self.channels,)
        if self.bias is None:
            return y
        return relax.op.add(y, relax.const(self.bias.astype(np.float32).reshape(bias_shape)))


@relax.expr_functor.mutator
class _Rewriter(relax.PyExprMutator):
    def __init__(self, mod):
        super().__init__(mod)
        self.uses: dict = {}

    def visit_function_(self, func):
        self.uses = count_uses(func)
        return super().visit_function_(func)

    def _linear(self, var: relax.Expr) -> _Linear | None:
        """The foldable linear op bound to `var` (possibly followed by a bias add), or None."""
        value = self._resolve(var)
        if op_name(value) == "relax.add":
            inner = self._resolve(value.args[0])
            c = const_value(value.args[1])
            if inner is None or c is None:
                return None
            lin = self._linear_call(inner)
            if lin is None:
                return None
            bias = _per_channel(c, lin.out_shape, lin.axis)
            if bias is None:
                return None
            lin.bias = bias
            return lin
        return self._linear_call(value)

    def _resolve(self, expr: relax.Expr) -> relax.Expr | None:
        return self.lookup_binding(expr) if isinstance(expr, relax.Var) else expr

    @staticmethod
    def _linear_call(value) -> _Linear | None:
        name = op_name(value)
        if name not in ("relax.nn.conv2d", "relax.matmul"):
            return None
        w = const_value(value.args[1])
        if w is None or not str(w.dtype).startswith("float"):
            return None
        if name == "relax.matmul" and w.ndim != 2:
            return None
        if name == "relax.nn.conv2d" and (value.attrs.data_layout != "NCHW"
                                          or value.attrs.kernel_layout != "OIHW"):
            return None
        return _Linear(value, w, None)

    def visit_call_(self, call):
        name = op_name(call)
        orig_input = call.args[0] if name in _FOLDABLE else None
        call = self.visit_expr_post_order(call)
        if orig_input is None or self.uses.get(orig_input, 0) != 1:
            return call
        c = const_value(call.args[1])
        lin = self._linear(call.args[0]) if c is not None else None
        if lin is None:
            return call
        vec = _per_channel(c, lin.out_shape, lin.axis)
        if vec is None or (name in ("relax.multiply", "relax.divide") and not np.all(vec)):
            return call
        if lin.bias is None:
            lin.bias = np.zeros(lin.channels)
        if name == "relax.add":
            lin.bias = lin.bias + vec
        elif name == "relax.subtract":
            lin.bias = lin.bias - vec
        else:
            lin.scale(vec if name == "relax.multiply" else 1.0 / vec)
        return lin.emit()


@tvm.transform.module_pass(opt_level=0, name="tvmq.FoldBatchNorm")
class FoldBatchNorm:
    """Fold per-channel constant scale/shift after conv2d/matmul into its weight and bias."""

    def transform_module(self, mod, ctx):
        mod = rewrite_functions(mod, _Rewriter)
        return relax.transform.DeadCodeElimination()(mod)
