"""`tvmq.compile`: float model + calibration data + target -> CompiledModel.

The pipeline (DESIGN.md, "Architecture"), one function per phase:

    import -> annotate -> calibrate -> assign bits (mixed) -> [AdaRound] -> realize
           -> target.lower -> host build -> report

Targets are looked up by name in the registry (tvmq.targets.target); this module knows none.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import time
from pathlib import Path

import numpy as np
import tvm
from tqdm import tqdm

from .boosters.bias_correction import correct_biases, nearest_weights
from .boosters.equalize import absorb_biases, equalize, find_chains
from .calibrate import HOLD_BACK_EVERY, Calibration, calibrate, iter_samples
from .calibration.lbfp_observer import LBFPObserver
from .compiled_model import CompiledModel
from .config import QuantConfig
from .errors import CompileError
from .frontend import import_model
from .layers import (
    Layer,
    depthwise_float_inputs,
    depthwise_only_outputs,
    find_layers,
    tensor_names,
)
from .numerics import dequantize
from .passes.annotate_quantizable import AnnotateQuantizable
from .passes.insert_taps import InsertTaps
from .passes.keep_float import KeepFloat
from .passes.realize_lbfp import MAC_KINDS
from .realize import (
    Realized,
    input_qparams,
    int8_qparams,
    realize_int8,
    realize_lbfp,
    rounding_sites,
    weight_bits_of,
)
from .report import Report, sqnr_db
from .targets.host import HostModule, build
from .targets.target import LowerInfo, Target, get, options
from .timings import Timings, phase, recording

__all__ = ["CompiledModel", "Layer", "compile", "find_layers"]

TAPS_FUNCTION = "main_taps"  # in the host build: main plus every layer's integer output
BOOSTER_SAMPLES = 64  # the first calibration samples bias absorption fits to
BIAS_CORRECTION_SAMPLES = 16  # the first observed calibration samples bias correction reads
STAGES = ("import", "calibrate", "bits", "quantize", "build", "report")


def compile(model, target: str = "host", config: QuantConfig | None = None, calib=None, *,
            input_shape: tuple[int, ...] | None = None, accel=None, progress: bool = True,
            eval_fn=None, max_drop: float | None = None, **target_options) -> CompiledModel:
    """Quantize and compile a float model for a target.

    Parameters
    ----------
    model : path to .onnx, onnx.ModelProto or tvm.IRModule
    target : "host" (llvm), "accel" (int8 conv/matmul layers on the C accelerator emulator) or
        "mcu" (self-contained C for microcontrollers; `run` uses the host build, which the C
        equals bit for bit; `export` writes the C project)
    config : QuantConfig, optional (default: int8, mult_shift/double, minmax)
    calib : array, iterable of arrays, or .npz path with the calibration inputs
    input_shape : static input shape when the model's is symbolic
    accel : AccelConfig or preset name for target="accel", and the accelerator whose measured
        cycles scheme "mixed" budgets (default "npu-small"; a preset takes the config's
        requant/rounding, an explicit AccelConfig must match them)
    progress : show progress bars
    eval_fn : callable, optional
        With `max_drop`: `eval_fn(run) -> float` scores a model given as `run(x) -> outputs`
        (higher is better), e.g. accuracy on your validation set.
    max_drop : float, optional
        Accuracy-aware fallback (tvmq.fallback): keep the layers with the worst isolated error
        in float, as few as possible, until `eval_fn` is within `max_drop` of the float
        model's (without eval_fn: output fidelity in percent on held-back calibration
        samples). The report's `fallback` entry lists what was raised and its cost.
    **target_options : a target's own settings, e.g. `mcu=McuConfig(...)` for target="mcu":
        RAM/flash limits, float kernels allowed or not

    Returns
    -------
    CompiledModel

    Example
    -------
    >>> import tvmq
    >>> from tvmq import data
    >>> x_calib, x_test, y_test = data.load_digits()
    >>> cm = tvmq.compile(data.digits_model_path(), calib=x_calib[:16], progress=False)
    >>> cm.run(x_test[:2]).shape
    (2, 10)
    """
    config = config or QuantConfig()
    if not isinstance(config, QuantConfig):
        raise TypeError(f"config must be a tvmq.QuantConfig, got {type(config).__name__}")
    if max_drop is not None:
        from .fallback import compile_within

        def compile_with(float_layers):
            keep = dataclasses.replace(config, keep_float=config.keep_float + float_layers)
            if config.layer_bits is not None:  # a layer in float takes no widths
                keep = dataclasses.replace(keep, layer_bits={
                    n: b for n, b in config.layer_bits.items() if n not in float_layers})
            return compile(model, target, keep, calib, input_shape=input_shape, accel=accel,
                           progress=progress, **target_options)
        return compile_within(compile_with, max_drop, eval_fn, calib, progress)
    if eval_fn is not None:
        raise ValueError("eval_fn is used with max_drop (the accuracy-aware fallback); give "
                         "max_drop=<the largest drop you accept> or drop eval_fn.")
    start = time.perf_counter()
    unknown = sorted(set(target_options) - set(options()))
    if unknown:
        raise TypeError(f"compile() got an unexpected keyword argument {unknown[0]!r}")
    settings = {"accel": accel, **target_options}
    target_cls = get(target)
    chosen = target_cls(config, settings.get(target_cls.option))
    hw = None
    if config.is_mixed:
        from .mixed.assign import cost_device  # imports xgboost and scipy: only when used

        hw = cost_device(accel, config)
    with tqdm(total=len(STAGES), unit="stage", disable=not progress,
              bar_format="{desc} |{bar}| {n}/{total} stages [{elapsed}]") as stages:
        return _Pipeline(config, chosen, hw, progress, stages).run(model, calib, input_shape,
                                                                   start)


class _Pipeline:
    """One compile: the phases in order, sharing the config, the target and the progress bar."""

    def __init__(self, config: QuantConfig, target: Target, hw, progress: bool, stages: tqdm):
        self.config, self.target, self.hw = config, target, hw
        self.progress, self.stages = progress, stages

    def stage(self, name: str) -> None:
        self.stages.n = STAGES.index(name)
        self.stages.set_description_str(f"tvmq compile: {name:<9}")

    def run(self, model, calib, input_shape, start: float) -> CompiledModel:
        with recording(Timings()) as timings:
            cm = self.phases(model, calib, input_shape)
        cm.report().timings = timings.seconds
        cm.report().compile_seconds = time.perf_counter() - start
        self.stages.n = len(STAGES)
        self.stages.refresh()
        return cm

    def phases(self, model, calib, input_shape) -> CompiledModel:
        self.stage("import")
        with phase("import"):
            float_mod, inp, outputs = import_model(model, input_shape)
        if self.config.bias_absorption:
            calib = list(iter_samples(calib, inp))  # read twice: by absorption and calibration
        with phase("annotate"):
            annotated, layers, float_ops = self.annotate(float_mod, calib)
        self.stage("calibrate")
        stream = calib
        first: list[np.ndarray] = []  # AdaRound's, bias correction's, the mixed sensitivity's
        with phase("calibrate"):
            if (self.config.weight_rounding == "adaround" or self.config.is_mixed
                    or self.config.corrects_biases):
                first, stream = self.observed_samples(calib, inp)
            calibrated = self.calibrate(annotated, layers, stream, inp)
        plan = None
        if self.config.is_mixed:
            self.stage("bits")
            with phase("bits"):
                plan = self.assign_bits(annotated, layers, calibrated, inp,
                                        first[:self.config.sensitivity_samples])
        self.stage("quantize")
        weights = None
        if self.config.weight_rounding == "adaround":
            with phase("adaround"):
                weights = self.adaround(annotated, layers, calibrated, inp, plan, first)
        correction = None
        if self.config.corrects_biases:
            with phase("bias correction"):
                correction = self.bias_correction(annotated, layers, calibrated, inp, plan,
                                                  weights, first)
        biases = correction.biases if correction is not None and correction.kept else None
        with phase("realize"):
            realized = self.realize(annotated, layers, calibrated, inp, plan, weights, biases)
        self.stage("build")
        info = LowerInfo(tuple(float_ops), tuple(o.name for o in outputs),
                         self.operand_bits(layers, plan))
        with phase("lower"):
            lowered = self.target.lower(realized.module, info)
        # One build serves `run` (main) and the per-layer SQNR measurement (main_taps).
        taps = [f"{layer.name}_q" for layer in layers]
        with phase("build"):
            host = build(InsertTaps(taps, function=TAPS_FUNCTION)(lowered),
                         reuse=self.target.reuses_builds)
        self.stage("report")
        report = Report(model=model_name(model), target=self.target.name,
                        config=self.config.to_dict(), float_ops=float_ops)
        report.layers = realized.rows
        if plan is not None:
            report.mixed = plan.summary()
        if correction is not None:
            report.bias_correction = correction.summary()
        if self.config.sqnr_samples and calibrated.inputs:
            with phase("sqnr"):
                measure_sqnr(report, layers, realized, calibrated, self.config.sqnr_samples,
                             host, outputs)
        with phase("target report"):
            self.target.add_to_report(report, host, inp)
        return CompiledModel(name=report.model, target=self.target, config=self.config,
                             inp=inp, outputs=outputs, float_mod=annotated,
                             quant_mod=realized.module, host=host, report=report,
                             act_qparams=realized.act_qparams, layers=layers,
                             decoders=realized.decoders, encoders=realized.encoders, plan=plan)

    def annotate(self, float_mod: tvm.IRModule, calib):
        """(annotated module, the layers the scheme quantizes, the ops left in float); with
        `equalize` / `bias_absorption`, its weights and biases equalized / absorbed
        (tvmq.boosters.equalize; absorption fit to the first calibration samples); then the
        ops to keep in float marked (passes/keep_float.py)."""
        annotated = AnnotateQuantizable()(float_mod)
        if self.config.equalize:
            annotated, _ = equalize(annotated)
        if self.config.bias_absorption:
            annotated, _ = absorb_biases(annotated, find_chains(annotated),
                                         calib[:BOOSTER_SAMPLES])
        annotated = KeepFloat(self.config.keep_float)(annotated)
        layers, float_ops = find_layers(annotated)
        if not layers:
            raise CompileError("no op in this model can be quantized (no conv2d, matmul, add, "
                               "...).")
        if self.config.is_lbfp:
            float_ops += [f"{layer.name} ({layer.kind})" for layer in layers
                          if layer.kind not in MAC_KINDS]
            layers = [layer for layer in layers if layer.kind in MAC_KINDS]
            if not layers:
                raise CompileError(f"scheme {self.config.scheme!r} quantizes conv2d/matmul "
                                   "layers and this model has none.")
        return annotated, layers, float_ops

    def hold_back(self) -> int:
        """Calibration samples held back from the ranges (for the report's SQNR)."""
        return self.config.sqnr_samples

    def calibrate(self, annotated, layers, calib, inp) -> Calibration:
        config = self.config
        observer = config.observer
        if config.is_lbfp:
            def observer(name):
                return LBFPObserver(config.lbfp_activation_format, config.lbfp_exponents,
                                    name)
        channel_names = () if config.is_lbfp else (
            depthwise_float_inputs(layers) + depthwise_only_outputs(annotated, layers))
        return calibrate(annotated, tensor_names(layers), calib, inp, observer=observer,
                         hold_back=self.hold_back(), channel_names=channel_names,
                         progress=self.progress)

    def observed_samples(self, calib, inp) -> tuple[list[np.ndarray], object]:
        """(the first samples calibration observes, i.e. does not hold back: as many as
        AdaRound (adaround.SAMPLES) or the mixed sensitivity (sensitivity_samples) reads;
        the calibration data, unchanged, to calibrate on)."""
        from .boosters.adaround import SAMPLES

        wanted = max(SAMPLES if self.config.weight_rounding == "adaround" else 0,
                     BIAS_CORRECTION_SAMPLES if self.config.corrects_biases else 0,
                     self.config.sensitivity_samples if self.config.is_mixed else 0)
        stream = iter_samples(calib, inp)
        first, observed, held = [], [], 0
        for i, x in enumerate(stream):
            first.append(x)
            if i % HOLD_BACK_EVERY == HOLD_BACK_EVERY - 1 and held < self.hold_back():
                held += 1  # as calibrate() holds them back
            else:
                observed.append(x)
            if len(observed) == wanted:
                break
        return observed, itertools.chain(first, stream)

    def adaround(self, annotated, layers, calibrated: Calibration, inp, plan, samples):
        """AdaRound weights {layer: (int weights, QParams)} at each layer's weight width,
        fitted to the inputs as the integer model will quantize them."""
        from .boosters.adaround import SAMPLES, adaround

        qparams, channel_qparams = self.grids(annotated, calibrated, inp, plan)
        return adaround(annotated, layers, input_qparams(layers, qparams, channel_qparams),
                        weight_bits_of(layers, self.config, plan), samples[:SAMPLES],
                        per_channel=self.config.per_channel_weights, progress=self.progress)

    def grids(self, annotated, calibrated: Calibration, inp, plan) -> tuple[dict, dict]:
        """int8_qparams' (per-tensor, per-channel) QParams at the plan's widths (8 bits without
        a plan): the grids realize will use."""
        return int8_qparams(annotated, calibrated.observers, self.config, inp,
                            plan and plan.bits_of, calibrated.channel_ranges)

    def operand_bits(self, layers, plan) -> dict[str, tuple[int, int, int]] | None:
        """(w_bits, a_bits, y_bits) per layer for the target: the plan's (mixed), or 4-bit
        weights under int8 weight_bits=4 (other widths run as int8 values: they fit)."""
        if plan is not None:
            return plan.operand_bits()
        if self.config.weight_bits != 4:
            return None
        return {name: (4, 8, 8) for name in weight_bits_of(layers, self.config)}

    def assign_bits(self, annotated, layers, calibrated: Calibration, inp, samples):
        from .mixed.assign import plan_bitwidths

        def sites(bits: int):
            qparams, channel_qparams = int8_qparams(annotated, calibrated.observers,
                                                    self.config, inp, lambda name: bits,
                                                    calibrated.channel_ranges)
            return rounding_sites(layers, qparams, channel_qparams)

        return plan_bitwidths(annotated, layers, sites, samples, self.config,
                              self.hw, progress=self.progress)

    def realize(self, annotated, layers, calibrated: Calibration, inp, plan,
                weights=None, biases=None) -> Realized:
        if self.config.is_lbfp:
            return realize_lbfp(annotated, layers, calibrated.observers, self.config)
        return realize_int8(annotated, layers, calibrated.observers, self.config, inp, plan,
                            calibrated.channel_ranges, weights, biases)

    def bias_correction(self, annotated, layers, calibrated: Calibration, inp, plan, weights,
                        samples):
        """Corrected float biases {layer: b - e} (BiasCorrection), e the mean output error of
        the integer model (its grids, and the weights realize will use: AdaRound's when it ran,
        else nearest rounding at each layer's width) on the first observed calibration
        samples."""
        if weights:
            quantized = {n: dequantize(wq, qp).astype(np.float32)
                         for n, (wq, qp) in weights.items()}
        else:
            quantized = nearest_weights(layers, self.config.per_channel_weights,
                                        weight_bits_of(layers, self.config, plan))
        qparams, channel_qparams = self.grids(annotated, calibrated, inp, plan)
        return correct_biases(annotated, layers,
                              rounding_sites(layers, qparams, channel_qparams),
                              samples[:BIAS_CORRECTION_SAMPLES], quantized, self.progress)


def measure_sqnr(report: Report, layers, realized: Realized, calibrated: Calibration,
                 samples: int, host: HostModule, outputs) -> None:
    """SQNR of every layer output and of each model output on the first `samples` held-back
    calibration samples (or observed ones when the set was too small to hold any back);
    `output_sqnr_db` is the worst output's."""
    kept_inputs = calibrated.inputs[:samples]
    kept = {name: values[:samples] for name, values in calibrated.values.items()}
    report.sqnr_samples, report.sqnr_held_back = len(kept_inputs), calibrated.held_back
    outs = [host.run(x, TAPS_FUNCTION) for x in kept_inputs]
    for i, (layer, row) in enumerate(zip(layers, report.layers)):
        approx = [realized.decoders[layer.name](o[1 + i]) for o in outs]
        row.sqnr_db = sqnr_db(np.stack(kept[layer.name]), np.stack(approx))
    if len(outputs) == 1:
        ref, got = [kept["output"]], [[o[0] for o in outs]]
    else:  # kept["output"] and o[0] hold one tuple per sample
        ref, got = zip(*kept["output"]), zip(*(o[0] for o in outs))
    report.outputs_sqnr_db = {out.name: sqnr_db(np.stack(r), np.stack(g))
                              for out, r, g in zip(outputs, ref, got)}
    report.output_sqnr_db = min(report.outputs_sqnr_db.values())


def model_name(model) -> str:
    if isinstance(model, str | os.PathLike):
        return Path(model).name
    return type(model).__name__
