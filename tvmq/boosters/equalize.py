"""Cross-layer equalization and bias absorption (Nagel et al. 2019, "Data-Free Quantization
Through Weight Equalization and Bias Correction", DFQ), on an annotated module's composite
constants. Run after AnnotateQuantizable, before calibration (`QuantConfig(equalize=True)`,
`QuantConfig(bias_absorption=True)`).

**Chains.** A conv2d/matmul layer whose output reaches one other conv2d/matmul layer through
ops that act on each channel alone and commute with a positive per-channel scale (the first
layer's ReLU or no epilogue; `tvmq.relu` composites that are ReLUs; after a conv, max_pool2d,
avg_pool2d, a mean over (H, W), a flatten (1, C, H, W) -> (1, C*H*W) reshape), every tensor on
the way read by exactly one op (the model's output counts as a reader); the second layer reads
the channels where the first wrote them (a conv after a conv, a matmul after a matmul, a
flatten or a mean without keepdims). A depthwise or grouped second layer pairs its input
channel i with the first layer's output channel i.

**Equalization.** With r1[i] = max|W1 output channel i| and r2[i] = max|W2 input channel i|,
s[i] = sqrt(r1[i] * r2[i]) / r2[i]; then W1[i] /= s[i], b1[i] /= s[i], W2[:, i] *= s[i], so both
ranges become sqrt(r1[i] * r2[i]) and, since relu(z / s) = relu(z) / s for s > 0, the float
model computes the same function (up to float32 rounding). The chains are swept in graph order
until no scale moves by more than 1e-4 (or `iterations` sweeps): a layer in two chains moves
with both, as in the paper.

ReLU6 / Clip(0, 6) chains are skipped: clip(z / s, 0, 6) = clip(z, 0, 6 s) / s, so an exact
equalization needs a per-channel upper bound 6 s[i], and tvmq's clip is one scalar bound (folded
into the requant clamp). AIMET instead replaces ReLU6 by ReLU before equalizing, which changes
the float model (activations above 6 are no longer clipped); tvmq quantizes the model it was
given, so it keeps those chains as they are.

**Bias absorption** (DFQ section 4.2, data-driven): for a chain whose first layer ends in ReLU,
c[i] = max(0, min over the samples and positions of the pre-activation of channel i) = the
minimum of the ReLU output (the two agree: where the pre-activation is <= 0 the output is 0).
Then b1 -= c and b2 += W2 . c (for a conv, c summed over the kernel's taps and the group's input
channels; for a flattened input, c repeated over each channel's H*W columns): on the samples,
relu(z - c) = relu(z) - c, and the second layer gets c back through its bias. This is exact on
the samples only where the second layer's window never reads zero padding (a padded position
held 0 before and still holds 0, so W2 . c over-counts there). By default (`padded=False`) a
second layer with padding is skipped, so the float model is unchanged on every calibration
sample; `padded=True` absorbs there too and accepts DFQ's border error. Between the layers only
max_pool2d, mean and reshape are allowed (they commute with subtracting c); a chain whose second
layer has no bias is skipped (absorption would have to add a bias op to the composite).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax

from ..ir import count_uses, shape_of
from ..passes.annotate_quantizable import Composite, composite_kind
from .activations import float_values

LINEAR_KINDS = ("conv2d", "matmul")
ABSORBED_THROUGH = ("max_pool2d", "mean", "reshape")
TOLERANCE = 1e-4  # a sweep that moves no scale by more than this ends equalization


@dataclass(frozen=True)
class Chain:
    """Two conv2d/matmul layers (binding names) joined by `through` (binding names), whose
    first layer ends in `relu` (else no epilogue); the second layer reads each of the first's
    output channels as `repeat` consecutive input channels (H*W after a flatten, else 1)."""

    first: str
    second: str
    through: tuple[str, ...]
    relu: bool
    repeat: int


class _Linear:
    """A conv2d/matmul composite's weight and bias as NumPy arrays (edited in place), and how
    its channels are laid out."""

    def __init__(self, name: str, gv: relax.GlobalVar, comp: Composite):
        self.name, self.gv, self.comp = name, gv, comp
        self.is_conv = comp.root.op.name == "relax.nn.conv2d"
        self.weight = comp.root.args[1].value.numpy().astype(np.float64)
        add = comp.find("relax.add")
        self.bias_const = None if add is None or add is comp.root else add.args[1]
        self.bias = None if self.bias_const is None else \
            self.bias_const.value.numpy().astype(np.float64)
        self.groups = int(comp.root.attrs.groups) if self.is_conv else 1
        self.padded = self.is_conv and any(int(p) for p in comp.root.attrs.padding)
        self.activation = comp.activation()

    @property
    def out_channels(self) -> int:
        return self.weight.shape[0] if self.is_conv else self.weight.shape[1]

    def _grouped(self) -> np.ndarray:
        """Conv weight as (G, O/G, C/G, kh, kw): input channel g * C/G + c is [g, :, c]."""
        o, cg, kh, kw = self.weight.shape
        return self.weight.reshape(self.groups, o // self.groups, cg, kh, kw)

    def out_ranges(self) -> np.ndarray:
        """max|W| of each output channel."""
        if self.is_conv:
            return np.abs(self.weight).max(axis=(1, 2, 3))
        return np.abs(self.weight).max(axis=0)

    def in_ranges(self) -> np.ndarray:
        """max|W| of each input channel."""
        if self.is_conv:
            return np.abs(self._grouped()).max(axis=(1, 3, 4)).reshape(-1)
        return np.abs(self.weight).max(axis=1)

    def scale_outputs(self, s: np.ndarray) -> None:
        """Output channel i times s[i] (weight and bias)."""
        self.weight *= s.reshape(-1, 1, 1, 1) if self.is_conv else s.reshape(1, -1)
        if self.bias is not None:
            self.bias *= s.reshape(self.bias.shape)

    def scale_inputs(self, s: np.ndarray) -> None:
        """Input channel i times s[i]."""
        if self.is_conv:
            g, _, cg, _, _ = self._grouped().shape
            self.weight = (self._grouped() * s.reshape(g, 1, cg, 1, 1)).reshape(self.weight.shape)
        else:
            self.weight *= s.reshape(-1, 1)

    def input_sums(self, c: np.ndarray) -> np.ndarray:
        """What a constant input c[i] on input channel i adds to each output channel:
        sum over input channels (and a conv's taps) of W * c."""
        if self.is_conv:
            w = self._grouped().sum(axis=(3, 4))  # (G, O/G, C/G)
            return np.einsum("goc,gc->go", w, c.reshape(w.shape[0], w.shape[2])).reshape(-1)
        return c @ self.weight

    def add_to_bias(self, delta: np.ndarray) -> None:
        self.bias += delta.reshape(self.bias.shape)

    def replacements(self) -> list[tuple[relax.Expr, np.ndarray]]:
        out = [(self.comp.root.args[1], self.weight.astype(np.float32))]
        if self.bias is not None:
            out.append((self.bias_const, self.bias.astype(np.float32)))
        return out


def find_chains(annotated: tvm.IRModule) -> list[Chain]:
    """The equalizable conv2d/matmul pairs of `main`, in graph order (see the module doc)."""
    main = annotated["main"]
    uses = count_uses(main)
    bindings = [b for block in main.body.blocks for b in block.bindings]
    readers: dict[relax.Var, list[relax.Binding]] = {}
    for b in bindings:
        for arg in _args(b.value):
            readers.setdefault(arg, []).append(b)
    layers = _linear_layers(annotated)
    chains = []
    for b in bindings:
        first = layers.get(b.var.name)
        if first is None or first.activation not in ((0.0, np.inf), (-np.inf, np.inf)):
            continue
        chain = _follow(annotated, b.var, uses, readers, layers, first)
        if chain is not None:
            chains.append(chain)
    return chains


def equalize(annotated: tvm.IRModule, iterations: int = 20) -> tuple[tvm.IRModule, list[Chain]]:
    """Cross-layer equalization of every chain (module doc); returns the module with new
    weights and biases, and the chains. The float function is unchanged up to rounding."""
    chains = find_chains(annotated)
    layers = _linear_layers(annotated)
    for _ in range(iterations):
        moved = 0.0
        for chain in chains:
            first, second = layers[chain.first], layers[chain.second]
            r1 = first.out_ranges()
            r2 = second.in_ranges().reshape(-1, chain.repeat).max(axis=1)
            ok = (r1 > 0) & (r2 > 0)
            s = np.ones_like(r1)
            s[ok] = np.sqrt(r1[ok] * r2[ok]) / r2[ok]
            first.scale_outputs(1.0 / s)
            second.scale_inputs(np.repeat(s, chain.repeat))
            moved = max(moved, float(np.abs(np.log(s)).max(initial=0.0)))
        if moved <= TOLERANCE:
            break
    return _with_constants(annotated, layers.values()), chains


def absorb_biases(annotated: tvm.IRModule, chains: list[Chain], samples: Iterable[np.ndarray],
                  padded: bool = False) -> tuple[tvm.IRModule, list[Chain]]:
    """High-bias absorption over the ReLU chains (module doc), with c from the first layers'
    float outputs on `samples`; returns the module and the chains absorbed."""
    layers = _linear_layers(annotated)
    kinds = {b.var.name: composite_kind(annotated, b.value)
             for block in annotated["main"].body.blocks for b in block.bindings}
    chosen = [c for c in chains
              if c.relu and all(kinds[t] in ABSORBED_THROUGH for t in c.through)
              and layers[c.first].bias is not None and layers[c.second].bias is not None
              and (padded or not layers[c.second].padded)]
    if not chosen:
        return annotated, []
    names = list(dict.fromkeys(c.first for c in chosen))
    values = float_values(annotated, names, samples)
    for chain in chosen:
        first, second = layers[chain.first], layers[chain.second]
        axis = 1 if first.is_conv else -1
        out = np.stack(values[chain.first]).astype(np.float64)
        out = np.moveaxis(out, axis if axis < 0 else axis + 1, -1).reshape(-1, first.out_channels)
        c = np.maximum(out.min(axis=0), 0.0)
        first.add_to_bias(-c)
        second.add_to_bias(second.input_sums(np.repeat(c, chain.repeat)))
    return _with_constants(annotated, layers.values()), chosen


def _args(value: relax.Expr) -> list[relax.Var]:
    """The variables a binding's value reads (call arguments, tuple fields)."""
    if isinstance(value, relax.Call):
        items = [f for a in value.args
                 for f in (a.fields if isinstance(a, relax.Tuple) else [a])]
    elif isinstance(value, relax.Tuple):
        items = list(value.fields)
    elif isinstance(value, relax.TupleGetItem):
        items = [value.tuple_value]
    else:
        items = [value]
    return [v for v in items if isinstance(v, relax.Var)]


def _linear_layers(annotated: tvm.IRModule) -> dict[str, _Linear]:
    """Binding name -> _Linear of every conv2d/matmul composite called once in `main`."""
    calls: dict[relax.GlobalVar, list[str]] = {}
    for block in annotated["main"].body.blocks:
        for b in block.bindings:
            if composite_kind(annotated, b.value) in LINEAR_KINDS:
                calls.setdefault(b.value.op, []).append(b.var.name)
    return {names[0]: _Linear(names[0], gv, Composite(annotated[gv]))
            for gv, names in calls.items() if len(names) == 1}


def _follow(annotated, var, uses, readers, layers, first: _Linear) -> Chain | None:
    """The chain from layer `var` to the next conv2d/matmul, or None (module doc). The first
    layer's channels are axis 1 of an NCHW tensor (a conv's output) until a flatten or a
    spatial mean without keepdims puts them last (a matmul's output, its input's K)."""
    through, repeat, nchw = [], 1, first.is_conv
    while True:
        reader = readers.get(var, [])
        if uses.get(var, 0) != 1 or len(reader) != 1:
            return None
        binding = reader[0]
        name, value = binding.var.name, binding.value
        kind = composite_kind(annotated, value)
        if kind in LINEAR_KINDS:
            second = layers.get(name)
            if second is None or len(value.args) != 1 or second.is_conv != nchw:
                return None
            if second.in_ranges().size != first.out_channels * repeat:
                return None
            return Chain(first.name, name, tuple(through),
                         first.activation == (0.0, np.inf), repeat)
        if kind == "relu":
            if Composite(annotated[value.op]).activation() != (0.0, np.inf):
                return None
        elif kind in ("max_pool2d", "avg_pool2d"):
            if not nchw:
                return None
        elif kind == "mean":
            spatial = _spatial_mean(Composite(annotated[value.op]).root)
            if not nchw or spatial is None:
                return None
            nchw = spatial
        elif kind == "reshape":
            repeat = _flatten_repeat(value.args[0], binding.var) if nchw else None
            if repeat is None:
                return None
            nchw = False
        else:
            return None
        through.append(name)
        var = binding.var


def _spatial_mean(mean: relax.Call) -> bool | None:
    """For a mean of an NCHW tensor over (H, W) only: whether the result is still NCHW
    (keepdims); None for any other mean."""
    rank = len(shape_of(mean.args[0]))
    axes = mean.attrs.axis
    if rank != 4 or axes is None or {int(a) % rank for a in axes} != {2, 3}:
        return None
    return bool(mean.attrs.keepdims)


def _flatten_repeat(src: relax.Expr, dst: relax.Var) -> int | None:
    """H*W for a (1, C, H, W) -> (1, C*H*W) reshape, else None."""
    shape, out = shape_of(src), shape_of(dst)
    if len(shape) != 4 or shape[0] != 1 or out != (1, int(np.prod(shape[1:]))):
        return None
    return shape[2] * shape[3]


def _with_constants(annotated: tvm.IRModule, layers: Iterable[_Linear]) -> tvm.IRModule:
    """A copy of `annotated` whose composites hold the layers' current weights and biases."""
    mod = tvm.IRModule(dict(annotated.functions_items()), attrs=annotated.attrs)
    for layer in layers:
        mod[layer.gv] = _ReplaceConstants(layer.replacements()).visit_expr(annotated[layer.gv])
    return mod


@relax.expr_functor.mutator
class _ReplaceConstants(relax.PyExprMutator):
    """Each constant of `replacements` ((old constant, new value) pairs) by its new value."""

    def __init__(self, replacements: list[tuple[relax.Expr, np.ndarray]]):
        super().__init__()
        self.replacements = replacements

    def visit_generic_const_(self, const):
        new = next((v for old, v in self.replacements if const.same_as(old)), None)
        return const if new is None else relax.const(new)
