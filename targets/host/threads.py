"""How many threads TVM's runtime runs a `parallel` loop on.

TVM 0.27 sizes its thread pool to half of `std::thread::hardware_concurrency()` on x86 (it
assumes two hyper-threads per core), unless TVM_NUM_THREADS or OMP_NUM_THREADS is set. On a
machine without SMT, such as this 2-core one, that is one thread, and every `parallel` loop
runs serially. `use_physical_cores()` sets the pool to the physical cores this process may run
on; an explicit TVM_NUM_THREADS / OMP_NUM_THREADS is left alone.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import tvm_ffi

AFFINITY_BIG = 1  # TVM ThreadGroup::AffinityMode kBig: workers on the fastest cores


@functools.cache
def physical_cores() -> int:
    """Physical cores among the CPUs this process may use (see `count_cores`)."""
    path = Path("/proc/cpuinfo")
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return count_cores(path.read_text() if path.is_file() else "", usable or 1)


def count_cores(cpuinfo: str, usable: int) -> int:
    """Distinct (physical id, core id) pairs of a /proc/cpuinfo text, capped by the `usable`
    CPUs of the affinity mask; `usable` where the text has no core ids."""
    cores, package = set(), "0"
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "physical id":
            package = value.strip()
        elif key.strip() == "core id":
            cores.add((package, value.strip()))
    return max(1, min(len(cores) or usable, usable))


@functools.cache
def use_physical_cores() -> int:
    """Size TVM's thread pool to `physical_cores()` (once per process); returns the threads."""
    if os.environ.get("TVM_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS"):
        return tvm_ffi.get_global_func("runtime.NumThreads")()
    n = physical_cores()
    tvm_ffi.get_global_func("runtime.config_threadpool")(AFFINITY_BIG, n,
                                                         [str(i) for i in range(n)])
    return n
