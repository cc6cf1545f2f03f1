"""Build a Relax module for this CPU and run it through the Relax VM.

The pipeline is TVM's CPU pipeline with one pass added after fusion: `schedule_host` applies
tvmq's schedule (targets/host/schedules.py) to every fused PrimFunc, with the parameters the
tuner stored for it or the defaults.

Target: llvm for this machine's CPU (`mcpu` = the host CPU LLVM detects) **without FMA**
(`mattr=-fma`): with FMA LLVM contracts `a * b + c` in float code into one fused rounding,
which changes float32 results (requant in fp32, dequantize / hard-swish glue) against the
NumPy oracle. Without FMA, AVX-512 is off too (it implies FMA in LLVM); AVX2 remains.
"""

from __future__ import annotations

import functools

import numpy as np
import tvm
from tvm import relax
from tvm.relax.backend.cpu_generic import pipeline as cpu

from . import schedules
from .threads import use_physical_cores
from .tune import UNSCHEDULED, TuningCache


@functools.cache
def host_target() -> tvm.target.Target:
    """llvm for the CPU of this machine, FMA off (bit-exact float32)."""
    cpu_name = tvm.target.codegen.llvm_get_system_cpu()
    return tvm.target.Target({"kind": "llvm", "mcpu": cpu_name, "mattr": ["-fma"]})


class HostModule:
    """A compiled module: `run(x)` -> numpy output(s) of `main` (or of another Relax function)."""

    def __init__(self, executable: tvm.runtime.Executable):
        use_physical_cores()
        self.executable = executable
        self.vm = relax.VirtualMachine(executable, tvm.cpu())

    def run(self, x: np.ndarray, function: str = "main"):
        out = self.vm[function](tvm.runtime.tensor(np.ascontiguousarray(x)))
        if isinstance(out, tvm.runtime.Tensor):
            return out.numpy()
        return [o.numpy() for o in out]


def fuse(mod: tvm.IRModule, target: tvm.target.Target | None = None) -> tvm.IRModule:
    """TVM's CPU legalization and fusion: the module whose PrimFuncs get scheduled (and tuned)."""
    target = target or host_target()
    mod = relax.transform.InlinePrivateFunctions()(mod)
    with target:
        passes = cpu.library_dispatch_passes(target) + cpu.legalize_passes(target)
        return tvm.transform.Sequential(passes)(mod)


def schedule_host(cache: TuningCache | None = None) -> tvm.transform.Pass:
    """Module pass: every PrimFunc gets tvmq's schedule (tuned parameters from `cache` when it
    has them, else the defaults); a function the schedule does not apply to keeps its loops."""

    @tvm.transform.module_pass(opt_level=0, name="tvmq.ScheduleHost")
    def _pass(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        target = tvm.target.Target.current() or host_target()
        out = mod.clone()
        for gv, func in mod.functions_items():
            if not isinstance(func, tvm.tirx.PrimFunc):
                continue
            params = cache.lookup(func, target) if cache is not None else None
            if params is None:
                params = schedules.default_params(schedules.describe(func))
            if params is None or params == UNSCHEDULED:
                continue
            try:
                out.update_func(gv, schedules.schedule(func, params))
            except (tvm.s_tir.ScheduleError, ValueError):
                continue
        return out

    return _pass


def build(mod: tvm.IRModule, use_schedules: bool = True,
          cache: TuningCache | None = None) -> HostModule:
    """Compile `mod` for this CPU: fuse, schedule (tuned parameters from `cache`, default: the
    on-disk tuning cache), lower, build."""
    target = host_target()
    scheduling = [schedule_host(cache or TuningCache())] if use_schedules else []

    @tvm.transform.module_pass(opt_level=0, name="tvmq.HostLowering")
    def lowering(m: tvm.IRModule, _ctx) -> tvm.IRModule:  # after `fuse`
        with target:
            seq = scheduling + cpu.dataflow_lower_passes(target) + cpu.finalize_passes(target)
            return tvm.transform.Sequential(seq)(m)

    return HostModule(tvm.compile(fuse(mod, target), target=target, relax_pipeline=lowering))
