"""AnnotateQuantizable: group the ops tvmq can run in integers into `tvmq.*` composite functions.

Run on a normalized float module (tvmq.frontend), before calibration. Each quantizable op, with the
epilogue it absorbs, becomes a call to a private function with attribute `Composite`:

    tvmq.conv2d   conv2d(x, W) [+ b] [relu | clip]    (incl. depthwise / grouped)
    tvmq.matmul   matmul(x, W) [+ b] [relu | clip]    (Gemm / dense)
    tvmq.add      add(a, b) [relu | clip]             (residual adds, same shape)
    tvmq.relu     relu(x) | clip(x)
    tvmq.max_pool2d, tvmq.avg_pool2d (count_include_pad or no padding), tvmq.mean (global pooling)
    tvmq.concat   concat((a, b, ...))
    tvmq.reshape, tvmq.permute_dims                   (pass-through: int8 in, int8 out)

Everything else stays float. Then every binding of `main` is renamed `<kind>_<index>` (composites)
or `<op>_<index>` (float ops) so that layers and calibration taps have stable, unique names.
"""

from __future__ import annotations

import math

import numpy as np
import tvm
from tvm import relax
from tvm.relax.dpl import is_const, is_op, is_tuple, wildcard

from tvmq.ir import const_value, emit_like, op_name, shape_of

MAX_CONCAT_INPUTS = 8
KEEP_FLOAT_ATTR = "tvmq.keep_float"  # on a composite left in float (passes/keep_float.py): why


def _epilogues(core):
    """core, core+relu, core+clip."""
    return [
        ("", core),
        ("_relu", is_op("relax.nn.relu")(core)),
        ("_clip", is_op("relax.clip")(core, wildcard(), wildcard())),
    ]


def _patterns() -> list[tuple]:
    pats = []
    for kind in ("conv2d", "matmul"):
        op = is_op(f"relax.{'nn.' if kind == 'conv2d' else ''}{kind}")(wildcard(), is_const())
        with_bias = is_op("relax.add")(op, is_const())
        for core in (with_bias, op):
            for _, pat in reversed(_epilogues(core)):
                pats.append((f"tvmq.{kind}", pat, {"root": op}, _check_linear))
    add = is_op("relax.add")(wildcard(), wildcard())
    for _, pat in reversed(_epilogues(add)):
        pats.append(("tvmq.add", pat, {"root": add}, _check_add))
    pats.append(("tvmq.relu", is_op("relax.nn.relu")(wildcard()), {}, None))
    pats.append(("tvmq.relu", is_op("relax.clip")(wildcard(), wildcard(), wildcard()), {}, None))
    pool = is_op("relax.nn.avg_pool2d")(wildcard())
    pats.append(("tvmq.avg_pool2d", pool, {"root": pool}, _check_avg_pool))
    pats.append(("tvmq.max_pool2d", is_op("relax.nn.max_pool2d")(wildcard()), {}, _check_pool))
    mean = is_op("relax.mean")(wildcard())
    pats.append(("tvmq.mean", mean, {"root": mean}, _check_float_input))
    for n in range(MAX_CONCAT_INPUTS, 1, -1):
        cat = is_op("relax.concat")(is_tuple([wildcard() for _ in range(n)]))
        pats.append(("tvmq.concat", cat, {"root": cat}, _check_float_input))
    pats.append(("tvmq.reshape", is_op("relax.reshape")(wildcard(), wildcard()), {}, None))
    pats.append(("tvmq.permute_dims", is_op("relax.permute_dims")(wildcard()), {}, None))
    return pats


def _is_float32(expr) -> bool:
    return isinstance(expr.ty, relax.TensorType) and str(expr.ty.dtype) == "float32"


def _check_float_input(ctx) -> bool:
    root = ctx.annotated_expr["root"]
    args = root.args[0].fields if isinstance(root.args[0], relax.Tuple) else root.args
    return all(_is_float32(a) for a in args)


def _check_linear(ctx) -> bool:
    root = ctx.annotated_expr["root"]
    if not (_is_float32(root.args[0]) and _is_float32(root.args[1])):
        return False
    if op_name(root) == "relax.nn.conv2d":
        a = root.attrs
        return a.data_layout == "NCHW" and a.kernel_layout == "OIHW" and a.out_layout == "NCHW"
    return len(shape_of(root.args[1])) == 2 and len(shape_of(root.args[0])) >= 2


