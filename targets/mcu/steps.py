"""The steps of a lowered phase: each ``call_tir`` or view binding as a `Step` over named
`Tensor`s.

`phase_steps` registers every tensor it meets in the program's table: parameters and results
with the phase's boundary kinds and names, intermediate activations under C-safe unique names,
and constants as ``c<k>`` (identical constants share one table).
"""

from __future__ import annotations

import re

import numpy as np
from tvm import relax

from tvmq.ir import op_name, returned_fields

from ...errors import CompileError
from .kernel_groups import is_view
from .program import Step, Tensor


def phase_steps(func: relax.Function, tensors: dict[str, Tensor], kinds: tuple[str, str],
                result_names: list[str]) -> list[Step]:
    """The call_tir / reshape bindings of a lowered phase as Steps; registers every tensor.
    `kinds` are the (parameter, result) tensor kinds; result i is named `result_names[i]`."""
    param_kind, result_kind = kinds
    names = {p: _register(tensors, p.name, p, param_kind) for p in func.params}
    results = returned_fields(func)
    steps = []
    bindings = [b for block in func.body.blocks for b in block.bindings]
    for b in bindings:
        value = b.value
        kind, name = "activation", _c_name(b.var.name)
        index = next((i for i, r in enumerate(results) if b.var.same_as(r)), None)
        if index is not None:
            kind, name = result_kind, result_names[index]
        if op_name(value) == "relax.call_tir":
            kernel = value.args[0].name_hint
            args = [_arg_name(a, tensors, names) for a in value.args[1].fields]
        elif is_view(value):
            kernel = None
            args = [names[value.args[0] if isinstance(value, relax.Call) else value]]
        else:
            raise CompileError(f"target 'mcu': binding {b.var.name} ({op_name(value)}) has no "
                               "kernel after lowering.")
        names[b.var] = _register(tensors, name, b.var, kind)
        steps.append(Step(kernel, tuple(args), names[b.var]))
    return steps


def _register(tensors, name, var, kind) -> str:
    name = _unique(tensors, name, kind)
    if name not in tensors:
        tensors[name] = Tensor(name, tuple(int(d) for d in var.ty.shape), str(var.ty.dtype),
                               kind)
    return name


def _unique(tensors, name, kind) -> str:
    if name in tensors and tensors[name].kind == kind and kind != "activation":
        return name  # the boundary tensor shared by two phases
    base, i = name, 1
    while name in tensors:
        name, i = f"{base}_{i}", i + 1
    return name


def _arg_name(arg, tensors, names) -> str:
    if isinstance(arg, relax.Var):
        return names[arg]
    value = arg.value.numpy()
    for t in tensors.values():  # identical constants share one table
        if t.kind == "const" and t.dtype == str(value.dtype) and t.shape == value.shape \
                and np.array_equal(t.value, value):
            return t.name
    name = f"c{sum(t.kind == 'const' for t in tensors.values())}"
    tensors[name] = Tensor(name, value.shape, str(value.dtype), "const", value)
    return name


def _c_name(name: str) -> str:
    return re.sub(r"\W", "_", name)
