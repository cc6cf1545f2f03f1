"""The realize phase: calibrated ranges -> the integer module (tvmq.ir), per scheme.

`realize_int8` (schemes int8 and mixed) chooses each tensor's QParams and runs
RealizeQuantization; `realize_lbfp` runs RealizeLBFP on per-channel block exponents. Both return
what the rest of compile needs: the module, the calibrated parameters by tensor, a decoder per
layer (integer output -> float32, for the report's SQNR), its inverse, an encoder per layer
(float32 -> the integer output the layer would write; the debugger's isolated runs), and the
report rows.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax

from .config import QuantConfig
from .ir import returned_fields
from .layers import Layer, is_depthwise
from .numerics import QParams, choose_qparams, dequantize, lbfp, quantize
from .numerics.weights import quantize_weight
from .passes.annotate_quantizable import composite_kind
from .passes.realize_lbfp import RealizeLBFP
from .passes.realize_quantization import SAME_SCALE_KINDS, RealizeQuantization
from .report import LayerRow


@dataclass
class Realized:
    module: tvm.IRModule
    act_qparams: dict  # tensor name -> QParams (int8, mixed) or per-channel exponents (LBFP)
    decoders: dict[str, Callable[[np.ndarray], np.ndarray]]  # layer name -> dequantizer
    encoders: dict[str, Callable[[np.ndarray], np.ndarray]]  # layer name -> quantizer
    rows: list[LayerRow]


def activation_qparams(lo: float, hi: float, config: QuantConfig, bits: int = 8) -> QParams:
    """Full-range qparams over [lo, hi] ([-128, 127] for int8, [-8, 7] for int4)."""
    return choose_qparams(lo, hi, bits=bits, symmetric=config.symmetric_activations)


def qparams_by_bits(annotated, observers, config, inp):
    """qparams(tensor, bits): a calibrated tensor's qparams at a width. The model's input and
    outputs keep their observed range: the observer's clipping is for internal activations
    (clipped logits tie under argmax; inputs are often discrete)."""
    boundary = _output_names(annotated) | {inp.name}

    def qparams(name: str, bits: int) -> QParams:
        obs = observers[name]
        return activation_qparams(*(obs.observed_range() if name in boundary else obs.range()),
                                  config, bits)
    return qparams


def int8_qparams(annotated, observers, config: QuantConfig, inp,
                 bits_of: Callable[[str], int] | None = None,
                 channel_ranges=None) -> tuple[dict, dict]:
    """({tensor name: QParams} of every calibrated tensor, {float tensor a depthwise conv reads:
    its per-channel QParams}) as realize_int8 chooses them, each tensor at width
    `bits_of(name)` (default 8; a mixed plan's `bits_of`). `channel_ranges` ({tensor: (lo[C],
    hi[C])}) gives the per-channel ones; for a layer's output (a conv only depthwise convs
    read) they replace its per-tensor QParams in the first dict."""
    qparams_at = qparams_by_bits(annotated, observers, config, inp)
    qparams = {n: qparams_at(n, 8 if bits_of is None else bits_of(n)) for n in observers}
    channel_qparams = {n: channel_qparams_of(*lo_hi, observers[n].range(), qparams[n].bits)
                       for n, lo_hi in (channel_ranges or {}).items()}
    layer_outputs = _layer_outputs(annotated)
    for name in list(channel_qparams):  # a conv whose output only depthwise convs read
        if name in layer_outputs:
            qparams[name] = channel_qparams.pop(name)
    return qparams, channel_qparams


def depthwise_input_qparams(layers: list[Layer], channel_qparams) -> dict[str, QParams]:
    """{depthwise conv layer name: the per-channel QParams of the float tensor it reads}, from
    int8_qparams' {tensor: QParams}; only a depthwise conv can fold per-channel input scales
    into its requant (a regular conv sums over input channels)."""
    return {layer.name: channel_qparams[layer.inputs[0]] for layer in layers
            if is_depthwise(layer) and layer.inputs[0] in channel_qparams}


def input_qparams(layers: list[Layer], act_qparams, channel_qparams=None) -> dict[str, QParams]:
    """{layer name: QParams of its first input as the integer model holds it} (relu,
    max_pool2d, reshape, permute_dims pass their input's on; a depthwise conv reading a float
    tensor quantizes it per channel)."""
    sites = rounding_sites(layers, act_qparams, channel_qparams)
    return {layer.name: sites[(layer.name, 0)] for layer in layers}


def rounding_sites(layers: list[Layer], act_qparams,
                   channel_qparams=None) -> dict[tuple[str, int | None], QParams]:
    """Where the integer model rounds a float value to a grid, and the grid: (layer, i) for
    its i-th input, (layer, None) for its output. relu, max_pool2d, reshape and permute_dims
    write their input's grid (no output site); a depthwise conv reading a float tensor rounds
    it per channel. `act_qparams`, `channel_qparams`: int8_qparams' two dicts."""
    out_qparams = _output_qparams(layers, act_qparams)
    per_channel = depthwise_input_qparams(layers, channel_qparams or {})
    sites = {}
    for layer in layers:
        for i, name in enumerate(layer.inputs):
            channel = i == 0 and layer.name in per_channel
            sites[(layer.name, i)] = (per_channel[layer.name] if channel
                                      else out_qparams.get(name, act_qparams[name]))
        if layer.kind not in SAME_SCALE_KINDS:
            sites[(layer.name, None)] = out_qparams[layer.name]
    return sites


