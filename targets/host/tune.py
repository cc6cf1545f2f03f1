"""A small schedule tuner for the host (meta_schedule's search crashes in this TVM wheel).

For every fused PrimFunc of a model it builds and times `schedules.schedule(func, params)` for
candidate `ScheduleParams`, and keeps the fastest in an on-disk cache keyed by the function's
structural hash (its ops, shapes, dtypes and fused epilogue), the target and the tvmq version.
`build()` reads the cache, so a tuned model compiles with its tuned schedules from then on.

Budget: the tuner first times each function unscheduled and with the default schedule, then
gives the next trial to the function with the largest current best time x calls / (1 + its
trials so far): the time goes where the model spends its time, with diminishing returns so one
big kernel does not take the whole budget.

Never slower than the default: the search compares times taken minutes apart on a machine
whose load changes, and the fastest of many noisy timings is biased low, so a winner can be
a candidate that got lucky once. Before storing, a final check times each function's winner,
its default (what `build()` uses untuned: the default schedule, or TVM's loops where there is
none or it does not apply) and TVM's loops in alternation and stores the lowest median, the
default on a tie.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

import numpy as np
import tvm
import tvm_ffi
from tqdm import tqdm

from tvmq.toolchain import cache_root

from . import schedules
from .schedules import ScheduleParams
from .threads import use_physical_cores

TVMQ_VERSION = version("tvmq")
UNSCHEDULED = "unscheduled"  # cache value: TVM's default loops were fastest
CHECK_ROUNDS = 3  # final check: timings per finalist (winner, default, TVM loops), alternating


class TuningCache:
    """Best schedule per (function, target, tvmq version), one JSON file."""

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = Path(path) if path is not None else cache_root() / "host_tuning.json"
        self.entries: dict[str, dict] = (json.loads(self.path.read_text())
                                         if self.path.is_file() else {})
        self._stored: set[str] = set()  # keys this object wrote, the only ones `save` writes

    @staticmethod
    def key(func: tvm.tirx.PrimFunc, target: tvm.target.Target) -> str:
        text = json.dumps([str(tvm_ffi.structural_hash(func)), str(target), TVMQ_VERSION])
        return hashlib.sha256(text.encode()).hexdigest()[:24]

    def lookup(self, func, target) -> ScheduleParams | str | None:
        """The tuned choice: ScheduleParams, UNSCHEDULED, or None when never tuned."""
        entry = self.entries.get(self.key(func, target))
        if entry is None:
            return None
        if entry["params"] == UNSCHEDULED:
            return UNSCHEDULED
        return ScheduleParams(**entry["params"])

    def store(self, func, target, best: ScheduleParams | str, **info) -> None:
        params = best if isinstance(best, str) else best.to_dict()
        key = self.key(func, target)
        self.entries[key] = {"params": params, **info}
        self._stored.add(key)

    def save(self) -> None:
        """Write the stored entries atomically (temp file + rename) into the file as it is now:
        entries another process wrote since this cache was read are kept, and this object's
        stale copies of them never overwrite them."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        merged = json.loads(self.path.read_text()) if self.path.is_file() else {}
        merged.update({key: self.entries[key] for key in self._stored})
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(merged, f, indent=1, sort_keys=True)
        os.replace(tmp, self.path)
        self.entries = merged


def random_args(func: tvm.tirx.PrimFunc, seed: int = 0) -> list:
    """Random tensors for every buffer parameter of `func` (small integers, normal floats)."""
    rng = np.random.default_rng(seed)
    args = []
    for param in func.params:
        buf = param.ty
        shape = [int(s) for s in buf.shape]
        dtype = str(buf.dtype)
        if dtype.startswith("float"):
            value = rng.standard_normal(shape).astype(dtype)
        else:
            value = rng.integers(-3, 4, shape).astype(dtype)
        args.append(tvm.runtime.tensor(value))
    return args


Timer = Callable[[list], float]  # args -> median milliseconds of one call


