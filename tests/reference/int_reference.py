"""An integer reference of a quantized model, computed from the float ONNX model and its qparams.

Independent of the compiler: it reads the ONNX file (weights through onnx.numpy_helper), the
calibrated activation qparams (`CompiledModel.act_qparams`) and the config's requant mode, and
evaluates the quantized model with plain NumPy integer arithmetic and the golden functions of
`tvmq.numerics` (quantize / dequantize, `quantize_weight`, `quantize_bias`, `Requant`,
`requantize`). Nothing comes from passes/, tvmq.oracle, the compiler's internals or targets/,
so `reference == oracle` checks that the realized graph means what quantization means.

What each quantized layer is in integers (x: input codes with scale sx, zero point zx; y:
output codes with sy, zy; [lo, hi]: the fused Relu/Clip range, clamp = clip(y, q(lo), q(hi))
within [qmin, qmax]; every real multiplier is one float64 division of exact products, i.e. the
correctly rounded ratio):

    conv2d / matmul  acc = sum (x - zx) * Wq + bq        Wq = quantize_weight(W) (per channel
                     y = requant(acc, sx*sw[c]/sy) + zy   or per tensor), bq = quantize_bias(b)
    add              gemmlowp/TFLite: m2 = 2 max(sa, sb), a' = requant((a - za) * 2^20, sa/m2),
                     b' likewise, y = requant(a' + b', m2 / (2^20 sy)) + zy
    avg_pool2d       acc = window sum of (x - zx) (padding is real 0); requant by sx/(sy*kh*kw)
    mean             acc = sum of (x - zx) over the axes; requant by sx/(sy*count)
    concat           every input requantized to the output's qparams: requant(x - zx, sx/sy) + zy
    relu / clip      clip(x, q(lo), q(hi)), qparams of x
    max_pool2d, reshape, transpose: the op on the codes, qparams of x (monotone / a permutation)

A per-channel activation (QParams with axis 1; tvmq gives them to depthwise convs' inputs):
channel c has its own scale s[c] and zero point z[c], so a conv writing it requantizes channel
c by sx*sw[c]/sy[c], and a depthwise conv reading it (output channel o reads input channel
o // multiplier) subtracts z[c] and uses sx[c].

`requant` is `tvmq.numerics.Requant.from_scale(real, requant, rounding)`; a layer whose
qparams are not its own (relu, max_pool2d, reshape, transpose) carries its input's qparams
forward. The model input is `quantize(x, act_qparams[input])`, each output is dequantized
with the qparams it carries.

Names: tvmq calls each quantized layer `<kind>_<i>` (`cm.report().layers`: `.name`, `.op`);
`act_qparams` is keyed by those names and by the model input's name. The layers' inputs are
the arguments of the `tvmq.<kind>` composite calls in `cm.float_mod["main"]` (`tvmq_layers`:
names only, no semantics read). The reference groups the ONNX nodes into layers (a Conv takes
a following BatchNormalization; Conv, Gemm, MatMul + constant Add and Add take a following
Relu/Clip when they are its only reader) and matches them to tvmq's by structure: starting
from the input, a reference layer whose inputs are matched takes the first unmatched tvmq
layer of the same kind reading the same tensors in the same order. (Graph order alone is not
enough: the importer may order independent branches differently from the ONNX file.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper
from tvm import relax

from tvmq.numerics import QParams, Requant, dequantize, quantize, requantize
from tvmq.numerics.weights import quantize_bias, quantize_weight

ADD_LEFT_SHIFT = 20  # TFLite's left shift of the inputs of a quantized add
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
FUSED_ACTIVATIONS = ("Relu", "Clip")
RESHAPES = ("Reshape", "Flatten")


@dataclass
class Layer:
    """One quantized layer read from the ONNX graph: tvmq kind, activation inputs, output,
    float parameters (weight, bias), the fused float range, and the ONNX node's attributes."""

    kind: str
    inputs: list[str]
    output: str
    attrs: dict = field(default_factory=dict)
    weight: np.ndarray | None = None  # conv: OIHW; matmul: (K, N)
    bias: np.ndarray | None = None
    lo: float = -math.inf
    hi: float = math.inf


def _attrs(node) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


