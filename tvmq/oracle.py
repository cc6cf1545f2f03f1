"""The oracle: an interpreter of a realized (integer) Relax module built on tvmq.numerics.

It walks `main`'s bindings and evaluates each op with plain NumPy integer arithmetic (int64
accumulation, then the binding's dtype); requantization `call_tir`s are evaluated by reading their
`tvmq.requant` attribute and calling `tvmq.numerics.requantize`, LBFP kernels (attribute
`tvmq.lbfp`) by the golden tvmq.numerics.lbfp functions. None of the integer arithmetic shares
code with TVM's execution, so `host output == oracle output` bit for bit is the test every
backend reuses (`CompiledModel.verify`).

Float ops left between dequantize and quantize (hard-swish, softmax, layer norm, GELU, resize,
...) are not quantization: their reference is TVM's float32 arithmetic. Where NumPy computes
exactly the same float32 values (IEEE elementwise ops with one rounding each, data movement,
max, TOPI's in-order sums) it is a NumPy mirror; every other float op, and every float
call_tir to a PrimFunc that is not a tvmq kernel, is TVM's default lowering of that one op,
compiled alone for the host's llvm target (tvmq/float_reference.py). `Oracle`'s docstring
lists which op is which. Calls to float composite functions left in an LBFP graph are
evaluated op by op. An integer op without a golden implementation raises NotImplementedError
naming it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
import tvm
from tvm import relax, s_tir, tirx

from . import numerics
from .batch import check_input, run_stacked
from .float_reference import FloatReference, is_tensor_arg
from .ir import REQUANT_ATTR, golden_requant, lbfp_kernels, op_name
from .numerics import lbfp
from .numerics.windows import pad_nchw, windows
from .targets.host.build import host_target


def _ints(v) -> list[int]:
    return [int(i) for i in v]


def conv2d(x, w, strides, padding, dilation, groups):
    """NCHW / OIHW conv2d; integer inputs accumulate exactly in int64 (float ones in float64)."""
    x = pad_nchw(_wide(x), padding, 0)
    o, cg, kh, kw = w.shape
    win = windows(x, kh, kw, strides, dilation)
    n, c, oh, ow = win.shape[:4]
    win = win.reshape(n, groups, c // groups, oh, ow, kh, kw)
    wg = _wide(w).reshape(groups, o // groups, cg, kh, kw)
    y = np.einsum("ngchwij,gocij->ngohw", win, wg, optimize=True)
    return y.reshape(n, o, oh, ow)


def max_pool2d(x, pool_size, strides, padding, dilation):
    fill = np.iinfo(x.dtype).min if np.issubdtype(x.dtype, np.integer) else -np.inf
    win = windows(pad_nchw(x, padding, fill), *_ints(pool_size), strides, dilation)
    return win.max(axis=(4, 5)).astype(x.dtype)


def _sum_in_order(x: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """Float32 sum over `axes` one element at a time in row-major order (TVM's reduction loop),
    keeping the reduced axes as size 1."""
    rest = [a for a in range(x.ndim) if a not in axes]
    moved = np.moveaxis(x, [*rest, *axes], range(x.ndim))
    flat = moved.reshape(*moved.shape[:len(rest)], -1)
    total = np.zeros(flat.shape[:-1], np.float32)
    for r in range(flat.shape[-1]):
        total = total + flat[..., r]
    return np.expand_dims(total, tuple(axes))


def _mean(call, x):
    """TOPI mean: an in-order float32 sum, divided by the element count (integers: exact sum)."""
    axes = tuple(sorted(int(a) % x.ndim for a in _attr(call, "axis")))
    keep = bool(_attr(call, "keepdims"))
    if x.dtype.kind in "iu":
        return np.mean(x, axis=axes, keepdims=keep)
    count = int(np.prod([x.shape[a] for a in axes]))
    out = _sum_in_order(np.asarray(x, np.float32), axes) / np.float32(count)
    return out if keep else out.reshape([d for i, d in enumerate(x.shape) if i not in axes])


def _avg_pool2d(call, x):
    """TOPI float32 avg_pool2d: in-order sum over each window (zero padding), divided by the
    window size, or by the count of real pixels when count_include_pad is false."""
    kh, kw = _ints(_attr(call, "pool_size"))
    strides, padding = _attr(call, "strides"), _attr(call, "padding")
    dilation = _attr(call, "dilation")
    win = windows(pad_nchw(np.asarray(x, np.float32), padding, 0), kh, kw, strides, dilation)
    total = _sum_in_order(win, (4, 5))[..., 0, 0]
    if bool(_attr(call, "count_include_pad")):
        return total / np.float32(kh * kw)
    ones = windows(pad_nchw(np.ones((1, 1, *x.shape[2:]), np.float32), padding, 0), kh, kw,
                   strides, dilation)
    return total / ones.sum(axis=(4, 5)).astype(np.float32)


def _wide(x: np.ndarray) -> np.ndarray:
    """Accumulation type: int64 for integers (exact), float64 for floats."""
    return x.astype(np.int64 if x.dtype.kind in "iu" else np.float64)


def _strided_slice(call, x):
    """x[begin:end:stride] along `axes`; the bounds are tuples of PrimValues in the call args."""
    axes, begin, end = ([int(v.value) for v in t.fields] for t in call.args[1:4])
    strides = [int(v.value) for v in call.args[4].fields] if len(call.args) > 4 else [1] * len(axes)
    index = [slice(None)] * x.ndim
    for a, b, e, s in zip(axes, begin, end, strides):
        index[a] = slice(b, e, s)
    return x[tuple(index)]


def _attr(call, name):
    return getattr(call.attrs, name)


def _qparams_of(scale, zp, axis, dtype) -> numerics.QParams:
    info = np.iinfo(np.dtype(dtype))
    scale = np.asarray(scale, np.float32)
    return numerics.QParams(scale, np.asarray(zp, np.int32), int(info.min), int(info.max),
                            axis=axis if scale.ndim else None)


def _quantize(call, x, scale, zp):
    return numerics.quantize(x, _qparams_of(scale, zp, _attr(call, "axis"),
                                            str(_attr(call, "out_dtype"))))


def _dequantize(call, q, scale, zp):
    return numerics.dequantize(q, _qparams_of(scale, zp, _attr(call, "axis"), str(q.dtype)))


def _sum(call, x):
    axis = _attr(call, "axis")
    return np.sum(_wide(x), axis=None if axis is None else tuple(_ints(axis)),
                  keepdims=bool(_attr(call, "keepdims")))


# Golden NumPy: every op with an integer tensor among its arguments or results (int64
# accumulation, then the binding's dtype), and the quantize / dequantize boundaries.
_GOLDEN: dict[str, Callable] = {
    "relax.quantize": _quantize,
    "relax.dequantize": _dequantize,
    "relax.astype": lambda call, x: x,  # every result is cast to its binding's dtype afterwards
    "relax.add": lambda call, a, b: a + b,
    "relax.subtract": lambda call, a, b: a - b,
    "relax.multiply": lambda call, a, b: a * b,
    "relax.left_shift": lambda call, a, b: a.astype(np.int64) << b,
    "relax.clip": lambda call, x: np.clip(x, float(call.args[1].value),
                                          float(call.args[2].value)),
    "relax.nn.relu": lambda call, x: np.maximum(x, 0),
    "relax.matmul": lambda call, a, b: np.matmul(_wide(a), _wide(b)),
    "relax.sum": _sum,
    "relax.mean": _mean,
    "relax.strided_slice": _strided_slice,
    "relax.concat": lambda call, xs: np.concatenate(xs, axis=int(_attr(call, "axis"))),
    "relax.reshape": lambda call, x: x,  # the binding's static shape is applied afterwards
    "relax.permute_dims": lambda call, x: np.transpose(
        x, None if _attr(call, "axes") is None else _ints(_attr(call, "axes"))),
    "relax.nn.conv2d": lambda call, x, w: conv2d(
        x, w, _attr(call, "strides"), _attr(call, "padding"), _attr(call, "dilation"),
        int(_attr(call, "groups"))),
    "relax.nn.max_pool2d": lambda call, x: max_pool2d(
        x, _attr(call, "pool_size"), _attr(call, "strides"), _attr(call, "padding"),
        _attr(call, "dilation")),
}

# Float ops whose NumPy form is exactly TVM's float32 arithmetic: IEEE elementwise ops (one
# rounding each, no FMA on the host), data movement, max, and TOPI's in-order float sums.
# Every other float op is evaluated by TVM's own lowering of it alone (float_reference.py).
_FLOAT_EXACT: dict[str, Callable] = {
    name: _GOLDEN[name] for name in (
        "relax.astype", "relax.add", "relax.subtract", "relax.multiply", "relax.clip",
        "relax.nn.relu", "relax.mean", "relax.strided_slice", "relax.concat", "relax.reshape",
        "relax.permute_dims", "relax.nn.max_pool2d")
} | {
    "relax.divide": lambda call, a, b: a / b,
    "relax.nn.avg_pool2d": _avg_pool2d,
}
# ops whose args after the first are not tensors
_SHAPE_ARGS = {"relax.reshape", "relax.clip", "relax.strided_slice"}


def requantize_call(prim: tvm.tirx.PrimFunc, acc: np.ndarray, params: list[np.ndarray]):
    """Evaluate a tvmq requant kernel with the golden numerics."""
    rq, axis, clamp, out_dtype = golden_requant(prim, params)
    return numerics.requantize(acc, rq, axis=axis, **clamp).astype(out_dtype)


def _requant_args(prim, acc, *params):
    return requantize_call(prim, acc, list(params))


def lbfp_call(prim: tvm.tirx.PrimFunc) -> Callable:
    """NumPy version of a tvmq LBFP kernel (passes/lbfp_kernels.py): the golden functions."""
    a = prim.attrs[lbfp_kernels.LBFP_ATTR]
    op = str(a["op"])
    fmt = lbfp_kernels.format_of(prim)
    if op == "conv2d":
        def run(x, w, x_exp, w_exp, e_ref, lut):
            acc, golden_e_ref = lbfp.conv2d(
                x, x_exp, w, w_exp, fmt, fmt, strides=_ints(a["strides"]),
                padding=_ints(a["padding"]), dilation=_ints(a["dilation"]),
                groups=int(a["groups"]))
            _same_e_ref(golden_e_ref, e_ref, prim)
            return acc
    elif op == "matmul":
        def run(x, w, x_exp, w_exp, e_ref, lut):
            acc, golden_e_ref = lbfp.matmul(x, x_exp, w, w_exp, fmt, fmt)
            _same_e_ref(golden_e_ref, e_ref, prim)
            return acc
    elif op == "decode":
        def run(words, exps, mags):
            axis = int(a["axis"])
            channel_fmt = lbfp_kernels.format_of(prim, axis)
            return lbfp.decode(words, lbfp.per_channel(exps, words.ndim, axis),
                               channel_fmt).astype(np.float32)
    else:  # encode
        lo = float(a["lo"]) if bool(a["has_lo"]) else -np.inf
        hi = float(a["hi"]) if bool(a["has_hi"]) else np.inf

        def run(x, *params):
            axis = int(a["axis"])
            channel_fmt = lbfp_kernels.format_of(prim, axis)
            exps = lbfp.per_channel(params[-2], x.ndim, axis)
            if str(a["source"]) == "acc":
                e_ref = lbfp.per_channel(params[0], x.ndim, axis)
                return lbfp.acc_to_lbfp(x, e_ref, exps, channel_fmt, lo=lo, hi=hi)
            return lbfp.encode(np.clip(x.astype(np.float64), lo, hi), exps, channel_fmt)
    return run


def _same_e_ref(golden, given, prim) -> None:
    if not np.array_equal(golden, np.asarray(given, np.int64)):
        raise ValueError("oracle: an LBFP kernel's e_ref parameter differs from the golden "
                         "lbfp.conv_e_ref/matmul_e_ref of its exponents")


_TIR_BINARY = {tirx.Max: np.maximum, tirx.Min: np.minimum}


def _shape(buffer_var) -> list[int]:
    return [int(d) for d in buffer_var.ty.shape]


def _broadcast_operand(expr, inputs, out_vars, out_shape):
    """An operand of a broadcast PrimFunc: ("param", index), ("const", value) or None.

    A load must index its input like NumPy broadcasting does: right-aligned to the output, each
    index the output's block variable, or 0 on a dimension of extent 1.
    """
    if isinstance(expr, tirx.IntImm | tirx.FloatImm):
        return "const", np.asarray(expr.value, str(expr.ty.dtype))
    if not isinstance(expr, tvm.ir.expr.TensorLoad):
        return None
    index = next((i for i, p in enumerate(inputs) if expr.source.same_as(p)), None)
    if index is None:
        return None
    shape = _shape(inputs[index])
    offset = len(out_shape) - len(shape)
    if offset < 0 or len(expr.indices) != len(shape):
        return None
    for j, (idx, extent) in enumerate(zip(expr.indices, shape)):
        axis_var = out_vars[offset + j]
        if idx.same_as(axis_var) and extent == out_shape[offset + j]:
            continue
        if isinstance(idx, tirx.IntImm) and int(idx) == 0 and extent == 1:
            continue
        return None
    return "param", index


def tir_broadcast_binary(prim: tvm.tirx.PrimFunc) -> Callable | None:
    """NumPy version of a TOPI broadcast maximum/minimum PrimFunc, or None for any other.

    Matches one spatial block over the whole output, `out[i] = max|min(a, b)`, where a and b
    are broadcast loads of the inputs or constants (what `emit_te(topi.maximum, x, lo)` gives).
    """
    *inputs, out = prim.params
    root = prim.body
    if not isinstance(root, s_tir.SBlockRealize) or len(root.block.alloc_buffers):
        return None
    stmt, loops = root.block.body, []
    while isinstance(stmt, tirx.For):
        loops.append(stmt)
        stmt = stmt.body
    if not isinstance(stmt, s_tir.SBlockRealize):
        return None
    block, store = stmt.block, stmt.block.body
    if block.init is not None or not isinstance(store, tirx.BufferStore):
        return None
    ufunc = _TIR_BINARY.get(type(store.value))
    out_shape = _shape(out)
    out_vars = [iv.var for iv in block.iter_vars]
    if (ufunc is None or not store.buffer.same_as(out)
            or [int(lp.extent) for lp in loops] != out_shape
            or any(int(lp.min) != 0 for lp in loops)
            or any(not v.same_as(lp.loop_var) for v, lp in zip(stmt.iter_values, loops))
            or any(int(iv.iter_type) != 0 for iv in block.iter_vars)  # 0: spatial
            or len(store.indices) != len(out_vars)
            or any(not i.same_as(v) for i, v in zip(store.indices, out_vars))):
        return None
    operands = [_broadcast_operand(e, inputs, out_vars, out_shape)
                for e in (store.value.a, store.value.b)]
    if None in operands:
        return None
    dtype = str(out.ty.dtype)

    def run(*args):
        a, b = (args[v] if kind == "param" else v for kind, v in operands)
        return np.broadcast_to(ufunc(a, b), out_shape).astype(dtype)

    return run


def _dtypes(call: relax.Call) -> list[str]:
    """Dtypes of a call's tensor arguments (tuple fields too) and results."""
    types = [a.ty for a in call.args if is_tensor_arg(a)] + [call.ty]
    flat = [f for t in types for f in (t.fields if isinstance(t, relax.TupleType) else [t])]
    return [str(t.dtype) for t in flat if isinstance(t, relax.TensorType)]


def _is_float(call: relax.Call) -> bool:
    return all(np.dtype(d).kind == "f" for d in _dtypes(call))


class Oracle:
    """Run a realized IRModule's `main` with NumPy: `Oracle(mod).run(x)` gives its output, a
    tuple of arrays when `main` returns a tuple (a model with several outputs).

    `x` is one input of `main`'s shape or, like `CompiledModel.run`, a stack of them.
    `run(x, keep=True)` (one input) also returns every intermediate value by binding name.
    `run(x, keep=True, substitute={name: value})` passes `value` on to the consumers of the
    binding `name` instead of what it computed (which is still in the kept values): with every
    layer's input replaced by its float value, each layer runs on exact inputs (the debugger's
    isolated error, tvmq.debug).

    Each binding is evaluated by one of three references:

    - golden NumPy (tvmq.numerics): quantize, dequantize, the tvmq requant and LBFP kernels,
      and every op with an integer tensor among its arguments or results (conv2d, matmul, add,
      sum, pooling, concat, ...: int64 accumulation). An integer op without one raises
      NotImplementedError; integer arithmetic is never delegated to TVM.
    - a NumPy mirror, for float ops whose float32 arithmetic NumPy reproduces exactly:
      add, subtract, multiply, divide, clip, relu, astype, max_pool2d, data movement
      (reshape, permute_dims, concat, strided_slice), TOPI's in-order float sums (mean,
      avg_pool2d) and the importer's TOPI broadcast maximum/minimum call_tirs (Clip).
    - TVM's default lowering of the op alone (tvmq.float_reference), for every other float
      op and float call_tir: transcendental functions (exp, erf, tanh, sigmoid, softmax,
      power, sqrt; libm and TVM's own expansions are not NumPy's), float conv2d / matmul / sum
      (TOPI's reduction order), resize, pad, split, layer norm, ... `target` is the llvm
      target it is built for (default: the host build's).
    """

    def __init__(self, mod: tvm.IRModule, target: tvm.target.Target | None = None):
        self.mod = mod
        self.func = mod["main"]
        self.input_shape = tuple(int(d) for d in self.func.params[0].ty.shape)
        self.reference = shared_reference(target or host_target())
        self._prims: dict[str, Callable] = {}

    def run(self, x: np.ndarray, keep: bool = False, substitute: dict | None = None):
        if not keep:
            if substitute:
                raise ValueError("substitute= needs keep=True (one input).")
            return run_stacked(self._run_one, x, self.input_shape)
        named: dict[str, np.ndarray] = {}
        if np.shape(x) != self.input_shape:
            raise ValueError(f"keep=True runs one input of shape {self.input_shape}; got "
                             f"{np.shape(x)}.")
        out = self._call(self.func, [check_input(x, self.input_shape)], named, substitute or {})
        return out, named

    def _run_one(self, x: np.ndarray):
        return self._call(self.func, [x])

    def _call(self, func: relax.Function, args: list, named: dict | None = None,
              substitute: dict | None = None):
        """Evaluate a Relax function (main, or a float composite left in the graph)."""
        env: dict = dict(zip(func.params, args))
        for block in func.body.blocks:
            for binding in block.bindings:
                value = self._eval(binding.value, env)
                ty = binding.var.ty
                if isinstance(ty, relax.TensorType) and isinstance(value, np.ndarray):
                    value = value.reshape([int(d) for d in ty.shape]).astype(str(ty.dtype))
                name = binding.var.name
                if named is not None:
                    named[name] = value
                if substitute and name in substitute:
                    value = _substituted(name, value, substitute[name])
                env[binding.var] = value
        return self._eval(func.body.body, env)

    def _eval(self, expr, env):
        if isinstance(expr, relax.Var):
            return env[expr]
        if isinstance(expr, tvm.ir.GenericConst):
            return expr.value.numpy()
        if isinstance(expr, relax.Tuple):
            return tuple(self._eval(f, env) for f in expr.fields)
        if isinstance(expr, relax.TupleGetItem):
            return self._eval(expr.tuple_value, env)[expr.index]
        if isinstance(expr, relax.Call) and isinstance(expr.op, relax.GlobalVar):
            return self._call(self.mod[expr.op], [self._eval(a, env) for a in expr.args])
        name = op_name(expr)
        if name == "relax.call_tir":
            args = [self._eval(a, env) for a in expr.args[1].fields]
            prim = self._prim(expr)
            if prim is not None:
                return prim(*args)
            return self.reference.run(expr, [None, args] + [None] * (len(expr.args) - 2), self.mod)
        is_float = _is_float(expr)
        impl = (_FLOAT_EXACT if is_float else _GOLDEN).get(name)
        if impl is not None:
            n_tensor_args = 1 if name in _SHAPE_ARGS else len(expr.args)
            return impl(expr, *[self._eval(a, env) for a in expr.args[:n_tensor_args]])
        if not is_float:
            raise NotImplementedError(
                f"oracle: no golden NumPy implementation of {name or expr} on "
                f"{', '.join(_dtypes(expr))} (integer ops are never evaluated by TVM)")
        args = [self._eval(a, env) if is_tensor_arg(a) else None for a in expr.args]
        return self.reference.run(expr, args, self.mod)

    def _prim(self, call: relax.Call) -> Callable | None:
        """NumPy implementation of the PrimFunc a call_tir calls (cached per function), or None
        for a float PrimFunc the float reference runs."""
        gv = call.args[0]
        if gv.name_hint not in self._prims:
            prim = self.mod[gv]
            if REQUANT_ATTR in (prim.attrs or {}):
                impl = functools.partial(_requant_args, prim)
            elif lbfp_kernels.LBFP_ATTR in (prim.attrs or {}):
                impl = lbfp_call(prim)
            else:
                impl = tir_broadcast_binary(prim)
            if impl is None and not _is_float(call):
                raise NotImplementedError(
                    f"oracle: call_tir to {gv.name_hint} on {', '.join(_dtypes(call))}: not a "
                    "tvmq requant or LBFP kernel, and integer PrimFuncs are never evaluated by "
                    "TVM")
            self._prims[gv.name_hint] = impl
        return self._prims[gv.name_hint]


def _substituted(name: str, computed: np.ndarray, given) -> np.ndarray:
    given = np.asarray(given)
    if given.shape != computed.shape or given.dtype != computed.dtype:
        raise ValueError(f"substitute[{name!r}] is {given.dtype}{list(given.shape)}; the binding "
                         f"is {computed.dtype}{list(computed.shape)}.")
    return given


@functools.cache
def shared_reference(target: tvm.target.Target) -> FloatReference:
    """One FloatReference per target for every Oracle of this process: its kernels depend only
    on the op's structural signature, so oracles of different models share them."""
    return FloatReference(target)
