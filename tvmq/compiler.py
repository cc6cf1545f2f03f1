"""`tvmq.compile`: float model + calibration data + target -> CompiledModel."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tvm
from tqdm import tqdm
from tvm import relax

from .batch import run_stacked
from .calibrate import calibrate
from .calibration.lbfp_observer import LBFPObserver
from .config import QuantConfig
from .errors import CompileError
from .frontend import import_model
from .ir import returned_fields
from .numerics import QParams, choose_qparams, dequantize, lbfp
from .numerics.weights import quantize_weight
from .oracle import Oracle
from .output_folder import write_folder
from .passes.annotate_quantizable import AnnotateQuantizable, composite_kind
from .passes.insert_taps import InsertTaps
from .passes.realize_lbfp import MAC_KINDS, RealizeLBFP
from .passes.realize_quantization import SAME_SCALE_KINDS, RealizeQuantization
from .report import LayerRow, Report, sqnr_db
from .targets.accel import AccelConfig, library, preset
from .targets.accel.lower import AccelRuntime, LowerToAccel
from .targets.host import HostModule, build
from .targets.host.benchmark import Benchmark, benchmark
from .targets.host.tvm_log import drop_scope_lines
from .targets.mcu import McuConfig, build_mcu

TARGETS = ("host", "accel", "mcu")
TAPS_FUNCTION = "main_taps"  # in the host build: main plus every layer's integer output


@dataclass(frozen=True)
class Layer:
    """One quantized op of the annotated graph: binding name, kind, input names, output shape,
    and the float weight of a conv2d/matmul."""

    name: str
    kind: str
    inputs: tuple[str, ...]
    shape: tuple[int, ...]
    weight: np.ndarray | None


def find_layers(annotated: tvm.IRModule) -> tuple[list[Layer], list[str]]:
    """The `tvmq.*` composite calls of `main` in order, and the float ops left outside them."""
    layers, float_ops = [], []
    for block in annotated["main"].body.blocks:
        for binding in block.bindings:
            value, name = binding.value, binding.var.name
            kind = composite_kind(annotated, value)
            if kind is None:
                if isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op):
                    float_ops.append(f"{name} ({value.op.name.removeprefix('relax.')})")
                continue
            weight = None
            if kind in ("conv2d", "matmul"):
                func = annotated[value.op]
                first = func.body.blocks[0].bindings[0].value
                weight = first.args[1].value.numpy()
            layers.append(Layer(name, kind, tuple(a.name for a in value.args),
                                tuple(int(d) for d in binding.var.ty.shape), weight))
    return layers, float_ops


def activation_qparams(lo: float, hi: float, config: QuantConfig, bits: int = 8) -> QParams:
    """Full-range qparams over [lo, hi] ([-128, 127] for int8, [-8, 7] for int4)."""
    return choose_qparams(lo, hi, bits=bits, symmetric=config.symmetric_activations)


class CompiledModel:
    """A quantized, compiled model.

    `run(x)` executes it on its target (numpy in, numpy out); `report()` gives the per-layer table;
    `export(dir)` writes the artefacts; `oracle()` is the NumPy golden interpreter of the graph.
    `input` and `outputs` describe the model's tensors (outputs in the ONNX order).
    `act_qparams` holds each calibrated tensor's QParams (int8) or per-channel exponents (LBFP).
    """

    def __init__(self, *, name, target, config, inp, outputs, float_mod, quant_mod, host, report,
                 act_qparams, accel=None, plan=None, mcu=None):
        self.name, self.target, self.config, self.input = name, target, config, inp
        self.outputs = outputs
        self.float_mod, self.quant_mod, self.host = float_mod, quant_mod, host
        self._report, self.act_qparams = report, act_qparams
        self.accel = accel  # AccelRuntime for target="accel": hardware config and layer counters
        self.plan = plan  # scheme "mixed": tvmq.mixed.assign.MixedPlan (choice, program, costs)
        self.mcu = mcu  # target "mcu": tvmq.targets.mcu.McuBuild (kernels, memory plan)

    def run(self, x: np.ndarray) -> np.ndarray | tuple[np.ndarray, ...]:
        """Run one input of the model's shape, or a stack (N, *shape[1:]) one sample at a time.

        Returns the output array, or for a model with several outputs a tuple of arrays in the
        model's output order (`self.outputs`); a stack's outputs are concatenated one by one.
        """
        return run_stacked(self.host.run, x, self.input.shape)

    def report(self) -> Report:
        return self._report

    def benchmark(self, x: np.ndarray | None = None, runs: int = 50, warmup: int = 5) -> Benchmark:
        """Latency of the compiled model on this machine, batch 1: the whole VM call (median
        of `runs` calls after `warmup`; `run` adds the numpy conversions, a few us) and each
        kernel (median over the runs). `x` defaults to zeros."""
        x = np.zeros(self.input.shape, np.float32) if x is None else np.asarray(x, np.float32)
        if x.shape != self.input.shape:
            raise ValueError(f"benchmark input of shape {x.shape}: use the model input shape "
                             f"{self.input.shape}")
        return benchmark(self.host.vm, x, runs=runs, warmup=warmup)

    def oracle(self) -> Oracle:
        return Oracle(self.quant_mod)

    def export(self, out_dir: str | os.PathLike, samples: np.ndarray | None = None, *,
               overwrite: bool = False) -> Path:
        """Write model.relax (the integer graph), report.json/txt, config.json and the target's
        code: model.so (host; accel with the emulator library libaccel.so beside it), or the C
        project (mcu: kernels.c, model.c/.h, Makefile, ...; `samples` are the float inputs its
        test harness runs, default one zero input).

        `out_dir` must be new or empty, or hold an earlier tvmq export, which is replaced only
        with `overwrite=True`; any other folder is refused before anything is written (see
        tvmq.output_folder). Files go to a temporary folder first, renamed to `out_dir` when
        complete, so a failed export leaves nothing half-written.
        """
        if samples is not None:
            samples = np.asarray(samples, np.float32)
            if samples.ndim != len(self.input.shape) or samples.shape[1:] != self.input.shape[1:]:
                raise ValueError(f"samples of shape {samples.shape}: use (N, "
                                 f"{', '.join(map(str, self.input.shape[1:]))}) float inputs")
        if samples is None:
            samples = np.zeros(self.input.shape, np.float32)
        products = self.mcu.build_products if self.mcu is not None else ()
        return write_folder(out_dir, functools.partial(self._write, samples=samples),
                            overwrite=overwrite, build_products=products)

    def _write(self, out: Path, samples: np.ndarray) -> None:
        if self.mcu is not None:
            self.mcu.write(out, samples)
        else:
            options = []
            if self.accel is not None:  # the tile loops call the emulator: ship and link it
                lib = shutil.copy2(library.build(), out / "libaccel.so")
                # found beside model.so ($ORIGIN); TVM puts options before the objects
                options = [f"-L{out}", "-Wl,-rpath,$ORIGIN", "-Wl,--no-as-needed",
                           f"-l:{Path(lib).name}"]
            with drop_scope_lines():  # TVM prints a line per constant (tvm_log.py)
                self.host.executable.export_library(str(out / "model.so"), options=options)
        (out / "model.relax").write_text(self.quant_mod.script(show_meta=False))
        (out / "report.json").write_text(self._report.to_json())
        (out / "report.txt").write_text(str(self._report) + "\n")
        meta = {"config": self.config.to_dict(), "target": self.target,
                "input": {"name": self.input.name, "shape": list(self.input.shape)},
                "outputs": [{"name": o.name, "shape": list(o.shape)} for o in self.outputs]}
        (out / "config.json").write_text(json.dumps(meta, indent=2))


def compile(model, target: str = "host", config: QuantConfig | None = None, calib=None, *,
            input_shape: tuple[int, ...] | None = None, accel=None, mcu: McuConfig | None = None,
            progress: bool = True) -> CompiledModel:
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
    mcu : McuConfig for target="mcu": RAM/flash limits, float kernels allowed or not
    progress : show progress bars

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
    if target not in TARGETS:
        raise ValueError(f"target={target!r} is not available; use one of {TARGETS}.")
    if target == "mcu" and config.is_lbfp:
        raise CompileError(f"target 'mcu' runs integer schemes (int8, mixed); scheme "
                           f"{config.scheme!r} is not supported there yet.")
    if mcu is not None and not isinstance(mcu, McuConfig):
        raise TypeError(f"mcu must be a tvmq.McuConfig, got {type(mcu).__name__}")
    mcu = (mcu or McuConfig()) if target == "mcu" else None
    # The accelerator runs the layers (target "accel") or prices them (scheme "mixed").
    hw = _accel_config(accel, config) if target == "accel" or config.is_mixed else None
    runtime = AccelRuntime(hw) if target == "accel" else None
    if hw is not None:
        try:
            library.load()  # builds the C emulator on first use
        except RuntimeError as err:
            why = "target='accel'" if runtime else "scheme='mixed' (costs from the emulator)"
            raise CompileError(f"{why}: {err}") from None
    with tqdm(total=len(STAGES), unit="stage", disable=not progress,
              bar_format="{desc} |{bar}| {n}/{total} stages [{elapsed}]") as stages:
        return _compile(model, target, config, calib, input_shape, progress, stages, start,
                        runtime, hw, mcu)


STAGES = ("import", "calibrate", "bits", "quantize", "build", "report")


def _accel_config(accel, config: QuantConfig) -> AccelConfig:
    rounding = None if config.requant == "fp32" else config.rounding
    if accel is None or isinstance(accel, str):
        return dataclasses.replace(preset(accel or "npu-small"), requant=config.requant,
                                   rounding=rounding)
    if not isinstance(accel, AccelConfig):
        raise TypeError(f"accel must be an AccelConfig or a preset name, got {accel!r}")
    if (accel.requant, accel.rounding) != (config.requant, rounding):
        raise ValueError(
            f"AccelConfig {accel.name!r} has a {accel.requant}/{accel.rounding} requant unit but "
            f"QuantConfig asks for {config.requant}/{rounding}; make them agree.")
    return accel


def _compile(model, target, config, calib, input_shape, progress, stages, start, runtime, hw,
             mcu_config):
    def stage(name: str) -> None:
        stages.n = STAGES.index(name)
        stages.set_description_str(f"tvmq compile: {name:<9}")

    stage("import")
    float_mod, inp, outputs = import_model(model, input_shape)
    annotated = AnnotateQuantizable()(float_mod)
    layers, float_ops = find_layers(annotated)
    if not layers:
        raise CompileError("no op in this model can be quantized (no conv2d, matmul, add, ...).")
    if config.is_lbfp:
        float_ops += [f"{layer.name} ({layer.kind})" for layer in layers
                      if layer.kind not in MAC_KINDS]
        layers = [layer for layer in layers if layer.kind in MAC_KINDS]
        if not layers:
            raise CompileError(f"scheme {config.scheme!r} quantizes conv2d/matmul layers and "
                               "this model has none.")
    tap_names = _tensor_names(layers)
    stage("calibrate")
    observer = config.observer
    if config.is_lbfp:
        def observer(name):
            return LBFPObserver(config.lbfp_format, config.lbfp_exponents, name)
    hold_back = max(config.sqnr_samples, config.sensitivity_samples if config.is_mixed else 0)
    calibrated = calibrate(annotated, tap_names, calib, inp, observer=observer,
                           hold_back=hold_back, progress=progress)
    observers = calibrated.observers
    plan = None
    if config.is_mixed:
        from .mixed.assign import plan_bitwidths  # imports xgboost and scipy: only when used

        stage("bits")
        qparams = _qparams_by_bits(annotated, observers, config, inp)
        plan = plan_bitwidths(annotated, layers, qparams,
                              calibrated.inputs[:config.sensitivity_samples], config, hw,
                              progress=progress)
    stage("quantize")
    if config.is_lbfp:
        quant_mod, act_params, decoders, rows = _quantize_lbfp(annotated, layers, observers,
                                                               config, inp)
    else:
        quant_mod, act_params, decoders, rows = _quantize_int8(annotated, layers, observers,
                                                               config, inp, plan)
    stage("build")
    # One build serves `run` (main) and the per-layer SQNR measurement (main_taps).
    taps = [f"{layer.name}_q" for layer in layers]
    operand_bits = None if plan is None else plan.operand_bits()
    mcu = None if mcu_config is None else build_mcu(quant_mod, mcu_config, float_ops,
                                                    [o.name for o in outputs])
    lowered = quant_mod if runtime is None else LowerToAccel(runtime, operand_bits)(quant_mod)
    host = build(InsertTaps(taps, function=TAPS_FUNCTION)(lowered))
    stage("report")
    report = Report(model=model_name(model), target=target, config=config.to_dict(),
                    float_ops=float_ops)
    report.layers = rows
    if plan is not None:
        report.mixed = plan.summary()
    if mcu is not None:
        report.mcu = mcu.summary()
    if config.sqnr_samples and calibrated.inputs:
        _measure_sqnr(report, layers, decoders, calibrated, config.sqnr_samples, host, outputs)
    if runtime is not None:
        _measure_cycles(report, runtime, host, inp)
    report.compile_seconds = time.perf_counter() - start
    stages.n = len(STAGES)
    stages.refresh()
    return CompiledModel(name=report.model, target=target, config=config, inp=inp, outputs=outputs,
                         float_mod=annotated, quant_mod=quant_mod, host=host, report=report,
                         act_qparams=act_params, accel=runtime, plan=plan, mcu=mcu)


def _qparams_by_bits(annotated, observers, config, inp):
    """qparams(tensor, bits): a calibrated tensor's qparams at a width. The model's input and
    outputs keep their observed range: the observer's clipping is for internal activations
    (clipped logits tie under argmax; inputs are often discrete)."""
    boundary = _output_names(annotated) | {inp.name}

    def qparams(name: str, bits: int) -> QParams:
        obs = observers[name]
        return activation_qparams(*(obs.observed_range() if name in boundary else obs.range()),
                                  config, bits)
    return qparams


def _quantize_int8(annotated, layers, observers, config, inp, plan=None):
    """(integer module, qparams by tensor, dequantizer by layer, report rows). `plan` (mixed
    precision) gives each tensor's and each weight's width; default 8."""
    qparams_at = _qparams_by_bits(annotated, observers, config, inp)
    qparams = {n: qparams_at(n, 8 if plan is None else plan.bits_of(n)) for n in observers}
    weight_bits = {} if plan is None else {n: w for n, (w, _) in plan.choice.items()}
    realize = RealizeQuantization(qparams, config.requant, config.rounding,
                                  config.per_channel_weights, weight_bits)
    out_qparams = _output_qparams(layers, qparams)
    decoders = {name: functools.partial(_dequantize, qp) for name, qp in out_qparams.items()}
    return (realize(annotated), qparams, decoders,
            _layer_rows(layers, qparams, out_qparams, config, weight_bits))


def _quantize_lbfp(annotated, layers, observers, config, inp):
    """(LBFP module, per-channel exponents by tensor, decoder by layer, report rows)."""
    exponents = {n: obs.exponents() for n, obs in observers.items()}
    fmt = config.lbfp_format
    realize = RealizeLBFP(exponents, fmt, weight_exponents=config.lbfp_exponents)
    quant_mod = realize(annotated)
    decoders = {layer.name: _lbfp_decoder(exponents[layer.name], layer.shape, fmt)
                for layer in layers}
    rows = [LayerRow(layer.name, layer.kind, layer.shape, fmt.bits,
                     out_exponents=(int(exponents[layer.name].min()),
                                    int(exponents[layer.name].max())),
                     weight_exponents=realize.weight_ranges[layer.name]) for layer in layers]
    return quant_mod, exponents, decoders, rows


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


def _tensor_names(layers: list[Layer]) -> list[str]:
    """Every tensor a layer reads or writes, in graph order (the calibration taps)."""
    names = []
    for layer in layers:
        for n in (*layer.inputs, layer.name):
            if n not in names:
                names.append(n)
    return names


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


def _measure_sqnr(report, layers, decoders, calibrated, samples: int, host: HostModule,
                  outputs):
    """SQNR of every layer output and of each model output on the first `samples` held-back
    calibration samples (or observed ones when the set was too small to hold any back);
    `output_sqnr_db` is the worst output's. `decoders` maps a layer name to the function from
    its integer output to float."""
    kept_inputs = calibrated.inputs[:samples]
    kept = {name: values[:samples] for name, values in calibrated.values.items()}
    report.sqnr_samples, report.sqnr_held_back = len(kept_inputs), calibrated.held_back
    outs = [host.run(x, TAPS_FUNCTION) for x in kept_inputs]
    for i, (layer, row) in enumerate(zip(layers, report.layers)):
        approx = [decoders[layer.name](o[1 + i]) for o in outs]
        row.sqnr_db = sqnr_db(np.stack(kept[layer.name]), np.stack(approx))
    if len(outputs) == 1:
        ref, got = [kept["output"]], [[o[0] for o in outs]]
    else:  # kept["output"] and o[0] hold one tuple per sample
        ref, got = zip(*kept["output"]), zip(*(o[0] for o in outs))
    report.outputs_sqnr_db = {out.name: sqnr_db(np.stack(r), np.stack(g))
                              for out, r, g in zip(outputs, ref, got)}
    report.output_sqnr_db = min(report.outputs_sqnr_db.values())


def _measure_cycles(report: Report, runtime: AccelRuntime, host: HostModule, inp) -> None:
    """Per-layer emulator counters of one inference (they depend on shapes, not on values)."""
    counters = runtime.one_inference(host, np.zeros(inp.shape, np.float32))
    hw = runtime.hw
    for row in report.layers:
        c = counters.get(row.name)
        if c is not None:
            row.cycles, row.macs = c["cycles"], c["macs"]
            row.utilization = c["macs"] / max(1, c["cycles"] * hw.macs_per_cycle)
    cycles = sum(c["cycles"] for c in counters.values())
    report.accel = {"config": hw.to_dict(), "cycles": cycles,
                    "latency_us": cycles / hw.clock_mhz, "host_layers": dict(runtime.host_layers)}


def model_name(model) -> str:
    if isinstance(model, str | os.PathLike):
        return Path(model).name
    return type(model).__name__
