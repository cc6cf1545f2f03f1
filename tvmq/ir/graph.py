"""Reading and rewriting Relax functions: helpers for every pass, target and the oracle."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax


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


def rewrite_functions(mod: tvm.IRModule, mutator_cls, *args) -> tvm.IRModule:
    """Apply a PyExprMutator class to every Relax function of `mod` (module-pass body)."""
    mutator = mutator_cls(mod, *args)
    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function) and "Composite" not in (func.attrs or {}):
            mutator.builder_.update_func(gv, mutator.visit_expr(func))
    return mutator.builder_.get()
