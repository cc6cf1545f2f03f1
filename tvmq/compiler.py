"""`tvmq.compile`: float model + calibration data + target -> CompiledModel.

The pipeline (DESIGN.md, "Architecture"), one function per phase:

    import -> annotate -> calibrate -> assign bits (mixed) -> realize -> target.lower
           -> host build -> report

Targets are looked up by name in the registry (tvmq.targets.target); this module knows none.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import tvm
from tqdm import tqdm

from .boosters.bias_correction import correct_biases, nearest_weights
from .boosters.equalize import absorb_biases, equalize, find_chains
from .calibrate import Calibration, calibrate, iter_samples
from .calibration.lbfp_observer import LBFPObserver
from .compiled_model import CompiledModel
from .config import QuantConfig
from .errors import CompileError
from .frontend import import_model
from .layers import Layer, find_layers, tensor_names
from .passes.annotate_quantizable import AnnotateQuantizable
from .passes.insert_taps import InsertTaps
from .passes.realize_lbfp import MAC_KINDS
from .realize import Realized, qparams_by_bits, realize_int8, realize_lbfp, weight_bits_of
from .report import Report, sqnr_db
from .targets.host import HostModule, build
from .targets.target import LowerInfo, Target, get, options

__all__ = ["CompiledModel", "Layer", "compile", "find_layers"]

TAPS_FUNCTION = "main_taps"  # in the host build: main plus every layer's integer output
BOOSTER_SAMPLES = 64  # the first calibration samples bias absorption and bias correction fit to
STAGES = ("import", "calibrate", "bits", "quantize", "build", "report")


def compile(model, target: str = "host", config: QuantConfig | None = None, calib=None, *,
            input_shape: tuple[int, ...] | None = None, accel=None, progress: bool = True,
            **target_options) -> CompiledModel:
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
    start = time.perf_counter()
    config = config or QuantConfig()
    if not isinstance(config, QuantConfig):
        raise TypeError(f"config must be a tvmq.QuantConfig, got {type(config).__name__}")
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
        self.stage("import")
        float_mod, inp, outputs = import_model(model, input_shape)
        if self.config.bias_absorption or self.config.bias_correction:
            calib = list(iter_samples(calib, inp))  # read twice: by a booster and calibration
        annotated, layers, float_ops = self.annotate(float_mod, calib)
        self.stage("calibrate")
        calibrated = self.calibrate(annotated, layers, calib, inp)
        plan = None
        if self.config.is_mixed:
            self.stage("bits")
            plan = self.assign_bits(annotated, layers, calibrated, inp)
        self.stage("quantize")
        biases = None
        if self.config.bias_correction:
            biases = correct_biases(annotated, layers, calib[:BOOSTER_SAMPLES],
                                    nearest_weights(layers, self.config.per_channel_weights,
                                                    weight_bits_of(plan)))
        realized = self.realize(annotated, layers, calibrated, inp, plan, biases)
        self.stage("build")
        info = LowerInfo(tuple(float_ops), tuple(o.name for o in outputs),
                         None if plan is None else plan.operand_bits())
        lowered = self.target.lower(realized.module, info)
        # One build serves `run` (main) and the per-layer SQNR measurement (main_taps).
        taps = [f"{layer.name}_q" for layer in layers]
        host = build(InsertTaps(taps, function=TAPS_FUNCTION)(lowered))
        self.stage("report")
        report = Report(model=model_name(model), target=self.target.name,
                        config=self.config.to_dict(), float_ops=float_ops)
        report.layers = realized.rows
        if plan is not None:
            report.mixed = plan.summary()
        if self.config.sqnr_samples and calibrated.inputs:
            measure_sqnr(report, layers, realized, calibrated, self.config.sqnr_samples, host,
                         outputs)
        self.target.add_to_report(report, host, inp)
        report.compile_seconds = time.perf_counter() - start
        self.stages.n = len(STAGES)
        self.stages.refresh()
        return CompiledModel(name=report.model, target=self.target, config=self.config,
                             inp=inp, outputs=outputs, float_mod=annotated,
                             quant_mod=realized.module, host=host, report=report,
                             act_qparams=realized.act_qparams, plan=plan)

    def annotate(self, float_mod: tvm.IRModule, calib):
        """(annotated module, the layers the scheme quantizes, the ops left in float); with
        `equalize` / `bias_absorption`, its weights and biases equalized / absorbed
        (tvmq.boosters.equalize; absorption fit to the first calibration samples)."""
        annotated = AnnotateQuantizable()(float_mod)
        if self.config.equalize:
            annotated, _ = equalize(annotated)
        if self.config.bias_absorption:
            annotated, _ = absorb_biases(annotated, find_chains(annotated),
                                         calib[:BOOSTER_SAMPLES])
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

    def calibrate(self, annotated, layers, calib, inp) -> Calibration:
        config = self.config
        observer = config.observer
        if config.is_lbfp:
            def observer(name):
                return LBFPObserver(config.lbfp_format, config.lbfp_exponents, name)
        hold_back = max(config.sqnr_samples,
                        config.sensitivity_samples if config.is_mixed else 0)
        return calibrate(annotated, tensor_names(layers), calib, inp, observer=observer,
                         hold_back=hold_back, progress=self.progress)

    def assign_bits(self, annotated, layers, calibrated: Calibration, inp):
        from .mixed.assign import plan_bitwidths

        qparams = qparams_by_bits(annotated, calibrated.observers, self.config, inp)
        return plan_bitwidths(annotated, layers, qparams,
                              calibrated.inputs[:self.config.sensitivity_samples], self.config,
                              self.hw, progress=self.progress)

    def realize(self, annotated, layers, calibrated: Calibration, inp, plan,
                biases=None) -> Realized:
        if self.config.is_lbfp:
            return realize_lbfp(annotated, layers, calibrated.observers, self.config)
        return realize_int8(annotated, layers, calibrated.observers, self.config, inp, plan,
                            biases)


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
