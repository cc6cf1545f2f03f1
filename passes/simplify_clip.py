"""SimplifyClip: turn the ONNX importer's clip lowering back into one `R.clip`.

TVM's ONNX frontend lowers `Clip(x, lo, hi)` to `call_tir(maximum, (x, lo))` followed by
`call_tir(minimum, (.., hi))` (two TOPI PrimFuncs, named `maximum`, `maximum1`, ... one per input
shape by the BlockBuilder). Quantization needs to see a clip, so this pass
rewrites those calls, when the bound is a scalar constant, into `R.clip(x, lo, inf)` /
`R.clip(x, -inf, hi)`, and merges a clip of a clip into one. Run right after import + FoldConstant.
"""

from __future__ import annotations

import math
import re

import tvm
from tvm import relax

from tvmq.ir import const_value, op_name, rewrite_functions

_TOPI_BOUND = {"maximum": 0, "minimum": 1}  # PrimFunc name -> which clip bound it sets
_TOPI_NAME = re.compile(r"(maximum|minimum)\d*")  # the BlockBuilder numbers each new shape


def _clip_bounds(call: relax.Call) -> tuple[float, float]:
    return float(call.args[1].value), float(call.args[2].value)


@relax.expr_functor.mutator
class _Rewriter(relax.PyExprMutator):
    def __init__(self, mod):
        super().__init__(mod)
        self.mod_ = mod

    def _as_clip(self, call: relax.Call) -> relax.Call | None:
        """`call_tir(maximum|minimum, (x, scalar const))` as an `R.clip`, else None."""
        if op_name(call) != "relax.call_tir":
            return None
        gv, args = call.args[0], call.args[1]
        match = _TOPI_NAME.fullmatch(gv.name_hint)
        if match is None or len(args.fields) != 2:
            return None
        bound = const_value(args.fields[1])
        if bound is None or bound.shape != () or not str(bound.dtype).startswith("float"):
            return None
        bounds = [-math.inf, math.inf]
        bounds[_TOPI_BOUND[match.group(1)]] = float(bound)
        return relax.op.clip(args.fields[0], *bounds)

    def visit_call_(self, call):
        call = self.visit_expr_post_order(call)
        clip = self._as_clip(call)
        clip = call if clip is None else clip
        if op_name(clip) != "relax.clip":
            return clip
        inner = clip.args[0]
        if isinstance(inner, relax.Var):
            bound = self.lookup_binding(inner)
            if bound is not None and op_name(bound) == "relax.clip":
                (lo1, hi1), (lo2, hi2) = _clip_bounds(bound), _clip_bounds(clip)
                return relax.op.clip(bound.args[0], max(lo1, lo2), min(hi1, hi2))
        return clip


@tvm.transform.module_pass(opt_level=0, name="tvmq.SimplifyClip")
class SimplifyClip:
    """Rewrite importer clip lowerings (TOPI maximum/minimum with a constant) into `R.clip`."""

    def transform_module(self, mod, ctx):
        mod = rewrite_functions(mod, _Rewriter)
        return relax.transform.DeadCodeElimination(["main"])(mod)