def weight_bits_of(layers: list[Layer], config: QuantConfig, plan=None) -> dict[str, int]:
    """{conv2d/matmul layer name: weight width} other than 8: the plan's (mixed) or
    config.weight_bits for every layer (int8)."""
    if plan is not None:
        return {n: w for n, (w, _) in plan.choice.items()}
    if config.weight_bits == 8:
        return {}
    return {layer.name: config.weight_bits for layer in layers if layer.weight is not None}


def realize_int8(annotated, layers: list[Layer], observers, config: QuantConfig, inp,
                 plan=None, channel_ranges=None, weights=None,
                 biases: dict[str, np.ndarray] | None = None) -> Realized:
    """The integer module of scheme int8 (or mixed: `plan` gives each tensor's and weight's
    width; default 8). `channel_ranges`: per-channel ranges for depthwise convs
    (int8_qparams); `weights`: {layer name: (integer weights, QParams)} used instead of
    nearest rounding; `biases`: float32 biases by layer name replacing the composites' (bias
    correction, tvmq.boosters.bias_correction) (RealizeQuantization)."""
    qparams, channel_qparams = int8_qparams(annotated, observers, config, inp,
                                            plan and plan.bits_of, channel_ranges)
    weight_bits = weight_bits_of(layers, config, plan)
    realize = RealizeQuantization(qparams, config.requant, config.rounding,
                                  config.per_channel_weights, weight_bits, weights,
                                  depthwise_input_qparams(layers, channel_qparams), biases)
    out_qparams = _output_qparams(layers, qparams)
    decoders = {name: functools.partial(_dequantize, qp) for name, qp in out_qparams.items()}
    encoders = {name: functools.partial(_quantize, qp) for name, qp in out_qparams.items()}
    return Realized(realize(annotated), qparams, decoders, encoders,
                    _layer_rows(layers, qparams, out_qparams, config, weight_bits))


def channel_qparams_of(lo: np.ndarray, hi: np.ndarray, tensor_range: tuple[float, float],
                       bits: int) -> QParams:
    """Symmetric per-channel qparams (axis 1, zero point 0): channel c covers
    max(-lo'[c], hi'[c]) with [lo', hi'] its observed range clipped to the tensor's chosen one.

    Symmetric, not one zero point per channel: that would need a per-channel subtract the
    accelerator's input path does not have; and one zero point shared by the channels, chosen
    for them, measured worse on the recognizers (DESIGN.md, "Accuracy")."""
    t_lo, t_hi = tensor_range
    lo, hi = np.maximum(lo, t_lo), np.minimum(hi, t_hi)
    amax = np.maximum(np.maximum(-lo, hi), 0.0).astype(np.float64)
    return choose_qparams(-amax, amax, bits=bits, symmetric=True, axis=1)


