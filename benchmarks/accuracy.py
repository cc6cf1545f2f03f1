"""Accuracy benchmark: FP32 (onnxruntime) against tvmq INT8 on the host target, per config.

Run from the repository root::

    python benchmarks/accuracy.py [--models digits,ppocr_cls] [--quick] [--calib N] [--test N]

For each model the FP32 row runs the ONNX file with onnxruntime (CPUExecutionProvider); each INT8
row compiles it with ``tvmq.compile(target="host")`` under one ``QuantConfig`` and runs it. The
configs are every requantization / rounding (mult_shift with double, single and tonearest
rounding, and fp32) with the minmax observer, then every other observer (percentile, kl, mse) with
mult_shift/double. Columns:

- accuracy: top-1 on the test set, and its change from FP32 in percentage points;
- agree: share of test samples whose INT8 top-1 equals the FP32 top-1;
- SQNR: ``10 log10(sum(ref^2) / sum((ref - int8)^2))`` of the model output over the test set,
  against the onnxruntime output;
- compile: ``tvmq.compile`` wall time (load + calibrate + quantize + build), from its report;
- ms/sample: both runtimes one sample at a time (batch 1) after one warm-up sample, in this run.

Models:

- ``digits``: the bundled CNN (``tvmq.data``), calibrated on its 200 calibration images and
  tested on all 360 test images. The issue's target is INT8 within 0.5 points of FP32; the ``ok``
  column marks each row.
- ``ppocr_cls``: the PP-OCR mobile v2.0 text-direction classifier (upright / rotated by 180
  degrees) from the rapidocr_onnxruntime 1.4.4 wheel, on synthetic text lines
  (``textlines.make_cls_dataset``: 64 calibration lines, seed 1; 400 test lines, seed 0). Both
  runtimes take the file as shipped; tvmq fixes its input to 1x3x48x192.

``--quick`` runs the default config only, with 16 calibration / 100 test text lines (the digits
sizes stay: that model is fast). A model that cannot be fetched is skipped with its reason; a
config that fails to compile or run prints ``failed: <reason>`` in its row (the traceback goes to
stderr) and the benchmark goes on.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import textwrap
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from models import fetch_model
from textlines import CLS_IMAGE_SHAPE, make_cls_dataset
from tqdm import tqdm

import tvmq
from tvmq.data import digits_model_path, load_digits

DEFAULT_CONFIG = tvmq.QuantConfig(sqnr_samples=0)
"""mult_shift/double requantization, minmax observer; per-layer SQNR off (not part of compile)."""

CONFIGS = (
    DEFAULT_CONFIG,
    dataclasses.replace(DEFAULT_CONFIG, rounding="single"),
    dataclasses.replace(DEFAULT_CONFIG, rounding="tonearest"),
    dataclasses.replace(DEFAULT_CONFIG, requant="fp32"),
    dataclasses.replace(DEFAULT_CONFIG, observer="percentile"),
    dataclasses.replace(DEFAULT_CONFIG, observer="kl"),
    dataclasses.replace(DEFAULT_CONFIG, observer="mse"),
)

DIGITS_TARGET_POINTS = 0.5
"""The issue's target: INT8 accuracy within 0.5 points of FP32 on the bundled digits model."""

_PPOCR_INPUT_SHAPE = (1, *CLS_IMAGE_SHAPE)


class _Skip(Exception):
    """A model cannot be benchmarked here (not downloadable, no fonts, ...)."""


@dataclass
class _Task:
    """One model to benchmark: what onnxruntime runs, what tvmq compiles, and the data."""

    name: str
    reference: Path  # ONNX file run by onnxruntime: the FP32 row
    model: Path | onnx.ModelProto  # what tvmq compiles
    input_shape: tuple[int, ...] | None
    x_calib: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    target_points: float | None = None  # accuracy budget vs FP32; adds the "ok" column
    notes: tuple[str, ...] = ()


