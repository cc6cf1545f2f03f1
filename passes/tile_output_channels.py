"""TileOutputChannels: split quantized conv2d / matmul into t_oc-wide output-channel tiles.

Run after RealizeQuantization. Each chain `op(x, Wq) [+ bq] -> requant` (op = int8 conv2d or
matmul with a constant weight) becomes, per tile of output channels [c0, c1),

    op(x[, input channels of the tile's groups], Wq[c0:c1]) [+ bq[c0:c1]] -> requant(params[c0:c1])

and the tiles are concatenated along the channel axis under the layer's `<name>_q` binding, so the
module computes exactly the same integers (tested against the untiled module and the oracle). This
is the data flow of an accelerator with t_oc output-channel lanes: each tile carries its own
weights, bias and requant parameters (first paper). Grouped/depthwise convs: a tile covers whole
groups (input channels sliced to match) or lies inside one group; other splits raise ValueError.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from tvmq.ir import (
    REQUANT_ATTR,
    RequantChain,
    bindings_of,
    const_value,
    emit_like,
    op_name,
    requant_call_like,
    shape_of,
)


def tile_bounds(channels: int, t_oc: int) -> list[tuple[int, int]]:
    """[(c0, c1), ...] covering range(channels) in t_oc-wide tiles (the last may be narrower)."""
    return [(c0, min(c0 + t_oc, channels)) for c0 in range(0, channels, t_oc)]


@relax.expr_functor.mutator
class _Tiler(relax.PyExprMutator):
    def __init__(self, mod, t_oc):
        super().__init__(mod)
        self.mod_, self.t_oc = mod, t_oc
        self.bindings = bindings_of(mod["main"])

    def visit_var_binding_(self, binding):
        value = binding.value
        chain = None
        if RequantChain.is_requant(value, self.mod_):
            chain = RequantChain(value, self.bindings, self.mod_)
        if chain is None or not chain.valid:
            new_value = self.visit_expr(value)
        else:
            new_value = self._tiled(chain, binding.var.name)
        emit_like(self, binding.var, new_value)

    def _tiled(self, chain: RequantChain, name: str) -> relax.Expr:
        is_conv = op_name(chain.op) == "relax.nn.conv2d"
        out_shape = shape_of(chain.op)
        axis = 1 if is_conv else len(out_shape) - 1
        channels = out_shape[axis]
        x = self.visit_expr(chain.op.args[0])
        attrs = chain.prim.attrs[REQUANT_ATTR]
        tiles = []
        for c0, c1 in tile_bounds(channels, self.t_oc):
            if is_conv:
                acc = self._conv_tile(chain, x, c0, c1, name)
            else:
                acc = relax.op.matmul(x, relax.const(chain.weight[:, c0:c1]), out_dtype="int32")
            acc = self.builder_.emit(acc)
            if chain.bias is not None:
                bias_axis = 1 if is_conv else chain.bias.ndim - 1  # (1, C, 1, 1) or (C,)
                bias = np.take(chain.bias, range(c0, c1), axis=bias_axis)
                acc = self.builder_.emit(relax.op.add(acc, relax.const(bias)))
            tiles.append(self.builder_.emit(self._requant(acc, chain, attrs, c0, c1, axis)))
        return tiles[0] if len(tiles) == 1 else relax.op.concat(tiles, axis=axis)

    def _conv_tile(self, chain, x, c0, c1, name):
        a = chain.op.attrs
        groups = int(a.groups)
        out_per_group = chain.weight.shape[0] // groups
        in_per_group = chain.weight.shape[1]
        g0, g1 = c0 // out_per_group, (c1 - 1) // out_per_group + 1
        whole_groups = c0 % out_per_group == 0 and c1 % out_per_group == 0
        if groups > 1 and not whole_groups and g1 - g0 > 1:
            raise ValueError(
                f"TileOutputChannels: layer {name!r} has {out_per_group} output channels per group;"
                f" tile [{c0}, {c1}) would split groups. Use t_oc a multiple or divisor of it.")
        tile_groups = g1 - g0 if whole_groups else 1
        if groups > 1:
            x = self.builder_.emit(relax.op.strided_slice(
                x, axes=[1], begin=[g0 * in_per_group], end=[g1 * in_per_group]))
        return relax.op.nn.conv2d(x, relax.const(chain.weight[c0:c1]), strides=a.strides,
                                  padding=a.padding, dilation=a.dilation, groups=tile_groups,
                                  out_dtype="int32")

    def _requant(self, acc, chain, attrs, c0, c1, axis):
        per_channel = int(attrs["axis"]) >= 0
        params = [relax.const(const_value(p)[c0:c1] if per_channel else const_value(p))
                  for p in chain.params]
        return requant_call_like(self.builder_, attrs, acc, params, c1 - c0, axis)


@tvm.transform.module_pass(opt_level=0, name="TileOutputChannels")
class TileOutputChannels:
    """Split every quantized conv2d/matmul + requant into `t_oc`-wide output-channel tiles."""

    def __init__(self, t_oc: int):
        if not isinstance(t_oc, int | np.integer) or t_oc <= 0:
            raise ValueError(f"TileOutputChannels: t_oc={t_oc!r}; use a positive integer.")
        self.t_oc = int(t_oc)

    def transform_module(self, mod, ctx):
        tiler = _Tiler(mod, self.t_oc)
        tiler.builder_.update_func(mod.get_global_var("main"), tiler.visit_expr(mod["main"]))
        return relax.transform.DeadCodeElimination(["main"])(tiler.builder_.get())