def realize_lbfp(annotated, layers: list[Layer], observers, config: QuantConfig) -> Realized:
    """The LBFP module: per-channel exponents by tensor, LBFP words between MAC layers."""
    exponents = {n: obs.exponents() for n, obs in observers.items()}
    fmt = config.lbfp_format
    realize = RealizeLBFP(exponents, fmt, weight_exponents=config.lbfp_exponents)
    module = realize(annotated)
    decoders = {layer.name: _lbfp_decoder(exponents[layer.name], layer.shape, fmt)
                for layer in layers}
    encoders = {layer.name: _lbfp_encoder(exponents[layer.name], layer.shape, fmt)
                for layer in layers}
    rows = [LayerRow(layer.name, layer.kind, layer.shape, fmt.bits,
                     out_exponents=(int(exponents[layer.name].min()),
                                    int(exponents[layer.name].max())),
                     weight_exponents=realize.weight_ranges[layer.name]) for layer in layers]
    return Realized(module, exponents, decoders, encoders, rows)


def _dequantize(qparams: QParams, q: np.ndarray) -> np.ndarray:
    return dequantize(q, qparams)


def _quantize(qparams: QParams, x: np.ndarray) -> np.ndarray:
    return quantize(x, qparams)


def _lbfp_channels(exponents, shape, fmt):
    """(per-channel exponents broadcast over a tensor of `shape`, the format with one exponent
    per channel)."""
    axis = lbfp.activation_axis(len(shape))
    channel_fmt = dataclasses.replace(fmt, block_size=1, block_axis=axis)
    return lbfp.per_channel(exponents, len(shape), axis), channel_fmt


def _lbfp_decoder(exponents, shape, fmt):
    """Float32 values of a layer's LBFP words (per-channel exponents)."""
    per_channel, channel_fmt = _lbfp_channels(exponents, shape, fmt)

    def decode(words):
        return lbfp.decode(words, per_channel, channel_fmt).astype(np.float32)
    return decode


def _lbfp_encoder(exponents, shape, fmt):
    """The LBFP words a layer writes for float values (per-channel exponents)."""
    per_channel, channel_fmt = _lbfp_channels(exponents, shape, fmt)

    def encode(x):
        return lbfp.encode(x, per_channel, channel_fmt)
    return encode


def _layer_outputs(annotated: tvm.IRModule) -> set[str]:
    """Names of main's bindings that are quantized layers (`tvmq.*` composite calls)."""
    return {b.var.name for block in annotated["main"].body.blocks for b in block.bindings
            if composite_kind(annotated, b.value) is not None}


def _output_names(mod: tvm.IRModule) -> set[str]:
    """Names of the tensors `main` returns (every field of a returned tuple)."""
    return {f.name for f in returned_fields(mod["main"]) if isinstance(f, relax.Var)}


def _output_qparams(layers, act_qparams) -> dict[str, QParams]:
    out = {}
    for layer in layers:
        if layer.kind in SAME_SCALE_KINDS:
            out[layer.name] = out.get(layer.inputs[0], act_qparams[layer.inputs[0]])
        else:
            out[layer.name] = act_qparams[layer.name]
    return out


def _largest(scale) -> float:
    """A tensor's scale, the largest channel's for a per-channel one."""
    return float(np.max(scale))


def _layer_rows(layers, act_qparams, out_qparams, config, weight_bits) -> list[LayerRow]:
    widths = config.is_mixed or config.weight_bits != 8  # the rows show w<bits>a<bits>
    rows = []
    for layer in layers:
        wscale, w_bits = None, None
        src = layer.inputs[0]
        qp_in, qp_out = out_qparams.get(src, act_qparams[src]), out_qparams[layer.name]
        if layer.weight is not None:
            axis = 0 if layer.kind == "conv2d" else 1
            w_bits = weight_bits.get(layer.name, 8)
            _, wqp = quantize_weight(layer.weight, axis=axis, bits=w_bits,
                                     per_channel=config.per_channel_weights)
            wscale = (float(wqp.scale.min()), float(wqp.scale.max()))
        rows.append(LayerRow(layer.name, layer.kind, layer.shape, qp_out.bits,
                             _largest(qp_in.scale), _largest(qp_out.scale),
                             int(np.max(qp_out.zero_point)),
                             wscale, w_bits=w_bits if widths else None,
                             a_bits=qp_in.bits if widths else None))
    return rows