@dataclass
class _Row:
    """One table row: the FP32 reference (config None) or one INT8 config."""

    config: tvmq.QuantConfig | None
    accuracy: float = math.nan
    agreement: float = math.nan
    sqnr_db: float = math.nan
    compile_s: float = math.nan
    ms_per_sample: float = math.nan
    error: str | None = None


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    start = time.perf_counter()
    bundled: tuple[_Row, int] | None = None  # digits default-config row, calibration size
    for name in args.models:
        full, quick = _SIZES[name]
        n_calib, n_test = quick if args.quick else full
        n_calib = args.calib if args.calib is not None else n_calib
        n_test = args.test if args.test is not None else n_test
        try:
            task = _LOADERS[name](n_calib, n_test)
        except _Skip as skip:
            print(f"\n{name}: skipped: {skip}")
            continue
        configs = CONFIGS[:1] if args.quick else CONFIGS
        reference, rows, failures = _benchmark(task, configs)
        print()
        print(_table(task, reference, rows))
        for failure in failures:
            print(failure, file=sys.stderr)
        if name == "digits":
            bundled = (rows[0], len(task.x_calib))

    print()
    if bundled is None:
        print("Compile time of the bundled model: not measured (run with --models digits).")
    elif bundled[0].error is not None:
        print(f"Compile time of the bundled model: failed: {bundled[0].error}")
    else:
        print(
            "Compile time of the bundled model (calibrate + quantize + build): "
            f"{bundled[0].compile_s:.1f} s [{DEFAULT_CONFIG.label}, "
            f"{bundled[1]} calibration samples]"
        )
    print(f"Total benchmark time: {time.perf_counter() - start:.0f} s")
    return 0


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="FP32 (onnxruntime) vs tvmq INT8 accuracy, per quantization config."
    )
    parser.add_argument(
        "--models", default=",".join(_LOADERS), type=_model_list,
        help=f"comma-separated models to run, from {', '.join(_LOADERS)} (default: all)",
    )
    parser.add_argument(
        "--quick", action="store_true",
        help="default config only, 16 calibration / 100 test samples for ppocr_cls",
    )
    parser.add_argument("--calib", type=_positive_int, help="calibration samples for every model")
    parser.add_argument("--test", type=_positive_int, help="test samples for every model")
    return parser.parse_args(argv)