class _Graph:
    """The ONNX graph: nodes, initializers, and how many nodes read each tensor."""

    def __init__(self, model: onnx.ModelProto):
        self.nodes = list(model.graph.node)
        self.init = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        self.readers: dict[str, list[int]] = {}
        for i, node in enumerate(self.nodes):
            for name in node.input:
                self.readers.setdefault(name, []).append(i)
        self.outputs = [o.name for o in model.graph.output]

    def only_reader(self, tensor: str, ops: tuple[str, ...]) -> int | None:
        """The index of the one node reading `tensor` if its op is in `ops` and `tensor` is not
        a graph output, else None."""
        readers = self.readers.get(tensor, [])
        if len(readers) != 1 or tensor in self.outputs:
            return None
        return readers[0] if self.nodes[readers[0]].op_type in ops else None

    def clip_range(self, node) -> tuple[float, float]:
        if node.op_type == "Relu":
            return 0.0, math.inf
        a = _attrs(node)
        lo, hi = a.get("min", -math.inf), a.get("max", math.inf)
        if len(node.input) > 1 and node.input[1]:
            lo = float(self.init[node.input[1]])
        if len(node.input) > 2 and node.input[2]:
            hi = float(self.init[node.input[2]])
        return float(lo), float(hi)


def _fold_batch_norm(g: _Graph, node, w: np.ndarray, b: np.ndarray | None):
    """Conv weight and bias with BatchNormalization folded in: W * gamma / sqrt(var + eps),
    (b - mean) * gamma / sqrt(var + eps) + beta, in float64 with sqrt(var + eps) in float32 as
    ONNX evaluates it, cast to float32 once."""
    gamma, beta, mean = (g.init[n].astype(np.float64) for n in node.input[1:4])
    eps = np.float32(_attrs(node).get("epsilon", 1e-5))
    std = np.sqrt(g.init[node.input[4]].astype(np.float32) + eps).astype(np.float64)
    w64 = w.astype(np.float64) / std.reshape(-1, 1, 1, 1) * gamma.reshape(-1, 1, 1, 1)
    b64 = np.zeros(len(gamma)) if b is None else b.astype(np.float64)
    b64 = (b64 - mean) / std * gamma + beta
    return w64.astype(np.float32), b64.astype(np.float32)


def read_layers(model: onnx.ModelProto) -> list[Layer]:
    """The quantized layers of an ONNX model, in node order (see the module docstring)."""
    g = _Graph(model)
    layers: list[Layer] = []
    done: set[int] = set()
    for i, node in enumerate(g.nodes):
        if i in done:
            continue
        op, a = node.op_type, _attrs(node)
        acts = [n for n in node.input if n and n not in g.init]
        layer = Layer("", acts, node.output[0], a)
        last = node
        if op == "Conv":
            layer.kind = "conv2d"
            layer.weight = g.init[node.input[1]]
            layer.bias = g.init[node.input[2]] if len(node.input) > 2 else None
            j = g.only_reader(last.output[0], ("BatchNormalization",))
            if j is not None:
                last = g.nodes[j]
                done.add(j)
                layer.weight, layer.bias = _fold_batch_norm(g, last, layer.weight, layer.bias)
        elif op == "Gemm":
            if a.get("transA", 0) or a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0:
                raise NotImplementedError(f"reference: Gemm with attributes {a}")
            w = g.init[node.input[1]]
            layer.kind, layer.weight = "matmul", w.T if a.get("transB", 0) else w
            layer.bias = g.init[node.input[2]] if len(node.input) > 2 else None
        elif op == "MatMul" and node.input[1] in g.init:
            layer.kind, layer.weight = "matmul", g.init[node.input[1]]
            j = g.only_reader(last.output[0], ("Add",))
            if j is not None and any(n in g.init for n in g.nodes[j].input):
                last = g.nodes[j]
                done.add(j)
                layer.bias = next(g.init[n] for n in last.input if n in g.init)
        elif op == "Add" and len(acts) == 2:
            layer.kind = "add"
        elif op in FUSED_ACTIVATIONS:
            layer.kind = "relu"
            layer.lo, layer.hi = g.clip_range(node)
        else:
            layer.kind = {"MaxPool": "max_pool2d", "AveragePool": "avg_pool2d",
                          "GlobalAveragePool": "mean", "ReduceMean": "mean", "Concat": "concat",
                          "Reshape": "reshape", "Flatten": "reshape",
                          "Transpose": "permute_dims"}.get(op, "")
            if not layer.kind:
                raise NotImplementedError(f"reference: no integer form for ONNX op {op}")
        if layer.kind in ("conv2d", "matmul", "add"):
            j = g.only_reader(last.output[0], FUSED_ACTIVATIONS)
            if j is not None:
                last = g.nodes[j]
                done.add(j)
                layer.lo, layer.hi = g.clip_range(last)
        if op == "Reshape":
            layer.attrs["shape"] = g.init[node.input[1]]
        layer.output = last.output[0]
        layers.append(layer)
    return layers


