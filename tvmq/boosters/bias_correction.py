"""Empirical bias correction (Nagel et al. 2019, DFQ section 4.2; AIMET's empirical variant):
remove the expected output error the quantized weights cause.

For a conv2d/matmul layer y = op(x, W) + b whose weight becomes Q = deq(quantize(W)), the
error on the layer's output is op(x, Q - W), linear in x. Its mean per output channel over the
calibration samples' float inputs x of that layer,

    e[o] = E_x,p[ op(x, dW)[o, p] ],   dW = Q - W  (p: the output positions),

is subtracted from the bias: b' = b - e (a layer without bias gets b' = -e). The mean is taken
exactly, padding included, without running the conv: a conv's output at p reads the padded
input at p * stride + k * dilation for each tap k, so

    e[o] = sum_{c, k} dW[o, c, k] * m[c, k],   m[c, k] = mean_{x, p} x_pad[c, p s + k d]

(c over the group of o). Why not dW . E[x] per input channel (DFQ's form): a padded conv's
border outputs read zeros, not the mean, so that form over-corrects small feature maps (a 3x3
conv on 4x4 maps has 12 of 16 outputs touching the border). For a matmul, e = E[x] . dW with
E[x] the mean over every row.

`bias_corrections` takes the quantized weights as an argument (what `nearest_weights` gives is
the round-to-nearest quantization realize uses; a learned rounding passes its own), and realize
only consumes the result (`realize_int8(..., biases=...)`), quantizing it with `quantize_bias`.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import tvm

from ..layers import Layer
from ..numerics import dequantize
from ..numerics.weights import quantize_weight
from ..passes.annotate_quantizable import composites
from .activations import float_values

LINEAR_KINDS = ("conv2d", "matmul")


def nearest_weights(layers: list[Layer], per_channel: bool = True,
                    weight_bits: dict[str, int] | None = None) -> dict[str, np.ndarray]:
    """{layer: deq(quantize_weight(W))} for every conv2d/matmul layer: the weights realize
    uses (per output channel or per tensor, `weight_bits` per layer, default 8)."""
    weight_bits = weight_bits or {}
    out = {}
    for layer in layers:
        if layer.kind not in LINEAR_KINDS:
            continue
        q, qp = quantize_weight(layer.weight, axis=0 if layer.kind == "conv2d" else 1,
                                per_channel=per_channel, bits=weight_bits.get(layer.name, 8))
        out[layer.name] = dequantize(q, qp).astype(np.float32)
    return out


def bias_corrections(annotated: tvm.IRModule, layers: list[Layer],
                     float_inputs: dict[str, list[np.ndarray]],
                     quantized_weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """{layer: float32 bias b - e} (module doc) for every layer in `quantized_weights`, with
    `float_inputs[layer.inputs[0]]` the layer's float input on each sample."""
    by_name = composites(annotated)
    out = {}
    for layer in layers:
        if layer.name not in quantized_weights:
            continue
        comp = by_name[layer.name]
        delta = quantized_weights[layer.name].astype(np.float64) - layer.weight
        xs = float_inputs[layer.inputs[0]]
        if layer.kind == "conv2d":
            error = _conv_error(xs, delta, comp.root.attrs)
        else:
            x = np.concatenate([np.reshape(v, (-1, v.shape[-1])) for v in xs]).astype(np.float64)
            error = x.mean(axis=0) @ delta
        bias = comp.bias()
        bias = np.zeros(error.shape) if bias is None else bias.astype(np.float64).reshape(-1)
        out[layer.name] = (bias - error).astype(np.float32)
    return out


def correct_biases(annotated: tvm.IRModule, layers: list[Layer], samples: Iterable[np.ndarray],
                   quantized_weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`bias_corrections` with the layers' float inputs taken on `samples` (one host build)."""
    chosen = [layer for layer in layers if layer.name in quantized_weights]
    names = list(dict.fromkeys(layer.inputs[0] for layer in chosen))
    return bias_corrections(annotated, chosen, float_values(annotated, names, samples),
                            quantized_weights)


def _conv_error(xs: list[np.ndarray], delta: np.ndarray, attrs) -> np.ndarray:
    """Mean over samples and output positions of conv(x, delta), per output channel."""
    x = np.concatenate(xs).astype(np.float64)  # (N, C, H, W)
    top, left, bottom, right = (int(p) for p in attrs.padding)
    sh, sw = (int(s) for s in attrs.strides)
    dh, dw = (int(d) for d in attrs.dilation)
    groups = int(attrs.groups)
    o, cg, kh, kw = delta.shape
    xp = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    oh = (xp.shape[2] - dh * (kh - 1) - 1) // sh + 1
    ow = (xp.shape[3] - dw * (kw - 1) - 1) // sw + 1
    window_means = np.empty((x.shape[1], kh, kw))
    for i in range(kh):
        for j in range(kw):
            rows = xp[:, :, i * dh: i * dh + sh * (oh - 1) + 1: sh,
                      j * dw: j * dw + sw * (ow - 1) + 1: sw]
            window_means[:, i, j] = rows.mean(axis=(0, 2, 3))
    m = window_means.reshape(groups, cg, kh, kw)
    d = delta.reshape(groups, o // groups, cg, kh, kw)
    return np.einsum("gockl,gckl->go", d, m).reshape(-1)


