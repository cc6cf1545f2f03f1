"""TabulateTails: elementwise float tails on 8-bit values become 256-entry table lookups.

A quantized layer often ends in float glue on its int8 output `s`: dequantize, an affine,
hard-swish (x * clip(x + 3, 0, 6) / 6), quantize, the next layer's cast and zero-point
subtract. Every value of such a tail is a function of the one 8-bit value of `s` at the same
position (its other operands are scalar constants), so it takes at most 256 values:

    t = f(s)   ->   t = table[s + 128],   table = f(arange(-128, 128))

The table is the same Relax ops applied to every source value, all of a module's tables
computed by one build for the kernels' target (`evaluate_tables`: LLVM float ops without FMA,
like the kernels: the same bits as computing f per element). One gather per element replaces
the chain: on PP-OCRv4's depthwise convs the tail took 60% of the kernel (three divides per
element).

A tail is tabulated where its value leaves the tail (a non-elementwise consumer or the
function's result) and its ops cost at least MIN_COST (a divide or square root counts
COSTLY_WEIGHT, other ops 1; an exp, sigmoid or tanh counts MIN_COST: it is a libm call per
element, as the float bits must match the oracle's, so one is always worth a gather): shorter
tails are cheaper as vector arithmetic than as a gather.

The lookup must fuse into the producing kernel's epilogue. TVM's AnnotateTIROpPattern analyzes
any table read as opaque (a kernel of its own; `take` would also read an int32 index tensor)
and re-analyzes a zero `op_pattern`, so `mark_lookups_elementwise` sets kElemWise after that
analysis. The host schedule keeps the lookup's 8-bit index stage (vectorized) and runs the
lookup itself as a scalar loop.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import tvm
from tvm import relax, te

from tvmq.ir import count_uses, emit_like, op_name, rewrite_each_function, shape_of

ELEMENTWISE = {
    "relax.dequantize", "relax.quantize", "relax.astype", "relax.add", "relax.subtract",
    "relax.multiply", "relax.divide", "relax.clip", "relax.maximum", "relax.minimum",
    "relax.nn.relu", "relax.negative", "relax.round", "relax.floor", "relax.ceil",
    "relax.sigmoid", "relax.tanh", "relax.exp", "relax.sqrt",
}
COSTLY = {"relax.divide", "relax.sqrt"}
COSTLY_WEIGHT = 4
MIN_COST = 8
LIBM = {"relax.sigmoid", "relax.tanh", "relax.exp"}  # cost MIN_COST: scalar calls per element
SOURCE_VALUES = {"int8": np.arange(-128, 128), "uint8": np.arange(0, 256)}
LOOKUP_ATTR = "tvmq.lookup"   # on the PrimFunc (for fusion)
LOOKUP_BLOCK = "tvmq_lookup"  # on its block (for the schedule, after fusion)


def lookup_func(shape: tuple[int, ...], source_dtype: str, table_dtype: str) -> tvm.tirx.PrimFunc:
    """PrimFunc(s[shape], table[256], out[shape]): out = table[s - min(source_dtype)]."""
    i64 = [tvm.tirx.IntImm("int64", d) for d in shape]
    source = te.placeholder(i64, source_dtype, name="s")
    table = te.placeholder([tvm.tirx.IntImm("int64", 256)], table_dtype, name="table")
    offset = -int(SOURCE_VALUES[source_dtype][0])
    out = te.compute(i64, lambda *i: table[source[i].astype("int32") + offset], name="lookup",
                     attrs={LOOKUP_BLOCK: 1})
    return te.create_prim_func([source, table, out]).without_attr("global_symbol").with_attr(
        LOOKUP_ATTR, 1)


@tvm.transform.module_pass(opt_level=0, name="tvmq.MarkLookupsElementwise")
def mark_lookups_elementwise(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    """op_pattern kElemWise (0) on the lookup PrimFuncs; run after AnnotateTIROpPattern."""
    out = mod.clone()
    for gv, func in mod.functions_items():
        if isinstance(func, tvm.tirx.PrimFunc) and LOOKUP_ATTR in (func.attrs or {}):
            out.update_func(gv, func.with_attr("op_pattern", 0))
    return out


def _scalar_constant(expr) -> bool:
    return isinstance(expr, tvm.ir.GenericConst) and int(np.prod(shape_of(expr))) == 1


class _Tail:
    """A binding of a tail: its source var and the member bindings it depends on (its cone)."""

    def __init__(self, source: relax.Var, cone: frozenset):
        self.source, self.cone = source, cone


class _Recipe(NamedTuple):
    """How to compute one table: the source var, the cone's (var, call) bindings in program
    order, and the tabulated var (the last of them)."""

    source: relax.Var
    bindings: list[tuple[relax.Var, relax.Call]]
    var: relax.Var


@relax.expr_functor.mutator
class _Tabulator(relax.PyExprMutator):
    def __init__(self, mod):
        super().__init__(mod)
        self.tails: dict[relax.Var, _Tail] = {}
        self.values: dict[relax.Var, relax.Call] = {}
        self.tabulate: set[relax.Var] = set()
        self.tables: dict[relax.Var, np.ndarray] = {}  # every function's, by tabulated var

    def analyze(self, func: relax.Function) -> list[_Recipe]:
        """Find `func`'s tails and the ones to tabulate; their recipes."""
        self.tails, self.values = {}, {}
        for block in func.body.blocks:
            for binding in block.bindings:
                self._classify(binding.var, binding.value)
        self.tabulate = self._outputs(func)
        return [_Recipe(tail.source, [(m, self.values[m]) for m in self.tails if m in tail.cone],
                        var) for var, tail in self.tails.items() if var in self.tabulate]

    def rewrite(self, func: relax.Function) -> relax.Function:
        """`func` with its tails replaced by lookups into `self.tables` (filled by the caller
        from `analyze`'s recipes)."""
        self.analyze(func)
        return self.visit_expr(func)

    def _source_of(self, expr) -> relax.Var | None:
        if expr in self.tails:
            return self.tails[expr].source
        if isinstance(expr, relax.Var) and str(expr.ty.dtype) in SOURCE_VALUES:
            return expr
        return None

    def _classify(self, var: relax.Var, value) -> None:
        if op_name(value) not in ELEMENTWISE or not isinstance(var.ty, relax.TensorType):
            return
        sources, cone = set(), {var}
        for arg in value.args:
            if isinstance(arg, relax.Var):
                sources.add(self._source_of(arg))
                if arg in self.tails:
                    cone |= self.tails[arg].cone
            elif isinstance(arg, tvm.ir.GenericConst) and not _scalar_constant(arg):
                return  # a per-channel constant: the value depends on more than `s`
        if len(sources) != 1 or None in sources:
            return
        (source,) = sources
        if var.ty.shape is None or source.ty.shape is None or \
                shape_of(var) != shape_of(source):
            return
        self.tails[var] = _Tail(source, frozenset(cone))
        self.values[var] = value

    def _outputs(self, func: relax.Function) -> set[relax.Var]:
        """Tail vars read outside the tail (or returned) whose cone is costly enough."""
        inside = {}
        for var in self.tails:
            for arg in self.values[var].args:
                if arg in self.tails:
                    inside[arg] = inside.get(arg, 0) + 1
        uses = count_uses(func)
        out = set()
        for var, tail in self.tails.items():
            if uses.get(var, 0) > inside.get(var, 0) and _cost(
                    self.values[m] for m in tail.cone) >= MIN_COST:
                out.add(var)
        return out

    def visit_var_binding_(self, binding):
        if binding.var not in self.tabulate:
            emit_like(self, binding.var, self.visit_expr(binding.value))
            return
        tail = self.tails[binding.var]
        dtype = str(binding.var.ty.dtype)
        gv = self.builder_.add_func(lookup_func(shape_of(binding.var), str(
            tail.source.ty.dtype), dtype), "tvmq_lookup")
        emit_like(self, binding.var, relax.call_tir(
            gv, [self.visit_expr(tail.source), relax.const(self.tables[binding.var])],
            relax.TensorType(shape_of(binding.var), dtype)))


