"""Accuracy benchmark: FP32 (onnxruntime) against tvmq INT8 and LBFP on the host target.

Run from the repository root::

    python benchmarks/accuracy.py [--models digits,ppocr_cls,ppocr_rec] [--configs int8,lbfp]
                                  [--quick] [--calib N] [--test N] [--json PATH]

For each model the FP32 row runs the ONNX file with onnxruntime (CPUExecutionProvider); each
other row compiles it with ``tvmq.compile(target="host")`` under one ``QuantConfig`` and runs it.
The configs (``--configs``, default both sets):

- ``int8``: every requantization / rounding (mult_shift with double, single and tonearest
  rounding, and fp32) with the minmax observer, then every other observer (percentile, kl, mse)
  with mult_shift/double;
- ``lbfp``: LBFP (logarithmic block floating point, ``tvmq.numerics.lbfp``; conv/matmul inputs,
  weights and outputs, blocks of 16 channels sharing one exponent, the ops in between in
  float32) at the default fractional bits of each width: lbfp8 f4 (7-bit code, steps of
  2^(1/16), 126 steps = 7.9 octaves below the block maximum) with minmax exponents (ceil log2
  max, nothing saturates; the default) and with the kl choice (the paper's); lbfp6 f2 (steps
  of 2^(1/4), 7.5 octaves) and lbfp4 f1 (steps of 2^(1/2), 3 octaves), both minmax.

Columns:

- the task's metric and its change from FP32 in percentage points: top-1 ``acc %`` for the
  classifiers; for the recognizer ``exact %`` (share of lines whose decoded string equals the
  ground truth) and ``CER %`` (character error rate: Levenshtein distance summed over the lines
  / ground-truth characters; lower is better);
- agree: share of test samples whose prediction (top-1 class, or decoded string) equals the FP32
  one;
- SQNR: ``10 log10(sum(ref^2) / sum((ref - out)^2))`` of the model output over the test set,
  against the onnxruntime output;
- compile: ``tvmq.compile`` wall time (load + calibrate + quantize + build), from its report;
- ms/sample: both runtimes one sample at a time (batch 1) after one warm-up sample, in this run;
- ok, on rows with a target: INT8 on digits within 0.5 points of FP32 (the INT8 issue's
  target), LBFP8 on every model within 1 point of FP32 (the LBFP issue's target).

Models (calibration / test samples; ``--quick`` sizes in brackets):

- ``digits``: the bundled CNN (``tvmq.data``), calibrated on its 200 calibration images and
  tested on all 360 test images [same].
- ``ppocr_cls``: the PP-OCR mobile v2.0 text-direction classifier (upright / rotated by 180
  degrees) from the rapidocr_onnxruntime 1.4.4 wheel, on synthetic text lines
  (``textlines.make_cls_dataset``: 64 calibration lines, seed 1; 400 test lines, seed 0)
  [16 / 100]. Both runtimes take the file as shipped; tvmq fixes its input to 1x3x48x192.
- ``ppocr_rec``: the PP-OCRv4 text recognizer (CTC over 6625 classes: blank, the 6623
  characters of the model's ``character`` metadata, space) from the same wheel, on upright
  synthetic lines of ASCII words, numbers, dates and amounts (``textlines.make_rec_dataset``:
  16 calibration lines, seed 1; 50 test lines, seed 0) [4 / 20], each resized to height 48 and
  zero-padded to width 320 as PaddleOCR does. Greedy CTC decoding (argmax per time step, repeats
  collapsed, blanks dropped), leading and trailing spaces stripped (the model reads margins and
  padding as spaces). tvmq fixes the input to 1x3x48x320; onnxruntime runs the same padded
  inputs. Its ok column compares exact-match. Measured on this 2-core machine: compile about
  2-4 min per config (build, and loading the constants into the VM, once for calibration and
  once for the result), about 6 min with lbfp8 kl (the weights' kl exponents); a test line
  takes about 0.3 s with INT8 and 3-5 s with LBFP (onnxruntime: 15 ms).

``--quick`` runs the first config of each chosen set (int8 mult_shift/double minmax, lbfp8 minmax)
with the bracketed sizes. A model that cannot be fetched is skipped with its reason; a config that
fails to compile or run prints ``failed: <reason>`` in its row (the traceback goes to stderr) and
the benchmark goes on. The printed rows and the run's environment (commit, CPU, threads,
versions, command) go to ``benchmarks/results/accuracy.json`` (``--json PATH``).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import textwrap
import time
import traceback
from dataclasses import dataclass, field

import numpy as np
from _common import (
    add_json_argument,
    name_list,
    positive_int,
    seconds_per_sample,
    tvm_pool_threads,
    write_results,
)
from metrics import sqnr_db
from ort_runner import ORT_THREADS, run_onnxruntime
from tasks import LOADERS, SIZES, Skip, Task
from tqdm import tqdm

import tvmq

DEFAULT_CONFIG = tvmq.QuantConfig(sqnr_samples=0)
"""mult_shift/double requantization, minmax observer; per-layer SQNR off (not part of compile)."""

INT8_CONFIGS = (
    DEFAULT_CONFIG,
    dataclasses.replace(DEFAULT_CONFIG, rounding="single"),
    dataclasses.replace(DEFAULT_CONFIG, rounding="tonearest"),
    dataclasses.replace(DEFAULT_CONFIG, requant="fp32"),
    dataclasses.replace(DEFAULT_CONFIG, observer="percentile"),
    dataclasses.replace(DEFAULT_CONFIG, observer="kl"),
    dataclasses.replace(DEFAULT_CONFIG, observer="mse"),
)

LBFP_CONFIGS = (
    tvmq.QuantConfig(scheme="lbfp8", sqnr_samples=0),  # max exponents (the default)
    tvmq.QuantConfig(scheme="lbfp8", observer="kl", sqnr_samples=0),  # the paper's KL choice
    tvmq.QuantConfig(scheme="lbfp6", observer="minmax", sqnr_samples=0),
    tvmq.QuantConfig(scheme="lbfp4", observer="minmax", sqnr_samples=0),
)

CONFIG_SETS = {"int8": INT8_CONFIGS, "lbfp": LBFP_CONFIGS}
"""``--configs`` choices; ``--quick`` runs the first config of each chosen set."""

CONFIGS = INT8_CONFIGS + LBFP_CONFIGS

LBFP8_TARGET_POINTS = 1.0
"""The LBFP issue's target: LBFP8 within 1 point of FP32 (primary metric), on every model."""


