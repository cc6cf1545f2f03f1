"""The training graph: weights lifted to parameters, the `backbone` SetupTrainer expects."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from tvmq.passes.quantize_gradients import RNG_INPUT

from ..ir import LINEAR_OPS, bindings_of, op_name


def lift_weights(mod: tvm.IRModule) -> tuple[tvm.IRModule, dict[str, np.ndarray]]:
    """`main(x)` with float32 constants -> `main(x, *params)` and the parameters' values.

    Every float32 constant of rank >= 1 becomes a parameter: the weight of a conv2d / matmul is
    named ``<op><i>_weight``, a constant added to its output ``<op><i>_bias``, any other
    ``param<i>``. Scalars (rank 0) stay constants.
    """
    func = mod["main"]
    if len(func.params) != 1:
        raise ValueError(f"lift_weights needs a `main` with one input, got {len(func.params)}")
    names = _weight_names(func)
    lifter = _Lifter(names)
    visited = lifter.visit_expr(func)
    params = [p for p, _ in lifter.lifted]
    new = relax.Function([visited.params[0], *params], visited.body, visited.ret_ty,
                         visited.is_pure, visited.attrs)
    values = {p.name: c.value.numpy() for p, c in lifter.lifted}
    return tvm.IRModule({"main": new}), values


def _weight_names(func: relax.Function) -> list[tuple[tvm.ir.GenericConst, str]]:
    """(constant, name) pairs, named after the op that consumes the constant."""
    names: list[tuple[tvm.ir.GenericConst, str]] = []
    counts: dict[str, int] = {}
    bound = bindings_of(func)
    for var, value in bound.items():
        op = op_name(value)
        weight = value.args[1] if op in LINEAR_OPS else None
        if isinstance(weight, tvm.ir.GenericConst):
            kind = "conv" if op == "relax.nn.conv2d" else "dense"
            i = counts.get(kind, 0)
            counts[kind] = i + 1
            names.append((weight, f"{kind}{i}_weight"))
            for user in bound.values():
                if (op_name(user) == "relax.add" and user.args[0].same_as(var)
                        and isinstance(user.args[1], tvm.ir.GenericConst)):
                    names.append((user.args[1], f"{kind}{i}_bias"))
    return names


@relax.expr_functor.mutator
class _Lifter(relax.PyExprMutator):
    def __init__(self, names):
        super().__init__()
        self.names, self.lifted = names, []

    def visit_generic_const_(self, const):
        value = const.value.numpy()
        if value.dtype != np.float32 or value.ndim == 0:
            return const
        for var, seen in self.lifted:
            if seen.same_as(const):
                return var
        name = next((n for c, n in self.names if c.same_as(const)), f"param{len(self.lifted)}")
        var = relax.Var(name, relax.TensorType(value.shape, "float32"))
        self.lifted.append((var, const))
        return var


def make_backbone(mod: tvm.IRModule) -> tvm.IRModule:
    """`main(x, *params)` -> module with `backbone(x, rng, *params)` and the trainer's attrs.

    `rng` (int64 ``[seed, step]``) keys stochastic rounding of the gradients; the forward ignores
    it.
    """
    func = mod["main"]
    x, *params = func.params
    rng = relax.Var(RNG_INPUT, relax.TensorType((2,), "int64"))
    backbone = relax.Function([x, rng, *params], func.body, func.ret_ty, func.is_pure)
    out = tvm.IRModule({"backbone": backbone.with_attr("global_symbol", "backbone")})
    return out.with_attr("param_num", len(params)).with_attr("state_num", 0)