def evaluate_tables(recipes: list[_Recipe], target: tvm.target.Target) -> list[np.ndarray]:
    """Each recipe's ops applied to every source value, shape (256,): one Relax function
    computing all the tables, built once for `target` and run once. The source values come
    in as shape (1, ..., 1, 256) parameters, one per (dtype, rank), so that the ops broadcast
    as in the model and nothing is constant-folded (folding built one module per op: 12 s of
    a recognizer's compile)."""
    if not recipes:
        return []
    keys = sorted({(str(r.source.ty.dtype), len(shape_of(r.source))) for r in recipes})
    params = [relax.Var(f"{dtype}_rank{rank}", relax.TensorType((1,) * (rank - 1) + (256,), dtype))
              for dtype, rank in keys]
    bb = relax.BlockBuilder()
    with bb.function("tables", params):
        with bb.dataflow():
            outs = []
            for recipe in recipes:
                key = (str(recipe.source.ty.dtype), len(shape_of(recipe.source)))
                on_table = {recipe.source: params[keys.index(key)]}
                for var, call in recipe.bindings:
                    args = [on_table.get(a, a) for a in call.args]
                    on_table[var] = bb.emit(relax.Call(call.op, args, call.attrs, call.ty_args))
                outs.append(bb.emit(relax.op.reshape(on_table[recipe.var], (256,))))
            result = bb.emit_output(relax.Tuple(outs))
        bb.emit_func_output(result)
    vm = relax.VirtualMachine(tvm.compile(bb.get(), target=target), tvm.cpu())
    sources = [tvm.runtime.tensor(SOURCE_VALUES[dtype].astype(dtype).reshape(
        (1,) * (rank - 1) + (256,))) for dtype, rank in keys]
    return [t.numpy() for t in vm["tables"](*sources)]


def _cost(values) -> int:
    return sum(MIN_COST if op_name(v) in LIBM else COSTLY_WEIGHT if op_name(v) in COSTLY else 1
               for v in values)


@tvm.transform.module_pass(opt_level=0, name="tvmq.TabulateTails")
class TabulateTails:
    """Replace costly elementwise tails of 8-bit values by table lookups (module docs); the
    tables are computed for `target` (default: the current target, else llvm)."""

    def __init__(self, target: tvm.target.Target | None = None):
        self.target = target

    def transform_module(self, mod, ctx):
        tabulator = _Tabulator(mod)
        recipes = [recipe for func in mod.functions.values() if isinstance(func, relax.Function)
                   for recipe in tabulator.analyze(func)]
        target = self.target or tvm.target.Target.current() or tvm.target.Target("llvm")
        tables = evaluate_tables(recipes, target)
        tabulator.tables = {recipe.var: table for recipe, table in zip(recipes, tables)}
        return rewrite_each_function(mod, tabulator)  # drops the tails' dead bindings