def _check_add(ctx) -> bool:
    """Two float32 activations of one shape; an add of a constant (YOLO's anchor grid) is not a
    residual add and stays float."""
    root = ctx.annotated_expr["root"]
    a, b = root.args
    return (all(_is_float32(t) and const_value(t) is None for t in (a, b))
            and shape_of(a) == shape_of(b))


def _check_pool(ctx) -> bool:
    root = ctx.matched_expr
    return root.attrs.layout == "NCHW" and _is_float32(root.args[0])


def _check_avg_pool(ctx) -> bool:
    """Integer average = window sum / window size: exact only when the divisor never varies."""
    a = ctx.annotated_expr["root"].attrs
    no_pad = all(int(p) == 0 for p in a.padding)
    return (
        a.layout == "NCHW"
        and not a.ceil_mode
        and all(int(d) == 1 for d in a.dilation)
        and (a.count_include_pad or no_pad)
        and _is_float32(ctx.annotated_expr["root"].args[0])
    )


def composite_kind(mod: tvm.IRModule, call: relax.Expr) -> str | None:
    """`"conv2d"` for a call to a `tvmq.conv2d` composite in `mod`, else None (also for one
    KeepFloat left in float)."""
    if not (isinstance(call, relax.Call) and isinstance(call.op, relax.GlobalVar)):
        return None
    func = mod[call.op]
    attrs = (func.attrs or {}) if isinstance(func, relax.Function) else {}
    name = attrs.get("Composite")
    if name is None or not str(name).startswith("tvmq.") or KEEP_FLOAT_ATTR in attrs:
        return None
    return str(name)[len("tvmq."):]


def kept_float(mod: tvm.IRModule, call: relax.Expr) -> tuple[str, str] | None:
    """(kind, reason) for a call to a `tvmq.*` composite KeepFloat left in float, else None."""
    if not (isinstance(call, relax.Call) and isinstance(call.op, relax.GlobalVar)):
        return None
    func = mod[call.op]
    attrs = (func.attrs or {}) if isinstance(func, relax.Function) else {}
    if KEEP_FLOAT_ATTR not in attrs:
        return None
    return str(attrs["Composite"])[len("tvmq."):], str(attrs[KEEP_FLOAT_ATTR])


@relax.expr_functor.mutator
class _Renamer(relax.PyExprMutator):
    def __init__(self, mod):
        super().__init__(mod)
        self.mod_ = mod
        self.index = 0

    def visit_var_binding_(self, binding):
        value = self.visit_expr(binding.value)
        label = composite_kind(self.mod_, value)
        if label is None:
            name = op_name(value)
            label = name.rsplit(".", 1)[-1] if name else "t"
        emit_like(self, binding.var, value, f"{label}_{self.index}")
        self.index += 1


@tvm.transform.module_pass(opt_level=0, name="tvmq.AnnotateQuantizable")
class AnnotateQuantizable:
    """Group quantizable ops into `tvmq.*` composites and give `main`'s bindings unique names."""

    def transform_module(self, mod, ctx):
        mod = relax.transform.FuseOpsByPattern(
            _patterns(), bind_constants=True, annotate_codegen=False
        )(mod)
        renamer = _Renamer(mod)
        renamer.builder_.update_func(mod.get_global_var("main"), renamer.visit_expr(mod["main"]))
        return renamer.builder_.get()


class Composite:
    """The ops inside one `tvmq.*` composite function (this pass's product), in order."""

    def __init__(self, func: relax.Function):
        self.params = list(func.params)
        self.calls: list[relax.Call] = []
        for block in func.body.blocks:
            for binding in block.bindings:
                self.calls.append(binding.value)
        self.root = self.calls[0]

    def find(self, name: str) -> relax.Call | None:
        return next((c for c in self.calls if op_name(c) == name), None)

    def bias(self) -> np.ndarray | None:
        add = self.find("relax.add")
        return None if add is None or add is self.root else const_value(add.args[1])

    def activation(self) -> tuple[float, float]:
        """The (lo, hi) float range the relu/clip epilogue keeps."""
        if self.find("relax.nn.relu") is not None:
            return 0.0, math.inf
        clip = self.find("relax.clip")
        if clip is not None:
            return float(clip.args[1].value), float(clip.args[2].value)
        return -math.inf, math.inf


def composites(mod: tvm.IRModule) -> dict[str, Composite]:
    """Binding name -> Composite of every `tvmq.*` composite call in `main` (not the ones
    KeepFloat left in float)."""
    return {b.var.name: Composite(mod[b.value.op]) for block in mod["main"].body.blocks
            for b in block.bindings if composite_kind(mod, b.value) is not None}