def compile_timer(func: tvm.tirx.PrimFunc, choice: ScheduleParams | str,
                  target: tvm.target.Target, *, min_repeat_ms: int = 20,
                  repeat: int = 3) -> Timer:
    """Build `func` with `choice` (ScheduleParams, or UNSCHEDULED for TVM's loops) for
    `target`; the returned timer gives the median milliseconds of one call on its args over
    `repeat` measurements, with the thread pool the host build uses. Raises
    s_tir.ScheduleError or ValueError if the schedule does not apply."""
    if choice != UNSCHEDULED:
        func = schedules.schedule(func, choice)
    use_physical_cores()
    ex = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}),
                     target=target)
    mod = ex.mod if hasattr(ex, "mod") else ex
    evaluator = mod.time_evaluator("main", tvm.cpu(), number=1, repeat=repeat,
                                   min_repeat_ms=min_repeat_ms)
    return lambda args: float(np.median(evaluator(*args).results)) * 1e3


@dataclass
class Task:
    """One distinct PrimFunc of the model and what the tuner learned about it. `default` is
    what `build()` uses untuned: the default schedule, or UNSCHEDULED where there is none or
    it does not apply. After `tune`, `best_ms <= default_ms`, both from the final check."""

    name: str
    func: tvm.tirx.PrimFunc
    calls: int
    info: schedules.FuncInfo
    candidates: list = field(default_factory=list)
    unscheduled_ms: float = float("nan")
    default: ScheduleParams | str = UNSCHEDULED
    default_ms: float = float("nan")
    best_ms: float = float("inf")
    best: ScheduleParams | str = UNSCHEDULED
    trials: int = 0
    args: list = field(default_factory=list, repr=False)  # random inputs, while tuning
    timers: dict = field(default_factory=dict, repr=False)  # choice -> Timer, while tuning


@dataclass
class TuneResult:
    tasks: list[Task]
    seconds: float
    trials: int
    cache_path: Path

    def table(self) -> str:
        """Per function: kind, output shape, calls, ms unscheduled / default / tuned, choice."""
        head = (f"{'function':<44} {'kind':<11} {'output':<18} {'calls':>5} {'TVM ms':>8} "
                f"{'default':>8} {'tuned':>8} {'trials':>6}  schedule")
        lines = [head, "-" * len(head)]
        for t in sorted(self.tasks, key=lambda t: -t.unscheduled_ms * t.calls):
            choice = t.best if isinstance(t.best, str) else \
                ", ".join(f"{k}={v}" for k, v in t.best.to_dict().items())
            lines.append(f"{t.name[:44]:<44} {t.info.kind:<11} {t.info.out_shape!s:<18} "
                         f"{t.calls:>5} {t.unscheduled_ms:>8.4f} {t.default_ms:>8.4f} "
                         f"{t.best_ms:>8.4f} {t.trials:>6}  {choice}")
        total = [sum(getattr(t, a) * t.calls for t in self.tasks)
                 for a in ("unscheduled_ms", "default_ms", "best_ms")]
        lines.append(f"{'sum of kernels (ms)':<82} {total[0]:>8.3f} {total[1]:>8.3f} "
                     f"{total[2]:>8.3f} {self.trials:>6}")
        lines.append(f"tuning time {self.seconds:.0f} s")
        return "\n".join(lines)


def tasks_of(mod: tvm.IRModule) -> list[Task]:
    """The distinct PrimFuncs of a fused module (structurally equal ones are one task) with
    how many times `main` calls each."""
    has_main = any(gv.name_hint == "main" for gv in mod.get_global_vars())
    main_text = mod["main"].script() if has_main else ""
    by_hash: dict[int, Task] = {}
    for gv, func in mod.functions_items():
        if not isinstance(func, tvm.tirx.PrimFunc):
            continue
        n = max(1, main_text.count(f"cls.{gv.name_hint},"))
        h = tvm_ffi.structural_hash(func)
        if h in by_hash:
            by_hash[h].calls += n
            continue
        by_hash[h] = Task(gv.name_hint, func, n, schedules.describe(func))
    return list(by_hash.values())


