"""The realized layer chain: `op [+ bias] -> requant`, the unit every integer backend lowers.

A realized integer layer is a LINEAR_OPS call on int8 operands (int32 accumulator), an optional
constant int32 bias add, then a call_tir to a `requant_prim_func` kernel (attribute `tvmq.requant`).
`RequantChain` reads one such chain back from the bindings of a function; `requant_call_like`
emits a new requant kernel with an existing one's settings (used when a target splits a layer).
"""

from __future__ import annotations

import numpy as np
from tvm import relax

from .graph import const_value, op_name, shape_of
from .requant_kernel import REQUANT_ATTR, requant_prim_func

LINEAR_OPS = ("relax.nn.conv2d", "relax.matmul")  # the MAC ops an integer layer starts with


def requant_call_like(builder, attrs, acc: relax.Expr, params: list, channels: int,
                      axis: int) -> relax.Call:
    """call_tir of a new requant kernel on `acc` with the kind, rounding, zero point, clamp and
    out dtype of `attrs` (an existing kernel's `tvmq.requant`); per-channel over `channels` on
    `axis` when that kernel was per-channel, else per-tensor."""
    per_channel = int(attrs["axis"]) >= 0
    rounding = str(attrs["rounding"]) or None
    func = requant_prim_func(shape_of(acc), channels if per_channel else 1,
                             axis if per_channel else None, str(attrs["kind"]), rounding,
                             int(attrs["zero_point"]), int(attrs["qmin"]), int(attrs["qmax"]),
                             str(attrs["out_dtype"]))
    gv = builder.add_func(func, f"tvmq_requant_{rounding or 'fp32'}")
    return relax.call_tir(gv, [acc, *params],
                          relax.TensorType(shape_of(acc), str(attrs["out_dtype"])))


class RequantChain:
    """A realized `op [+ bias] -> requant` chain found through the bindings of `main`."""

    def __init__(self, requant_call, bindings, mod):
        self.requant = requant_call
        self.prim = mod[requant_call.args[0]]
        acc, *self.params = requant_call.args[1].fields
        self.bias = None
        value = bindings.get(acc)
        if op_name(value) == "relax.add" and const_value(value.args[1]) is not None:
            self.bias = const_value(value.args[1])
            value = bindings.get(value.args[0])
        self.op = value
        self.weight = const_value(value.args[1]) if op_name(value) in LINEAR_OPS else None

    @staticmethod
    def is_requant(value, mod) -> bool:
        """Is `value` a call_tir to a tvmq requant kernel?"""
        return op_name(value) == "relax.call_tir" and REQUANT_ATTR in (
            mod[value.args[0]].attrs or {})

    @property
    def valid(self) -> bool:
        """An int8 conv2d/matmul with a constant weight feeds this requant."""
        return self.weight is not None and self.weight.dtype == np.int8