# -- integer ops ---------------------------------------------------------------------------------

def _pad(x: np.ndarray, pads, value) -> np.ndarray:
    """NCHW padding by ONNX pads (top, left, bottom, right)."""
    top, left, bottom, right = pads
    return np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)), constant_values=value)


def _windows(x: np.ndarray, kernel, strides, dilations) -> np.ndarray:
    """(N, C, OH, OW, KH, KW) windows of a padded NCHW array."""
    kh, kw = kernel
    (sh, sw), (dh, dw) = strides, dilations
    span = ((kh - 1) * dh + 1, (kw - 1) * dw + 1)
    win = np.lib.stride_tricks.sliding_window_view(x, span, axis=(2, 3))
    return win[:, :, ::sh, ::sw, ::dh, ::dw]


def conv2d_int(x: np.ndarray, w: np.ndarray, a: dict) -> np.ndarray:
    """Grouped NCHW/OIHW convolution of integers, exact in int64 (im2col and a matmul)."""
    o, cg, kh, kw = w.shape
    groups = a.get("group", 1)
    win = _windows(_pad(x, a.get("pads", [0] * 4), 0), (kh, kw), a.get("strides", [1, 1]),
                   a.get("dilations", [1, 1]))
    n, _, oh, ow = win.shape[:4]
    cols = win.reshape(n, groups, cg, oh, ow, kh, kw).transpose(0, 1, 3, 4, 2, 5, 6)
    cols = cols.reshape(n, groups, oh * ow, cg * kh * kw)
    wg = w.reshape(groups, o // groups, cg * kh * kw).astype(np.int64)
    y = np.matmul(cols.astype(np.int64), wg.transpose(0, 2, 1))  # (n, groups, oh*ow, o/groups)
    return y.transpose(0, 1, 3, 2).reshape(n, o, oh, ow)


def _activation_clamp(qp: QParams, lo: float, hi: float) -> tuple[int, int]:
    """The output codes a fused Relu/Clip keeps: [q(lo), q(hi)] within [qmin, qmax]."""
    qlo = qp.qmin if lo == -math.inf else int(quantize(np.float32(lo), qp))
    qhi = qp.qmax if hi == math.inf else int(quantize(np.float32(hi), qp))
    return qlo, qhi


def tvmq_layers(annotated) -> list[tuple[str, str, tuple[str, ...]]]:
    """(name, kind, input names) of every `tvmq.<kind>` composite call of `main`, in order."""
    layers = []
    for block in annotated["main"].body.blocks:
        for binding in block.bindings:
            call = binding.value
            if not (isinstance(call, relax.Call) and isinstance(call.op, relax.GlobalVar)):
                continue
            composite = str((annotated[call.op].attrs or {}).get("Composite", ""))
            if composite.startswith("tvmq."):
                layers.append((binding.var.name, composite.removeprefix("tvmq."),
                               tuple(a.name for a in call.args)))
    return layers


def match_layers(ours: list[Layer], theirs, onnx_input: str, tvmq_input: str) -> dict[str, str]:
    """ONNX output tensor of each reference layer -> tvmq layer name (see the module
    docstring); raises ValueError when a layer finds no partner."""
    names = {onnx_input: tvmq_input}
    free = list(theirs)
    for layer in ours:  # ONNX node order is topological
        inputs = tuple(names.get(n) for n in layer.inputs)
        partner = next((t for t in free if t[1] == layer.kind and tuple(t[2]) == inputs), None)
        if partner is None:
            raise ValueError(f"reference layer {layer.kind} {layer.inputs} -> {layer.output} has "
                             f"no tvmq layer reading {inputs}; unmatched: {free}")
        free.remove(partner)
        names[layer.output] = partner[0]
    if free:
        raise ValueError(f"tvmq layers without a reference layer: {free}")
    return names


class IntReference:
    """The quantized model evaluated from the float ONNX model and the calibrated qparams.

    Parameters
    ----------
    model : onnx.ModelProto or path
    act_qparams : dict[str, QParams]
        `CompiledModel.act_qparams`: by tvmq layer name and by the input's name.
    layers : list of (name, kind, input names)
        tvmq's layers: `tvmq_layers(cm.float_mod)`.
    input_name : str
    requant, rounding, per_channel_weights
        The QuantConfig's fields of the same names (rounding is ignored for fp32).
    """

    def __init__(self, model, act_qparams, layers, input_name, *, requant, rounding,
                 per_channel_weights):
        model = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))
        self.layers = read_layers(model)
        self.input = (model.graph.input[0].name, input_name)
        self.names = match_layers(self.layers, layers, *self.input)
        self.qparams = act_qparams
        self.outputs = [o.name for o in model.graph.output]
        self.requant = requant
        self.rounding = None if requant == "fp32" else rounding
        self.per_channel = per_channel_weights

    @classmethod
    def of(cls, cm, model) -> IntReference:
        """The reference of a CompiledModel `cm` compiled from the ONNX `model`."""
        c = cm.config
        layers = tvmq_layers(cm.float_mod)
        reported = [(r.name, r.op) for r in cm.report().layers]
        if [(name, kind) for name, kind, _ in layers] != reported:
            raise ValueError(f"composites {layers} are not the report's layers {reported}")
        return cls(model, cm.act_qparams, layers, cm.input.name, requant=c.requant,
                   rounding=c.rounding, per_channel_weights=c.per_channel_weights)

    def _rq(self, real) -> Requant:
        return Requant.from_scale(np.asarray(real, np.float64), self.requant, self.rounding)

    def run(self, x: np.ndarray):
        """Float outputs for one input of batch 1 or a stack of them (one at a time), like
        `Oracle.run`: an array for one output, a tuple for several."""
        x = np.asarray(x, np.float32)
        outs = [self.run_one(x[i:i + 1]) for i in range(len(x))]
        merged = [np.concatenate(parts) for parts in zip(*outs)]
        return merged[0] if len(merged) == 1 else tuple(merged)

    def run_one(self, x: np.ndarray) -> list[np.ndarray]:
        """Dequantized outputs of one batch-1 input, plus `self.codes`: every layer's
        integer output and qparams by tvmq name."""
        onnx_in, tvmq_in = self.input
        qp = self.qparams[tvmq_in]
        env = {onnx_in: (quantize(x, qp).astype(np.int64), qp)}
        self.codes = {}
        for layer in self.layers:
            args = [env[n] for n in layer.inputs]
            name = self.names[layer.output]
            out_qp = self.qparams.get(name)
            y, y_qp = getattr(self, f"_{layer.kind}")(layer, args, out_qp)
            env[layer.output] = (np.asarray(y, np.int64), y_qp)
            self.codes[name] = env[layer.output]
        return [dequantize(*env[name]) for name in self.outputs]

    # -- one method per kind: (layer, [(codes, qparams), ...], output qparams) -> (codes, qp)
    def _requantize(self, acc, real, qp: QParams, lo=-math.inf, hi=math.inf, axis=None):
        real = np.asarray(real, np.float64)
        if qp.axis is None:
            qmin, qmax = _activation_clamp(qp, lo, hi)
            return requantize(acc, self._rq(real), zero_point=int(qp.zero_point), qmin=qmin,
                              qmax=qmax, axis=axis if real.ndim else None), qp
        # per channel: each channel's codes at its own zero point, clamp in its own codes
        y = np.empty(acc.shape, np.int64)
        for c in range(acc.shape[qp.axis]):
            one = QParams(qp.scale[c], qp.zero_point[c], qp.qmin, qp.qmax)
            cmin, cmax = _activation_clamp(one, lo, hi)
            index = (slice(None),) * qp.axis + (c,)
            y[index] = requantize(acc[index], self._rq(real[c]), zero_point=int(one.zero_point),
                                  qmin=cmin, qmax=cmax)
        return y, qp

    def _conv2d(self, layer, args, qp):
        return self._linear(layer, args, qp)

    def _matmul(self, layer, args, qp):
        return self._linear(layer, args, qp)

    def _linear(self, layer, args, qp):
        (x, xqp), = args
        is_conv = layer.kind == "conv2d"
        axis = 0 if is_conv else 1  # output channels of the OIHW / (K, N) weight
        wq, wqp = quantize_weight(layer.weight, axis=axis, per_channel=self.per_channel)
        if xqp.axis is None:
            xc = x - int(xqp.zero_point)
        else:  # per-channel input (depthwise): channel c at its own zero point
            xc = x - xqp.zero_point.astype(np.int64).reshape(1, -1, 1, 1)
        if is_conv:
            acc = conv2d_int(xc, wq, layer.attrs)
        else:
            acc = np.matmul(xc, wq.astype(np.int64))
        out_axis = 1 if is_conv else acc.ndim - 1
        sx, sw = np.float64(xqp.scale), wqp.scale.astype(np.float64)
        if xqp.axis is not None:  # output channel o reads input channel o // multiplier
            sx = np.repeat(xqp.scale.astype(np.float64), wq.shape[0] // xqp.scale.size)
        if layer.bias is not None:
            bq = quantize_bias(layer.bias.reshape(-1), sx, sw).astype(np.int64)
            acc = acc + bq.reshape([-1 if i == out_axis else 1 for i in range(acc.ndim)])
        return self._requantize(acc, sx * sw / qp.scale.astype(np.float64), qp, layer.lo,
                                layer.hi, out_axis)

    def _add(self, layer, args, qp):
        (a, aqp), (b, bqp) = args
        twice_max = 2.0 * max(float(aqp.scale), float(bqp.scale))
        total = 0
        for x, xqp in ((a, aqp), (b, bqp)):
            shifted = (x - int(xqp.zero_point)) * (1 << ADD_LEFT_SHIFT)
            total = total + requantize(shifted, self._rq(float(xqp.scale) / twice_max),
                                       zero_point=0, qmin=INT32_MIN, qmax=INT32_MAX).astype(
                                           np.int64)
        real = twice_max / ((1 << ADD_LEFT_SHIFT) * float(qp.scale))
        return self._requantize(total, real, qp, layer.lo, layer.hi)

    def _relu(self, layer, args, qp):
        (x, xqp), = args
        return np.clip(x, *_activation_clamp(xqp, layer.lo, layer.hi)), xqp

    def _max_pool2d(self, layer, args, qp):
        (x, xqp), = args
        a = layer.attrs
        if a.get("ceil_mode", 0) or a.get("auto_pad", "NOTSET") != "NOTSET":
            raise NotImplementedError(f"reference: MaxPool with {a}")
        kernel = a["kernel_shape"]
        win = _windows(_pad(x, a.get("pads", [0] * 4), np.iinfo(np.int64).min), kernel,
                       a.get("strides", [1, 1]), a.get("dilations", [1, 1]))
        return win.max(axis=(4, 5)), xqp

    def _avg_pool2d(self, layer, args, qp):
        (x, xqp), = args
        a = layer.attrs
        kh, kw = a["kernel_shape"]
        win = _windows(_pad(x - int(xqp.zero_point), a.get("pads", [0] * 4), 0), (kh, kw),
                       a.get("strides", [1, 1]), [1, 1])
        acc = win.sum(axis=(4, 5))
        return self._requantize(acc, float(xqp.scale) / (float(qp.scale) * kh * kw), qp)

    def _mean(self, layer, args, qp):
        (x, xqp), = args
        axes = tuple(layer.attrs.get("axes", range(2, x.ndim)))
        keep = bool(layer.attrs.get("keepdims", 1))
        count = int(np.prod([x.shape[i] for i in axes]))
        acc = (x - int(xqp.zero_point)).sum(axis=axes, keepdims=keep)
        return self._requantize(acc, float(xqp.scale) / (float(qp.scale) * count), qp)

    def _concat(self, layer, args, qp):
        parts = [self._requantize(x - int(xqp.zero_point), float(xqp.scale) / float(qp.scale),
                                  qp)[0] for x, xqp in args]
        return np.concatenate(parts, axis=layer.attrs["axis"]), qp

    def _reshape(self, layer, args, qp):
        (x, xqp), = args
        if "shape" not in layer.attrs:  # Flatten
            axis = layer.attrs.get("axis", 1)
            return x.reshape(int(np.prod(x.shape[:axis])), -1), xqp
        shape = [x.shape[i] if d == 0 else int(d) for i, d in enumerate(layer.attrs["shape"])]
        return x.reshape(shape), xqp

    def _permute_dims(self, layer, args, qp):
        (x, xqp), = args
        return x.transpose(layer.attrs["perm"]), xqp