def _model_list(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in _LOADERS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown models {unknown}; choose from {list(_LOADERS)}")
    return names


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _digits_task(n_calib: int, n_test: int) -> _Task:
    x_calib, x_test, y_test = load_digits()
    path = digits_model_path()
    return _Task("digits", path, path, None, x_calib[:n_calib], x_test[:n_test], y_test[:n_test],
                 target_points=DIGITS_TARGET_POINTS)


def _ppocr_cls_task(n_calib: int, n_test: int) -> _Task:
    try:
        path = fetch_model("ppocr_cls")
        x_calib, _ = make_cls_dataset(n_calib, seed=1)
        x_test, y_test = make_cls_dataset(n_test, seed=0)
    except RuntimeError as e:
        raise _Skip(str(e).replace("\n", " | ")) from e
    return _Task("ppocr_cls", path, path, _PPOCR_INPUT_SHAPE, x_calib, x_test, y_test)


_LOADERS: dict[str, Callable[[int, int], _Task]] = {
    "digits": _digits_task,
    "ppocr_cls": _ppocr_cls_task,
}
# (n_calib, n_test) for a full and a --quick run.
_SIZES = {"digits": ((200, 360), (200, 360)), "ppocr_cls": ((64, 400), (16, 100))}


def _benchmark(
    task: _Task, configs: tuple[tvmq.QuantConfig, ...]
) -> tuple[_Row, list[_Row], list[str]]:
    """The FP32 row, one row per config and the tracebacks of the configs that failed."""
    ref_out, ref_s = _run_onnxruntime(task.reference, task.x_test)
    reference = _Row(None, accuracy=_accuracy(ref_out, task.y_test), agreement=100.0,
                     ms_per_sample=1e3 * ref_s)
    rows, failures = [], []
    bar = tqdm(configs, desc=task.name, unit="config", leave=False, file=sys.stderr)
    for config in bar:
        bar.set_postfix_str(config.label)
        try:
            rows.append(_measure(task, config, ref_out))
        except Exception as e:
            lines = str(e).strip().splitlines()
            reason = f"{type(e).__name__}: {lines[-1]}" if lines else type(e).__name__
            rows.append(_Row(config, error=reason))
            failures.append(f"{task.name} [{config.label}] failed:\n{traceback.format_exc()}")
    bar.close()
    return reference, rows, failures


def _measure(task: _Task, config: tvmq.QuantConfig, ref_out: np.ndarray) -> _Row:
    cm = tvmq.compile(task.model, target="host", config=config, calib=task.x_calib,
                      input_shape=task.input_shape, progress=False)
    out, seconds = _timed_per_sample(cm.run, task.x_test)
    return _Row(
        config,
        accuracy=_accuracy(out, task.y_test),
        agreement=100.0 * float(np.mean(_top1(out) == _top1(ref_out))),
        sqnr_db=_sqnr_db(ref_out, out),
        compile_s=cm.report().compile_seconds,
        ms_per_sample=1e3 * seconds,
    )


def _run_onnxruntime(model: Path | onnx.ModelProto, x: np.ndarray) -> tuple[np.ndarray, float]:
    """First output of ``model`` for each sample of ``x`` and the seconds per sample."""
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return _timed_per_sample(lambda s: session.run(None, {name: s})[0], x)


def _timed_per_sample(
    run: Callable[[np.ndarray], np.ndarray], x: np.ndarray
) -> tuple[np.ndarray, float]:
    """Stacked ``run`` of each sample of ``x`` (batch 1) and seconds per sample, after a warm-up."""
    run(x[:1])
    start = time.perf_counter()
    out = np.concatenate([run(x[i : i + 1]) for i in range(len(x))])
    return out, (time.perf_counter() - start) / len(x)


def _top1(out: np.ndarray) -> np.ndarray:
    return out.reshape(len(out), -1).argmax(axis=1)


def _accuracy(out: np.ndarray, labels: np.ndarray) -> float:
    return 100.0 * float(np.mean(_top1(out) == labels))


def _sqnr_db(reference: np.ndarray, approx: np.ndarray) -> float:
    """``10 log10(sum(ref^2) / sum((ref - approx)^2))`` in float64; inf when equal."""
    ref = reference.astype(np.float64)
    noise = float(np.sum((ref - approx.astype(np.float64)) ** 2))
    return math.inf if noise == 0.0 else 10.0 * math.log10(float(np.sum(ref**2)) / noise)


def _table(task: _Task, reference: _Row, rows: list[_Row]) -> str:
    """A fixed-width table: the FP32 row, then one row per config."""
    head = ["model", "config", "acc %", "Δ pts", "agree %", "SQNR dB", "compile s",
            "tvmq ms", "ort ms", "tvmq/ort"]
    if task.target_points is not None:
        head.append("ok")
    ort_ms = reference.ms_per_sample
    cells = [[task.name, "fp32 onnxruntime", f"{reference.accuracy:.2f}", "", "", "", "", "",
              f"{ort_ms:.3f}", ""] + ([""] if task.target_points is not None else [])]
    for row in rows:
        if row.error is not None:
            cells.append([task.name, row.config.label, f"failed: {row.error}"])
            continue
        delta = row.accuracy - reference.accuracy
        line = [task.name, row.config.label, f"{row.accuracy:.2f}", f"{delta:+.2f}",
                f"{row.agreement:.2f}", f"{row.sqnr_db:.1f}", f"{row.compile_s:.1f}",
                f"{row.ms_per_sample:.3f}", f"{ort_ms:.3f}", f"{row.ms_per_sample / ort_ms:.1f}x"]
        if task.target_points is not None:
            line.append("✓" if abs(delta) <= task.target_points + 1e-9 else "✗")
        cells.append(line)
    # Widths from complete rows only: a failure message runs on past the columns.
    widths = [max(len(c[i]) for c in [head, *cells] if len(c) == len(head))
              for i in range(len(head))]
    left = {0, 1}  # text columns; numbers align right

    def fmt(line: list[str]) -> str:
        if len(line) != len(head):
            return "  ".join([*(c.ljust(w) for c, w in zip(line[:2], widths)), line[2]])
        return "  ".join(c.ljust(w) if i in left else c.rjust(w)
                         for i, (c, w) in enumerate(zip(line, widths))).rstrip()

    n = len(task.x_test)
    title = (f"{task.name}: {task.reference.name}, {len(task.x_calib)} calibration / "
             f"{n} test samples, batch 1 timings")
    lines = [title, fmt(head), "  ".join("-" * w for w in widths), *map(fmt, cells)]
    lines += [textwrap.fill(note, 100, initial_indent="note: ", subsequent_indent="      ")
              for note in task.notes]
    if task.target_points is not None:
        ok = [r for r in rows if r.error is None
              and abs(r.accuracy - reference.accuracy) <= task.target_points + 1e-9]
        lines.append(f"ok: INT8 within {task.target_points} points of FP32 "
                     f"(issue target): {len(ok)}/{len(rows)} configs")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
