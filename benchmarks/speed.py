"""Host speed, batch 1: ONNX Runtime FP32 and INT8 next to TVM FP32 and tvmq INT8.

Run from the repository root::

    python benchmarks/speed.py [--models digits,ppocr_cls,ppocr_rec] [--budget 300] [--runs 20]
                               [--rounds 5] [--quick] [--json PATH]

Per model, in one process:

- ORT FP32: onnxruntime's CPU provider on the float model (its default threads);
- ORT INT8: `quantize_static` (QDQ, per-channel int8 weights, uint8 activations, MinMax) on the
  same calibration inputs tvmq uses;
- TVM FP32: the float model through `tvm.compile(target="llvm")`, TVM's default CPU pipeline
  (generic x86-64, what an untuned TVM user gets); TVM FP32 CPU: the same with tvmq's llvm
  target (this CPU, no FMA) and TVM's loops;
- tvmq INT8 default: `tvmq.compile` with an empty tuning cache (the default schedules);
- tvmq INT8 tuned: after `tune_model` with --budget seconds (the budget and the time actually
  used are printed).

Timing: the variants take turns, `--rounds` rounds of `--runs` calls each, every turn after a
pause and a warm-up (so one runtime's spinning thread pool does not slow the next); each
row's figure is the median over all its calls (this machine is shared and noisy: the ratios of
one run are the figures to compare). The table shows ms per inference and the two goals:
tuned / ORT INT8 (goal <= 1.5) and TVM FP32 / tvmq default (goal >= 5). Exactness: the tuned
and the default build against the oracle. ``--quick``: 30 s tuning, 3 rounds of 10
calls (flags given explicitly win). The rows (ms per variant, ratios, the tuning table) and the
run's environment go to ``benchmarks/results/speed.json`` (``--json PATH``).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tvm
from _common import add_json_argument, interleaved_median_ms, tvm_pool_threads, write_results
from models import fetch_model
from ort_runner import ort_session, ort_static_int8
from textlines import CLS_IMAGE_SHAPE, REC_IMAGE_SHAPE, make_cls_dataset, make_rec_dataset
from tvm import relax

import tvmq
from tvmq import data
from tvmq.frontend import load_model

host_build = importlib.import_module("tvmq.targets.host.build")
tune_mod = importlib.import_module("tvmq.targets.host.tune")
threads = importlib.import_module("tvmq.targets.host.threads")

MODELS = ("digits", "ppocr_cls", "ppocr_rec")
N_CALIB = {"digits": 64, "ppocr_cls": 16, "ppocr_rec": 4}


def load(name: str):
    """(onnx path, input shape, calibration inputs)."""
    if name == "digits":
        x_calib = data.load_digits()[0][:N_CALIB[name]]
        return Path(data.digits_model_path()), (1, *x_calib.shape[1:]), x_calib
    if name == "ppocr_cls":
        x_calib, _ = make_cls_dataset(N_CALIB[name], seed=1)
        return fetch_model(name), (1, *CLS_IMAGE_SHAPE), x_calib
    x_calib, _ = make_rec_dataset(N_CALIB[name], seed=1)
    return fetch_model(name), (1, *REC_IMAGE_SHAPE), x_calib


def ort_sessions(path: Path, x_calib: np.ndarray, work: Path):
    """(input name, FP32 session, INT8 QDQ session)."""
    fp32 = ort_session(path)
    int8 = ort_session(ort_static_int8(path, x_calib, work))
    return fp32.get_inputs()[0].name, fp32, int8


def bench_model(name: str, budget: float, runs: int, rounds: int, progress: bool) -> dict:
    path, shape, x_calib = load(name)
    x = np.ascontiguousarray(x_calib[:1].reshape(shape), np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        os.environ["TVMQ_CACHE_DIR"] = str(work / "cache")  # empty: default schedules
        input_name, ort_fp32, ort_int8 = ort_sessions(path, x_calib, work)
        float_mod, _ = load_model(str(path), shape)
        tvm_fp32 = generic_llvm_build(float_mod)
        tvm_fp32_cpu = host_build.build(float_mod, use_schedules=False)
        t0 = time.perf_counter()
        cm = tvmq.compile(str(path), calib=x_calib, input_shape=shape,
                          config=tvmq.QuantConfig(sqnr_samples=0), progress=progress)
        compile_s = time.perf_counter() - t0
        cache = tune_mod.TuningCache(work / "tuning.json")
        result = tune_mod.tune_model(cm.quant_mod, budget, cache=cache, progress=progress)
        tuned = host_build.build(cm.quant_mod, cache=cache)
        want = cm.oracle().run(x)
        exact = np.array_equal(tuned.run(x), want) and np.array_equal(cm.run(x), want)
        arg = {input_name: x}
        fns = {
            "ORT FP32": lambda: ort_fp32.run(None, arg),
            "ORT INT8": lambda: ort_int8.run(None, arg),
            "TVM FP32": lambda: tvm_fp32.run(x),
            "TVM FP32 CPU": lambda: tvm_fp32_cpu.run(x),
            "tvmq INT8 default": lambda: cm.run(x),
            "tvmq INT8 tuned": lambda: tuned.run(x),
        }
        ms = interleaved_median_ms(fns, runs, rounds)
    return {"name": name, "ms": ms, "tune": result, "compile_s": compile_s,
            "exact": f"{'yes' if exact else 'NO'} (oracle)"}


def generic_llvm_build(mod) -> host_build.HostModule:
    """What an untuned TVM user gets: `tvm.compile(mod, target="llvm")` (generic x86-64)."""
    target = tvm.target.Target({"kind": "llvm"})
    mod = relax.transform.InlinePrivateFunctions()(mod)
    return host_build.HostModule(tvm.compile(mod, target=target,
                                             relax_pipeline=relax.get_default_pipeline(target)))


COLUMNS = ("ORT FP32", "ORT INT8", "TVM FP32", "TVM FP32 CPU", "tvmq INT8 default",
           "tvmq INT8 tuned")


def print_table(rows: list[dict], budget: float) -> None:
    head = (f"{'model':<10} " + " ".join(f"{c:>17}" for c in COLUMNS)
            + f" {'tuned/ORT8':>10} {'TVM32/tvmq':>10} {'tuning s':>8}  exact")
    print("\nbatch-1 latency, ms per inference (median)")
    print(head)
    print("-" * len(head))
    for r in rows:
        ms = r["ms"]
        print(f"{r['name']:<10} " + " ".join(f"{ms[c]:>17.3f}" for c in COLUMNS)
              + f" {ms['tvmq INT8 tuned'] / ms['ORT INT8']:>10.2f}"
              f" {ms['TVM FP32'] / ms['tvmq INT8 default']:>10.2f}"
              f" {r['tune'].seconds:>8.0f}  {r['exact']}")
    print("TVM FP32: tvm.compile(target='llvm'), generic x86-64; TVM FP32 CPU: the same for this "
          "CPU without FMA (tvmq's target), TVM's loops.")
    print(f"goals: tuned / ORT INT8 <= 1.5; TVM FP32 untuned / tvmq INT8 >= 5; tuning budget "
          f"{budget:.0f} s per model (plus the first timing pass)")


def record(r: dict) -> dict:
    """A table row as a dict: ms per variant, the two goal ratios, tuning and exactness."""
    ms, tune = r["ms"], r["tune"]
    kernels = [{"function": t.name, "kind": t.info.kind, "output": str(t.info.out_shape),
                "calls": t.calls, "TVM ms": t.unscheduled_ms, "default ms": t.default_ms,
                "tuned ms": t.best_ms, "trials": t.trials,
                "schedule": t.best if isinstance(t.best, str) else t.best.to_dict()}
               for t in tune.tasks]
    return {"model": r["name"], "ms": ms,
            "tuned/ORT8": ms["tvmq INT8 tuned"] / ms["ORT INT8"],
            "TVM32/tvmq": ms["TVM FP32"] / ms["tvmq INT8 default"],
            "TVM32 CPU/tvmq": ms["TVM FP32 CPU"] / ms["tvmq INT8 default"],
            "compile s": r["compile_s"], "tuning s": tune.seconds, "tuning trials": tune.trials,
            "exact": r["exact"], "kernels": kernels}


QUICK = {"budget": 30.0, "runs": 10, "rounds": 3}
DEFAULTS = {"budget": 300.0, "runs": 20, "rounds": 5}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--budget", type=float, help="tuning seconds per model (default 300)")
    p.add_argument("--runs", type=int, help="calls per variant per round (default 20)")
    p.add_argument("--rounds", type=int, help="rounds (default 5)")
    p.add_argument("--quick", action="store_true",
                   help=f"budget {QUICK['budget']:.0f}, {QUICK['rounds']} rounds of "
                        f"{QUICK['runs']} runs unless given")
    p.add_argument("--quiet", action="store_true")
    add_json_argument(p, "speed")
    args = p.parse_args(argv)
    for key, value in (QUICK if args.quick else DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    names = [n for n in args.models.split(",") if n]
    unknown = sorted(set(names) - set(MODELS))
    if unknown:
        p.error(f"unknown model(s) {unknown}; choose from {', '.join(MODELS)}")
    rows = []
    print(f"threads: tvmq {threads.use_physical_cores()} (TVM pool, physical cores), ORT its "
          "default (one per physical core)", flush=True)
    for name in names:
        print(f"== {name}", flush=True)
        rows.append(bench_model(name, args.budget, args.runs, args.rounds, not args.quiet))
        print(f"\n{name}: tvmq compile {rows[-1]['compile_s']:.0f} s; tuning table")
        print(rows[-1]["tune"].table())
        print_table(rows[-1:], args.budget)
    print_table(rows, args.budget)
    path = write_results(args.json, "speed", {
        "budget_s": args.budget, "runs": args.runs, "rounds": args.rounds,
        "rows": [record(r) for r in rows]}, argv=argv, threads={
        "tvm": tvm_pool_threads(), "onnxruntime": "default (one per physical core)"})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
