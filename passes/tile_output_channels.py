"""TileOutputChannels: split quantized conv2d / matmul into t_oc-wide output-channel tiles.

Run after RealizeQuantization; the accel target runs it inside LowerToAccel, which reads each
tiled layer back with `TiledLayer.read`. Each chain `op(x, Wq) [+ bq] -> requant` (op = int8
conv2d or matmul with a constant weight) becomes, per tile of output channels [c0, c1),

    op(x[, input channels of the tile's groups], Wq[c0:c1]) [+ bq[c0:c1]] -> requant(params[c0:c1])

and the tiles are concatenated along the channel axis under the layer's `<name>_q` binding, so the
module computes exactly the same integers (tested against the untiled module and the oracle). This
is the data flow of an accelerator with t_oc output-channel lanes: each tile carries its own
weights, bias and requant parameters (first paper). Grouped/depthwise convs: a tile covering whole
groups is one grouped conv on those groups' input channels; a tile inside one group is a conv on
that group's input channels; a tile that splits groups is one conv per group piece, the pieces'
accumulators concatenated before the tile's bias and requant.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax

from tvmq.ir import (
    LINEAR_OPS,
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
    def __init__(self, mod, t_oc, layers):
        super().__init__(mod)
        self.mod_, self.t_oc, self.layers = mod, t_oc, layers
        self.bindings = bindings_of(mod["main"])

    def visit_var_binding_(self, binding):
        value = binding.value
        chain = None
        if RequantChain.is_requant(value, self.mod_) and (
                self.layers is None or binding.var.name.removesuffix("_q") in self.layers):
            chain = RequantChain(value, self.bindings, self.mod_)
        if chain is None or not chain.valid:
            new_value = self.visit_expr(value)
        else:
            new_value = self._tiled(chain)
        emit_like(self, binding.var, new_value)

    def _tiled(self, chain: RequantChain) -> relax.Expr:
        is_conv = op_name(chain.op) == "relax.nn.conv2d"
        out_shape = shape_of(chain.op)
        axis = 1 if is_conv else len(out_shape) - 1
        channels = out_shape[axis]
        x = self.visit_expr(chain.op.args[0])
        attrs = chain.prim.attrs[REQUANT_ATTR]
        tiles = []
        for c0, c1 in tile_bounds(channels, self.t_oc):
            if is_conv:
                acc = self._conv_tile(chain, x, c0, c1)
            else:
                acc = relax.op.matmul(x, relax.const(chain.weight[:, c0:c1]), out_dtype="int32")
            acc = self.builder_.emit(acc)
            if chain.bias is not None:
                bias_axis = 1 if is_conv else chain.bias.ndim - 1  # (1, C, 1, 1) or (C,)
                bias = np.take(chain.bias, range(c0, c1), axis=bias_axis)
                acc = self.builder_.emit(relax.op.add(acc, relax.const(bias)))
            tiles.append(self._requant(acc, chain, attrs, c0, c1, axis))
        if len(tiles) == 1:  # bound to the layer's own `<name>_q`, as before tiling
            return tiles[0]
        return relax.op.concat([self.builder_.emit(t) for t in tiles], axis=axis)

    def _conv_tile(self, chain, x, c0, c1):
        """The tile's int32 accumulator: one conv, or one per group piece concatenated."""
        groups = int(chain.op.attrs.groups)
        out_per_group = chain.weight.shape[0] // groups
        g0, g1 = c0 // out_per_group, (c1 - 1) // out_per_group + 1
        whole_groups = c0 % out_per_group == 0 and c1 % out_per_group == 0
        if groups == 1 or whole_groups or g1 - g0 == 1:
            return self._conv(chain, x, c0, c1, g0, g1, g1 - g0 if whole_groups else 1)
        pieces = [self.builder_.emit(self._conv(
            chain, x, max(c0, g * out_per_group), min(c1, (g + 1) * out_per_group), g, g + 1, 1))
            for g in range(g0, g1)]
        return relax.op.concat(pieces, axis=1)

    def _conv(self, chain, x, c0, c1, g0, g1, tile_groups):
        """conv2d of output channels [c0, c1) on the input channels of groups [g0, g1)."""
        a = chain.op.attrs
        if int(a.groups) > 1:
            in_per_group = chain.weight.shape[1]
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


