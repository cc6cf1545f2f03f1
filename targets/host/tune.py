"""A small schedule tuner for the host (meta_schedule's search crashes in this TVM wheel).

For every fused PrimFunc of a model it builds and times `schedules.schedule(func, params)` for
candidate `ScheduleParams`, and keeps the fastest in an on-disk cache keyed by the function's
structural hash (its ops, shapes, dtypes and fused epilogue), the target and the tvmq version.
`build()` reads the cache, so a tuned model compiles with its tuned schedules from then on.

Budget: the tuner first times each function unscheduled and with the default schedule, then
gives the next trial to the function with the largest current best time x calls / (1 + its
trials so far): the time goes where the model spends its time, with diminishing returns so one
big kernel does not take the whole budget.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import tempfile
import time
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

import numpy as np
import tvm
import tvm_ffi
from tqdm import tqdm

from ..accel.emulator import cache_root
from . import schedules
from .schedules import ScheduleParams
from .threads import use_physical_cores

TVMQ_VERSION = version("tvmq")
UNSCHEDULED = "unscheduled"  # cache value: TVM's default loops were fastest


class TuningCache:
    """Best schedule per (function, target, tvmq version), one JSON file."""

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = Path(path) if path is not None else cache_root() / "host_tuning.json"
        self.entries: dict[str, dict] = (json.loads(self.path.read_text())
                                         if self.path.is_file() else {})

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
        self.entries[self.key(func, target)] = {"params": params, **info}

    def save(self) -> None:
        """Write atomically (temp file + rename), merged with entries another process wrote."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        merged = json.loads(self.path.read_text()) if self.path.is_file() else {}
        merged.update(self.entries)
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


def time_func(func: tvm.tirx.PrimFunc, target: tvm.target.Target, args, *,
              min_repeat_ms: int = 20, repeat: int = 3) -> float:
    """Median milliseconds of one call of `func` (built for `target`) on `args`, with the
    thread pool the host build uses."""
    use_physical_cores()
    ex = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}),
                     target=target)
    mod = ex.mod if hasattr(ex, "mod") else ex
    evaluator = mod.time_evaluator("main", tvm.cpu(), number=1, repeat=repeat,
                                   min_repeat_ms=min_repeat_ms)
    return float(np.median(evaluator(*args).results)) * 1e3


@dataclass
class Task:
    """One distinct PrimFunc of the model and what the tuner learned about it."""

    name: str
    func: tvm.tirx.PrimFunc
    calls: int
    info: schedules.FuncInfo
    candidates: list = field(default_factory=list)
    unscheduled_ms: float = float("nan")
    default_ms: float = float("nan")
    best_ms: float = float("inf")
    best: ScheduleParams | str = UNSCHEDULED
    trials: int = 0
    args: list = field(default_factory=list, repr=False)  # random inputs, while tuning


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
    pass, which times each function unscheduled and with the default schedule, always runs),
    store the winners in `cache` and return the per-function table."""
    cache = cache or TuningCache()
    start = time.perf_counter()
    tasks = tasks_of(mod)
    rng = random.Random(seed)
    bar = tqdm(total=int(budget_seconds), desc="tvmq tune", unit="s", disable=not progress)
    trials = 0

    def tick():
        bar.n = min(int(time.perf_counter() - start), int(budget_seconds))
        bar.refresh()

    for task in tasks:
        task.args = random_args(task.func)
        task.unscheduled_ms = time_func(task.func, target, task.args)
        task.best_ms, task.best = task.unscheduled_ms, UNSCHEDULED
        default = schedules.default_params(task.info)
        task.candidates = schedules.candidate_params(task.info)
        rng.shuffle(task.candidates)
        if default is not None:
            task.default_ms = _try(task, default, target)
            if default in task.candidates:
                task.candidates.remove(default)
        else:
            task.default_ms = task.unscheduled_ms
        trials += 2
        tick()
    while time.perf_counter() - start < budget_seconds:
        open_tasks = [t for t in tasks if t.candidates]
        if not open_tasks:
            break
        task = max(open_tasks, key=lambda t: t.best_ms * t.calls / (1 + t.trials))
        _try(task, task.candidates.pop(), target)
        trials += 1
        tick()
    bar.close()
    for task in tasks:
        cache.store(task.func, target, task.best, kind=task.info.kind,
                    shape=list(task.info.out_shape), ms=task.best_ms,
                    unscheduled_ms=task.unscheduled_ms)
        task.args = []
    cache.save()
    return TuneResult(tasks, time.perf_counter() - start, trials, cache.path)


def _try(task: Task, params: ScheduleParams, target) -> float:
    """Time one candidate (inf if the schedule does not apply); keep it if it is the best."""
    task.trials += 1
    try:
        ms = time_func(schedules.schedule(task.func, params), target, task.args)
    except (tvm.s_tir.ScheduleError, ValueError):
        return float("inf")
    if ms < task.best_ms:
        task.best_ms, task.best = ms, params
    return ms


def tune_model(quant_mod: tvm.IRModule, budget_seconds: float = 600.0,
               cache: TuningCache | None = None, progress: bool = True) -> TuneResult:
    """Tune the host kernels of a realized model (`CompiledModel.quant_mod`); compiles of the
    same model afterwards use the tuned schedules from the cache."""
    from .build import fuse, host_target

    if budget_seconds <= 0:
        raise ValueError(f"budget_seconds must be positive, got {budget_seconds}")
    target = host_target()
    return tune(fuse(quant_mod, target), target, budget_seconds, cache, progress)
