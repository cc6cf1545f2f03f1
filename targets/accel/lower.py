"""LowerToAccel: run every realized int8 conv2d / matmul + requant on the C accelerator emulator.

Run after RealizeQuantization (host-side ops stay as they are). Each chain
`conv2d(x - zp, Wq) [+ bq] -> requant -> int8` becomes one `R.call_tir` to a per-layer PrimFunc
whose output-channel tile loop calls the emulator (`T.call_extern("accel_conv2d_tile", ...)`, one
call per t_oc-wide tile). The layer's weights, bias, requant register file and descriptor
(`int8_unit.conv2d_descriptor`) are constants of the call; the emulator adds each tile's cycle
counters into the layer's slot of its counter bank, which `AccelRuntime.counters` reads. A matmul
(1, K) x (K, N) runs as a 1x1 conv with K input channels. No Python runs during inference.

LBFP layers (passes/realize_lbfp.py) lower the same way: the chain `conv2d|matmul kernel ->
[+ bias] -> encode` becomes a tile loop calling `accel_lbfp_conv2d_tile` with the code words,
the exponents, e_ref, the bias in accumulator units, the output exponents, the clip and the
product / threshold tables as constants (the LBFP MAC mode of the emulator).

Mixed precision: `operand_bits` gives each layer's (w_bits, a_bits, y_bits); 4-bit weights are
passed packed two per byte (`int8_unit.pack_weights`), and the descriptor carries the widths.

A chain the accelerator cannot run stays on the host and `AccelRuntime.host_layers` says why:
its output is not int8, its input is not int8 - zp, a matmul has more than one row, or the
emulator's checker refuses it (e.g. a weight tile larger than the weight buffer).
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.script import tirx as T

from tvmq.ir import (
    RequantChain,
    bindings_of,
    const_value,
    dtype_of,
    emit_like,
    golden_requant,
    lbfp_kernels,
    op_name,
    shape_of,
)
from tvmq.numerics import lbfp

from .c_api import DESC_FIELDS, LBFP_DESC_FIELDS
from .config import AccelConfig
from .counters import alloc_counters, clear_counters, read_counters
from .int8_unit import conv2d_descriptor, pack_weights
from .lbfp_unit import lbfp_conv2d_descriptor
from .library import load


class AccelRuntime:
    """The accelerator of one compiled model: its config, each layer's counter slot, and the
    layers left on the host (name -> reason)."""

    def __init__(self, hw: AccelConfig):
        self.hw = hw
        self.slots: dict[str, int] = {}
        self.host_layers: dict[str, str] = {}
        self.operand_bits: dict[str, tuple[int, int, int]] = {}  # (w, a, y) bits per layer

    @property
    def counters(self) -> dict[str, dict[str, int]]:
        """Per layer: cycles, compute/dma/requant cycles, MACs, DMA bytes and tiles, summed over
        every inference since the last `reset()`."""
        return {layer: read_counters(slot) for layer, slot in self.slots.items()}

    def reset(self) -> None:
        for slot in self.slots.values():
            clear_counters(slot)

    def one_inference(self, module, x: np.ndarray) -> dict[str, dict[str, int]]:
        """Per-layer counters of `module.run(x)` alone (counters are cleared before and after;
        they depend on shapes, not on values)."""
        self.reset()
        module.run(x)
        counters = self.counters
        self.reset()
        return counters


def tile_loop(x_shape, w_shape, rq_rows: int, y_shape, t_oc: int,
              w_buffer: tuple[int, ...] | None = None) -> tvm.tirx.PrimFunc:
    """PrimFunc(x, w, bias, rq, desc, y): for each of ceil(O / t_oc) output-channel tiles, call
    `accel_conv2d_tile(desc, x, w, bias, rq, y, t * t_oc)` and assert it returned 0. `w_buffer`
    is the weight buffer's shape when it differs from `w_shape` (packed int4 bytes)."""
    o = int(w_shape[0])
    w_shape = w_shape if w_buffer is None else w_buffer
    n_tiles = -(-o // t_oc)
    n_desc = len(DESC_FIELDS)

    @T.prim_func(private=True)
    def accel_conv2d(x: T.Buffer(x_shape, "int8"), w: T.Buffer(w_shape, "int8"),
                     bias: T.Buffer((o,), "int32"), rq: T.Buffer((rq_rows, 2), "int32"),
                     desc: T.Buffer((n_desc,), "int32"), y: T.Buffer(y_shape, "int8")):
        for t in range(n_tiles):
            status: T.int32 = T.call_extern("int32", "accel_conv2d_tile", desc.data, x.data,
                                            w.data, bias.data, rq.data, y.data, t * t_oc)
            assert status == 0, "accel_conv2d_tile failed (see accel_last_error())"

    # Opaque (pattern 8): FuseOps must not merge an extern call into a neighbour's kernel.
    return accel_conv2d.with_attr("op_pattern", 8)


def lbfp_tile_loop(x_shape, w_shape, y_shape, fmt: lbfp.LBFPFormat, t_oc: int
                   ) -> tvm.tirx.PrimFunc:
    """PrimFunc(x, w, x_exp, w_exp, e_ref, bias, out_exp, clip, lut, thresholds, desc, y): the
    output-channel tile loop of an LBFP layer, one `accel_lbfp_conv2d_tile` call per tile."""
    o = int(w_shape[0])
    c = int(x_shape[1] if len(x_shape) == 4 else x_shape[-1])  # NCHW conv or (1, K) matmul
    n_tiles = -(-o // t_oc)
    n_desc, n_lut, n_thr = len(LBFP_DESC_FIELDS), 2**fmt.frac_bits, fmt.c_max

    @T.prim_func(private=True)
    def accel_lbfp_conv2d(x: T.Buffer(x_shape, "uint8"), w: T.Buffer(w_shape, "uint8"),
                          x_exp: T.Buffer((c,), "int32"), w_exp: T.Buffer(w_shape, "int32"),
                          e_ref: T.Buffer((o,), "int32"), bias: T.Buffer((o,), "int64"),
                          out_exp: T.Buffer((o,), "int32"), clip: T.Buffer((2,), "float64"),
                          lut: T.Buffer((n_lut,), "int64"), thr: T.Buffer((n_thr,), "float64"),
                          desc: T.Buffer((n_desc,), "int32"), y: T.Buffer(y_shape, "uint8")):
        for t in range(n_tiles):
            status: T.int32 = T.call_extern(
                "int32", "accel_lbfp_conv2d_tile", desc.data, x.data, w.data, x_exp.data,
                w_exp.data, e_ref.data, bias.data, out_exp.data, clip.data, lut.data, thr.data,
                y.data, t * t_oc)
            assert status == 0, "accel_lbfp_conv2d_tile failed (see accel_last_error())"

    return accel_lbfp_conv2d.with_attr("op_pattern", 8)


def _matmul_as_conv(*weights):
    """(1, K) x (K, N) as a 1x1 conv over K channels: the (K, N) arrays as OIHW (N, K, 1, 1),
    the conv geometry and the NCHW input shape."""
    k, n = weights[0].shape
    oihw = [np.ascontiguousarray(w.T.reshape(n, k, 1, 1)) for w in weights]
    geometry = dict(strides=[1, 1], padding=[0, 0, 0, 0], dilation=[1, 1], groups=1)
    return oihw, geometry, (1, k, 1, 1)


def matmul_rows_reason(x_shape) -> str | None:
    """Why a matmul input of this shape cannot run on the accelerator (it reads one (1, K)
    row), or None."""
    rows = int(np.prod(x_shape[:-1]))
    return None if rows == 1 else f"matmul with {rows} rows: the accelerator reads one (1, K) row"


def _lbfp_attrs(value, mod) -> dict | None:
    """The `tvmq.lbfp` attributes of the PrimFunc a call_tir calls, or None."""
    if op_name(value) != "relax.call_tir":
        return None
    prim = mod[value.args[0]]
    return None if not prim.attrs else prim.attrs.get(lbfp_kernels.LBFP_ATTR)


def _int8_input(expr, bindings) -> tuple[relax.Expr, int] | None:
    """(x int8, zero point) for a conv input that is `astype(x, int16) - zp` or int8 `x`."""
    value = bindings.get(expr)
    if op_name(value) == "relax.subtract" and const_value(value.args[1]) is not None:
        inner = bindings.get(value.args[0])
        if op_name(inner) == "relax.astype" and dtype_of(inner.args[0]) == "int8":
            return inner.args[0], int(const_value(value.args[1]))
    if dtype_of(expr) == "int8":
        return expr, 0
    return None


@relax.expr_functor.mutator
class _Lowerer(relax.PyExprMutator):
    def __init__(self, mod, runtime: AccelRuntime, operand_bits):
        super().__init__(mod)
        self.mod_, self.runtime = mod, runtime
        self.operand_bits = operand_bits
        self.bindings = bindings_of(mod["main"])

    def visit_var_binding_(self, binding):
        value, name = binding.value, binding.var.name
        new_value = None
        attrs = _lbfp_attrs(value, self.mod_)
        if attrs is not None and str(attrs["op"]) == "encode" and str(attrs["source"]) == "acc":
            new_value = self._lower_lbfp(value, attrs, name.removesuffix("_q"), binding.var)
        elif RequantChain.is_requant(value, self.mod_):
            chain = RequantChain(value, self.bindings, self.mod_)
            if chain.valid:
                new_value = self._lower(chain, name.removesuffix("_q"), binding.var)
        if new_value is None:
            new_value = self.visit_expr(value)
        emit_like(self, binding.var, new_value)

    def _refuse_rows(self, x, layer) -> bool:
        """True (the reason in host_layers) for a matmul input the accelerator cannot read."""
        reason = matmul_rows_reason(shape_of(x))
        if reason is not None:
            self.runtime.host_layers[layer] = reason
        return reason is not None

    def _lower(self, chain, layer, out_var):
        """`R.call_tir` of the layer's tile loop, or None if the layer stays on the host (the
        reason goes to `runtime.host_layers`)."""
        source = _int8_input(chain.op.args[0], self.bindings)
        if dtype_of(out_var) != "int8":
            self.runtime.host_layers[layer] = f"output is {dtype_of(out_var)}, not int8"
            return None
        if source is None:
            self.runtime.host_layers[layer] = "input is not int8 minus a zero point"
            return None
        x, zp = source
        rq, _, q, _ = golden_requant(chain.prim, [const_value(p) for p in chain.params])
        w_bits, a_bits, y_bits = self.operand_bits.get(layer, (8, 8, 8))
        if op_name(chain.op) == "relax.nn.conv2d":
            a = chain.op.attrs
            w = chain.weight
            geometry = dict(strides=[int(s) for s in a.strides],
                            padding=[int(p) for p in a.padding],
                            dilation=[int(d) for d in a.dilation], groups=int(a.groups))
            x_nchw = shape_of(x)
        else:
            if self._refuse_rows(x, layer):
                return None
            (w,), geometry, x_nchw = _matmul_as_conv(chain.weight)
        o = w.shape[0]
        bias = np.zeros(o, np.int32) if chain.bias is None else chain.bias.reshape(-1)
        slot = alloc_counters(1)
        try:
            desc, regs = conv2d_descriptor(
                self.runtime.hw, x_nchw, w.shape, zp, requant=rq, out_zp=q["zero_point"],
                qmin=q["qmin"], qmax=q["qmax"], counter_slot=slot, w_bits=w_bits,
                a_bits=a_bits, y_bits=y_bits, **geometry)
        except ValueError as err:
            self.runtime.host_layers[layer] = str(err)
            return None
        self.runtime.slots[layer] = slot
        self.runtime.operand_bits[layer] = (w_bits, a_bits, y_bits)
        w_buffer = pack_weights(w, w_bits)
        prim = tile_loop(shape_of(x), w.shape, regs.shape[0], shape_of(out_var),
                         self.runtime.hw.t_oc, w_buffer.shape if w_bits != 8 else None)
        gv = self.builder_.add_func(prim, f"accel_{layer}")
        args = [self.visit_expr(x), *(relax.const(v) for v in (
            w_buffer, bias.astype(np.int32), regs, desc))]
        return relax.call_tir(gv, args, relax.TensorType(shape_of(out_var), "int8"))


    def _lower_lbfp(self, encode, enc_attrs, layer, out_var):
        """The LBFP twin of `_lower`: `conv2d|matmul kernel [+ bias] -> encode` as one call."""
        acc, _, out_exp, _ = encode.args[1].fields
        acc_value = self.bindings.get(acc)
        bias = None
        if op_name(acc_value) == "relax.add":
            bias = const_value(acc_value.args[1]).reshape(-1)
            acc_value = self.bindings.get(acc_value.args[0])
        mac = _lbfp_attrs(acc_value, self.mod_)
        if mac is None or str(mac["op"]) not in ("conv2d", "matmul"):
            return None
        x, w, x_exp, w_exp, e_ref, _ = acc_value.args[1].fields
        w, w_exp = const_value(w), const_value(w_exp)
        fmt = lbfp.LBFPFormat(bits=int(mac["bits"]), frac_bits=int(mac["frac_bits"]),
                              block_size=int(mac["block_size"]), lut_bits=int(mac["lut_bits"]))
        if str(mac["op"]) == "conv2d":
            geometry = dict(strides=[int(v) for v in mac["strides"]],
                            padding=[int(v) for v in mac["padding"]],
                            dilation=[int(v) for v in mac["dilation"]], groups=int(mac["groups"]))
            x_nchw = shape_of(x)
        else:
            if self._refuse_rows(x, layer):
                return None
            (w, w_exp), geometry, x_nchw = _matmul_as_conv(w, w_exp)
        o = w.shape[0]
        slot = alloc_counters(1)
        try:
            desc = lbfp_conv2d_descriptor(self.runtime.hw, x_nchw, w.shape, fmt,
                                          counter_slot=slot, **geometry)
        except ValueError as err:
            self.runtime.host_layers[layer] = str(err)
            return None
        self.runtime.slots[layer] = slot
        lo = float(enc_attrs["lo"]) if bool(enc_attrs["has_lo"]) else -np.inf
        hi = float(enc_attrs["hi"]) if bool(enc_attrs["has_hi"]) else np.inf
        tail = [w_exp.astype(np.int32), const_value(e_ref).astype(np.int32),
                np.zeros(o, np.int64) if bias is None else bias.astype(np.int64),
                const_value(out_exp).astype(np.int32), np.array([lo, hi]), fmt.lut,
                fmt.thresholds, desc]
        prim = lbfp_tile_loop(shape_of(x), w.shape, shape_of(out_var), fmt, self.runtime.hw.t_oc)
        gv = self.builder_.add_func(prim, f"accel_{layer}")
        args = [self.visit_expr(x), relax.const(w.astype(np.uint8), "uint8"),
                self.visit_expr(x_exp), *(relax.const(v, str(v.dtype)) for v in tail)]
        return relax.call_tir(gv, args, relax.TensorType(shape_of(out_var), "uint8"))


@tvm.transform.module_pass(opt_level=0, name="LowerToAccel")
class LowerToAccel:
    """Replace realized int8 conv2d/matmul + requant chains by calls into the C emulator.

    `operand_bits` maps a layer name to its (w_bits, a_bits, y_bits) (mixed precision; default
    8, 8, 8): 4-bit weights go to the emulator packed two per byte."""

    def __init__(self, runtime: AccelRuntime, operand_bits=None):
        self.runtime = runtime
        self.operand_bits = dict(operand_bits or {})

    def transform_module(self, mod, ctx):
        load()  # build the emulator now, so a missing C compiler fails the compile
        lowerer = _Lowerer(mod, self.runtime, self.operand_bits)
        lowerer.builder_.update_func(mod.get_global_var("main"), lowerer.visit_expr(mod["main"]))
        return relax.transform.DeadCodeElimination(["main"])(lowerer.builder_.get())
