"""LowerToAccel: run every realized int8 conv2d / matmul + requant on the C accelerator emulator.

Run after RealizeQuantization (host-side ops stay as they are). Each chain
`conv2d(x - zp, Wq) [+ bq] -> requant -> int8` becomes one `R.call_tir` to a per-layer PrimFunc
whose output-channel tile loop calls the emulator (`T.call_extern("accel_conv2d_tile", ...)`, one
call per t_oc-wide tile). The layer's weights, bias, requant register file and descriptor
(`emulator.conv2d_descriptor`) are constants of the call; the emulator adds each tile's cycle
counters into the layer's slot of its counter bank, which `AccelRuntime.counters` reads. A matmul
(1, K) x (K, N) runs as a 1x1 conv with K input channels. No Python runs during inference.

A chain the accelerator cannot run stays on the host and `AccelRuntime.host_layers` says why:
its output is not int8, its input is not int8 - zp, or the emulator's checker refuses it (e.g. a
weight tile larger than the weight buffer).
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.script import tirx as T
from tvmq.passes._requant_kernel import golden_requant
from tvmq.passes._util import (
    RequantChain,
    bindings_of,
    const_value,
    dtype_of,
    emit_like,
    op_name,
    shape_of,
)

from . import emulator
from .config import AccelConfig


class AccelRuntime:
    """The accelerator of one compiled model: its config, each layer's counter slot, and the
    layers left on the host (name -> reason)."""

    def __init__(self, hw: AccelConfig):
        self.hw = hw
        self.slots: dict[str, int] = {}
        self.host_layers: dict[str, str] = {}

    @property
    def counters(self) -> dict[str, dict[str, int]]:
        """Per layer: cycles, compute/dma/requant cycles, MACs, DMA bytes and tiles, summed over
        every inference since the last `reset()`."""
        return {layer: emulator.read_counters(slot) for layer, slot in self.slots.items()}

    def reset(self) -> None:
        for slot in self.slots.values():
            emulator.clear_counters(slot)

    def one_inference(self, module, x: np.ndarray) -> dict[str, dict[str, int]]:
        """Per-layer counters of `module.run(x)` alone (counters are cleared before and after;
        they depend on shapes, not on values)."""
        self.reset()
        module.run(x)
        counters = self.counters
        self.reset()
        return counters


def tile_loop(x_shape, w_shape, rq_rows: int, y_shape, t_oc: int) -> tvm.tirx.PrimFunc:
    """PrimFunc(x, w, bias, rq, desc, y): for each of ceil(O / t_oc) output-channel tiles, call
    `accel_conv2d_tile(desc, x, w, bias, rq, y, t * t_oc)` and assert it returned 0."""
    o = int(w_shape[0])
    n_tiles = -(-o // t_oc)
    n_desc = len(emulator.DESC_FIELDS)

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
    def __init__(self, mod, runtime: AccelRuntime):
        super().__init__(mod)
        self.mod_, self.runtime = mod, runtime
        self.bindings = bindings_of(mod["main"])

    def visit_var_binding_(self, binding):
        value, name = binding.value, binding.var.name
        new_value = None
        if RequantChain.is_requant(value, self.mod_):
            chain = RequantChain(value, self.bindings, self.mod_)
            if chain.valid:
                new_value = self._lower(chain, name.removesuffix("_q"), binding.var)
        if new_value is None:
            new_value = self.visit_expr(value)
        emit_like(self, binding.var, new_value)

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
        if op_name(chain.op) == "relax.nn.conv2d":
            a = chain.op.attrs
            w = chain.weight
            geometry = dict(strides=[int(s) for s in a.strides],
                            padding=[int(p) for p in a.padding],
                            dilation=[int(d) for d in a.dilation], groups=int(a.groups))
            x_nchw = shape_of(x)
        else:  # (1, K) x (K, N) as a 1x1 conv over K channels
            k, n = chain.weight.shape
            w = np.ascontiguousarray(chain.weight.T.reshape(n, k, 1, 1))
            geometry = dict(strides=[1, 1], padding=[0, 0, 0, 0], dilation=[1, 1], groups=1)
            x_nchw = (1, k, 1, 1)
        o = w.shape[0]
        bias = np.zeros(o, np.int32) if chain.bias is None else chain.bias.reshape(-1)
        slot = emulator.alloc_counters(1)
        try:
            desc, regs = emulator.conv2d_descriptor(
                self.runtime.hw, x_nchw, w.shape, zp, requant=rq, out_zp=q["zero_point"],
                qmin=q["qmin"], qmax=q["qmax"], counter_slot=slot, **geometry)
        except ValueError as err:
            self.runtime.host_layers[layer] = str(err)
            return None
        self.runtime.slots[layer] = slot
        prim = tile_loop(shape_of(x), w.shape, regs.shape[0], shape_of(out_var),
                         self.runtime.hw.t_oc)
        gv = self.builder_.add_func(prim, f"accel_{layer}")
        args = [self.visit_expr(x), *(relax.const(v) for v in (
            w.astype(np.int8), bias.astype(np.int32), regs, desc))]
        return relax.call_tir(gv, args, relax.TensorType(shape_of(out_var), "int8"))


@tvm.transform.module_pass(opt_level=0, name="LowerToAccel")
class LowerToAccel:
    """Replace realized int8 conv2d/matmul + requant chains by calls into the C emulator."""

    def __init__(self, runtime: AccelRuntime):
        self.runtime = runtime

    def transform_module(self, mod, ctx):
        emulator.load()  # build the emulator now, so a missing C compiler fails the compile
        lowerer = _Lowerer(mod, self.runtime)
        lowerer.builder_.update_func(mod.get_global_var("main"), lowerer.visit_expr(mod["main"]))
        return relax.transform.DeadCodeElimination(["main"])(lowerer.builder_.get())
