"""CompiledModel: what `tvmq.compile` returns (run, report, benchmark, oracle, export)."""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import numpy as np

from .batch import run_stacked
from .oracle import Oracle
from .output_folder import write_folder
from .report import Report
from .targets.host.benchmark import Benchmark, benchmark
from .targets.target import names as target_names


class CompiledModel:
    """A quantized, compiled model.

    `run(x)` executes it on its target (numpy in, numpy out); `report()` gives the per-layer table;
    `export(dir)` writes the artefacts; `oracle()` is the NumPy golden interpreter of the graph.
    `input` and `outputs` describe the model's tensors (outputs in the ONNX order).
    `act_qparams` holds each calibrated tensor's QParams (int8) or per-channel exponents (LBFP).
    `cm.<target name>` is what that target built, e.g. `cm.accel` (the accelerator's config and
    layer counters) or `cm.mcu` (kernels, memory plan); None for the other targets' names.
    `plan` is scheme "mixed"'s tvmq.mixed.assign.MixedPlan (choice, program, costs).
    """

    def __init__(self, *, name, target, config, inp, outputs, float_mod, quant_mod, host, report,
                 act_qparams, plan=None):
        self.name, self.config, self.input, self.outputs = name, config, inp, outputs
        self.target = target.name
        self.float_mod, self.quant_mod, self.host = float_mod, quant_mod, host
        self._target, self._report, self.act_qparams, self.plan = target, report, act_qparams, plan

    def __getattr__(self, name: str):
        if name in target_names():  # cm.accel, cm.mcu, ...
            return self.__dict__["_target"].artifact if name == self.target else None
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

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
        return write_folder(out_dir, functools.partial(self._write, samples=samples),
                            overwrite=overwrite, build_products=self._target.build_products)

    def _write(self, out: Path, samples: np.ndarray) -> None:
        self._target.write(out, self.host, samples)
        (out / "model.relax").write_text(self.quant_mod.script(show_meta=False))
        (out / "report.json").write_text(self._report.to_json())
        (out / "report.txt").write_text(str(self._report) + "\n")
        meta = {"config": self.config.to_dict(), "target": self.target,
                "input": {"name": self.input.name, "shape": list(self.input.shape)},
                "outputs": [{"name": o.name, "shape": list(o.shape)} for o in self.outputs]}
        (out / "config.json").write_text(json.dumps(meta, indent=2))
