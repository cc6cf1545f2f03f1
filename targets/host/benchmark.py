"""Latency of a host build: the whole model and each kernel it calls.

Whole model: `repeat` timed calls of `main` after `warmup` untimed ones; the median. Per
kernel: the VM's instrument hook brackets every packed call (kernels and VM builtins such as
`vm.builtin.alloc_tensor`) with a clock read; per kernel the median over the runs of its summed
time in one run. The hook itself costs a few microseconds per call, so the per-kernel sum is a
little above the whole-model median, which is measured without it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import tvm


@dataclass
class KernelTime:
    name: str
    calls: int
    ms: float            # median over runs of the kernel's total time in one run


@dataclass
class Benchmark:
    """`ms`: whole-model median latency; `kernels`: per kernel, slowest first."""

    ms: float
    ms_min: float
    runs: int
    kernels: list[KernelTime]

    def table(self, top: int = 20) -> str:
        head = f"{'kernel':<60} {'calls':>5} {'ms':>9} {'share':>6}"
        total = sum(k.ms for k in self.kernels) or 1.0
        lines = [head, "-" * len(head)]
        for k in self.kernels[:top]:
            lines.append(f"{k.name[:60]:<60} {k.calls:>5} {k.ms:>9.4f} {k.ms / total:>6.1%}")
        if len(self.kernels) > top:
            rest = self.kernels[top:]
            lines.append(f"{f'({len(rest)} more)':<60} {sum(k.calls for k in rest):>5} "
                         f"{sum(k.ms for k in rest):>9.4f} "
                         f"{sum(k.ms for k in rest) / total:>6.1%}")
        label = f"whole model (median of {self.runs} runs, no hook)"
        lines.append(f"{label:<60} {'':>5} {self.ms:>9.4f}")
        return "\n".join(lines)


def benchmark(vm, x: np.ndarray, runs: int = 50, warmup: int = 5,
              function: str = "main") -> Benchmark:
    """Time `vm[function](x)`: whole model over `runs` calls, then per kernel over `runs`."""
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
    kernels = [KernelTime(name, n, float(np.median([r.get(name, 0.0) for r in per_run])) * 1e3)
               for name, n in calls.items()]
    kernels.sort(key=lambda k: -k.ms)
    return Benchmark(float(np.median(times)) * 1e3, float(np.min(times)) * 1e3, runs, kernels)
