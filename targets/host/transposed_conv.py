"""TransposedConvAsShuffle: a transposed conv whose kernel equals its stride becomes a 1x1 conv
and a pixel shuffle.

TVM legalizes conv2d_transpose as a conv over the input dilated with zeros: for a k x k kernel
with stride k (a DB text detector's 2x upsampling head), three products in four are zero, and
the kernel has no schedule (18 ms of PP-OCRv4 det's 43 ms on TVM's loops). With kernel ==
stride, no padding, dilation 1 and one group, each output pixel takes exactly one kernel tap:

    y[n, c, k*i + a, k*j + b] = sum_d x[n, d, i, j] * W[d, c, a, b]

which is a 1x1 conv to C * k * k channels, W2[(c, a, b), d] = W[d, c, a, b], followed by a
depth-to-space shuffle (reshape, transpose, reshape). The host schedules the 1x1 conv like any
other.

Bit-exact with the legalized op: both sum the nonzero products over d in the same order, and
the dilated form only adds zero products in between. An accumulator starting at +0.0 never
becomes -0.0 (a sum is -0.0 only when both operands are), so adding a signed zero to it leaves
it unchanged.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from tvmq.ir import const_value, dtype_of, emit_like, op_name, rewrite_each_function, shape_of


def shuffle_kernel(value: relax.Call) -> int | None:
    """The kernel size k of a conv2d_transpose that TransposedConvAsShuffle rewrites (k x k
    kernel, stride k, no padding, dilation 1, one group, NCHW/IOHW, constant float weight),
    else None."""
    if op_name(value) != "relax.nn.conv2d_transpose":
        return None
    a = value.attrs
    weight = const_value(value.args[1])
    if weight is None or weight.ndim != 4 or dtype_of(value.args[0]) != "float32":
        return None
    k = int(weight.shape[2])
    plain = (tuple(map(int, a.strides)) == (k, k) and weight.shape[3] == k
             and not any(map(int, a.padding)) and not any(map(int, a.output_padding))
             and tuple(map(int, a.dilation)) == (1, 1) and int(a.groups) == 1
             and (a.data_layout, a.kernel_layout, a.out_layout) == ("NCHW", "IOHW", "NCHW")
             and str(a.out_dtype or "float32") in ("", "float32"))
    return k if plain and k > 1 else None


@relax.expr_functor.mutator
class _Rewriter(relax.PyExprMutator):
    def rewrite(self, func: relax.Function) -> relax.Function:
        return self.visit_expr(func)

    def visit_var_binding_(self, binding):
        value = binding.value
        k = shuffle_kernel(value)
        if k is None:
            emit_like(self, binding.var, self.visit_expr(value))
            return
        weight = const_value(value.args[1])  # (C_in, C_out, k, k)
        c_in, c_out = weight.shape[:2]
        w2 = np.ascontiguousarray(weight.transpose(1, 2, 3, 0).reshape(c_out * k * k, c_in, 1, 1))
        n, _, h, w = shape_of(value.args[0])
        bb = self.builder_
        y = bb.emit(relax.op.nn.conv2d(self.visit_expr(value.args[0]), relax.const(w2)))
        y = bb.emit(relax.op.reshape(y, (n, c_out, k, k, h, w)))
        y = bb.emit(relax.op.permute_dims(y, (0, 1, 4, 2, 5, 3)))  # n, c, i, a, j, b
        emit_like(self, binding.var, relax.op.reshape(y, (n, c_out, h * k, w * k)))


@tvm.transform.module_pass(opt_level=0, name="tvmq.TransposedConvAsShuffle")
class TransposedConvAsShuffle:
    """Rewrite each conv2d_transpose with kernel == stride as a 1x1 conv and a pixel shuffle
    (module docs)."""

    def transform_module(self, mod, ctx):
        return rewrite_each_function(mod, _Rewriter(mod))
