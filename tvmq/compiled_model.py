"""CompiledModel: what `tvmq.compile` returns (run, report, benchmark, oracle, verify, export)."""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .batch import check_input, output_fields, run_stacked
from .oracle import Oracle
from .output_folder import write_folder
from .report import Report
from .targets.host.benchmark import Benchmark, benchmark
from .targets.target import names as target_names

if TYPE_CHECKING:
    from .debug import DebugReport


class CompiledModel:
    """A quantized, compiled model.

    `run(x)` executes it on its target (numpy in, numpy out); `report()` gives the per-layer table;
    `export(dir)` writes the artefacts; `oracle()` is the golden interpreter of the graph
    (tvmq.oracle: NumPy golden numerics for every integer op, TVM's own lowering of float ops
    alone); `verify(x)` checks `run(x) == oracle().run(x)` bit for bit and says by how much
    they differ where they do not.
    `input` and `outputs` describe the model's tensors (outputs in the ONNX order).
    `act_qparams` holds each calibrated tensor's QParams (int8) or per-channel exponents (LBFP).
    `cm.<target name>` is what that target built, e.g. `cm.accel` (the accelerator's config and
    layer counters) or `cm.mcu` (kernels, memory plan); None for the other targets' names.
    `plan` is scheme "mixed"'s tvmq.mixed.assign.MixedPlan (choice, program, costs).
    `layers` are the quantized layers (tvmq.layers.Layer) in graph order; `debug(x)` measures
    each one's error (tvmq.debug).
    """

    def __init__(self, *, name, target, config, inp, outputs, float_mod, quant_mod, host, report,
                 act_qparams, layers=(), decoders=None, encoders=None, plan=None):
        self.name, self.config, self.input, self.outputs = name, config, inp, outputs
        self.target = target.name
        self.float_mod, self.quant_mod, self.host = float_mod, quant_mod, host
        self._target, self._report, self.act_qparams, self.plan = target, report, act_qparams, plan
        self.layers = tuple(layers)
        self.decoders, self.encoders = dict(decoders or {}), dict(encoders or {})

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
        kernel (median over the runs) with its kind and schedule ("loops": TVM's loops, no
        tvmq schedule). `x` defaults to zeros."""
        x = np.zeros(self.input.shape, np.float32) if x is None else np.asarray(x, np.float32)
        if x.shape != self.input.shape:
            raise ValueError(f"benchmark input of shape {x.shape}: use the model input shape "
                             f"{self.input.shape}")
        return benchmark(self.host.vm, x, runs=runs, warmup=warmup,
                         schedules=self.host.schedules)

    def oracle(self) -> Oracle:
        return Oracle(self.quant_mod)

    def verify(self, x: np.ndarray, n: int = 8) -> Verification:
        """Run the first `n` samples of `x` on the compiled model and on the oracle, sample by
        sample, and compare each output bit for bit.

        Parameters
        ----------
        x : one input of the model's shape, or a stack (N, *shape[1:]) of them.
        n : how many of the samples to check (the oracle is slow: NumPy and one TVM call per
            float op; a few seconds per sample on a PP-OCR recognizer).

        Returns
        -------
        Verification: per output, how many samples are bit-exact and the largest difference
        (in LSB for an integer output, as a float otherwise); `.ok` is True when every output
        of every sample is exact; `str()` is a table.

        Example
        -------
        >>> result = cm.verify(x_test, n=8)
        >>> print(result)        # one row per output: exact 8/8, max |diff| 0
        >>> assert result.ok
        """
        if n < 1:
            raise ValueError(f"verify n={n}: check at least one sample (n >= 1).")
        x = check_input(x, self.input.shape)
        samples = [x] if x.shape == self.input.shape else [s[None] for s in x[:n]]
        oracle = self.oracle()
        pairs = [(output_fields(self.run(s)), output_fields(oracle.run(s))) for s in samples]
        return Verification(tuple(
            OutputCheck.of(out.name, [(got[i], want[i]) for got, want in pairs])
            for i, out in enumerate(self.outputs)))

    def debug(self, x: np.ndarray, n: int = 4) -> DebugReport:
        """Where the quantization error comes from: per layer, the SQNR of its output against
        float with the whole model quantized (cumulative) and with only that layer quantized
        (isolated), and its range against the values it saw (clipped share, outliers); ranked
        worst first. Runs the first `n` samples of `x` through a float build, the compiled
        model and the oracle (slow: seconds per sample on a recognizer). See tvmq.debug."""
        from .debug import debug  # builds the float model: only when asked

        return debug(self, x, n)

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


@dataclass(frozen=True)
class OutputCheck:
    """One model output compared over `samples` runs: `exact` of them were bit-exact;
    `max_diff` is max |run - oracle| over all samples, in LSB for an integer output, as a float
    otherwise (inf where exactly one side is NaN, or where the dtypes or shapes differ)."""

    name: str
    dtype: str
    samples: int
    exact: int
    max_diff: float

    @property
    def ok(self) -> bool:
        return self.exact == self.samples

    @classmethod
    def of(cls, name: str, pairs: list[tuple[np.ndarray, np.ndarray]]) -> OutputCheck:
        """`pairs`: (compiled output, oracle output) per sample."""
        exact = sum(_bit_exact(got, want) for got, want in pairs)
        return cls(name, str(pairs[0][0].dtype), len(pairs), exact,
                   max(_max_diff(got, want) for got, want in pairs))


def _bit_exact(got: np.ndarray, want: np.ndarray) -> bool:
    """Same dtype, shape and bytes (so -0.0 differs from 0.0, and NaN equals only itself)."""
    return got.dtype == want.dtype and got.shape == want.shape and \
        np.ascontiguousarray(got).tobytes() == np.ascontiguousarray(want).tobytes()


def _max_diff(got: np.ndarray, want: np.ndarray) -> float:
    if got.dtype != want.dtype or got.shape != want.shape:
        return float("inf")
    if got.dtype.kind in "iub":
        return float(np.abs(got.astype(np.int64) - want.astype(np.int64)).max(initial=0))
    g, w = got.astype(np.float64), want.astype(np.float64)
    both_nan = np.isnan(g) & np.isnan(w)
    with np.errstate(invalid="ignore"):
        diff = np.where(both_nan, 0.0, np.abs(g - w))
    return float(np.nan_to_num(diff, nan=np.inf).max(initial=0.0))


@dataclass(frozen=True)
class Verification:
    """What `CompiledModel.verify` found: one OutputCheck per model output, in output order."""

    outputs: tuple[OutputCheck, ...]

    @property
    def ok(self) -> bool:
        """Every output of every sample bit-exact."""
        return all(o.ok for o in self.outputs)

    def __str__(self) -> str:
        rows = [("output", "dtype", "bit-exact", "max |diff|")]
        for o in self.outputs:
            unit = " LSB" if np.dtype(o.dtype).kind in "iub" else ""
            rows.append((o.name, o.dtype, f"{o.exact}/{o.samples}", f"{o.max_diff:.9g}{unit}"))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        samples = self.outputs[0].samples if self.outputs else 0
        verdict = ("bit-exact" if self.ok else "NOT bit-exact")
        lines.append(f"compiled model vs oracle: {verdict} on {samples} sample"
                     f"{'s' * (samples != 1)}")
        return "\n".join(lines)
