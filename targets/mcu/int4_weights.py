"""Store 4-bit conv2d/matmul weights packed, two per byte, and unpack them inside the kernels.

`pack_int4_weights` replaces each int8 weight constant whose values all fit in [-8, 7] (scheme
"mixed" at 4 bits) with ``unpack_int4(packed uint8 constant)`` (`tvmq.numerics.weights.pack_int4`
layout: element k in byte k // 2, low nibble first); the unpack is a TE compute that FuseTIR
inlines into the layer's kernel, so flash holds half the bytes and RAM no unpacked copy.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax, te

from tvmq.ir import op_name, rewrite_functions

from ...numerics.weights import pack_int4

UNPACK_INT4 = "tvmq_unpack_int4"
WEIGHT_OPS = ("relax.nn.conv2d", "relax.matmul")


def pack_int4_weights(mod: tvm.IRModule) -> tuple[tvm.IRModule, dict[str, int]]:
    """Replace each int8 conv2d/matmul weight constant whose values fit in [-8, 7] with
    `unpack_int4(packed uint8 constant)`; count the weights: {int8_params, int4_params, bytes}.
    """
    counts = {"int8_params": 0, "int4_params": 0, "bytes": 0}

    @relax.expr_functor.mutator
    class _Pack(relax.PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            if op_name(call) not in WEIGHT_OPS or not isinstance(call.args[1], tvm.ir.GenericConst):
                return call
            w = call.args[1].value.numpy()
            if w.dtype != np.int8:
                return call
            if w.min() < -8 or w.max() > 7:
                counts["int8_params"] += w.size
                counts["bytes"] += w.size
                return call
            counts["int4_params"] += w.size
            counts["bytes"] += (w.size + 1) // 2
            packed = relax.const(pack_int4(w), "uint8")
            unpacked = self.builder_.call_te(_unpack_te, packed, w.shape,
                                             primfunc_name_hint=UNPACK_INT4)
            return relax.Call(call.op, [call.args[0], unpacked, *call.args[2:]], call.attrs)

    return rewrite_functions(mod, _Pack), counts


def _unpack_te(packed, shape):
    """int8 tensor of `shape` from pack_int4 bytes: element k (C order) is nibble k % 2 of
    byte k // 2, sign-extended."""
    strides = [int(np.prod(shape[i + 1:], dtype=np.int64)) for i in range(len(shape))]

    def value(*idx):
        flat = sum(i * s for i, s in zip(idx, strides))
        byte = packed[flat // 2].astype("int32")
        nibble = (byte >> ((flat % 2) * 4).astype("int32")) & 15
        return ((nibble ^ 8) - 8).astype("int8")

    return te.compute(shape, value, name="unpack_int4")


def is_unpack(value) -> bool:
    return (op_name(value) == "relax.call_tir"
            and value.args[0].name_hint.startswith(UNPACK_INT4))
