"""RealizeLBFP: rewrite `tvmq.conv2d` / `tvmq.matmul` composites into LBFP kernels.

Run after AnnotateQuantizable and calibration. `act_exponents` maps the name of every tensor a
conv/matmul reads or writes to its exponents, one per channel (blocks expanded): the channel axis
is 1 for NCHW tensors and the last axis otherwise (matmul operands).

Per layer (see tvmq/ir/lbfp_kernels.py and tvmq.numerics.lbfp):
    x words   the producing LBFP layer's words when it wrote this tensor, else encode(x)
    weights   encoded at compile time, blocks of fmt.block_size along the input channels
              (OIHW axis 1, (K, N) axis 0), exponents by `weight_exponents` ("max" or "kl")
    acc       conv2d/matmul kernel (int64), + bias in accumulator units 2^(e_ref - lut_bits)
    y words   encode(acc) with the output tensor's exponents; a ReLU/Clip epilogue is the clip
    y float   decode(y words) for every float consumer
Layer `<name>`'s words are the binding `<name>_q`. The other composites (add, pooling, concat,
...) stay float: they read decoded LBFP values, and the next MAC layer encodes their output.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import tvm
from tvm import relax

from tvmq.ir import const_value, emit_like, shape_of
from tvmq.ir import lbfp_kernels as kernels
from tvmq.numerics import lbfp

from .annotate_quantizable import Composite, composite_kind

MAC_KINDS = ("conv2d", "matmul")


def weight_format(fmt: lbfp.LBFPFormat, kind: str) -> lbfp.LBFPFormat:
    """Weights block along their input channels: OIHW axis 1, matmul (K, N) axis 0."""
    return dataclasses.replace(fmt, block_axis=1 if kind == "conv2d" else 0)


def weight_exponents(w: np.ndarray, fmt: lbfp.LBFPFormat, method: str) -> np.ndarray:
    """Block exponents of a weight tensor (fmt from `weight_format`): "max" or "kl"."""
    if method == "kl":
        return lbfp.kl_exponents(w, fmt)
    return lbfp.max_exponents(w, fmt)


@relax.expr_functor.mutator
class _Realizer(relax.PyExprMutator):
    def __init__(self, mod, act_exponents, fmt, weight_method):
        super().__init__(mod)
        self.mod_ = mod
        self.exps = act_exponents
        self.fmt, self.weight_method = fmt, weight_method
        self.words: dict[str, relax.Expr] = {}  # tensor name -> its LBFP code words
        self.weight_ranges: dict[str, tuple[int, int]] = {}  # layer -> (min, max) exponent

    def _exponents(self, name: str, channels: int) -> np.ndarray:
        if name not in self.exps:
            raise ValueError(f"RealizeLBFP: no calibrated exponents for tensor {name!r}")
        e = np.asarray(self.exps[name], np.int32).reshape(-1)
        if e.size != channels:
            raise ValueError(f"RealizeLBFP: tensor {name!r} has {channels} channels but "
                             f"{e.size} exponents")
        return e

    def _call(self, prim, name: str, args, shape, dtype) -> relax.Expr:
        gv = self.builder_.add_func(prim, name)
        # dtype given: relax.const turns an int64 NumPy array into an int32 constant
        return relax.call_tir(gv, [relax.const(a, str(a.dtype)) if isinstance(a, np.ndarray)
                                   else a for a in args], relax.TensorType(shape, dtype))

    def _input_words(self, arg: relax.Var) -> relax.Expr:
        name = arg.name
        if name not in self.words:
            shape = shape_of(arg)
            axis = lbfp.activation_axis(len(shape))
            exps = self._exponents(name, shape[axis])
            prim = kernels.encode_prim_func(shape, axis, self.fmt, "float", None, None)
            call = self._call(prim, "tvmq_lbfp_encode", [self.visit_expr(arg), exps,
                                                         self.fmt.thresholds], shape, "uint8")
            self.words[name] = self.builder_.emit(call, f"{name}_q")
        return self.words[name]

    def _layer(self, kind, comp: Composite, arg: relax.Var, name: str) -> relax.Expr:
        """The layer's output words: encode(conv2d|matmul(x words, w words) + bias)."""
        fmt = self.fmt
        x_words = self._input_words(arg)
        x_shape = shape_of(arg)
        x_exp = self._exponents(arg.name, x_shape[lbfp.activation_axis(len(x_shape))])
        w = const_value(comp.root.args[1])
        fmt_w = weight_format(fmt, kind)
        w_blocks = weight_exponents(w, fmt_w, self.weight_method)
        self.weight_ranges[name] = (int(w_blocks.min()), int(w_blocks.max()))
        w_words = lbfp.encode(w, w_blocks, fmt_w)
        w_exp = lbfp.expand_exponents(w_blocks, w.shape, fmt_w).astype(np.int32)
        out_shape = shape_of(comp.root)
        if kind == "conv2d":
            a = comp.root.attrs
            groups = int(a.groups)
            e_ref = lbfp.conv_e_ref(x_exp, w_exp, groups).astype(np.int32)
            prim = kernels.conv2d_prim_func(x_shape, w.shape, [int(v) for v in a.strides],
                                            [int(v) for v in a.padding],
                                            [int(v) for v in a.dilation], groups, fmt)
        else:
            e_ref = lbfp.matmul_e_ref(x_exp, w_exp).astype(np.int32)
            prim = kernels.matmul_prim_func(x_shape, w.shape, fmt)
        acc = self.builder_.emit(self._call(prim, f"tvmq_lbfp_{kind}",
                                            [x_words, w_words, x_exp, w_exp, e_ref, fmt.lut],
                                            out_shape, "int64"))
        axis = lbfp.activation_axis(len(out_shape))
        bias = comp.bias()
        if bias is not None:
            bq = lbfp.bias_to_acc(bias.reshape(-1), e_ref.astype(np.int64), fmt)
            bshape = [1] * len(out_shape)
            bshape[axis] = out_shape[axis]
            acc = self.builder_.emit(relax.op.add(acc, relax.const(bq.reshape(bshape), "int64")))
        lo, hi = comp.activation()
        prim = kernels.encode_prim_func(out_shape, axis, fmt, "acc",
                                        None if lo == -math.inf else lo,
                                        None if hi == math.inf else hi)
        out_exp = self._exponents(name, out_shape[axis])
        return self._call(prim, "tvmq_lbfp_encode", [acc, e_ref, out_exp, fmt.thresholds],
                          out_shape, "uint8")

    def visit_var_binding_(self, binding):
        name = binding.var.name
        kind = composite_kind(self.mod_, binding.value)
        if kind not in MAC_KINDS:
            emit_like(self, binding.var, self.visit_expr(binding.value))
            return
        comp = Composite(self.mod_[binding.value.op])
        arg, = binding.value.args
        words = self.builder_.emit(self._layer(kind, comp, arg, name), f"{name}_q")
        self.words[name] = words
        shape = shape_of(binding.var)
        axis = lbfp.activation_axis(len(shape))
        prim = kernels.decode_prim_func(shape, axis, self.fmt)
        decode = self._call(prim, "tvmq_lbfp_decode",
                            [words, self._exponents(name, shape[axis]), self.fmt.magnitudes],
                            shape, "float32")
        emit_like(self, binding.var, decode)


