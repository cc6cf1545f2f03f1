"""The integer IR contract between tvmq's passes, its targets and the oracle.

Passes produce it (passes/realize_quantization.py, passes/realize_lbfp.py); targets lower it and the
oracle (tvmq/oracle.py) interprets it. A realized module is Relax whose quantized layers are:

    int8 layer   LINEAR_OPS call on int8 operands -> int32 accumulator [+ int32 bias constant]
                 -> call_tir(requant kernel)          requant_kernel.py, attribute REQUANT_ATTR
    LBFP layer   call_tir(encode) -> call_tir(conv2d|matmul) -> int64 accumulator
                 -> call_tir(encode | decode)         lbfp_kernels.py, attribute LBFP_ATTR

Each kernel's attribute holds everything its golden NumPy definition needs (`golden_requant`,
`lbfp_kernels.format_of`); `RequantChain` reads an int8 layer back; graph.py has the helpers for
reading and rewriting Relax functions.
"""

from . import lbfp_kernels
from .chain import LINEAR_OPS, RequantChain, requant_call_like
from .graph import (
    bindings_of,
    const_value,
    count_uses,
    dtype_of,
    emit_like,
    op_name,
    returned_fields,
    rewrite_each_function,
    rewrite_functions,
    shape_of,
)
from .lbfp_kernels import LBFP_ATTR
from .requant_kernel import INT32_MAX, INT32_MIN, REQUANT_ATTR, golden_requant, requant_prim_func

__all__ = [
    "INT32_MAX", "INT32_MIN", "LBFP_ATTR", "LINEAR_OPS", "REQUANT_ATTR", "RequantChain",
    "bindings_of", "const_value", "count_uses", "dtype_of", "emit_like", "golden_requant",
    "lbfp_kernels", "op_name", "requant_call_like", "requant_prim_func", "returned_fields",
    "rewrite_each_function", "rewrite_functions", "shape_of",
]
