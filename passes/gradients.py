"""Gradients TVM 0.27 lacks, and the straight-through estimator.

TVM 0.27's Gradient pass fails on two ops tvmq's training graphs hold:
- `relax.grad.no_grad` itself has no gradient (it is only what other ops' gradients return to mean
  "zero"); `register()` gives it the stop-gradient rule: the adjoint of its input is
  `no_grad(input)`, i.e. nothing flows back.
- `relax.clip` (ReLU6 and other clamps): ``dclip(x, lo, hi)/dx = 1 if lo <= x <= hi else 0``.
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.op.base import register_gradient


def register() -> None:
    """Register the missing gradients, once per process."""
    for op, rule in (("relax.grad.no_grad", _no_grad_gradient), ("relax.clip", _clip_gradient)):
        if tvm.ir.Op.get(op).get_attr("FPrimalGradient") is None:
            register_gradient(op, rule)


def _no_grad_gradient(orig_var, orig_call, output_grad, ctx):
    return [relax.op.grad.no_grad(orig_call.args[0])]


def _clip_gradient(orig_var, orig_call, output_grad, ctx):
    x, lo, hi = orig_call.args
    dtype = str(x.ty.dtype)
    inside = relax.op.logical_and(relax.op.greater_equal(x, _bound(lo, dtype)),
                                  relax.op.less_equal(x, _bound(hi, dtype)))
    return [relax.op.where(inside, output_grad, relax.op.zeros_like(output_grad)),
            relax.op.grad.no_grad(lo), relax.op.grad.no_grad(hi)]


def _bound(value: relax.Expr, dtype: str) -> relax.Expr:
    """A clip bound (a PrimValue) as a scalar constant of the clipped tensor's dtype."""
    return relax.const(float(value.value), dtype)


def straight_through(builder: relax.BlockBuilder, x: relax.Expr, value: relax.Expr,
                     name: str) -> relax.Var:
    """``no_grad(value) + (x - no_grad(x))``: forward value exactly `value`, gradient identity.

    ``x - x`` is exactly 0 for finite floats and ``v + 0 == v``, so the forward value is bit-exact
    `value` (unlike ``x + no_grad(value - x)``, which rounds twice).
    """
    zero = builder.emit(relax.op.subtract(x, relax.op.grad.no_grad(x)), f"{name}_zero")
    return builder.emit(relax.op.add(relax.op.grad.no_grad(value), zero), name)
