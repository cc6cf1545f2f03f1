"""InsertTaps: make `main` also return chosen intermediate tensors (calibration and SQNR taps).

`InsertTaps(["conv2d_0", "add_4"])` turns `main(x) -> y` into `main(x) -> (y, conv2d_0, add_4)`,
naming tensors by their binding names (AnnotateQuantizable makes them unique); a name may also be a
parameter of `main`. Dataflow blocks become plain binding blocks so any binding can be returned.
Unknown names raise ValueError.
"""

from __future__ import annotations

import tvm
from tvm import relax


@tvm.transform.module_pass(opt_level=0, name="InsertTaps")
class InsertTaps:
    """Return the listed intermediate tensors from `main` after its own output."""

    def __init__(self, names: list[str]):
        self.names = list(names)

    def transform_module(self, mod, ctx):
        mod = relax.transform.ToNonDataflow()(mod)
        func = mod["main"]
        found = {p.name: p for p in func.params}
        for block in func.body.blocks:
            for binding in block.bindings:
                found[binding.var.name] = binding.var
        missing = [n for n in self.names if n not in found]
        if missing:
            raise ValueError(f"InsertTaps: no tensor named {missing} in main")
        fields = [func.body.body, *(found[n] for n in self.names)]
        body = relax.SeqExpr(func.body.blocks, relax.Tuple(fields))
        ret_ty = relax.TupleType([f.ty for f in fields])
        new_func = relax.Function(func.params, body, ret_ty, attrs=func.attrs)
        mod = mod.clone() if hasattr(mod, "clone") else tvm.IRModule(dict(mod.functions_items()))
        mod["main"] = new_func
        return relax.transform.Normalize()(mod)