@dataclass
class _Row:
    """One table row: the FP32 reference (config None) or one quantized config."""

    config: tvmq.QuantConfig | None
    score: float = math.nan
    extras: dict[str, float] = field(default_factory=dict)
    agreement: float = math.nan
    sqnr_db: float = math.nan
    compile_s: float = math.nan
    ms_per_sample: float = math.nan
    error: str | None = None


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    start = time.perf_counter()
    configs = tuple(c for name in args.configs
                    for c in (CONFIG_SETS[name][:1] if args.quick else CONFIG_SETS[name]))
    bundled: tuple[_Row, int] | None = None  # digits default-config row, calibration size
    results: dict = {"models": {}, "skipped": {}}
    for name in args.models:
        full, quick = SIZES[name]
        n_calib, n_test = quick if args.quick else full
        n_calib = args.calib if args.calib is not None else n_calib
        n_test = args.test if args.test is not None else n_test
        try:
            task = LOADERS[name](n_calib, n_test)
        except Skip as skip:
            print(f"\n{name}: skipped: {skip}")
            results["skipped"][name] = str(skip)
            continue
        reference, rows, failures = _benchmark(task, configs)
        print()
        print(_table(task, reference, rows), flush=True)
        results["models"][name] = {"title": _title(task), "rows": _records(task, reference, rows)}
        for failure in failures:
            print(failure, file=sys.stderr)
        if name == "digits" and rows and rows[0].config == DEFAULT_CONFIG:
            bundled = (rows[0], len(task.x_calib))

    print()
    if bundled is None:
        print("Compile time of the bundled model: not measured "
              "(run with --models digits --configs int8).")
    elif bundled[0].error is not None:
        print(f"Compile time of the bundled model: failed: {bundled[0].error}")
    else:
        print(
            "Compile time of the bundled model (calibrate + quantize + build): "
            f"{bundled[0].compile_s:.1f} s [{DEFAULT_CONFIG.label}, "
            f"{bundled[1]} calibration samples]"
        )
        results["bundled_compile_s"] = bundled[0].compile_s
    results["total_s"] = time.perf_counter() - start
    print(f"Total benchmark time: {results['total_s']:.0f} s")
    path = write_results(args.json, "accuracy", results, argv=argv,
                         threads={"tvm": tvm_pool_threads(), "onnxruntime": ORT_THREADS})
    print(f"wrote {path}")
    return 0


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="FP32 (onnxruntime) vs tvmq INT8 / LBFP accuracy, per quantization config."
    )
    parser.add_argument(
        "--models", default=",".join(LOADERS),
        type=lambda text: name_list(text, LOADERS, "models"),
        help=f"comma-separated models to run, from {', '.join(LOADERS)} (default: all)",
    )
    parser.add_argument(
        "--configs", default=",".join(CONFIG_SETS),
        type=lambda text: name_list(text, CONFIG_SETS, "config sets"),
        help=f"comma-separated config sets, from {', '.join(CONFIG_SETS)} (default: all)",
    )
    parser.add_argument(
        "--quick", action="store_true",
        help="first config of each set only, fewer calibration / test text lines",
    )
    parser.add_argument("--calib", type=positive_int, help="calibration samples for every model")
    parser.add_argument("--test", type=positive_int, help="test samples for every model")
    add_json_argument(parser, "accuracy")
    return parser.parse_args(argv)


