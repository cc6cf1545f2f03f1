"""What every benchmark shares: timers, fixed-width tables, command-line types and the JSON
result file written next to the printed tables.

A benchmark imports from here, never from another benchmark. Its result file
(``benchmarks/results/<benchmark>.json`` unless ``--json PATH``) holds the rows it printed and
the run's environment::

    {"benchmark": "speed", "command": "python benchmarks/speed.py --quick",
     "git_commit": "<sha>[-dirty]", "date_utc": "2025-01-01T12:00:00+00:00",
     "cpu": "<model name>", "threads": {...}, "versions": {...}, "results": {...}}
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.metadata
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "RESULTS_DIR",
    "add_json_argument",
    "format_table",
    "interleaved_median_ms",
    "median_ms",
    "name_list",
    "positive_int",
    "run_environment",
    "seconds_per_call",
    "seconds_per_sample",
    "tvm_pool_threads",
    "write_results",
]

RESULTS_DIR = Path(__file__).resolve().parent / "results"
"""Default folder of the result files: ``benchmarks/results``."""

_REPO = Path(__file__).resolve().parent.parent
_VERSIONED = {"tvm": "apache-tvm", "onnxruntime": "onnxruntime", "numpy": "numpy",
              "tvmq": "tvmq"}


# ---- timers ---------------------------------------------------------------------------------

def seconds_per_sample(
    run: Callable[[np.ndarray], np.ndarray], x: np.ndarray
) -> tuple[np.ndarray, float]:
    """Stacked ``run`` of each sample of ``x`` (batch 1) and seconds per sample, after a warm-up
    call on the first sample."""
    run(x[:1])
    start = time.perf_counter()
    out = np.concatenate([run(x[i : i + 1]) for i in range(len(x))])
    return out, (time.perf_counter() - start) / len(x)


def seconds_per_call(fn: Callable[[], object], min_seconds: float = 0.5) -> float:
    """Seconds per call of ``fn``, over as many calls as fit in ``min_seconds`` after one
    warm-up call."""
    fn()
    reps, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < min_seconds:
        fn()
        reps += 1
    return elapsed / reps


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    """Median ms per call of ``fn`` over ``repeats`` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * float(np.median(times))


