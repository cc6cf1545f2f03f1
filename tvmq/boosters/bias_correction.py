"""Empirical bias correction on the integer model's own inputs (Nagel et al. 2019, DFQ section
4.2, in AIMET's empirical form), layer after layer.

A conv2d/matmul layer y = op(x, W) + b computes op(x~, Q) + b in the integer model, with x~ its
input as the integer model holds it (rounded, and carrying every upstream layer's error) and Q
its quantized weight. Its mean error per output channel o, over the samples and output
positions,

    e[o] = E[op(x~, Q)[o]] - E[op(x, W)[o]],

is subtracted from the bias: b' = b - e (a layer without bias gets b' = -e). The means come from
the integer model simulated in float (tvmq.simulate) with a per-channel offset on each product
(the offset is b' - b). Layers are corrected in order of depth (the longest chain of corrected
layers above them): one pass over the samples per depth corrects every layer of that depth,
with every shallower layer already corrected, so each layer sees its inputs as they will be.

The heads (layers a model output reads through no other conv2d/matmul: a classifier's or
recognizer's last matmul, a detector's output convs) keep their biases. A head's mean error is
the mean of its logits per class over the calibration samples, which is a property of the
samples (the classes and positions they hold) as much as of the model, and no later layer is
corrected around it. On the zoo's recognizers (16 calibration lines, 50 test lines, exact
match) correcting every layer but the head gave PP-OCRv4 rec 96 -> 100 % and PP-OCRv5 rec
88 -> 98 %; correcting the head too, 98 % and 82 %.

The correction is kept only if it lowers the simulated model's output noise against the float
model on the samples it was fit to (tvmq.simulate.outputs_noise; one more pass): a zero mean
error at every layer is not a smaller error at the output. On yolov8n it was not (output SQNR
31.1 -> 30.3 dB on those samples; agreement F1 with FP32 84 -> 74 % on the test images), so
there it is dropped and the report says so.

Why the integer model's inputs and not the float ones (the first version: e = E[op(x, Q - W)],
the weight error alone): on PP-OCRv4 rec that raised every layer's SQNR in isolation and
lowered it in the whole model (exact match 96 -> 82 %), because x~ carries upstream error whose
mean the float form does not see. Why one pass per depth and not all layers at once, repeated:
the all-at-once iteration over-corrects every layer by its upstream layers' error and diverged
on the recognizers (the largest relative mean error grew 1.5 -> 32 in 8 passes).

`correct_biases` takes the quantized weights as an argument (what `nearest_weights` gives is
the round-to-nearest quantization realize uses; a learned rounding passes its own), and realize
only consumes the result (`realize_int8(..., biases=...)`), quantizing it with `quantize_bias`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import tvm
from tqdm import tqdm
from tvm import relax

from ..layers import Layer
from ..numerics import QParams
from ..passes.annotate_quantizable import composites
from ..passes.insert_taps import InsertTaps
from ..simulate import (
    MAC_KINDS,
    Site,
    channel_scale,
    disabled_table,
    fake_quant_module,
    fake_quant_weight,
    model_outputs,
    outputs_noise,
    site_row,
    site_tensors,
)
from ..targets.host import build


def nearest_weights(layers: list[Layer], per_channel: bool = True,
                    weight_bits: dict[str, int] | None = None) -> dict[str, np.ndarray]:
    """{layer: deq(quantize_weight(W))} for every conv2d/matmul layer: the weights realize
    uses (per output channel or per tensor, `weight_bits` per layer, default 8)."""
    weight_bits = weight_bits or {}
    return {layer.name: fake_quant_weight(layer.weight, weight_bits.get(layer.name, 8),
                                          per_channel)
            for layer in layers if layer.kind in MAC_KINDS}


@dataclass
class BiasCorrection:
    """The corrected float biases by layer (`biases`), and the simulated model's output noise
    against float on the fit samples without and with them; `kept`: whether they lower it."""

    biases: dict[str, np.ndarray]
    noise_before: float
    noise_after: float
    seconds: float = 0.0

    @property
    def kept(self) -> bool:
        return bool(self.biases) and self.noise_after < self.noise_before

    def summary(self) -> dict:
        """For the report: layers corrected, kept, simulated output SQNR before and after."""
        return {"layers": len(self.biases), "kept": self.kept,
                "simulated_sqnr_db": {"before": _db(self.noise_before),
                                      "after": _db(self.noise_after)},
                "seconds": round(self.seconds, 1)}


def correct_biases(annotated: tvm.IRModule, layers: list[Layer], sites: dict[Site, QParams],
                   samples: list[np.ndarray], quantized_weights: dict[str, np.ndarray],
                   progress: bool = False) -> BiasCorrection:
    """The float biases b - e (module doc) of every layer in `quantized_weights` but the heads,
    with the integer model's rounding sites `sites` (tvmq.realize.rounding_sites) and the means
    taken over `samples` (one host build, one pass over them per depth and two more)."""
    start = time.perf_counter()
    heads = _heads(annotated, set(quantized_weights))
    chosen = [layer for layer in layers
              if layer.name in quantized_weights and layer.name not in heads]
    names = [layer.name for layer in chosen]
    if not names:
        return BiasCorrection({}, 0.0, 0.0)
    mod, channel_sites = fake_quant_module(annotated, sites, names, offsets=True)
    vm = build(InsertTaps([f"{name}_acc" for name in names])(mod)).vm
    offsets = [np.zeros([int(d) for d in p.ty.shape], np.float32)
               for p in mod["main"].params[-len(names):]]
    axes = [1 if layer.kind == "conv2d" else -1 for layer in chosen]
    xs = [tvm.runtime.tensor(np.ascontiguousarray(x)) for x in samples]

    def run(table, weights, scales) -> tuple[list[np.ndarray], list[list[np.ndarray]]]:
        """(per-channel mean of each layer's product + offset over the samples and positions,
        the model's outputs on each sample)."""
        args = [tvm.runtime.tensor(table), *map(tvm.runtime.tensor, weights),
                *map(tvm.runtime.tensor, scales), *map(tvm.runtime.tensor, offsets)]
        total, outputs = [0.0] * len(names), []
        for x in xs:
            out = vm["main"](x, *args)
            outputs.append(model_outputs(out[0]))
            for i, axis in enumerate(axes):
                total[i] = total[i] + _channel_mean(out[1 + i].numpy(), axis)
        return [t / len(xs) for t in total], outputs

    tensors = site_tensors(annotated, channel_sites)
    ones, scales = ([channel_scale(sites[s], tensors[s].ty.shape, unit) for s in channel_sites]
                    for unit in (True, False))
    reference, float_outputs = run(disabled_table(len(sites)),
                                   [np.asarray(layer.weight, np.float32) for layer in chosen],
                                   ones)
    table = np.array([site_row(qp) for qp in sites.values()], np.float32)
    weights = [quantized_weights[name] for name in names]
    depth = _depths(annotated, set(names))
    noise_before = None
    for level in tqdm(sorted({depth[name] for name in names}), desc="bias correction",
                      unit="depth", leave=False, disable=not progress):
        got, outputs = run(table, weights, scales)
        if noise_before is None:  # no offset yet: the integer model as calibrated
            noise_before = outputs_noise(float_outputs, outputs)
        for i, name in enumerate(names):
            if depth[name] == level:
                offsets[i] -= (got[i] - reference[i]).astype(np.float32).reshape(offsets[i].shape)
    noise_after = outputs_noise(float_outputs, run(table, weights, scales)[1])
    by_name = composites(annotated)
    biases = {}
    for name, offset in zip(names, offsets):
        bias = by_name[name].bias()
        bias = 0.0 if bias is None else bias.astype(np.float64).reshape(-1)
        biases[name] = (bias + offset.reshape(-1)).astype(np.float32)
    return BiasCorrection(biases, noise_before, noise_after, time.perf_counter() - start)


def _db(noise: float) -> float | None:
    """SQNR in dB of a noise-to-signal ratio (None when there is no noise)."""
    return round(-10 * math.log10(noise), 2) if noise > 0 else None


def _channel_mean(y: np.ndarray, axis: int) -> np.ndarray:
    """Mean of `y` over every axis but `axis` (float64)."""
    y = np.moveaxis(y.astype(np.float64), axis, 0)
    return y.reshape(y.shape[0], -1).mean(axis=1)


def _heads(annotated: tvm.IRModule, macs: set[str]) -> set[str]:
    """The layers of `macs` a model output reads through no other layer of `macs` (a
    classifier's last matmul, a detector's output convs)."""
    main = annotated["main"]
    reaches = {v.name for v in relax.analysis.free_vars(main.body.body)}  # the outputs
    heads = set()
    bindings = [b for block in main.body.blocks for b in block.bindings]
    for b in reversed(bindings):
        if b.var.name not in reaches:
            continue
        if b.var.name in macs:
            heads.add(b.var.name)
        else:
            reaches.update(v.name for v in relax.analysis.free_vars(b.value))
    return heads


def _depths(annotated: tvm.IRModule, corrected: set[str]) -> dict[str, int]:
    """{binding name: the longest chain of `corrected` layers from the model input to it, itself
    included}."""
    depth: dict[str, int] = {}
    for block in annotated["main"].body.blocks:
        for b in block.bindings:
            read = relax.analysis.free_vars(b.value)
            above = max((depth.get(v.name, 0) for v in read), default=0)
            depth[b.var.name] = above + (b.var.name in corrected)
    return depth

