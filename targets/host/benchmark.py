"""Latency of a host build: the whole model and each kernel it calls.

Whole model: `repeat` timed calls of `main` after `warmup` untimed ones; the median. Per
kernel: the VM's instrument hook brackets every packed call (kernels and VM builtins such as
`vm.builtin.alloc_tensor`) with a clock read; per kernel the median over the runs of its summed
time in one run. The hook itself costs a few microseconds per call, so the per-kernel sum is a
little above the whole-model median, which is measured without it.

Each kernel carries how the build scheduled it (build.KernelSchedule: its kind, and "tuned",
"default" or "loops" for TVM's default loops); VM builtins and kernels of a loaded model.so
have none. `loops_share` is the part of the kernels' time spent on TVM's loops.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import tvm

from .build import LOOPS, KernelSchedule


@dataclass
class KernelTime:
    name: str
    calls: int
    ms: float            # median over runs of the kernel's total time in one run
    kind: str = ""       # schedules.FuncInfo.kind; "" for a VM builtin or an unknown kernel
    schedule: str = ""   # "tuned" | "default" | LOOPS; "" when unknown


@dataclass
class Benchmark:
    """`ms`: whole-model median latency; `kernels`: per kernel, slowest first."""

    ms: float
    ms_min: float
    runs: int
    kernels: list[KernelTime]

    @property
    def loops_share(self) -> float:
        """Share of the kernels' summed time spent in kernels on TVM's loops."""
        total = sum(k.ms for k in self.kernels)
        return sum(k.ms for k in self.kernels if k.schedule == LOOPS) / total if total else 0.0

    def table(self, top: int = 20) -> str:
        """The `top` slowest kernels with their kind and schedule ("loops": TVM's loops), the
        rest summed, the time on TVM's loops, the whole model."""
        head = (f"{'kernel':<56} {'kind':<11} {'schedule':<8} {'calls':>5} {'ms':>9} "
                f"{'share':>6}")
        total = sum(k.ms for k in self.kernels) or 1.0
        lines = [head, "-" * len(head)]
        for k in self.kernels[:top]:
            lines.append(f"{k.name[:56]:<56} {k.kind:<11} {k.schedule:<8} {k.calls:>5} "
                         f"{k.ms:>9.4f} {k.ms / total:>6.1%}")
        if len(self.kernels) > top:
            rest = self.kernels[top:]
            lines.append(self._sum_line(f"({len(rest)} more)", rest, total))
        loops = [k for k in self.kernels if k.schedule == LOOPS]
        if loops:
            lines.append(self._sum_line(f"on TVM's loops ({len(loops)} kernels)", loops, total))
        label = f"whole model (median of {self.runs} runs, no hook)"
        lines.append(f"{label:<56} {'':<11} {'':<8} {'':>5} {self.ms:>9.4f}")
        return "\n".join(lines)

    @staticmethod
    def _sum_line(label: str, kernels: list[KernelTime], total: float) -> str:
        ms = sum(k.ms for k in kernels)
        return (f"{label:<56} {'':<11} {'':<8} {sum(k.calls for k in kernels):>5} {ms:>9.4f} "
                f"{ms / total:>6.1%}")


def benchmark(vm, x: np.ndarray, runs: int = 50, warmup: int = 5, function: str = "main",
              schedules: Mapping[str, KernelSchedule] | None = None) -> Benchmark:
    """Time `vm[function](x)`: whole model over `runs` calls, then per kernel over `runs`;
    `schedules` (HostModule.schedules) labels each kernel with its kind and schedule."""
    if runs < 1 or warmup < 0:
        raise ValueError(f"runs must be >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}")
    arg = tvm.runtime.tensor(np.ascontiguousarray(x))
    fn = vm[function]
    for _ in range(warmup):
        fn(arg)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn(arg)
        times.append(time.perf_counter() - t0)
    per_run: list[dict[str, float]] = []
    calls: dict[str, int] = {}
    started: dict[str, float] = {}
    current: dict[str, float] = {}

    def hook(_func, name, before, _ret, *_args):
        if before:
            started[name] = time.perf_counter()
        else:
            current[name] = current.get(name, 0.0) + time.perf_counter() - started[name]
            if not per_run:
                calls[name] = calls.get(name, 0) + 1
        return 0

    vm.set_instrument(hook)
    try:
        for _ in range(runs):
            current.clear()
            fn(arg)
            per_run.append(dict(current))
    finally:
        vm.set_instrument(None)
    schedules = schedules or {}
    unknown = KernelSchedule("", "")
    kernels = [KernelTime(name, n, float(np.median([r.get(name, 0.0) for r in per_run])) * 1e3,
                          schedules.get(name, unknown).kind, schedules.get(name, unknown).schedule)
               for name, n in calls.items()]
    kernels.sort(key=lambda k: -k.ms)
    return Benchmark(float(np.median(times)) * 1e3, float(np.min(times)) * 1e3, runs, kernels)
