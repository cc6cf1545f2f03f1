"""The oracle's reference for float ops without an exact NumPy mirror: TVM's own lowering of
that one op, alone.

A float op left in a realized graph (a pad, GELU's erf, a layer norm's power and sqrt, tanh,
resize, a float conv, a call_tir to a PrimFunc the ONNX importer emitted, ...) is defined by
what TVM computes for it: its TOPI lowering compiled by LLVM. `FloatReference.run(call, args)`
wraps the one call in a Relax function whose parameters are its tensor arguments

    main(a0, a1, ...) = op(a0, a1, ..., <the call's attributes and non-tensor arguments>)

(a call_tir keeps its PrimFunc beside it), builds it with `tvm.compile`'s default pipeline
(LegalizeOps, no fusion, no schedule) for `target` (the host build's llvm target: same CPU, FMA
off) and runs it on the Relax VM. Kernels are cached per structural signature of that function
(op, attributes, argument shapes and dtypes; not the argument values), so a graph with 40
identical layer norms compiles one kernel for each of its ops.

Why this equals the host build bit for bit: fusion and tvmq's schedules change where values
are computed and how loops are split, not the float32 operations on each element nor the order
of a reduction (host/schedules.py keeps reduction order), and LLVM does not reassociate float
code without fast-math. Integer ops never come here: their reference is tvmq.numerics.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import tvm
import tvm_ffi
from tvm import relax

Value = np.ndarray | tuple


class FloatReference:
    """Evaluate single float Relax calls with TVM's default lowering for `target`.

    `run(call, args, mod)`: `call` is a Relax call (an op, or `call_tir` to a PrimFunc of
    `mod`); `args[i]` is the value of `call.args[i]` when that argument is a tensor or a tuple
    of tensors (an array or a tuple of arrays), else ignored (None). Returns an array, or a
    tuple for a tuple-valued op (split).
    """

    def __init__(self, target: tvm.target.Target):
        self.target = target
        self._kernels: dict[tvm_ffi.StructuralKey, Callable] = {}

    def run(self, call: relax.Call, args: list, mod: tvm.IRModule | None = None) -> Value:
        one_op, tensors = _one_op_module(call, args, mod)
        key = tvm_ffi.StructuralKey(one_op)
        if key not in self._kernels:
            self._kernels[key] = _compile(one_op, self.target)
        return self._kernels[key](*tensors)

    def __len__(self) -> int:
        """How many kernels were compiled."""
        return len(self._kernels)


def is_tensor_arg(expr) -> bool:
    """A tensor or a tuple of tensors (what the one-op function takes as parameters)."""
    ty = expr.ty
    if isinstance(ty, relax.TupleType):
        return len(ty.fields) > 0 and all(isinstance(f, relax.TensorType) for f in ty.fields)
    return isinstance(ty, relax.TensorType)


def _one_op_module(call: relax.Call, args: list, mod: tvm.IRModule | None):
    """(IRModule with `main` = the call on fresh parameters, the arrays to pass them)."""
    params: list[relax.Var] = []
    tensors: list[np.ndarray] = []

    def parameter(ty: relax.TensorType, value: np.ndarray) -> relax.Var:
        var = relax.Var(f"a{len(params)}", ty)
        params.append(var)
        tensors.append(np.asarray(value, order="C"))  # ascontiguousarray makes 0-d 1-d
        return var

    def replace(expr, value):
        if not is_tensor_arg(expr):
            return expr
        if isinstance(expr.ty, relax.TupleType):
            fields = expr.fields if isinstance(expr, relax.Tuple) else expr.ty.fields
            types = [f.ty if isinstance(expr, relax.Tuple) else f for f in fields]
            return relax.Tuple([parameter(t, v) for t, v in zip(types, value, strict=True)])
        return parameter(expr.ty, value)

    bb = relax.BlockBuilder()
    new_args = [replace(a, v) for a, v in zip(call.args, args, strict=True)]
    if isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.call_tir":
        gv = call.args[0]
        new_args[0] = bb.add_func(mod[gv], gv.name_hint)
    new_call = relax.Call(call.op, new_args, call.attrs, call.ty_args)
    with bb.function("main", params):
        with bb.dataflow():
            out = bb.emit_output(new_call)
        bb.emit_func_output(out)
    return bb.get(), tensors


def _compile(mod: tvm.IRModule, target: tvm.target.Target) -> Callable:
    vm = relax.VirtualMachine(tvm.compile(mod, target=target), tvm.cpu())
    main = vm["main"]

    def run(*arrays: np.ndarray) -> Value:
        return _to_numpy(main(*(tvm.runtime.tensor(a) for a in arrays)))

    return run


def _to_numpy(value) -> Value:
    if isinstance(value, tvm.runtime.Tensor):
        return value.numpy()
    return tuple(_to_numpy(v) for v in value)
