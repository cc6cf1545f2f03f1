"""KeepFloat: leave chosen `tvmq.*` composites in float, each with the reason.

Run after AnnotateQuantizable. A composite kept in float gets the function attribute
`tvmq.keep_float` = reason; `composite_kind` then reads it as a float call, so calibration,
realize (every scheme), the mixed-precision probe and the report all treat it as a float op.
Two reasons:

- **the user's**: `patterns`, binding names or fnmatch patterns (`"conv2d_12"`, `"mean_*"`);
- **it does not pay** (`unprofitable=True`): an op other than conv2d/matmul (the ones integer
  hardware exists for) whose inputs all come from float ops, or whose output only float ops
  read. Quantizing it buys no integer work and adds a rounding: a clip inside a float
  hard-swish, the variance mean of a layer norm (its input, the squared deviations, spans a range
  whose int8 step is larger than most of its values), a reshape between two float ops. main's
  input counts as integer (it is quantized where a layer reads it) and so do main's outputs, so
  a graph with no float op keeps every layer. Decided to a fixed point: demoting one op can
  leave its neighbours with only float neighbours on one side.
"""

from __future__ import annotations

import fnmatch

import tvm
from tvm import relax

from tvmq.ir import returned_fields

from .annotate_quantizable import KEEP_FLOAT_ATTR, composite_kind

ANCHOR_KINDS = ("conv2d", "matmul")  # quantized whatever their neighbours: the integer MAC work
USER = "keep_float"
FLOAT_INPUTS = "inputs all float"
FLOAT_CONSUMERS = "only float ops read it"


def _var_names(expr) -> list[str]:
    """Names of the variables an op reads (tuple fields included)."""
    if isinstance(expr, relax.Var):
        return [expr.name]
    if isinstance(expr, relax.Tuple):
        return [n for f in expr.fields for n in _var_names(f)]
    return []


def float_reasons(mod: tvm.IRModule, patterns=(), unprofitable: bool = True) -> dict[str, str]:
    """{binding name: reason} of the composites of `mod`'s main to keep in float."""
    main = mod["main"]
    kinds, reads, readers = {}, {}, {}
    for block in main.body.blocks:
        for b in block.bindings:
            name = b.var.name
            args = b.value.args if isinstance(b.value, relax.Call) else [b.value]
            reads[name] = [n for a in args for n in _var_names(a)]
            for n in reads[name]:
                readers.setdefault(n, []).append(name)
            kind = composite_kind(mod, b.value)
            if kind is not None:
                kinds[name] = kind
    reasons = {name: USER for name in kinds
               if any(fnmatch.fnmatchcase(name, p) for p in patterns)}
    if not unprofitable:
        return reasons
    boundary = {p.name for p in main.params} | {
        f.name for f in returned_fields(main) if isinstance(f, relax.Var)}

    def integer(name: str) -> bool:
        return name in boundary or (name in kinds and name not in reasons)

    changed = True
    while changed:
        changed = False
        for name, kind in kinds.items():
            if name in reasons or kind in ANCHOR_KINDS:
                continue
            if not any(integer(n) for n in reads[name]):
                reasons[name] = FLOAT_INPUTS
            elif name not in boundary and not any(integer(n) for n in readers.get(name, [])):
                reasons[name] = FLOAT_CONSUMERS
            else:
                continue
            changed = True
    return reasons


@tvm.transform.module_pass(opt_level=0, name="tvmq.KeepFloat")
class KeepFloat:
    """Mark composites to stay float (see the module docstring). `reasons` holds the result."""

    def __init__(self, patterns=(), unprofitable: bool = True):
        self.patterns, self.unprofitable = tuple(patterns), unprofitable
        self.reasons: dict[str, str] = {}

    def transform_module(self, mod, ctx):
        self.reasons = float_reasons(mod, self.patterns, self.unprofitable)
        mod = mod.clone()
        for block in mod["main"].body.blocks:
            for b in block.bindings:
                if b.var.name in self.reasons:
                    gv = b.value.op
                    mod[gv] = mod[gv].with_attr(KEEP_FLOAT_ATTR, self.reasons[b.var.name])
        return mod