def interleaved_median_ms(
    fns: Mapping[str, Callable[[], object]], runs: int, rounds: int
) -> dict[str, float]:
    """Median ms per call of each function, taking turns round by round. Each turn starts
    with a 50 ms pause and 3 untimed calls: ORT's and TVM's thread pools both spin-wait after
    work, and a pool still spinning on the other core would slow the next runtime's turn (ORT
    FP32 on the classifier measured 1.25 ms after the pause, 2.7 ms without it)."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for key, fn in fns.items():
            time.sleep(0.05)
            for _ in range(3):
                fn()
            for _ in range(runs):
                t0 = time.perf_counter()
                fn()
                times[key].append(time.perf_counter() - t0)
    return {k: float(np.median(v)) * 1e3 for k, v in times.items()}


# ---- tables and command-line types ----------------------------------------------------------

def format_table(head: Sequence[str], rows: Iterable[Sequence], left: Sequence[int] = (0, 1)
                 ) -> str:
    """A fixed-width table: the header, a dashed rule, one line per row; columns in ``left``
    align left, the others right; cells are ``str()``-ed."""
    cells = [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in [head, *cells]) for i in range(len(head))]

    def fmt(r: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i in left else c.rjust(w)
                         for i, (c, w) in enumerate(zip(r, widths))).rstrip()

    return "\n".join([fmt(head), "  ".join("-" * w for w in widths), *map(fmt, cells)])


def name_list(text: str, known: Iterable[str], what: str) -> list[str]:
    """``"a,b"`` -> ``["a", "b"]`` (duplicates dropped), each name one of ``known``; an
    ``argparse.ArgumentTypeError`` naming the unknown ones otherwise."""
    known = list(known)
    names = list(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown {what} {unknown}; choose from {known}")
    return names


def positive_int(text: str) -> int:
    """An ``argparse`` type: an integer > 0."""
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


# ---- result files ---------------------------------------------------------------------------

def add_json_argument(parser: argparse.ArgumentParser, benchmark: str) -> None:
    """Add ``--json PATH`` (default ``benchmarks/results/<benchmark>.json``) to ``parser``."""
    default = RESULTS_DIR / f"{benchmark}.json"
    parser.add_argument(
        "--json", type=Path, default=default, metavar="PATH",
        help=f"where to write the printed rows and the run's environment (default: "
             f"{default.relative_to(_REPO)})",
    )


def tvm_pool_threads() -> int:
    """Threads of TVM's runtime pool in this process (``runtime.NumThreads``); call it after
    the benchmark ran, since tvmq sizes the pool when it first runs a model."""
    import tvm

    return int(tvm.get_global_func("runtime.NumThreads")())


def run_environment(benchmark: str, argv: Sequence[str] | None, threads: Mapping) -> dict:
    """The run's identity: benchmark, command, git commit (when the benchmark started), UTC
    date (now), CPU, threads, versions.

    ``argv`` is the argument list the benchmark parsed (``None``: ``sys.argv[1:]``);
    ``threads`` says how many threads each runtime used, added to the environment variables
    that set them and ``os.cpu_count()``.
    """
    args = sys.argv[1:] if argv is None else list(argv)
    script = Path(sys.argv[0])
    if script.suffix != ".py":  # called as a function (tests, another script)
        script = Path(__file__).parent / f"{benchmark}.py"
    if script.is_absolute() and script.is_relative_to(_REPO):
        script = script.relative_to(_REPO)
    return {
        "benchmark": benchmark,
        "command": shlex.join(["python", str(script), *args]),
        "git_commit": _COMMIT_AT_IMPORT,
        "date_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpu": _cpu_model(),
        "threads": {
            **threads,
            "TVM_NUM_THREADS": os.environ.get("TVM_NUM_THREADS"),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
            "os_cpu_count": os.cpu_count(),
        },
        "versions": {"python": platform.python_version(),
                     **{name: _version(dist) for name, dist in _VERSIONED.items()}},
    }


def write_results(path: Path, benchmark: str, results: object, *,
                  argv: Sequence[str] | None, threads: Mapping) -> Path:
    """Write ``run_environment(...)`` plus ``"results": results`` to ``path`` as JSON.

    ``results`` may hold dicts, lists, tuples, numbers, strings, None, NumPy scalars and arrays
    and dataclasses; anything else is written as its ``str()`` (a path, a config). A NaN is
    written as null and an infinity as ``"inf"`` / ``"-inf"`` (JSON has neither). The folder is
    created if missing; returns ``path``.
    """
    record = {**run_environment(benchmark, argv, threads), "results": _plain(results)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1, ensure_ascii=False, allow_nan=False) + "\n")
    return path


def _plain(value: object) -> object:
    """``value`` as JSON-ready dicts, lists, strings, numbers and None (see write_results)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain(dataclasses.asdict(value))
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return _plain(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def _git_commit() -> str | None:
    """``git rev-parse HEAD`` of this repository, ``-dirty`` if a tracked file other than the
    result files differs from it; None outside a git checkout."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(_REPO), *args], capture_output=True, text=True,
                              check=True).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".",
                    f":!{RESULTS_DIR.relative_to(_REPO)}")
    except (OSError, subprocess.CalledProcessError):
        return None
    return f"{commit}-dirty" if dirty else commit


_COMMIT_AT_IMPORT = _git_commit()
"""The commit of the code this process imported (the tree may change while it runs)."""


def _cpu_model() -> str:
    """The first "model name" of /proc/cpuinfo, else ``platform.processor()``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                return value.strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None
