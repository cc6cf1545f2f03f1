"""The realize phase: calibrated ranges -> the integer module (tvmq.ir), per scheme.

`realize_int8` (schemes int8 and mixed) chooses each tensor's QParams and runs
RealizeQuantization; `realize_lbfp` runs RealizeLBFP on per-channel block exponents. Both return
what the rest of compile needs: the module, the calibrated parameters by tensor, a decoder per
layer (integer output -> float32, for the report's SQNR) and the report rows.
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
from .layers import Layer
from .numerics import QParams, choose_qparams, dequantize, lbfp
from .numerics.weights import quantize_weight
from .passes.realize_lbfp import RealizeLBFP
from .passes.realize_quantization import SAME_SCALE_KINDS, RealizeQuantization
from .report import LayerRow


@dataclass
class Realized:
    module: tvm.IRModule
    act_qparams: dict  # tensor name -> QParams (int8, mixed) or per-channel exponents (LBFP)
    decoders: dict[str, Callable[[np.ndarray], np.ndarray]]  # layer name -> dequantizer
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


def weight_bits_of(plan) -> dict[str, int]:
    """Weight width by layer name of a mixed-precision plan (none: every layer 8)."""
    return {} if plan is None else {n: w for n, (w, _) in plan.choice.items()}


def realize_int8(annotated, layers: list[Layer], observers, config: QuantConfig, inp,
                 plan=None, biases: dict[str, np.ndarray] | None = None) -> Realized:
    """The integer module of scheme int8 (or mixed: `plan` gives each tensor's and weight's
    width; default 8). `biases`: float32 biases by layer name replacing the composites'
    (bias correction, tvmq.boosters.bias_correction)."""
    qparams_at = qparams_by_bits(annotated, observers, config, inp)
    qparams = {n: qparams_at(n, 8 if plan is None else plan.bits_of(n)) for n in observers}
    weight_bits = weight_bits_of(plan)
    realize = RealizeQuantization(qparams, config.requant, config.rounding,
                                  config.per_channel_weights, weight_bits, biases)
    out_qparams = _output_qparams(layers, qparams)
    decoders = {name: functools.partial(_dequantize, qp) for name, qp in out_qparams.items()}
    return Realized(realize(annotated), qparams, decoders,
                    _layer_rows(layers, qparams, out_qparams, config, weight_bits))


def realize_lbfp(annotated, layers: list[Layer], observers, config: QuantConfig) -> Realized:
    """The LBFP module: per-channel exponents by tensor, LBFP words between MAC layers."""
    exponents = {n: obs.exponents() for n, obs in observers.items()}
    fmt = config.lbfp_format
    realize = RealizeLBFP(exponents, fmt, weight_exponents=config.lbfp_exponents)
    module = realize(annotated)
    decoders = {layer.name: _lbfp_decoder(exponents[layer.name], layer.shape, fmt)
                for layer in layers}
    rows = [LayerRow(layer.name, layer.kind, layer.shape, fmt.bits,
                     out_exponents=(int(exponents[layer.name].min()),
                                    int(exponents[layer.name].max())),
                     weight_exponents=realize.weight_ranges[layer.name]) for layer in layers]
    return Realized(module, exponents, decoders, rows)


def _dequantize(qparams: QParams, q: np.ndarray) -> np.ndarray:
    return dequantize(q, qparams)


def _lbfp_decoder(exponents, shape, fmt):
    """Float32 values of a layer's LBFP words (per-channel exponents)."""
    axis = lbfp.activation_axis(len(shape))
    channel_fmt = dataclasses.replace(fmt, block_size=1, block_axis=axis)
    per_channel = lbfp.per_channel(exponents, len(shape), axis)

    def decode(words):
        return lbfp.decode(words, per_channel, channel_fmt).astype(np.float32)
    return decode


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


def _layer_rows(layers, act_qparams, out_qparams, config, weight_bits) -> list[LayerRow]:
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
                             float(qp_in.scale), float(qp_out.scale), int(qp_out.zero_point),
                             wscale, w_bits=w_bits if config.is_mixed else None,
                             a_bits=qp_in.bits if config.is_mixed else None))
    return rows
