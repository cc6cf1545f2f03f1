"""Accuracy-aware fallback: raise the worst layers to float until the user's metric is within
`max_drop` of the float model's.

    tvmq.compile(model, calib=..., eval_fn=metric, max_drop=1.0)

`eval_fn(run)` scores a model given as `run(x) -> outputs` (higher is better, any unit);
tvmq calls it on the float model and on each candidate. Without one, the metric is the output
fidelity on held-back calibration samples (`fidelity`, percent). The search:

1. compile as asked; stop if `metric >= float - max_drop`;
2. rank the layers by the debugger's isolated SQNR (tvmq.debug), worst first;
3. keep the worst k in float (QuantConfig.keep_float) for k = 1, 2, 4, ... until the metric
   is met, then bisect k between the last miss and the first hit: the fewest worst layers
   that meet it. Each candidate is a full compile.

Raising means float here (the host runs the layer in float32); the report's `fallback` entry
lists the raised layers and what they cost: MACs moved off the integer path, weight bytes
(float32 instead of int8) and, on the accelerator, the cycles those layers took there.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .batch import output_fields, run_stacked
from .calibrate import HOLD_BACK_EVERY, iter_samples
from .targets.host import build

RANK_SAMPLES = 4  # samples the debugger ranks layers on
DEFAULT_SAMPLES = 8  # held-back calibration samples of the default metric


def fidelity(reference: list[np.ndarray], approx: list[np.ndarray]) -> float:
    """100 * (1 - sum((ref - approx)^2) / sum(ref^2)) over every output: 100 is exact, and
    1 point is 20 dB output SQNR."""
    noise = sum(float(np.sum((np.float64(r) - a) ** 2)) for r, a in zip(reference, approx))
    signal = sum(float(np.sum(np.float64(r) ** 2)) for r in reference)
    return 100.0 * (1.0 - noise / max(signal, 1e-30))


@dataclass
class Fallback:
    """What the search did (report field `fallback`)."""

    metric: str
    max_drop: float
    float_value: float
    start: float  # the plain compile's metric
    final: float
    raised: tuple[str, ...] = ()
    steps: list[dict] = field(default_factory=list)  # {"float_layers": k, "metric", "seconds"}
    macs: int = 0  # of the raised layers, per inference
    weight_bytes: int = 0  # their float32 weights
    accel_cycles: int | None = None  # what the raised layers took on the accelerator

    @property
    def met(self) -> bool:
        return self.final >= self.float_value - self.max_drop

    def summary(self) -> dict:
        return {**dataclasses.asdict(self), "met": self.met}


def compile_within(compile_with: Callable, max_drop: float, eval_fn, calib, progress: bool):
    """The CompiledModel with the fewest worst layers in float that meets `max_drop`, or, if
    none does, the one with every ranked layer in float. `compile_with(names)` compiles with
    those layers kept float."""
    if not (isinstance(max_drop, int | float) and max_drop >= 0):
        raise ValueError(f"max_drop={max_drop!r}: give the largest metric drop you accept, >= 0.")
    start = time.perf_counter()
    cm = compile_with(())
    samples = _held_back(calib, cm.input)
    float_host = build(cm.float_mod)

    def float_model(x):
        return run_stacked(float_host.run, x, cm.input.shape)

    measure, name = (_fidelity_metric(float_model, samples) if eval_fn is None
                     else (eval_fn, getattr(eval_fn, "__name__", "eval_fn")))
    float_value = float(measure(float_model))
    first = float(measure(cm.run))
    result = Fallback(name, float(max_drop), float_value, first, first,
                      steps=[{"float_layers": 0, "metric": first,
                              "seconds": time.perf_counter() - start}])
    if result.met:
        return _with_report(cm, result)
    ranked = [r.name for r in cm.debug(samples, n=RANK_SAMPLES).ranked()]
    tried = {0: (cm, first)}

    def attempt(k: int):
        if k not in tried:
            t0 = time.perf_counter()
            candidate = compile_with(tuple(ranked[:k]))
            value = float(measure(candidate.run))
            result.steps.append({"float_layers": k, "metric": value,
                                 "seconds": time.perf_counter() - t0})
            if progress:
                print(f"tvmq fallback: {k} layer(s) in float -> {name} {value:.4g} "
                      f"(float {float_value:.4g}, allowed drop {max_drop:g})")
            tried[k] = (candidate, value)
        return tried[k][1] >= float_value - max_drop

    miss, hit = 0, None
    for k in itertools.chain(_doublings(len(ranked)), [len(ranked)]):
        if attempt(k):
            hit = k
            break
        miss = k
    if hit is None:
        hit = len(ranked)
    while hit - miss > 1:
        mid = (miss + hit) // 2
        miss, hit = (miss, mid) if attempt(mid) else (mid, hit)
    best, result.final = tried[hit]
    result.raised = tuple(ranked[:hit])
    _costs(result, cm)
    return _with_report(best, result)


def _doublings(n: int):
    k = 1
    while k < n:
        yield k
        k *= 2


def _held_back(calib, inp) -> np.ndarray:
    """Every HOLD_BACK_EVERY-th calibration sample (those calibration holds back), up to
    DEFAULT_SAMPLES; the first ones when there are too few."""
    samples = list(iter_samples(calib, inp))
    held = samples[HOLD_BACK_EVERY - 1::HOLD_BACK_EVERY][:DEFAULT_SAMPLES]
    return np.concatenate(held or samples[:DEFAULT_SAMPLES])


def _fidelity_metric(float_model, samples: np.ndarray):
    """`fidelity` of a model's outputs on `samples` to the float model's."""
    reference = output_fields(float_model(samples))

    def measure(run) -> float:
        return fidelity(reference, output_fields(run(samples)))
    return measure, "output fidelity % (held-back calibration samples)"


def _costs(result: Fallback, plain) -> None:
    """MACs, float32 weight bytes and accelerator cycles of the raised layers (measured on the
    plain compile)."""
    raised = set(result.raised)
    for layer in plain.layers:
        if layer.name in raised and layer.weight is not None:
            per_output = int(np.prod(layer.weight.shape[1:])) if layer.kind == "conv2d" \
                else int(layer.weight.shape[0])  # MACs per output element
            result.macs += int(np.prod(layer.shape)) * per_output
            result.weight_bytes += 4 * layer.weight.size
    rows = [r for r in plain.report().layers if r.name in raised and r.cycles is not None]
    if rows:
        result.accel_cycles = sum(r.cycles for r in rows)


def _with_report(cm, result: Fallback):
    cm.report().fallback = result.summary()
    return cm
