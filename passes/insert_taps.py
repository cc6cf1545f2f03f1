"""InsertTaps: return chosen intermediate tensors too (calibration and SQNR taps).

`InsertTaps(["conv2d_0", "add_4"])` turns `main(x) -> y` into `main(x) -> (y, conv2d_0, add_4)`,
naming tensors by their binding names (AnnotateQuantizable makes them unique); a name may also be a
parameter of `main`. With `function="main_taps"` the tapped copy is added under that name and
`main` is left as it is, so one build serves both. Tapped bindings become outputs of their dataflow
block, so FuseOps still fuses everything between them. Unknown names raise ValueError.
"""

from __future__ import annotations

import tvm
from tvm import relax


@relax.expr_functor.mutator
class _Tapper(relax.PyExprMutator):
    """Re-emit `main` with the tapped bindings as dataflow-block outputs; collect them."""

    def __init__(self, mod, names):
        super().__init__(mod)
        self.names = set(names)
        self.found: dict[str, relax.Var] = {}

    def visit_function_(self, func):
        self.found.update({p.name: p for p in func.params if p.name in self.names})
        return super().visit_function_(func)

    def visit_var_binding_(self, binding):
        value = self.visit_expr(binding.value)
        name = binding.var.name
        dataflow = isinstance(binding.var, relax.DataflowVar) and name not in self.names
        new_var = (self.builder_.emit if dataflow else self.builder_.emit_output)(value, name)
        self.set_var_remap(binding.var, new_var)
        if name in self.names:
            self.found[name] = new_var


@tvm.transform.module_pass(opt_level=0, name="tvmq.InsertTaps")
class InsertTaps:
    """Return the listed intermediate tensors from `main` (or a copy of it) after its output."""

    def __init__(self, names: list[str], function: str = "main"):
        self.names = list(names)
        self.function = function

    def transform_module(self, mod, ctx):
        tapper = _Tapper(mod, self.names)
        func = tapper.visit_expr(mod["main"])
        missing = [n for n in self.names if n not in tapper.found]
        if missing:
            raise ValueError(f"InsertTaps: no tensor named {missing} in main")
        fields = [func.body.body, *(tapper.found[n] for n in self.names)]
        body = relax.SeqExpr(func.body.blocks, relax.Tuple(fields))
        ret_ty = relax.TupleType([f.ty for f in fields])
        tapped = relax.Function(func.params, body, ret_ty, attrs=func.attrs)
        if self.function != "main":  # a second function needs its own Var objects
            tapped = relax.utils.copy_with_new_vars(tapped).with_attr("global_symbol",
                                                                      self.function)
        out = tvm.IRModule(dict(mod.functions_items()), attrs=mod.attrs)
        out[self.function] = tapped
        return relax.transform.Normalize()(out)