def _benchmark(
    task: Task, configs: tuple[tvmq.QuantConfig, ...]
) -> tuple[_Row, list[_Row], list[str]]:
    """The FP32 row, one row per config and the tracebacks of the configs that failed."""
    ref_out, ref_s = run_onnxruntime(task.reference, task.x_test)
    ref_pred = task.predict(ref_out)
    score, extras = task.metric(ref_pred, task.y_test)
    reference = _Row(None, score=score, extras=extras, agreement=100.0,
                     ms_per_sample=1e3 * ref_s)
    rows, failures = [], []
    bar = tqdm(configs, desc=task.name, unit="config", leave=False, file=sys.stderr)
    for config in bar:
        bar.set_postfix_str(config.label)
        try:
            rows.append(_measure(task, config, ref_out, ref_pred))
        except Exception as e:
            lines = str(e).strip().splitlines()
            reason = f"{type(e).__name__}: {lines[-1]}" if lines else type(e).__name__
            rows.append(_Row(config, error=reason))
            failures.append(f"{task.name} [{config.label}] failed:\n{traceback.format_exc()}")
    bar.close()
    return reference, rows, failures


def _measure(task: Task, config: tvmq.QuantConfig, ref_out: np.ndarray, ref_pred: list) -> _Row:
    cm = tvmq.compile(task.model, target="host", config=config, calib=task.x_calib,
                      input_shape=task.input_shape, progress=False)
    out, seconds = seconds_per_sample(cm.run, task.x_test)
    pred = task.predict(out)
    score, extras = task.metric(pred, task.y_test)
    return _Row(
        config,
        score=score,
        extras=extras,
        agreement=100.0 * float(np.mean([p == r for p, r in zip(pred, ref_pred, strict=True)])),
        sqnr_db=sqnr_db(ref_out, out),
        compile_s=cm.report().compile_seconds,
        ms_per_sample=1e3 * seconds,
    )


def _target(task: Task, config: tvmq.QuantConfig) -> tuple[str, float] | None:
    """The issue target a config's row is held to: (what, points of the primary metric)."""
    if config.scheme == "lbfp8":
        return "LBFP8", LBFP8_TARGET_POINTS
    if config.scheme == "int8" and task.int8_target_points is not None:
        return "INT8", task.int8_target_points
    return None