@tvm.transform.module_pass(opt_level=0, name="tvmq.TileOutputChannels")
class TileOutputChannels:
    """Split every quantized conv2d/matmul + requant (or only the `layers` named, each the name
    of its `<name>_q` binding without `_q`) into `t_oc`-wide output-channel tiles."""

    def __init__(self, t_oc: int, layers=None):
        if not isinstance(t_oc, int | np.integer) or t_oc <= 0:
            raise ValueError(f"TileOutputChannels: t_oc={t_oc!r}; use a positive integer.")
        self.t_oc = int(t_oc)
        self.layers = None if layers is None else frozenset(layers)

    def transform_module(self, mod, ctx):
        tiler = _Tiler(mod, self.t_oc, self.layers)
        tiler.builder_.update_func(mod.get_global_var("main"), tiler.visit_expr(mod["main"]))
        return relax.transform.DeadCodeElimination(["main"])(tiler.builder_.get())


@dataclass(frozen=True)
class TiledLayer:
    """One layer as TileOutputChannels left it, its tiles' constants laid end to end.

    `x` is the layer's (unsliced) input, `op` its LINEAR_OPS name, `conv_attrs` a tile conv's
    attributes (strides, padding, dilation; None for matmul), `groups` the layer's groups
    (C / I), `weight` OIHW or (K, N), `bias` as the tiles add it (None without), `params` the
    requant parameters over all channels (per-tensor ones once), `requant` the first tile's
    requant kernel (its `tvmq.requant` attribute holds the settings every tile shares) and
    `bounds` the tiles' channel ranges.
    """

    x: relax.Expr
    op: str
    conv_attrs: object
    groups: int
    weight: np.ndarray
    bias: np.ndarray | None
    params: list[np.ndarray]
    requant: tvm.tirx.PrimFunc
    bounds: list[tuple[int, int]]

    @staticmethod
    def read(value, bindings, mod) -> TiledLayer | None:
        """The layer whose `<name>_q` binding has `value` (the concat of its tiles' requant
        calls, or the one tile's), or None if `value` is not a tiled layer."""
        tile_values = [value]
        if op_name(value) == "relax.concat":
            tile_values = [bindings.get(f) for f in _fields(value.args[0], bindings)]
        if not all(RequantChain.is_requant(v, mod) for v in tile_values):
            return None
        tiles = [_Tile.read(v, bindings, mod) for v in tile_values]
        if any(t is None for t in tiles) or len({t.op for t in tiles}) != 1:
            return None
        first, out_axis = tiles[0], 0 if tiles[0].op == "relax.nn.conv2d" else 1
        weight = np.concatenate([t.weight for t in tiles], axis=out_axis)
        bias = None if first.bias is None else np.concatenate(
            [t.bias for t in tiles], axis=1 if out_axis == 0 else first.bias.ndim - 1)
        per_channel = int(first.requant.attrs[REQUANT_ATTR]["axis"]) >= 0
        params = [np.concatenate(ps) if per_channel else ps[0]
                  for ps in zip(*(t.params for t in tiles), strict=True)]
        ends = np.cumsum([t.weight.shape[out_axis] for t in tiles])
        bounds = [(int(e - t.weight.shape[out_axis]), int(e)) for t, e in zip(tiles, ends)]
        groups = shape_of(first.x)[1] // weight.shape[1] if out_axis == 0 else 1
        return TiledLayer(first.x, first.op, first.conv_attrs, groups, weight, bias, params,
                          first.requant, bounds)


def _fields(expr, bindings) -> list[relax.Expr]:
    """The fields of a tuple expression (also through the variable it is bound to)."""
    return list(bindings.get(expr, expr).fields)


@dataclass(frozen=True)
class _Tile:
    """One tile: `op(x or its slice, weight) [+ bias] -> requant(params)`."""

    op: str
    x: relax.Expr
    conv_attrs: object
    weight: np.ndarray
    bias: np.ndarray | None
    params: list[np.ndarray]
    requant: tvm.tirx.PrimFunc

    @staticmethod
    def read(requant_call, bindings, mod) -> _Tile | None:
        chain = RequantChain(requant_call, bindings, mod)
        pieces = [chain.op]
        if op_name(chain.op) == "relax.concat":  # a tile that splits groups: one conv per piece
            pieces = [bindings.get(p) for p in _fields(chain.op.args[0], bindings)]
        ops = {op_name(p) for p in pieces}
        if len(ops) != 1 or not ops <= set(LINEAR_OPS):
            return None
        weights = [const_value(p.args[1]) for p in pieces]
        if any(w is None for w in weights):
            return None
        x = pieces[0].args[0]
        if op_name(bindings.get(x)) == "relax.strided_slice":  # a grouped conv's channels
            x = bindings.get(x).args[0]
        op = ops.pop()
        return _Tile(op, x, pieces[0].attrs if op == "relax.nn.conv2d" else None,
                     np.concatenate(weights), chain.bias, [const_value(p) for p in chain.params],
                     chain.prim)
