"""LowerToAccel: run every realized int8 conv2d / matmul + requant on the C accelerator emulator.

Run after RealizeQuantization (host-side ops stay as they are). Each chain
`conv2d(x - zp, Wq) [+ bq] -> requant -> int8` becomes one `R.call_dps_packed` to a per-layer packed
function that calls `emulator.conv2d` with the layer's weights, bias and requant parameters; the
emulator tiles over t_oc output channels itself and returns cycle counters, which the layer's
`AccelRuntime` accumulates. A matmul (1, K) x (K, N) runs as a 1x1 conv with K input channels.
Chains whose output is not int8 stay on the host, and `AccelRuntime.host_layers` lists them.
"""

from __future__ import annotations

import itertools

import numpy as np
import tvm
from tvm import relax
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

COUNTERS = ("cycles", "compute_cycles", "dma_cycles", "requant_cycles", "macs", "dma_bytes",
            "tiles")
_IDS = itertools.count()


class AccelRuntime:
    """The emulator kernels of one compiled model and the counters they accumulate per layer."""

    def __init__(self, hw: AccelConfig):
        self.hw = hw
        self.prefix = f"tvmq.accel.m{next(_IDS)}"
        self.counters: dict[str, dict[str, int]] = {}
        self.host_layers: list[str] = []

    def reset(self) -> None:
        for c in self.counters.values():
            c.update(dict.fromkeys(COUNTERS, 0))

    def register(self, layer: str, kernel) -> str:
        """Register `kernel(x, y)` as the packed function of `layer`; returns its global name."""
        self.counters[layer] = dict.fromkeys(COUNTERS, 0)
        counters = self.counters[layer]

        def packed(x, y):
            out, cnt = kernel(np.from_dlpack(x))
            np.from_dlpack(y)[...] = out.reshape(np.from_dlpack(y).shape)
            for k in COUNTERS:
                counters[k] += int(cnt[k])

        name = f"{self.prefix}.{layer}"
        tvm.register_global_func(name, packed, override=True)
        return name


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
            layer = name.removesuffix("_q")
            source = _int8_input(chain.op.args[0], self.bindings) if chain.valid else None
            if source is not None and dtype_of(binding.var) == "int8":
                new_value = self._packed_call(chain, layer, *source, binding.var)
            elif chain.valid:
                self.runtime.host_layers.append(layer)
        if new_value is None:
            new_value = self.visit_expr(value)
        emit_like(self, binding.var, new_value)

    def _packed_call(self, chain, layer, x, zp, out_var):
        hw = self.runtime.hw
        rq, _, q, _ = golden_requant(chain.prim, [const_value(p) for p in chain.params])
        bias = None if chain.bias is None else chain.bias.reshape(-1).astype(np.int32)
        if op_name(chain.op) == "relax.nn.conv2d":
            a = chain.op.attrs
            w = chain.weight
            geometry = dict(strides=[int(s) for s in a.strides],
                            padding=[int(p) for p in a.padding],
                            dilation=[int(d) for d in a.dilation], groups=int(a.groups))

            def as_nchw(xn):
                return xn
        else:  # (1, K) x (K, N) as a 1x1 conv over K channels
            k, n = chain.weight.shape
            w = np.ascontiguousarray(chain.weight.T.reshape(n, k, 1, 1))
            geometry = dict(strides=[1, 1], padding=[0, 0, 0, 0], dilation=[1, 1], groups=1)

            def as_nchw(xn):
                return xn.reshape(1, k, 1, 1)

        def kernel(xn):
            return emulator.conv2d(hw, as_nchw(xn), zp, w, bias, requant=rq, out_zp=q["zero_point"],
                                   qmin=q["qmin"], qmax=q["qmax"], **geometry)

        name = self.runtime.register(layer, kernel)
        return relax.call_dps_packed(name, [self.visit_expr(x)],
                                     relax.TensorType(shape_of(out_var), "int8"))


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
