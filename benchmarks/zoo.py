"""The model zoo scoreboard: every zoo model through ONNX Runtime and tvmq, side by side.

Run from the repository root::

    python benchmarks/zoo.py [--models digits,ppocr_cls,...] [--configs int8,lbfp8,mixed]
                             [--quick] [--verify 8] [--runs 5] [--rounds 3]
                             [--json PATH] [--markdown PATH]

The models are the tasks of ``benchmarks/tasks.py`` (each: the ONNX file as published, its
input shape, a calibration set, an evaluation set and the task's metric). Rows per model:

- ``fp32 ort``: the file as shipped, onnxruntime's CPU provider; the reference of ``agree``
  and ``SQNR``;
- ``int8 ort``: ORT's ``quantize_static`` of it (QDQ, per-channel int8 weights, uint8
  activations, MinMax) on the same calibration samples; a file shipped already quantized
  (ddddocr's is ORT dynamic INT8) is first turned back into the float model tvmq imports;
- ``tvmq int8``: ``tvmq.compile(target="host")`` with the default QuantConfig (mult_shift /
  double rounding, minmax);
- ``tvmq lbfp8``: ``QuantConfig(scheme="lbfp8")``;
- ``tvmq mixed``: ``QuantConfig(scheme="mixed", latency_budget=0.75)``: 4/8-bit layers priced
  on the npu-small accelerator's measured cycles, 75% of INT8's;
- ``tvmq int8-accel``: the default INT8 with ``target="accel"``: conv/matmul layers on the
  npu-small accelerator's C emulator, the rest on the host (no latency: emulated).

Columns: the task's metric and its change from FP32 in points; ``agree %``, the share of
samples whose prediction equals FP32's; ``SQNR dB`` of the first output against FP32 over the
evaluation set; ``exact``, samples bit-exact between the host build and the NumPy oracle
(``CompiledModel.verify`` on the first ``--verify`` evaluation samples, every output); ``float
ops``, ops tvmq left in float (its report); ``compile s``; ``ms``, host latency at batch 1
(every row's runtime takes turns on the same input, ``--rounds`` rounds of ``--runs`` calls,
each turn after a pause and warm-up calls; the median), and ``/ORT int8``, that latency over
ORT INT8's (this machine is shared: compare the ratios of one run); ``loops %``, the share of
a tvmq host build's kernel time spent in kernels left on TVM's default loops (no tvmq
schedule; ``CompiledModel.benchmark``). The JSON also keeps each tvmq row's compile time by
phase (``report.timings``). A row that fails prints
``failed: <reason>`` (its traceback goes to stderr) and the run goes on.

``--quick`` runs one model (``digits`` unless ``--models`` says) with the tasks' quick sizes;
``--render JSON [JSON ...]`` only writes the markdown table of earlier runs' result files.
The rows and the run's environment go to ``benchmarks/results/zoo.json`` (``--json``) and a
markdown table to ``benchmarks/results/zoo.md`` (``--markdown``), which the README shows.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from _common import (
    RESULTS_DIR,
    add_json_argument,
    format_table,
    interleaved_median_ms,
    name_list,
    positive_int,
    tvm_pool_threads,
    write_results,
)
from metrics import sqnr_db
from ort_runner import ORT_THREADS, ort_session, ort_static_int8, run_onnxruntime
from tasks import LOADERS, SIZES, Skip, Task
from tqdm import tqdm

import tvmq
from tvmq.onnx_lower import lower_for_tvm
from tvmq.onnx_static import make_static

CONFIGS: dict[str, tuple[str, tvmq.QuantConfig]] = {
    "int8": ("host", tvmq.QuantConfig()),
    "lbfp8": ("host", tvmq.QuantConfig(scheme="lbfp8")),
    "mixed": ("host", tvmq.QuantConfig(scheme="mixed", latency_budget=0.75,
                                       sensitivity_samples=4)),
    "int8-accel": ("accel", tvmq.QuantConfig()),
    "int8-cle": ("host", tvmq.QuantConfig(equalize=True)),
    "int8-no-bc": ("host", tvmq.QuantConfig(bias_correction=False)),
    "int8-adaround": ("host", tvmq.QuantConfig(weight_rounding="adaround")),
    "w4a8": ("host", tvmq.QuantConfig(weight_bits=4)),
    "w4a8-adaround": ("host", tvmq.QuantConfig(weight_bits=4, weight_rounding="adaround")),
}
"""``--configs`` choices -> (target, config): the defaults of each scheme (mixed: 4 sensitivity
samples) on the host, INT8 on the accelerator emulator (npu-small), and the boosters: INT8 with
cross-layer equalization, without bias correction (on by default), with AdaRound, and 4-bit
weights (W4A8) with nearest and learned rounding."""


@dataclass
class Row:
    """One scoreboard row: a runtime and config on one model."""

    model: str
    config: str
    metric: str = ""  # the task's primary metric, e.g. "exact %"
    score: float = math.nan
    extras: dict[str, float] = field(default_factory=dict)
    agree: float = math.nan
    sqnr_db: float = math.nan
    exact: str = ""
    float_ops: int | None = None
    compile_s: float = math.nan
    ms: float = math.nan
    loops_pct: float = math.nan  # tvmq host: share of the kernels' time on TVM's loops
    timings: dict[str, float] | None = None  # tvmq: compile seconds by phase (report.timings)
    error: str | None = None
    run: Callable[[np.ndarray], object] | None = field(default=None, repr=False)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    if args.render:
        rows, skipped = [], {}
        for path in args.render:  # several runs: the models each one scored
            more, more_skipped = read_rows(path)
            rows += more
            skipped.update(more_skipped)
        scored = {r.model for r in rows}
        skipped = {k: v for k, v in skipped.items() if k not in scored}
        args.markdown.write_text(markdown(rows, skipped) + "\n")
        print(f"wrote {args.markdown} from {', '.join(map(str, args.render))}")
        return 0
    start = time.perf_counter()
    rows: list[Row] = []
    skipped: dict[str, str] = {}
    failures: list[str] = []
    for name in args.models:
        full, quick = SIZES[name]
        n_calib, n_test = quick if args.quick else full
        try:
            task = LOADERS[name](n_calib, n_test)
        except Skip as skip:
            print(f"{name}: skipped: {skip}", flush=True)
            skipped[name] = str(skip)
            continue
        model_rows = score_model(task, args.configs, args, failures)
        print()
        print(_title(task))
        print(format_table(*_cells(model_rows, task)), flush=True)
        rows += model_rows
        _write(args, argv, rows, skipped, time.perf_counter() - start)  # a cut-short run keeps them
    for failure in failures:
        print(failure, file=sys.stderr)
    total_s = time.perf_counter() - start
    print(f"\nTotal: {total_s:.0f} s")
    path = _write(args, argv, rows, skipped, total_s)
    print(f"wrote {path} and {args.markdown}")
    return 0


def _write(args: argparse.Namespace, argv: list[str] | None, rows: list[Row],
           skipped: dict[str, str], total_s: float) -> Path:
    """The JSON record and the markdown table of the rows so far."""
    results = {"rows": [_record(r) for r in rows], "skipped": skipped, "total_s": total_s}
    path = write_results(args.json, "zoo", results, argv=argv,
                         threads={"tvm": tvm_pool_threads(), "onnxruntime": ORT_THREADS})
    args.markdown.write_text(markdown(rows, skipped) + "\n")
    return path


def score_model(task: Task, configs: list[str], args: argparse.Namespace,
                failures: list[str]) -> list[Row]:
    """Every row of one model: metrics, then latencies measured in interleaved turns."""
    ref_out, _ = run_onnxruntime(task.reference, task.x_test)
    ref_pred = task.predict(ref_out)
    score, extras = task.metric(ref_pred, task.y_test)
    fp32_session = ort_session(task.reference)
    fp32 = Row(task.name, "fp32 ort", task.primary, score, extras, agree=100.0,
               run=_ort_runner(fp32_session))
    rows = [fp32]
    with tempfile.TemporaryDirectory(prefix="tvmq-zoo-") as tmp:
        steps = [("int8 ort", lambda: _ort_int8(task, Path(tmp)))]
        steps += [(f"tvmq {name}", lambda name=name: _tvmq(task, *CONFIGS[name], args.verify))
                  for name in configs]
        bar = tqdm(steps, desc=task.name, unit="row", leave=False, file=sys.stderr)
        for label, make in bar:
            bar.set_postfix_str(label)
            try:
                row, out = make()
            except Exception as err:
                lines = str(err).strip().splitlines()
                reason = f"{type(err).__name__}: {lines[-1] if lines else ''}"
                rows.append(Row(task.name, label, task.primary, error=reason))
                failures.append(f"{task.name} [{label}] failed:\n{traceback.format_exc()}")
                continue
            row.model, row.config, row.metric = task.name, label, task.primary
            pred = task.predict(out)
            row.score, row.extras = task.metric(pred, task.y_test)
            row.agree = 100.0 * float(np.mean([p == r for p, r in zip(pred, ref_pred)]))
            row.sqnr_db = sqnr_db(ref_out, out)
            rows.append(row)
        bar.close()
        timed = {r.config: r.run for r in rows if r.run is not None}
        x = np.ascontiguousarray(task.x_test[:1], np.float32)
        ms = interleaved_median_ms({k: (lambda f=f: f(x)) for k, f in timed.items()},
                                   args.runs, args.rounds)
    for row in rows:
        row.ms = ms.get(row.config, math.nan)
        row.run = None
    return rows


def _ort_runner(session) -> Callable[[np.ndarray], object]:
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})


def _ort_int8(task: Task, work: Path) -> tuple[Row, np.ndarray]:
    t0 = time.perf_counter()
    path = ort_static_int8(_float_source(task, work), task.x_calib, work)
    compile_s = time.perf_counter() - t0
    out, _ = run_onnxruntime(path, task.x_test)
    return Row("", "", compile_s=compile_s, run=_ort_runner(ort_session(path))), out


QUANTIZED_OPS = {"QuantizeLinear", "DynamicQuantizeLinear", "ConvInteger", "MatMulInteger",
                 "DynamicQuantizeLSTM", "QLinearConv", "QLinearMatMul"}


def _float_source(task: Task, work: Path) -> Path:
    """What ORT's quantizer starts from: the reference file, or, when that is already quantized
    (ddddocr's captcha model is ORT dynamic INT8), the float model tvmq imports from it (input
    shape fixed, dynamic quantization undone, LSTM unrolled: tvmq.onnx_lower)."""
    proto = onnx.load(str(task.reference))
    if not QUANTIZED_OPS & {n.op_type for n in proto.graph.node}:
        return Path(task.reference)
    name = ort_session(task.reference).get_inputs()[0].name
    path = work / "float.onnx"
    onnx.save(lower_for_tvm(make_static(proto, name, task.input_shape)), str(path))
    return path


def _tvmq(task: Task, target: str, config: tvmq.QuantConfig, n_verify: int
          ) -> tuple[Row, np.ndarray]:
    cm = tvmq.compile(task.model, target=target, config=config, calib=task.x_calib,
                      input_shape=task.input_shape, progress=False)
    outs = [cm.run(x[None]) for x in task.x_test]
    out = np.concatenate([o[0] if isinstance(o, tuple) else o for o in outs])
    check = cm.verify(task.x_test, n=n_verify)
    exact = f"{min(o.exact for o in check.outputs)}/{check.outputs[0].samples}"
    report = cm.report()
    timed = cm.run if target == "host" else None  # the emulator's wall time means nothing
    loops = math.nan
    if target == "host":
        loops = 100.0 * cm.benchmark(task.x_test[:1], runs=5, warmup=1).loops_share
    return Row("", "", exact=exact, float_ops=len(report.float_ops),
               compile_s=report.compile_seconds, loops_pct=loops, timings=report.timings,
               run=timed), out


def _title(task: Task) -> str:
    shape = "x".join(map(str, task.input_shape)) if task.input_shape else "as shipped"
    return (f"{task.name}: {Path(task.reference).name}, input {shape}, "
            f"{len(task.x_calib)} calibration / {len(task.x_test)} evaluation samples")


HEAD = ("model", "config", "metric", "Δ pts", "agree %", "SQNR dB", "exact", "float ops",
        "compile s", "ms", "/ORT int8", "loops %")


def _cells(rows: list[Row], task: Task | None = None) -> tuple[tuple[str, ...], list[list[str]]]:
    """The table's header and cells: one line per row, a failed row's reason in the metric.
    With `task` the metric's name heads its column; without (several models), each cell
    names it."""
    fp32 = {r.model: r for r in rows if r.config == "fp32 ort"}
    ort8 = {r.model: r.ms for r in rows if r.config == "int8 ort"}
    cells = []
    for r in rows:
        if r.error is not None:
            cells.append([r.model, r.config, f"failed: {r.error}"] + [""] * (len(HEAD) - 3))
            continue
        ref = fp32[r.model]
        metric = f"{r.score:.2f}" if task is not None else f"{r.metric}: {r.score:.2f}"
        if r.extras:
            metric += "".join(f", {k.removesuffix(' %')} {v:.2f}" for k, v in r.extras.items())
        cells.append([
            r.model, r.config, metric,
            "" if r is ref else f"{r.score - ref.score:+.2f}",
            "" if r is ref else f"{r.agree:.1f}",
            "" if r is ref else f"{r.sqnr_db:.1f}",
            r.exact,
            "" if r.float_ops is None else str(r.float_ops),
            "" if math.isnan(r.compile_s) else f"{r.compile_s:.1f}",
            _ms(r.ms),
            f"{r.ms / ort8[r.model]:.2f}x" if r.model in ort8 and not math.isnan(r.ms) else "",
            "" if math.isnan(r.loops_pct) else f"{r.loops_pct:.1f}",
        ])
    head = HEAD if task is None else (*HEAD[:2], _metric_name(task), *HEAD[3:])
    return head, cells


def _metric_name(task: Task) -> str:
    return task.primary + "".join(f", {e.removesuffix(' %')}" for e in task.extras)


def _ms(ms: float) -> str:
    """Three significant digits, never in exponent form."""
    if math.isnan(ms):
        return ""
    return f"{ms:.{max(0, 2 - math.floor(math.log10(ms)))}f}" if ms > 0 else "0"


def markdown(rows: list[Row], skipped: dict[str, str]) -> str:
    """The scoreboard as one markdown table (metric: each task's primary metric)."""
    head, cells = _cells(rows)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in line) + " |" for line in cells]
    lines += [f"\n{name}: skipped: {why}" for name, why in skipped.items()]
    return "\n".join(lines)


