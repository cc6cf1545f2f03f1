"""PadMatmulColumns: widen a quantized matmul whose output columns do not vectorize.

The host schedule vectorizes a matmul over its output columns N with a vector width that
divides N. A column count that is not a multiple of 8 (PP-OCRv4's classifier head has
N = 6625 = 5^3 * 53, ddddocr's 8210 = 821 * 10) leaves 5- or 10-wide vectors, or predicated
scalar code for a split that does not divide: 7.6 ms for the first head, against 0.9 ms
once N is padded to 6640. So before fusion,
every chain

    acc = matmul(x, W[K, N]) [+ bias[N]] -> requant(acc, params[N])

with such an N becomes the same chain on Np = N rounded up to a multiple of 16 (W, bias and
per-channel requant parameters padded with zeros) followed by a kernel that copies out
columns [0, N). The first N columns are the same integers; the padding columns are computed
and dropped. The copy is marked opaque (`op_pattern` 8) so that fusion keeps it apart: fused
into the matmul's kernel it would give that kernel an N-column output again.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax, te

from tvmq.ir import (
    REQUANT_ATTR,
    RequantChain,
    bindings_of,
    const_value,
    count_uses,
    dtype_of,
    emit_like,
    op_name,
    requant_call_like,
    rewrite_each_function,
    shape_of,
)

OPAQUE = 8  # relax FuseOps pattern kOpaque: never fused with its neighbours
COLUMN_MULTIPLE = 16  # padded N: a multiple of the default vector width (16 int32 lanes)
GOOD_VECTOR = 8       # N a multiple of GOOD_VECTOR (int32 lanes of AVX2) is left alone


def needs_padding(columns: int) -> bool:
    """Is a matmul with `columns` output columns (at least 16) not a whole number of 8-lane
    vectors? (8210 = 821 x 10 ran in 10-lane vectors, one AVX2 register and a remainder.)"""
    return columns >= COLUMN_MULTIPLE and columns % GOOD_VECTOR != 0


def padded(columns: int) -> int:
    """`columns` rounded up to a multiple of COLUMN_MULTIPLE."""
    return -(-columns // COLUMN_MULTIPLE) * COLUMN_MULTIPLE


def first_columns(shape: tuple[int, ...], columns: int, dtype: str) -> tvm.tirx.PrimFunc:
    """PrimFunc(x[shape], out[..., columns]): out = x[..., :columns], opaque to fusion."""
    x = te.placeholder([tvm.tirx.IntImm("int64", d) for d in shape], dtype, name="x")
    out_shape = [*x.shape[:-1], tvm.tirx.IntImm("int64", columns)]
    out = te.compute(out_shape, lambda *i: x[i], name="first_columns")
    return te.create_prim_func([x, out]).without_attr("global_symbol").with_attr(
        "op_pattern", OPAQUE)


@relax.expr_functor.mutator
class _Padder(relax.PyExprMutator):
    def __init__(self, mod):
        super().__init__(mod)
        self.mod_ = mod
        self.bindings: dict = {}
        self.uses: dict = {}

    def rewrite(self, func: relax.Function) -> relax.Function:
        self.bindings, self.uses = bindings_of(func), count_uses(func)
        return self.visit_expr(func)

    def visit_var_binding_(self, binding):
        value = binding.value
        chain = self._chain(value)
        if chain is None:
            emit_like(self, binding.var, self.visit_expr(value))
            return
        columns = chain.weight.shape[1]
        wide = self._padded_requant(chain, padded(columns))
        gv = self.builder_.add_func(first_columns(shape_of(wide), columns, dtype_of(wide)),
                                    "tvmq_first_columns")
        out = relax.TensorType(shape_of(value), dtype_of(wide))
        emit_like(self, binding.var, relax.call_tir(gv, [wide], out))

    def _chain(self, value) -> RequantChain | None:
        """The requant chain of `value` if it is a matmul chain to pad, else None."""
        if not RequantChain.is_requant(value, self.mod_):
            return None
        chain = RequantChain(value, self.bindings, self.mod_)
        if not chain.valid or op_name(chain.op) != "relax.matmul" or chain.weight.ndim != 2:
            return None
        attrs = chain.prim.attrs[REQUANT_ATTR]
        rank = len(shape_of(value))
        if int(attrs["axis"]) not in (-1, rank - 1) or not needs_padding(chain.weight.shape[1]):
            return None
        acc = value.args[1].fields[0]
        inner = [acc] + ([self.bindings[acc].args[0]] if chain.bias is not None else [])
        if any(self.uses.get(v, 0) != 1 for v in inner):  # an intermediate read elsewhere
            return None
        return chain

    def _padded_requant(self, chain: RequantChain, wide: int) -> relax.Var:
        def pad(value: np.ndarray) -> relax.Constant:
            extra = [(0, 0)] * (value.ndim - 1) + [(0, wide - value.shape[-1])]
            return relax.const(np.pad(value, extra))

        x = self.visit_expr(chain.op.args[0])
        acc = self.builder_.emit(relax.op.matmul(x, pad(chain.weight), out_dtype="int32"))
        if chain.bias is not None:  # (N,) or (1, N) per column; a single value stays
            bias = chain.bias
            bias = pad(bias) if bias.shape[-1] > 1 else relax.const(bias)
            acc = self.builder_.emit(relax.op.add(acc, bias))
        attrs = chain.prim.attrs[REQUANT_ATTR]
        per_channel = int(attrs["axis"]) >= 0
        params = [pad(const_value(p)) if per_channel else p for p in chain.params]
        return self.builder_.emit(requant_call_like(self.builder_, attrs, acc, params, wide,
                                                    len(shape_of(acc)) - 1))


@tvm.transform.module_pass(opt_level=0, name="tvmq.PadMatmulColumns")
class PadMatmulColumns:
    """Pad every quantized matmul chain whose output columns do not vectorize (module docs)."""

    def transform_module(self, mod, ctx):
        return rewrite_each_function(mod, _Padder(mod))  # drops the requant kernels replaced