def tune(mod: tvm.IRModule, target: tvm.target.Target, budget_seconds: float,
         cache: TuningCache | None = None, progress: bool = True, seed: int = 0) -> TuneResult:
    """Tune every PrimFunc of the fused module `mod` for at most `budget_seconds` (the first
    pass, which times each function unscheduled and with the default schedule, and the final
    check of each winner against its default always run), store the winners in `cache` and
    return the per-function table. A stored choice never measured slower than the default
    in the final check."""
    cache = cache or TuningCache()
    start = time.perf_counter()
    tasks = tasks_of(mod)
    rng = random.Random(seed)
    bar = tqdm(total=int(budget_seconds), desc="tvmq tune", unit="s", disable=not progress)

    def tick():
        bar.n = min(int(time.perf_counter() - start), int(budget_seconds))
        bar.refresh()

    for task in tasks:
        task.args = random_args(task.func)
        task.unscheduled_ms = task.default_ms = _try(task, UNSCHEDULED, target)
        default = schedules.default_params(task.info)
        task.candidates = schedules.candidate_params(task.info)
        rng.shuffle(task.candidates)
        if default is not None:
            ms = _try(task, default, target, keep=True)
            if ms < float("inf"):
                task.default, task.default_ms = default, ms
            if default in task.candidates:
                task.candidates.remove(default)
        tick()
    while time.perf_counter() - start < budget_seconds:
        open_tasks = [t for t in tasks if t.candidates]
        if not open_tasks:
            break
        task = max(open_tasks, key=lambda t: t.best_ms * t.calls / (1 + t.trials))
        _try(task, task.candidates.pop(), target)
        tick()
    bar.close()
    for task in tasks:
        _check_best(task)
        cache.store(task.func, target, task.best, kind=task.info.kind,
                    shape=list(task.info.out_shape), ms=task.best_ms,
                    default_ms=task.default_ms, unscheduled_ms=task.unscheduled_ms)
        task.args, task.timers = [], {}
    cache.save()
    return TuneResult(tasks, time.perf_counter() - start, sum(t.trials for t in tasks),
                      cache.path)


def _try(task: Task, choice: ScheduleParams | str, target, keep: bool = False) -> float:
    """Time one choice (inf if the schedule does not apply); keep it if it is the best. The
    timers of every best so far, and of a `keep` choice, stay for the final check."""
    task.trials += 1
    try:
        timer = compile_timer(task.func, choice, target)
    except (tvm.s_tir.ScheduleError, ValueError):
        return float("inf")
    ms = timer(task.args)
    if ms < task.best_ms or keep:
        task.timers[choice] = timer
    if ms < task.best_ms:
        task.best_ms, task.best = ms, choice
    return ms


def _check_best(task: Task, rounds: int = CHECK_ROUNDS) -> None:
    """Unless the default won the search: time the winner, the default and TVM's loops in
    alternation, `rounds` times each, and choose the lowest median (the default on a tie).
    These medians replace the search's numbers. (No default timer: TVM's loops did not
    build, so nothing is slower than the winner.)"""
    if task.best == task.default or task.default not in task.timers:
        return
    finalists = [c for c in dict.fromkeys((task.default, UNSCHEDULED, task.best))
                 if c in task.timers]
    times: dict = {c: [] for c in finalists}
    for _ in range(rounds):
        for choice in finalists:
            times[choice].append(task.timers[choice](task.args))
    ms = {choice: float(np.median(t)) for choice, t in times.items()}
    task.best = min(finalists, key=ms.__getitem__)
    task.best_ms, task.default_ms = ms[task.best], ms[task.default]
    task.unscheduled_ms = ms.get(UNSCHEDULED, task.unscheduled_ms)


def tune_model(quant_mod: tvm.IRModule, budget_seconds: float = 600.0,
               cache: TuningCache | None = None, progress: bool = True) -> TuneResult:
    """Tune the host kernels of a realized model (`CompiledModel.quant_mod`); compiles of the
    same model afterwards use the tuned schedules from the cache."""
    from .build import fuse, host_target

    if budget_seconds <= 0:
        raise ValueError(f"budget_seconds must be positive, got {budget_seconds}")
    target = host_target()
    return tune(fuse(quant_mod, target), target, budget_seconds, cache, progress)