@tvm.transform.module_pass(opt_level=0, name="tvmq.RealizeLBFP")
class RealizeLBFP:
    """Turn annotated conv2d/matmul composites into LBFP encode / MAC / decode kernels.

    Parameters
    ----------
    act_exponents : dict[str, array]
        Per-channel exponents (int) of every tensor a conv/matmul reads or writes.
    fmt : LBFPFormat
        Element format (bits, frac_bits, block_size, lut_bits); block_axis is set per tensor.
    weight_exponents : "max" or "kl"

    After a run, `weight_ranges` maps each layer to its (min, max) weight block exponent.
    """

    def __init__(self, act_exponents, fmt: lbfp.LBFPFormat, weight_exponents: str = "max"):
        if weight_exponents not in ("max", "kl"):
            raise ValueError(f"RealizeLBFP: weight_exponents={weight_exponents!r}; use 'max' "
                             "or 'kl'")
        self.act_exponents = dict(act_exponents)
        self.fmt, self.weight_exponents = fmt, weight_exponents
        self.weight_ranges: dict[str, tuple[int, int]] = {}

    def transform_module(self, mod, ctx):
        realizer = _Realizer(mod, self.act_exponents, self.fmt, self.weight_exponents)
        gv = mod.get_global_var("main")
        realizer.builder_.update_func(gv, realizer.visit_expr(mod["main"]))
        self.weight_ranges = realizer.weight_ranges
        mod = realizer.builder_.get()
        return relax.transform.DeadCodeElimination(["main"])(mod)
