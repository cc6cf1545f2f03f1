"""Small helpers shared by the tvmq passes (private)."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from ._requant_kernel import requant_prim_func


def const_value(expr: relax.Expr) -> np.ndarray | None:
    """The NumPy value of a Relax constant, or None when `expr` is not a constant."""
    if isinstance(expr, tvm.ir.GenericConst):
        return expr.value.numpy()
    return None


def op_name(expr: relax.Expr) -> str | None:
    """`"relax.nn.conv2d"` for a call to that op, None for anything else."""
    if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op):
        return expr.op.name
    return None


def shape_of(expr: relax.Expr) -> tuple[int, ...]:
    """Static shape of a tensor expression (raises on dynamic shapes)."""
    return tuple(int(d) for d in expr.ty.shape)


def dtype_of(expr: relax.Expr) -> str:
    return str(expr.ty.dtype)


def count_uses(func: relax.Function) -> dict[relax.Var, int]:
    """How many times each variable is used inside `func` (bindings and the return value)."""
    uses: dict[relax.Var, int] = {}

    @relax.expr_functor.visitor
    class _Counter(relax.PyExprVisitor):
        def visit_var_(self, var):
            uses[var] = uses.get(var, 0) + 1

        def visit_dataflow_var_(self, var):
            uses[var] = uses.get(var, 0) + 1

    _Counter().visit_expr(func)
    return uses


def bindings_of(func: relax.Function) -> dict[relax.Var, relax.Expr]:
    """Every variable bound in `func`, mapped to its value."""
    return {b.var: b.value for block in func.body.blocks for b in block.bindings}


def returned_fields(func: relax.Function) -> list[relax.Expr]:
    """What `func` returns, one expression per output: the fields of a returned tuple (also
    through the variable it is bound to), else the returned expression itself."""
    result = func.body.body
    value = bindings_of(func).get(result, result) if isinstance(result, relax.Var) else result
    return list(value.fields) if isinstance(value, relax.Tuple) else [result]


def emit_like(mutator: relax.PyExprMutator, old_var: relax.Var, value: relax.Expr,
              name: str | None = None) -> relax.Var:
    """Emit `value` as the new binding of `old_var` (dataflow or output var alike) and remap it."""
    builder = mutator.builder_
    emit = builder.emit if isinstance(old_var, relax.DataflowVar) else builder.emit_output
    new_var = emit(value, old_var.name if name is None else name)
    mutator.set_var_remap(old_var, new_var)
    return new_var


def rewrite_each_function(mod: tvm.IRModule, mutator) -> tvm.IRModule:
    """`mutator.rewrite(func)` on every Relax function of `mod` (a mutator with per-function
    state), then DeadCodeElimination with every Relax function as an entry."""
    functions = [(gv, f) for gv, f in mod.functions_items() if isinstance(f, relax.Function)]
    for gv, func in functions:
        mutator.builder_.update_func(gv, mutator.rewrite(func))
    entries = [gv.name_hint for gv, _ in functions]
    return relax.transform.DeadCodeElimination(entries)(mutator.builder_.get())


def requant_call_like(builder, attrs, acc: relax.Expr, params: list, channels: int,
                      axis: int) -> relax.Call:
    """call_tir of a new requant kernel on `acc` with the kind, rounding, zero point, clamp and
    out dtype of `attrs` (an existing kernel's `tvmq.requant`); per-channel over `channels` on
    `axis` when that kernel was per-channel, else per-tensor."""
    per_channel = int(attrs["axis"]) >= 0
    rounding = str(attrs["rounding"]) or None
    func = requant_prim_func(shape_of(acc), channels if per_channel else 1,
                             axis if per_channel else None, str(attrs["kind"]), rounding,
                             int(attrs["zero_point"]), int(attrs["qmin"]), int(attrs["qmax"]),
                             str(attrs["out_dtype"]))
    gv = builder.add_func(func, f"tvmq_requant_{rounding or 'fp32'}")
    return relax.call_tir(gv, [acc, *params],
                          relax.TensorType(shape_of(acc), str(attrs["out_dtype"])))


def rewrite_functions(mod: tvm.IRModule, mutator_cls, *args) -> tvm.IRModule:
    """Apply a PyExprMutator class to every Relax function of `mod` (module-pass body)."""
    mutator = mutator_cls(mod, *args)
    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function) and "Composite" not in (func.attrs or {}):
            mutator.builder_.update_func(gv, mutator.visit_expr(func))
    return mutator.builder_.get()


class RequantChain:
    """A realized `op [+ bias] -> requant` chain found through the bindings of `main`."""

    def __init__(self, requant_call, bindings, mod):
        self.requant = requant_call
        self.prim = mod[requant_call.args[0]]
        acc, *self.params = requant_call.args[1].fields
        self.bias = None
        value = bindings.get(acc)
        if op_name(value) == "relax.add" and const_value(value.args[1]) is not None:
            self.bias = const_value(value.args[1])
            value = bindings.get(value.args[0])
        self.op = value
        self.weight = const_value(value.args[1]) if op_name(value) in LINEAR_OPS else None

    @staticmethod
    def is_requant(value, mod) -> bool:
        """Is `value` a call_tir to a tvmq requant kernel?"""
        return op_name(value) == "relax.call_tir" and "tvmq.requant" in (
            mod[value.args[0]].attrs or {})

    @property
    def valid(self) -> bool:
        """An int8 conv2d/matmul with a constant weight feeds this requant."""
        return self.weight is not None and self.weight.dtype == np.int8


LINEAR_OPS = ("relax.nn.conv2d", "relax.matmul")
