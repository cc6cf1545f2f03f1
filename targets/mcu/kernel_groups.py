"""Group a legalized phase's bindings into kernels: one Primitive function per group (FuseTIR's
input), so only int8 tensors live between kernels.

Every run of bindings between two int8 tensors (a layer's zero-point casts and subtracts, the
conv2d/matmul, the bias add, the requant, a residual add's input requants) is one group; a value
used twice, a result, or a group with more than one outside use closes a group too. A view
(`R.reshape` or a plain alias) is a group of its own and stays a binding: no kernel, no storage.
"""

from __future__ import annotations

import tvm
from tvm import relax

from tvmq.ir import op_name, returned_fields

from .int4_weights import is_unpack


def is_view(value) -> bool:
    """A reshape or a plain alias: no kernel, the output shares its input's storage."""
    return op_name(value) == "relax.reshape" or isinstance(value, relax.Var)


def group_kernels(mod: tvm.IRModule, phases: list[str]) -> tvm.IRModule:
    """Wrap each group of bindings of every phase in a Primitive function (FuseTIR's input)."""
    bb = relax.BlockBuilder(tvm.IRModule({gv: f for gv, f in mod.functions_items()
                                          if gv.name_hint not in phases}))
    for phase in phases:
        func = mod[phase]
        bindings = [b for block in func.body.blocks for b in block.bindings]
        results = returned_fields(func)
        params = [relax.Var(p.name, p.ty) for p in func.params]
        remap = dict(zip(func.params, params))
        with bb.function(phase, params, attrs={"global_symbol": phase}):
            with bb.dataflow():
                for group in _groups(bindings, results):
                    last = any(group[-1].var.same_as(r) for r in results)
                    remap[group[-1].var] = _emit_group(bb, group, remap, phase, last)
            outs = [remap[r] for r in results]
            bb.emit_func_output(outs[0] if len(outs) == 1 else relax.Tuple(outs))
    return bb.get()


def _groups(bindings, results) -> list[list[relax.VarBinding]]:
    """Consecutive runs of bindings ending at an int8 tensor, a value used more than once, a
    reshape, or a result; singletons where a run would have more than one outside use."""
    uses: dict[relax.Var, int] = {}
    for b in bindings:
        for v in relax.analysis.free_vars(b.value):
            uses[v] = uses.get(v, 0) + 1
    for result in results:
        uses[result] = uses.get(result, 0) + 1
    groups, current = [], []
    for b in bindings:
        if is_view(b.value):
            if current:
                groups.append(current)
            groups.append([b])
            current = []
            continue
        current.append(b)
        if is_unpack(b.value):  # part of the layer that reads the weight
            continue
        if str(b.var.ty.dtype) == "int8" or uses.get(b.var, 0) != 1 or b.var in results:
            groups.append(current)
            current = []
    if current:
        groups.append(current)
    out = []
    for group in groups:
        members = {b.var for b in group}
        inner = {v for b in group for v in relax.analysis.free_vars(b.value)} & members
        outside = [v for v in members if v not in inner or uses.get(v, 0) > 1]
        out.extend([group] if len(outside) == 1 and outside[0].same_as(group[-1].var)
                   else [[b] for b in group])
    return out


def _emit_group(bb, group, remap, phase, is_result):
    """Emit one group: a view as itself, anything else as a call of a Primitive function whose
    parameters are the group's outside tensors and constants."""
    if len(group) == 1 and is_view(group[0].value):
        value = _Substitute(remap).visit_expr(group[0].value)
        return (bb.emit_output if is_result else bb.emit)(value, group[0].var.name)
    members = {b.var for b in group}
    inputs: list[relax.Expr] = []
    for b in group:
        for arg in _leaves(b.value):
            if ((isinstance(arg, relax.Var) and arg not in members)
                    or isinstance(arg, tvm.ir.GenericConst)):
                if not any(arg.same_as(i) for i in inputs):
                    inputs.append(arg)
    params = [relax.Var(f"p{i}", a.ty) for i, a in enumerate(inputs)]
    inner = relax.BlockBuilder()
    local = {a: p for a, p in zip(inputs, params)}
    with inner.function("group", params, attrs={"Primitive": True}, private=True):
        with inner.dataflow():
            for b in group:
                value = _Substitute(local).visit_expr(b.value)
                local[b.var] = inner.emit(value, b.var.name)
            out = inner.emit_output(local[group[-1].var])
        inner.emit_func_output(out)
    gv = bb.add_func(inner.get()["group"], f"{phase}_{group[-1].var.name}")
    args = [remap.get(a, a) if isinstance(a, relax.Var) else a for a in inputs]
    return (bb.emit_output if is_result else bb.emit)(relax.Call(gv, args), group[-1].var.name)


def _leaves(expr):
    """Vars and constants an op call reads (through call_tir's argument tuple)."""
    if isinstance(expr, relax.Tuple):
        for f in expr.fields:
            yield from _leaves(f)
    elif isinstance(expr, relax.Call):
        for a in expr.args:
            yield from _leaves(a)
    elif isinstance(expr, relax.Var | tvm.ir.GenericConst):
        yield expr


@relax.expr_functor.mutator
class _Substitute(relax.PyExprMutator):
    """Replace vars and constants (by identity) with the mapped expressions."""

    def __init__(self, remap):
        super().__init__()
        self.remap = remap

    def visit_var_(self, var):
        return self.remap.get(var, var)

    def visit_dataflow_var_(self, var):
        return self.remap.get(var, var)

    def visit_generic_const_(self, const):
        for k, v in self.remap.items():
            if k.same_as(const):
                return v
        return const
