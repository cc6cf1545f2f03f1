"""Per-layer accuracy sensitivity by mask-guided estimation (OHQ): narrow one operand of the
integer model, measure how much more noise reaches the model outputs.

One float "probe" build serves every measurement: the integer model simulated in float
(tvmq.simulate: every place the integer model rounds a value fake-quantized, each
conv2d/matmul weight a runtime argument). With every mask on at the 8-bit grids and 8-bit
weights it simulates the INT8 model; with every mask off it is the float model. A narrow
activation moves every site of its quantizer (tvmq.mixed.assign.quantizer_roots) to the
narrow grid, whichever layer reads it, as the realized model does.

For layer l at width b < 8, with the rest of the model at INT8:

    s_w[l, b] = noise(y(W_l at b bits), y_int8)
    s_a[l, b] = noise(y(l's input quantizer at b bits), y_int8)

where y_int8 is the probe's INT8 output and noise the noise-to-signal ratio of an output
(tvmq.simulate.output_noise) over the samples, summed over the model's outputs; s at 8 bits
is 0. Layers that read one quantizer share its s_a: the first of them carries it, the others 0
(the program ties their a_bits). A layer at (w_bits, a_bits) is scored s_w + s_a
(independent perturbations add in power to first order; one run per narrow operand).
`Probe.added_noise(choice)` measures a whole assignment at once (the check of
tvmq.mixed.assign). Results are cached on disk under `<cache root>/sensitivity/`, keyed by the
model, the samples, the grids and the widths.

Why every site, against the INT8 output (the second version fake-quantized conv2d/matmul
inputs only, against the float model): on PP-OCRv4 rec that probe decoded the chosen plan at
90% exact match and all-INT8 at 100%, while the compiled plan decoded 70% and INT8 96%; a
narrow quantizer rounds its other readers (adds, float islands) too. Against the INT8 output,
not as the growth of the noise against float: that difference is dominated by the cross term
of two large noises, and on the recognizer it was negative for 19 of 47 layers.

Why not KL of the output softmax (the first version): a confident softmax hides logit noise
until the argmax flips, so on CTC outputs (40 steps, mostly sure blanks) each layer scored
small and the program stacked 4-bit layers until every line decoded wrong.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tvm
import tvm_ffi
from tqdm import tqdm

from ..numerics import QParams
from ..simulate import (
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

_CACHE_VERSION = "sensitivity-v4"  # bump when the measurement changes
Choice = dict[str, tuple[int, int]]  # (w_bits, a_bits) by layer; layers not named stay (8, 8)


@dataclass(frozen=True)
class Sensitivity:
    """s_w[l, i]: output noise added by layer l's weights at bits[i] (rest INT8); s_a[l, i]: by
    its input quantizer at bits[i] (0 for all but the first layer reading that quantizer);
    int8: the noise of the INT8 model itself."""

    layers: tuple[str, ...]
    bits: tuple[int, ...]
    weight: np.ndarray
    activation: np.ndarray
    int8: float = 0.0
    seconds: float = 0.0

    def pair(self, w_bits: int, a_bits: int) -> np.ndarray:
        """(L,) additive score of every layer at (w_bits, a_bits)."""
        return (self.weight[:, self.bits.index(w_bits)]
                + self.activation[:, self.bits.index(a_bits)])


class Probe:
    """The probe build of one model: `run(choice)` gives the outputs with each conv2d/matmul of
    `choice` at its (w_bits, a_bits) and the rest of the model at INT8 (`run(None)`: float);
    `noise` their output noise against the float model (summed over outputs). Built on
    first use.

    `sites[bits]`: every rounding site's QParams at that width (tvmq.realize.rounding_sites;
    `bits` and 8); `roots`: each tensor's quantizer (quantizer_roots); `macs`: the
    conv2d/matmul layers (tvmq.layers.Layer) whose widths are chosen."""

    def __init__(self, annotated: tvm.IRModule, macs: list, sites: dict[int, dict[Site, QParams]],
                 roots: dict[str, str], samples: list[np.ndarray], bits: tuple[int, ...],
                 per_channel: bool = True):
        self.annotated, self.bits, self.samples = annotated, tuple(bits), samples
        self.layers = [layer.name for layer in macs]
        self.input_root = {layer.name: roots[layer.inputs[0]] for layer in macs}
        self.sites, self.per_channel = sites, per_channel
        tensors = site_tensors(annotated, sites[8])
        self.shape = {site: tensor.ty.shape for site, tensor in tensors.items()}
        self.site_root = {site: roots[tensor.name] for site, tensor in tensors.items()}
        self.site_list = list(sites[8])
        self.weights = [layer.weight for layer in macs]
        self._vm = self._reference = self._int8 = None
        self._fq: dict[tuple[int, int], tvm.runtime.Tensor] = {}

    def key(self) -> str:
        """The cache key of its sensitivity."""
        return _cache_key(self.annotated, self.weights, self.samples, self.sites, self.bits,
                          self.per_channel)

    def run(self, choice: Choice | None) -> list[list[np.ndarray]]:
        """Outputs per sample (each a list of the model's outputs) with `choice` applied and
        every other operand at 8 bits; None: the float model."""
        self._build()
        ws, scales = list(self._ws), [self._ones[s] for s in self.channel_sites]
        if choice is not None:
            widths = self._widths(choice)
            for j, site in enumerate(self.channel_sites):
                scales[j] = self._scale(site, widths.get(self.site_root[site], 8))
            for i, name in enumerate(self.layers):
                ws[i] = self._weight(i, choice.get(name, (8, 8))[0])
        table = tvm.runtime.tensor(self.table(choice))
        return [model_outputs(self._vm["main"](x, table, *ws, *scales)) for x in self._xs]

    def table(self, choice: Choice | None) -> np.ndarray:
        """The site table of `choice` (rows in `site_list` order; None: every mask off)."""
        table = disabled_table(len(self.site_list))
        if choice is not None:
            widths = self._widths(choice)
            for k, site in enumerate(self.site_list):
                table[k] = site_row(self.sites[widths.get(self.site_root[site], 8)][site])
        return table

    def _widths(self, choice: Choice) -> dict[str, int]:
        """{quantizer root: width} of the narrow inputs of `choice`."""
        return {self.input_root[name]: a for name, (_, a) in choice.items() if a != 8}

    def noise(self, choice: Choice | None) -> float:
        """Output noise of `choice` against the float model, summed over the outputs."""
        return outputs_noise(self._float_outputs(), self.run(choice))

    def added_noise(self, choice: Choice) -> float:
        """Output noise of `choice` against the INT8 model (every operand at 8 bits): the
        noise its narrow operands add, summed over the outputs."""
        return outputs_noise(self._int8_outputs(), self.run(choice))

    def int8_noise(self) -> float:
        """noise({}) from the INT8 outputs `added_noise` compares with (run once)."""
        return outputs_noise(self._float_outputs(), self._int8_outputs())

    def _float_outputs(self) -> list[list[np.ndarray]]:
        if self._reference is None:
            self._reference = self.run(None)
        return self._reference

    def _int8_outputs(self) -> list[list[np.ndarray]]:
        if self._int8 is None:
            self._int8 = self.run({})
        return self._int8

    def _build(self) -> None:
        if self._vm is not None:
            return
        mod, self.channel_sites = fake_quant_module(self.annotated, self.sites[8], self.layers)
        self._vm = build(mod).vm
        self._xs = [tvm.runtime.tensor(np.ascontiguousarray(x)) for x in self.samples]
        self._ws = [tvm.runtime.tensor(np.ascontiguousarray(w, np.float32))
                    for w in self.weights]
        self._ones = {site: self._scale(site, 8, ones=True) for site in self.channel_sites}

    def _scale(self, site: Site, bits: int, ones: bool = False) -> tvm.runtime.Tensor:
        """A per-channel site's scale vector, shaped to broadcast along its axis."""
        return tvm.runtime.tensor(channel_scale(self.sites[bits][site], self.shape[site], ones))

    def _weight(self, i: int, bits: int) -> tvm.runtime.Tensor:
        if (i, bits) not in self._fq:
            self._fq[(i, bits)] = tvm.runtime.tensor(
                fake_quant_weight(self.weights[i], bits, self.per_channel))
        return self._fq[(i, bits)]


def measure(probe: Probe, *, cache_dir: Path | None = None,
            progress: bool = True) -> Sensitivity:
    """Sensitivity of each of the probe's layers at each of its widths: the output noise its
    weight, or its input quantizer, at that width adds to the INT8 model's output."""
    start = time.perf_counter()
    layers, bits = probe.layers, probe.bits
    path = None if cache_dir is None else Path(cache_dir) / f"{probe.key()}.npz"
    if path is not None and path.is_file():
        with np.load(path) as cached:
            return Sensitivity(tuple(layers), bits, cached["weight"], cached["activation"],
                               float(cached["int8"]), time.perf_counter() - start)
    s_w = np.zeros((len(layers), len(bits)))
    s_a = np.zeros((len(layers), len(bits)))
    narrow = [b for b in bits if b != 8]
    first_reader = {}
    for name in layers:
        first_reader.setdefault(probe.input_root[name], name)
    readers = set(first_reader.values())  # one s_a per quantizer, on its first reader
    with tqdm(total=(len(layers) + len(readers)) * len(narrow), desc="sensitivity",
              unit="run", leave=False, disable=not progress) as bar:
        for j, b in enumerate(bits):
            if b == 8:
                continue
            for i, name in enumerate(layers):
                s_w[i, j] = probe.added_noise({name: (b, 8)})
                bar.update()
                if name in readers:
                    s_a[i, j] = probe.added_noise({name: (8, b)})
                    bar.update()
    int8 = probe.int8_noise()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, weight=s_w, activation=s_a, int8=int8)
        tmp.rename(path)
    return Sensitivity(tuple(layers), bits, s_w, s_a, int8, time.perf_counter() - start)


def _cache_key(annotated, weights, samples, sites, bits, per_channel) -> str:
    h = hashlib.sha256(_CACHE_VERSION.encode())
    h.update(str(tvm_ffi.structural_hash(annotated)).encode())  # constants by value
    for a in (*weights, *samples):
        h.update(np.ascontiguousarray(a).tobytes())
    for b in sorted(sites):
        for site, qp in sites[b].items():
            h.update(repr((b, site, qp.qmin, qp.qmax, qp.axis)).encode())
            for v in (qp.scale, qp.zero_point):
                h.update(np.ascontiguousarray(v, np.float64).tobytes())
    h.update(json.dumps([list(bits), per_channel]).encode())
    return h.hexdigest()[:24]