def _within(row: _Row, reference: _Row, points: float) -> bool:
    return abs(row.score - reference.score) <= points + 1e-9


def _title(task: Task) -> str:
    return (f"{task.name}: {task.reference.name}, {len(task.x_calib)} calibration / "
            f"{len(task.x_test)} test samples, batch 1 timings")


def _records(task: Task, reference: _Row, rows: list[_Row]) -> list[dict]:
    """The table's rows as dicts keyed by its headers, numbers unrounded; ``ok`` is true /
    false on rows held to a target, else null; a failed row has ``failed`` instead."""
    first = {"model": task.name, "config": "fp32 onnxruntime", task.primary: reference.score,
             **reference.extras, "ort ms": reference.ms_per_sample}
    out = [first]
    for row in rows:
        record = {"model": task.name, "config": row.config.label}
        if row.error is not None:
            out.append({**record, "failed": row.error})
            continue
        record.update({task.primary: row.score, "Δ pts": row.score - reference.score})
        for extra in task.extras:
            record[extra] = row.extras[extra]
            record[f"Δ {extra.removesuffix(' %')}"] = row.extras[extra] - reference.extras[extra]
        target = _target(task, row.config)
        record.update({
            "agree %": row.agreement, "SQNR dB": row.sqnr_db, "compile s": row.compile_s,
            "tvmq ms": row.ms_per_sample, "ort ms": reference.ms_per_sample,
            "tvmq/ort": row.ms_per_sample / reference.ms_per_sample,
            "ok": None if target is None else _within(row, reference, target[1]),
        })
        out.append(record)
    return out


def _table(task: Task, reference: _Row, rows: list[_Row]) -> str:
    """A fixed-width table: the FP32 row, then one row per config."""
    targets = [_target(task, row.config) for row in rows]
    with_ok = any(t is not None for t in targets)
    head = ["model", "config", task.primary, "Δ pts"]
    for extra in task.extras:
        head += [extra, f"Δ {extra.removesuffix(' %')}"]
    head += ["agree %", "SQNR dB", "compile s", "tvmq ms", "ort ms", "tvmq/ort"]
    if with_ok:
        head.append("ok")
    ort_ms = reference.ms_per_sample
    first = [task.name, "fp32 onnxruntime", f"{reference.score:.2f}", ""]
    for extra in task.extras:
        first += [f"{reference.extras[extra]:.2f}", ""]
    cells = [first + ["", "", "", "", f"{ort_ms:.3f}", ""] + ([""] if with_ok else [])]
    for row, target in zip(rows, targets, strict=True):
        if row.error is not None:
            cells.append([task.name, row.config.label, f"failed: {row.error}"])
            continue
        line = [task.name, row.config.label, f"{row.score:.2f}",
                f"{row.score - reference.score:+.2f}"]
        for extra in task.extras:
            value = row.extras[extra]
            line += [f"{value:.2f}", f"{value - reference.extras[extra]:+.2f}"]
        line += [f"{row.agreement:.2f}", f"{row.sqnr_db:.1f}", f"{row.compile_s:.1f}",
                 f"{row.ms_per_sample:.3f}", f"{ort_ms:.3f}", f"{row.ms_per_sample / ort_ms:.1f}x"]
        if with_ok:
            line.append("" if target is None else
                        "✓" if _within(row, reference, target[1]) else "✗")
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

    lines = [_title(task), fmt(head), "  ".join("-" * w for w in widths), *map(fmt, cells)]
    lines += [textwrap.fill(note, 100, initial_indent="note: ", subsequent_indent="      ")
              for note in task.notes]
    for what in dict.fromkeys(t[0] for t in targets if t is not None):
        held = [(row, t[1]) for row, t in zip(rows, targets, strict=True)
                if t is not None and t[0] == what]
        ok = [row for row, points in held if row.error is None
              and _within(row, reference, points)]
        points = held[0][1]
        lines.append(f"ok: {what} {task.primary.removesuffix(' %')} within {points:g} "
                     f"point{'s' if points != 1 else ''} of FP32 (issue target): "
                     f"{len(ok)}/{len(held)} configs")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