def _record(r: Row) -> dict:
    return {k: v for k, v in vars(r).items() if k != "run"}


def read_rows(path: Path) -> tuple[list[Row], dict[str, str]]:
    """The rows and skipped models of a zoo result file (JSON null back to NaN)."""
    results = json.loads(Path(path).read_text())["results"]
    rows = []
    for record in results["rows"]:
        row = Row(**record)
        for name in ("score", "agree", "sqnr_db", "compile_s", "ms", "loops_pct"):
            if getattr(row, name) is None:
                setattr(row, name, math.nan)
        rows.append(row)
    return rows, results["skipped"]


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--models", type=lambda text: name_list(text, LOADERS, "models"),
        help=f"comma-separated, from {', '.join(LOADERS)} (default: all; --quick: digits)")
    parser.add_argument(
        "--configs", default=",".join(CONFIGS),
        type=lambda text: name_list(text, CONFIGS, "configs"),
        help=f"tvmq rows, from {', '.join(CONFIGS)} (default: all)")
    parser.add_argument("--quick", action="store_true", help="one model, the quick sizes")
    parser.add_argument("--verify", type=positive_int, default=8,
                        help="evaluation samples checked bit-exact against the oracle")
    parser.add_argument("--runs", type=positive_int, default=5, help="timed calls per turn")
    parser.add_argument("--rounds", type=positive_int, default=3, help="turns per row")
    parser.add_argument("--markdown", type=Path, default=RESULTS_DIR / "zoo.md",
                        help="where to write the markdown table")
    parser.add_argument("--render", type=Path, nargs="+", metavar="JSON",
                        help="write the markdown table of earlier runs' result files (a model "
                        "one run skipped and another scored counts as scored); no run")
    add_json_argument(parser, "zoo")
    args = parser.parse_args(argv)
    if args.models is None:
        args.models = ["digits"] if args.quick else list(LOADERS)
    return args


if __name__ == "__main__":
    sys.exit(main())
