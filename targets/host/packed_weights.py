"""Weights packed once, at build time, for the channel-pair kernels (pair_dot.py).

A channel-pair conv multiplies int32 words that each hold two int8 weights
(`pair_dot.pack_weight`). Packed inside the kernel, that is a pass over the whole weight at
every call: for a 1024 x 8224 vocabulary head, 8 MB read and 16 MB written per inference.
Where the weight is a constant at every call of the kernel, it is packed once instead:

    constant_params(mod)      which parameters of each PrimFunc get a constant at every call
    (the schedule)            the kernel declares the packed int32 buffer as that parameter
                              (pair_dot.emit; pair_dot.packed_params reads which and how)
    pack_call_sites(mod, ..)  each call passes the packed constant instead of the int8 one,
                              packed once per constant (main and main_taps share them)

The packed weight takes two bytes per int8 weight in the built module.
"""

from __future__ import annotations

import tvm
from tvm import relax

from tvmq.ir import const_value, emit_like, op_name, rewrite_each_function

from . import pair_dot

CALL_TIR = "relax.call_tir"


def constant_params(mod: tvm.IRModule) -> dict[str, frozenset[str]]:
    """PrimFunc name -> the names of its parameters that every call_tir to it in the Relax
    functions of `mod` gives a constant."""
    constant: dict[str, set[int]] = {}

    @relax.expr_functor.visitor
    class _Calls(relax.PyExprVisitor):
        def visit_call_(self, call):
            if op_name(call) == CALL_TIR and isinstance(call.args[1], relax.Tuple):
                name = call.args[0].name_hint
                here = {i for i, arg in enumerate(call.args[1].fields)
                        if const_value(arg) is not None}
                constant[name] = constant.get(name, here) & here

    for _, func in mod.functions_items():
        if isinstance(func, relax.Function):
            _Calls().visit_expr(func)
    out = {}
    for gv, func in mod.functions_items():
        if isinstance(func, tvm.tirx.PrimFunc) and constant.get(gv.name_hint):
            out[gv.name_hint] = frozenset(func.params[i].name for i in constant[gv.name_hint])
    return out


def pack_call_sites(mod: tvm.IRModule, packed: dict[str, dict[int, str]]) -> tvm.IRModule:
    """Every call_tir to a kernel in `packed` (name -> {parameter index: pair_dot layout})
    passes that argument's constant packed (pair_dot.pack_weight) instead. The kernels get
    new GlobalVars: a GlobalVar keeps the parameter types of the function it was made for."""
    kept = {gv: func for gv, func in mod.functions_items() if gv.name_hint not in packed}
    builder = relax.BlockBuilder(tvm.IRModule(kept, attrs=mod.attrs,
                                              global_infos=mod.global_infos))
    callees = {name: builder.add_func(mod[name], name) for name in packed}
    mod = builder.get()
    return rewrite_each_function(mod, _Packer(mod, packed, callees))


@relax.expr_functor.mutator
class _Packer(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule, packed: dict[str, dict[int, str]],
                 callees: dict[str, tvm.ir.GlobalVar]):
        super().__init__(mod)
        self.packed, self.callees = packed, callees
        self.done: list[tuple[relax.Expr, str, relax.Expr]] = []  # (constant, layout, packed)

    def rewrite(self, func: relax.Function) -> relax.Function:
        return self.visit_expr(func)

    def visit_var_binding_(self, binding):
        value = self.visit_expr(binding.value)
        layouts = (self.packed.get(value.args[0].name_hint)
                   if op_name(value) == CALL_TIR else None)
        if layouts:
            fields = list(value.args[1].fields)
            for i, layout in layouts.items():
                fields[i] = self._packed(fields[i], layout)
            callee = self.callees[value.args[0].name_hint]
            value = relax.Call(value.op, [callee, relax.Tuple(fields)], value.attrs,
                               value.ty_args)
        emit_like(self, binding.var, value)

    def _packed(self, constant: relax.Expr, layout: str) -> relax.Expr:
        for done, done_layout, packed in self.done:
            if done.same_as(constant) and done_layout == layout:
                return packed
        packed = relax.const(pair_dot.pack_weight(const_value(constant), layout))
        self.done.append((constant, layout, packed))
        return packed
