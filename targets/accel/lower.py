"""LowerToAccel: run every realized int8 conv2d / matmul + requant on the C accelerator emulator.

Run after RealizeQuantization (host-side ops stay as they are). Three steps:
1. pick the int8 chains `conv2d(x - zp, Wq) [+ bq] -> requant -> int8` the accelerator can take
   by their types and shapes (the others stay on the host, `AccelRuntime.host_layers` says why:
   the output is not int8, the input is not int8 - zp, a matmul has more than one row);
2. TileOutputChannels(hw.t_oc, those layers) cuts each into the t_oc-wide output-channel tiles
   the PE array computes, each tile with its own weights, bias and requant parameters;
3. each tiled layer (`TiledLayer.read`) becomes one `R.call_tir` to a per-layer PrimFunc whose
   loop makes one accelerator call per tile (`T.call_extern("accel_conv2d_tile", ..., o0)`).
   The tiles' weights, biases and requant registers are laid end to end in the layer's buffers,
   tile t at channel t * t_oc, which is how the emulator addresses them; with the layer's
   descriptor (`int8_unit.conv2d_descriptor`) they are constants of the call. One call per layer
   rather than per tile because the emulator's cycle model follows a layer: a tile pays DMA only
   for the input channels earlier tiles of the same layer did not load, and every tile writes
   into the layer's one output buffer (no concat on the host). A layer the emulator's checker
   refuses (e.g. a weight tile larger than the weight buffer) is put back together as one chain
   for the host. The emulator adds each tile's cycle counters into the layer's slot of its
   counter bank, which `AccelRuntime.counters` reads. A matmul (1, K) x (K, N) runs as a 1x1
   conv with K input channels. No Python runs during inference.

LBFP layers (passes/realize_lbfp.py) are lowered from their untiled chain (TileOutputChannels
has no LBFP form): `conv2d|matmul kernel -> [+ bias] -> encode` becomes a tile loop calling
`accel_lbfp_conv2d_tile` with the code words, the exponents, e_ref, the bias in accumulator
units, the output exponents, the clip and the product / threshold tables as constants (the LBFP
MAC mode of the emulator).

Mixed precision: `operand_bits` gives each layer's (w_bits, a_bits, y_bits); 4-bit weights are
passed packed two per byte (`int8_unit.pack_weights`), and the descriptor carries the widths.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.script import tirx as T
from tvmq.passes.tile_output_channels import TiledLayer, TileOutputChannels, tile_bounds

from tvmq.ir import (
    REQUANT_ATTR,
    RequantChain,
    bindings_of,
    const_value,
    dtype_of,
    emit_like,
    golden_requant,
    lbfp_kernels,
    op_name,
    requant_call_like,
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


def _host_reason(chain: RequantChain, out_var, bindings) -> str | None:
    """Why the accelerator cannot take this chain, from its types and shapes alone, or None.
    (The emulator's checker has the last word, on the whole layer, after tiling.)"""
    if dtype_of(out_var) != "int8":
        return f"output is {dtype_of(out_var)}, not int8"
    if _int8_input(chain.op.args[0], bindings) is None:
        return "input is not int8 minus a zero point"
    if op_name(chain.op) == "relax.matmul":
        return matmul_rows_reason(shape_of(chain.op.args[0]))
    return None


def _accel_layers(mod, runtime: AccelRuntime) -> set[str]:
    """The int8 layers of `main` the accelerator may take; the others' reasons go to
    `runtime.host_layers`."""
    bindings, layers = bindings_of(mod["main"]), set()
    for var, value in bindings.items():
        if not RequantChain.is_requant(value, mod):
            continue
        chain, layer = RequantChain(value, bindings, mod), var.name.removesuffix("_q")
        if not chain.valid:
            continue
        reason = _host_reason(chain, var, bindings)
        if reason is None:
            layers.add(layer)
        else:
            runtime.host_layers[layer] = reason
    return layers


@relax.expr_functor.mutator
class _Lowerer(relax.PyExprMutator):
    def __init__(self, mod, runtime: AccelRuntime, operand_bits, layers: set[str]):
        super().__init__(mod)
        self.mod_, self.runtime = mod, runtime
        self.operand_bits, self.layers = operand_bits, layers
        self.bindings = bindings_of(mod["main"])

    def visit_var_binding_(self, binding):
        value, name = binding.value, binding.var.name
        layer = name.removesuffix("_q")
        new_value = None
        attrs = _lbfp_attrs(value, self.mod_)
        if attrs is not None and str(attrs["op"]) == "encode" and str(attrs["source"]) == "acc":
            new_value = self._lower_lbfp(value, attrs, layer, binding.var)
        elif layer in self.layers:
            tiled = TiledLayer.read(value, self.bindings, self.mod_)
            if tiled is not None:
                new_value = self._lower(tiled, layer, binding.var)
                if new_value is None:  # the emulator refused it: one chain on the host
                    new_value = self._untiled(tiled)
        if new_value is None:
            new_value = self.visit_expr(value)
        emit_like(self, binding.var, new_value)

    def _refuse_rows(self, x, layer) -> bool:
        """True (the reason in host_layers) for a matmul input the accelerator cannot read."""
        reason = matmul_rows_reason(shape_of(x))
        if reason is not None:
            self.runtime.host_layers[layer] = reason
        return reason is not None

    def _lower(self, tiled: TiledLayer, layer, out_var):
        """`R.call_tir` of the layer's tile loop, one accelerator call per tile of `tiled`, or
        None if the emulator's checker refuses the layer (the reason goes to
        `runtime.host_layers`)."""
        x, zp = _int8_input(tiled.x, self.bindings)
        rq, _, q, _ = golden_requant(tiled.requant, tiled.params)
        w_bits, a_bits, y_bits = self.operand_bits.get(layer, (8, 8, 8))
        if tiled.op == "relax.nn.conv2d":
            a, w = tiled.conv_attrs, tiled.weight
            geometry = dict(strides=[int(s) for s in a.strides],
                            padding=[int(p) for p in a.padding],
                            dilation=[int(d) for d in a.dilation], groups=tiled.groups)
            x_nchw = shape_of(x)
        else:
            (w,), geometry, x_nchw = _matmul_as_conv(tiled.weight)
        o, t_oc = w.shape[0], self.runtime.hw.t_oc
        if tiled.bounds != tile_bounds(o, t_oc):  # the tile loop calls tile t at t * t_oc
            raise RuntimeError(f"LowerToAccel: layer {layer!r} has tiles {tiled.bounds}, not "
                               f"{t_oc}-wide")
        bias = np.zeros(o, np.int32) if tiled.bias is None else tiled.bias.reshape(-1)
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
        prim = tile_loop(shape_of(x), w.shape, regs.shape[0], shape_of(out_var), t_oc,
                         w_buffer.shape if w_bits != 8 else None)
        gv = self.builder_.add_func(prim, f"accel_{layer}")
        args = [self.visit_expr(x), *(relax.const(v) for v in (
            w_buffer, bias.astype(np.int32), regs, desc))]
        return relax.call_tir(gv, args, relax.TensorType(shape_of(out_var), "int8"))

    def _untiled(self, tiled: TiledLayer) -> relax.Expr:
        """The layer as one chain again, for the host: `op(x, W) [+ b] -> requant`."""
        x, w = self.visit_expr(tiled.x), relax.const(tiled.weight)
        if tiled.op == "relax.nn.conv2d":
            a = tiled.conv_attrs
            acc = relax.op.nn.conv2d(x, w, strides=a.strides, padding=a.padding,
                                     dilation=a.dilation, groups=tiled.groups,
                                     out_dtype="int32")
        else:
            acc = relax.op.matmul(x, w, out_dtype="int32")
        acc = self.builder_.emit(acc)
        if tiled.bias is not None:
            acc = self.builder_.emit(relax.op.add(acc, relax.const(tiled.bias)))
        axis = 1 if tiled.op == "relax.nn.conv2d" else len(shape_of(acc)) - 1
        return requant_call_like(self.builder_, tiled.requant.attrs[REQUANT_ATTR], acc,
                                 [relax.const(p) for p in tiled.params], shape_of(acc)[axis],
                                 axis)

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


@tvm.transform.module_pass(opt_level=0, name="tvmq.LowerToAccel")
class LowerToAccel:
    """Replace realized int8 conv2d/matmul + requant chains by calls into the C emulator.

    `operand_bits` maps a layer name to its (w_bits, a_bits, y_bits) (mixed precision; default
    8, 8, 8): 4-bit weights go to the emulator packed two per byte."""

    def __init__(self, runtime: AccelRuntime, operand_bits=None):
        self.runtime = runtime
        self.operand_bits = dict(operand_bits or {})

    def transform_module(self, mod, ctx):
        load()  # build the emulator now, so a missing C compiler fails the compile
        layers = _accel_layers(mod, self.runtime)
        mod = TileOutputChannels(self.runtime.hw.t_oc, layers)(mod)
        lowerer = _Lowerer(mod, self.runtime, self.operand_bits, layers)
        lowerer.builder_.update_func(mod.get_global_var("main"), lowerer.visit_expr(mod["main"]))
        return relax.transform.DeadCodeElimination(["main"])(lowerer.builder_.get())
