"""Build a Relax module for this CPU and run it through the Relax VM.

The pipeline is TVM's CPU pipeline with one pass added after fusion: `schedule_host` applies
tvmq's schedule (targets/host/schedules.py) to every fused PrimFunc, with the parameters the
tuner stored for it or the defaults.

Target: llvm for this machine's CPU (`mcpu` = the host CPU LLVM detects) **without FMA**
(`mattr=-fma`): with FMA LLVM contracts `a * b + c` in float code into one fused rounding,
which changes float32 results (requant in fp32, dequantize / hard-swish glue) against the
NumPy oracle. Without FMA, AVX-512 is off too (it implies FMA in LLVM); AVX2 remains.

Logging (logger `tvmq.targets.host.build`): a tuned schedule from the cache that no longer
applies to its function is a WARNING (the function gets the default schedule; tune again); a
default schedule that does not apply is DEBUG (expected for some functions, which keep TVM's
loops).
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tvm
from tvm import relax
from tvm.relax.backend.cpu_generic import pipeline as cpu

from tvmq.timings import phase

from . import build_cache, packed_weights, pair_dot, schedules
from .pad_columns import PadMatmulColumns
from .tabulate import TabulateTails, mark_lookups_elementwise
from .threads import use_physical_cores
from .transposed_conv import TransposedConvAsShuffle
from .tune import UNSCHEDULED, TuningCache
from .tvm_log import drop_scope_lines

ALIGN = 64  # bytes: TVM's from_dlpack takes only arrays aligned like its own allocations
SCHEDULE_ERRORS = (tvm.s_tir.ScheduleError, ValueError)  # a schedule that does not apply

log = logging.getLogger(__name__)


@functools.cache
def host_target() -> tvm.target.Target:
    """llvm for the CPU of this machine, FMA off (bit-exact float32)."""
    cpu_name = tvm.target.codegen.llvm_get_system_cpu()
    return tvm.target.Target({"kind": "llvm", "mcpu": cpu_name, "mattr": ["-fma"]})


LOOPS = "loops"  # a kernel on TVM's default loops (no tvmq schedule applied)


@dataclass(frozen=True)
class KernelSchedule:
    """How one fused PrimFunc of a host build was scheduled: its kind (schedules.FuncInfo) and
    "tuned" (the tuning cache's parameters), "default" (default_params) or LOOPS."""

    kind: str
    schedule: str


class HostModule:
    """A compiled module: `run(x)` -> the numpy output of `main` (or of another Relax function):
    an array for a tensor result, a tuple (nested like the Relax tuple) for a tuple result.
    `schedules`: kernel name -> KernelSchedule for a build (empty for a loaded model.so).
    `library`: the bytes of the shared library a build from the build cache was loaded from
    (kept: the cache may drop its file while this module lives), else None.

    `run` copies the input into a 64-byte-aligned staging array that TVM reads in place
    (`from_dlpack`, no allocation) and copies the outputs out through DLPack: on the digits
    model the conversions around the 34 us VM call went from 22 us (a new TVM tensor per call,
    `.numpy()`) to 3 us. A lock makes concurrent `run`s take turns (the VM is not
    thread-safe)."""

    def __init__(self, executable: tvm.runtime.Executable,
                 schedules: dict[str, KernelSchedule] | None = None,
                 library: bytes | None = None):
        use_physical_cores()
        self.executable = executable
        self.schedules = schedules or {}
        self.library = library  # the shared library it was loaded from (the build cache)
        self.vm = relax.VirtualMachine(executable, tvm.cpu())
        self._functions: dict[str, tvm.runtime.PackedFunc] = {}
        self._staging: dict[tuple, tuple[np.ndarray, tvm.runtime.Tensor]] = {}
        self._lock = threading.Lock()

    def run(self, x: np.ndarray, function: str = "main"):
        x = np.asarray(x)
        with self._lock:
            staged, tensor = self._stage(x.shape, x.dtype)
            np.copyto(staged, x)
            if function not in self._functions:
                self._functions[function] = self.vm[function]
            return _to_numpy(self._functions[function](tensor))

    def _stage(self, shape: tuple, dtype: np.dtype):
        key = (shape, dtype.str)
        if key not in self._staging:
            nbytes = int(np.prod(shape)) * dtype.itemsize
            raw = np.empty(nbytes + ALIGN, np.uint8)
            start = -raw.ctypes.data % ALIGN
            staged = raw[start:start + nbytes].view(dtype).reshape(shape)
            self._staging[key] = (staged, tvm.runtime.from_dlpack(staged))
        return self._staging[key]


def _to_numpy(value):
    """A VM result copied out: a tensor as an array, a tuple (tvm ffi Array) as a tuple."""
    if isinstance(value, tvm.runtime.Tensor):
        return np.from_dlpack(value).copy()
    return tuple(_to_numpy(v) for v in value)


def fuse(mod: tvm.IRModule, target: tvm.target.Target | None = None) -> tvm.IRModule:
    """TVM's CPU legalization and fusion: the module whose PrimFuncs get scheduled (and tuned).
    First, transposed convs with kernel == stride become a 1x1 conv and a pixel shuffle
    (transposed_conv.py), matmuls whose output columns do not vectorize are padded
    (pad_columns.py) and costly float tails of 8-bit values become table lookups
    (tabulate.py)."""
    target = target or host_target()
    mod = relax.transform.InlinePrivateFunctions()(mod)
    mod = TabulateTails(target)(PadMatmulColumns()(TransposedConvAsShuffle()(mod)))
    with target:
        passes = cpu.library_dispatch_passes(target)
        for p in cpu.legalize_passes(target):
            passes.append(p)
            if p.info.name == "AnnotateTIROpPattern":
                passes.append(mark_lookups_elementwise)
        return tvm.transform.Sequential(passes)(mod)


def schedule_host(cache: TuningCache | None = None,
                  record: dict[str, KernelSchedule] | None = None,
                  infos: dict[str, schedules.FuncInfo] | None = None) -> tvm.transform.Pass:
    """Module pass: every PrimFunc gets tvmq's schedule, with the tuned parameters from `cache`
    when it has them, else the defaults. A tuned schedule that does not apply falls back to the
    default (logged as a warning); a function the default does not apply to keeps its loops
    (logged at debug level). `record`, when given, receives each function's KernelSchedule;
    `infos` may give functions' `schedules.describe` already computed."""
    record = {} if record is None else record
    infos = infos or {}

    @tvm.transform.module_pass(opt_level=0, name="tvmq.ScheduleHost")
    def _pass(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        target = tvm.target.Target.current() or host_target()
        constants = packed_weights.constant_params(mod)
        out, packed = mod.clone(), {}
        for gv, func in mod.functions_items():
            if isinstance(func, tvm.tirx.PrimFunc):
                info = infos.get(gv.name_hint) or schedules.describe(func)
                scheduled, how = _schedule_one(gv.name_hint, func, info, cache, target,
                                               constants.get(gv.name_hint, frozenset()))
                out.update_func(gv, scheduled)
                record[gv.name_hint] = KernelSchedule(info.kind, how)
                layouts = pair_dot.packed_params(func, scheduled)
                if layouts:
                    packed[gv.name_hint] = layouts
        return packed_weights.pack_call_sites(out, packed) if packed else out

    return _pass


def _schedule_one(name: str, func: tvm.tirx.PrimFunc, info: schedules.FuncInfo,
                  cache: TuningCache | None, target: tvm.target.Target,
                  constants: frozenset[str] = frozenset()) -> tuple[tvm.tirx.PrimFunc, str]:
    """(`func` scheduled, how: "tuned", "default" or LOOPS). `constants`: its parameters that
    are constants at every call (a channel-pair kernel takes them packed, packed_weights.py)."""
    tuned = cache.lookup(func, target) if cache is not None else None
    if tuned == UNSCHEDULED:
        return func, LOOPS
    if tuned is not None:
        try:
            return schedules.schedule(func, tuned, constants), "tuned"
        except SCHEDULE_ERRORS as err:
            log.warning("%s: the tuned schedule (%s) no longer applies: %s; using the "
                        "default schedule (run `tvmq tune` again)", name, tuned, _reason(err))
    default = schedules.default_params(info)
    if default is None:
        return func, LOOPS
    try:
        return schedules.schedule(func, default, constants), "default"
    except SCHEDULE_ERRORS as err:
        log.debug("%s: the default schedule (%s) does not apply: %s; keeping TVM's loops",
                  name, default, _reason(err))
        return func, LOOPS


def _reason(err: Exception) -> str:
    """Why a schedule does not apply, in one line: a ScheduleError's text prints the whole
    function before its last line, "Error message: ..."."""
    lines = str(err).strip().splitlines() or [type(err).__name__]
    return next((line.removeprefix("Error message: ") for line in lines
                 if line.startswith("Error message: ")), lines[0])


def build(mod: tvm.IRModule, use_schedules: bool = True, cache: TuningCache | None = None,
          reuse: bool = True) -> HostModule:
    """Compile `mod` for this CPU: fuse, schedule (tuned parameters from `cache`, default: the
    on-disk tuning cache), lower, build. With `reuse` (and TVMQ_BUILD_CACHE not 0) a build
    made before with the same fused module, schedule choices and tvmq source is loaded from
    the build cache (build_cache.py), and a new one is stored there."""
    target = host_target()
    tuning = cache or TuningCache()
    with phase("fuse"):
        fused = fuse(mod, target)
    infos = {gv.name_hint: schedules.describe(f) for gv, f in fused.functions_items()
             if isinstance(f, tvm.tirx.PrimFunc)} if use_schedules else {}
    builds = key = None
    if reuse and build_cache.enabled():
        with phase("cache"):
            builds = build_cache.BuildCache()
            key = builds.key(fused, _choices(fused, infos, tuning, target), target)
            hit = builds.lookup(key)
        if hit is not None:
            library, stored = hit
            with phase("load"):
                return _load_library(library, {name: KernelSchedule(**s)
                                               for name, s in stored.items()})
    record: dict[str, KernelSchedule] = {}
    scheduling = [schedule_host(tuning, record, infos)] if use_schedules else []

    @tvm.transform.module_pass(opt_level=0, name="tvmq.HostLowering")
    def lowering(m: tvm.IRModule, _ctx) -> tvm.IRModule:  # after `fuse`
        with target:
            with phase("schedule"):
                m = tvm.transform.Sequential(scheduling)(m)
            seq = cpu.dataflow_lower_passes(target) + cpu.finalize_passes(target)
            return tvm.transform.Sequential(seq)(m)

    with phase("codegen"):  # lowering (schedules included) and LLVM code generation
        executable = tvm.compile(fused, target=target, relax_pipeline=lowering)
    if builds is not None:
        with phase("cache"):  # the export makes the machine code the VM would JIT
            library = builds.store(key, executable, {n: vars(s) for n, s in record.items()})
        if library is not None:
            with phase("load"):
                return _load_library(library, record)
    with phase("load"):  # the VM: LLVM compiles the module to machine code here
        return HostModule(executable, record)


def _choices(fused: tvm.IRModule, infos: dict[str, schedules.FuncInfo], tuning: TuningCache,
             target: tvm.target.Target) -> dict[str, str]:
    """Each kernel's schedule choice as text (the build cache's key): the tuned parameters,
    else the default ones, else LOOPS."""
    choices = {}
    for gv, func in fused.functions_items():
        if isinstance(func, tvm.tirx.PrimFunc):
            info = infos.get(gv.name_hint)
            tuned = tuning.lookup(func, target) if info is not None else UNSCHEDULED
            choice = tuned if tuned is not None else schedules.default_params(info)
            choices[gv.name_hint] = str(choice if choice not in (None, UNSCHEDULED) else LOOPS)
    return choices


def _load_library(library: Path, kernel_schedules: dict[str, KernelSchedule]) -> HostModule:
    with drop_scope_lines():
        return HostModule(tvm.runtime.load_module(str(library)), kernel_schedules,
                          library.read_bytes())


def load(path: str | os.PathLike) -> HostModule:
    """The model.so that `CompiledModel.export` wrote (host or accel target), ready to `run`;
    without TVM's "Scope Loaded" line per constant (tvm_log.py)."""
    with drop_scope_lines():
        return HostModule(tvm.runtime.load_module(str(path)))
