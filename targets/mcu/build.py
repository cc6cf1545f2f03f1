"""McuBuild: a lowered MCU program with its memory plan; checks limits, exports the C project,
and builds/runs it with the host compiler or on qemu's Cortex-M4."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import CompileError
from ...toolchain import find_compiler
from . import codegen
from .config import McuConfig
from .lower import lower_program
from .memory import MemoryPlan, plan_memory
from .program import Program


@dataclass
class McuBuild:
    program: Program
    plan: MemoryPlan
    config: McuConfig
    kernels_c: str
    output_names: list[str] | None = None  # the model's, for model.h's comments

    @property
    def workspace_bytes(self) -> int:
        return codegen.workspace_bytes(self.kernels_c)

    @property
    def const_bytes(self) -> int:
        """Bytes of constant tables (weights, biases, requant parameters) in flash."""
        return sum(t.nbytes for t in self.program.tensors.values() if t.kind == "const")

    def summary(self) -> dict:
        p = self.plan
        return {"arena_bytes": p.arena_bytes, "peak_live_bytes": p.peak_live,
                "largest_pair_bytes": p.largest_pair, "no_reuse_bytes": p.total_bytes,
                "workspace_bytes": self.workspace_bytes, "const_bytes": self.const_bytes,
                "weights": dict(self.program.weights or {}),
                "kernels": len(self.program.kernels.functions_items()),
                "steps": len(self.program.steps["run"]), "config": self.config.to_dict()}

    build_products = codegen.BUILD_PRODUCTS  # files `make` writes into an exported project

    def write(self, out: Path, samples: np.ndarray) -> None:
        codegen.write_project(self.program, self.plan, out, samples, self.kernels_c,
                              self.output_names)


def build_mcu(quant_mod, config: McuConfig, float_ops: list[str],
              output_names: list[str] | None = None) -> McuBuild:
    """Lower, plan memory, generate kernel C; refuse float ops and over-limit memory.
    `output_names` are the model's output names in order (for model.h)."""
    if float_ops and not config.allow_float:
        raise CompileError(
            f"target 'mcu': {len(float_ops)} op(s) have no integer kernel and would run in "
            f"float on the microcontroller: {', '.join(float_ops)}. Pass "
            "mcu=McuConfig(allow_float=True) to accept float kernels.")
    program = lower_program(quant_mod)
    built = McuBuild(program, plan_memory(program), config, codegen.kernel_source(program),
                     output_names)
    ram = built.plan.arena_bytes + built.workspace_bytes
    if config.ram_bytes is not None and ram > config.ram_bytes:
        raise CompileError(
            f"target 'mcu': the model needs {ram:,} B of RAM (arena {built.plan.arena_bytes:,} B "
            f"+ kernel workspace {built.workspace_bytes:,} B) but McuConfig.ram_bytes is "
            f"{config.ram_bytes:,}; raise it or use a smaller model/input.")
    if config.flash_bytes is not None and built.const_bytes > config.flash_bytes:
        raise CompileError(
            f"target 'mcu': the constant tables need {built.const_bytes:,} B of flash but "
            f"McuConfig.flash_bytes is {config.flash_bytes:,}; raise it or use a smaller model.")
    return built


# ---------------------------------------------------------------- toolchains


def build_host(project: Path) -> Path:
    """Compile the project's host harness with the system C compiler; return the binary."""
    cc = find_compiler()
    if cc is None:
        raise RuntimeError("no host C compiler ($CC, cc or gcc) on PATH; install gcc or set CC")
    _run([cc, *codegen.HOST_CFLAGS, "-o", "model_host", *codegen.SOURCES, "-lm"], project)
    return project / "model_host"


def build_m4(project: Path) -> Path:
    """Cross-compile the Cortex-M4 image (arm-none-eabi-gcc + newlib); return model.elf."""
    if shutil.which("arm-none-eabi-gcc") is None:
        raise RuntimeError("arm-none-eabi-gcc is not installed (Debian: gcc-arm-none-eabi "
                           "libnewlib-arm-none-eabi)")
    _run(["arm-none-eabi-gcc", *codegen.M4_CFLAGS, *codegen.M4_LDFLAGS, "-o", "model.elf",
          *codegen.M4_SOURCES, "-lm"], project)
    return project / "model.elf"


def run_host(project: Path, x: np.ndarray) -> list[tuple]:
    """Run model_host on float samples x (N, ...); per sample (int8 output, float32 output),
    each a tuple of arrays (one per output, in order) for a model with several outputs."""
    with tempfile.NamedTemporaryFile(suffix=".f32") as f:
        f.write(np.ascontiguousarray(x, np.float32).tobytes())
        f.flush()
        out = _run([str(project / "model_host"), f.name], project)
    return [_parse(line) for line in out.splitlines() if line.startswith("out ")]


def run_qemu(project: Path, timeout: float = 300) -> tuple[list, list[int]]:
    """Run model.elf on qemu mps2-an386: per test_input.h sample (int8, float32) outputs, and
    the instructions of each tvmq_model_run (qemu -icount shift=0, read with SysTick)."""
    if shutil.which("qemu-system-arm") is None:
        raise RuntimeError("qemu-system-arm is not installed (Debian: qemu-system-arm)")
    out = _run(["qemu-system-arm", *codegen.QEMU_ARGS], project, timeout, stderr=True)
    if not re.search(r"^exit 0$", out, re.M):
        raise RuntimeError(f"model.elf did not finish cleanly on qemu:\n{out[-2000:]}")
    outputs = [_parse(line) for line in out.splitlines() if line.startswith("out ")]
    counts = [int(n) for n in re.findall(r"^instructions (\d+)", out, re.M)]
    return outputs, counts


def m4_sizes(elf: Path) -> dict[str, int]:
    """Section sizes of model.elf: flash = .text + .rodata + .data (its load copy) +
    .ARM.exidx; ram = .data + .bss + .stack; test_inputs = the harness's samples (in .rodata,
    not part of the model: `model_flash` leaves them out)."""
    out = _run(["arm-none-eabi-size", "-A", str(elf)], elf.parent)
    sec = {m[0]: int(m[1]) for m in re.findall(r"^(\.\S+)\s+(\d+)", out, re.M)}
    symbols = _run(["arm-none-eabi-nm", "-S", str(elf)], elf.parent)
    test = re.search(r"^\S+ ([0-9a-f]+) \S tvmq_test_input$", symbols, re.M)
    get = sec.get
    flash = get(".text", 0) + get(".rodata", 0) + get(".data", 0) + get(".ARM.exidx", 0)
    test_inputs = int(test.group(1), 16) if test else 0
    return {"text": get(".text", 0), "rodata": get(".rodata", 0), "data": get(".data", 0),
            "bss": get(".bss", 0), "stack": get(".stack", 0), "flash": flash,
            "test_inputs": test_inputs, "model_flash": flash - test_inputs,
            "ram": get(".data", 0) + get(".bss", 0) + get(".stack", 0)}


def _parse(line: str) -> tuple:
    """`out <int8 hex per output> <float32 hex per output>` -> (int8, float32): arrays for a
    one-output model, tuples of arrays for several."""
    fields = line.split()[1:]
    n = len(fields) // 2
    q = tuple(np.frombuffer(bytes.fromhex(h), np.int8) for h in fields[:n])
    f = tuple(np.frombuffer(bytes.fromhex(h), ">u4").astype(np.uint32).view(np.float32)
              for h in fields[n:])
    return (q[0], f[0]) if n == 1 else (q, f)


def _run(cmd: list[str], cwd: Path, timeout: float = 600, stderr: bool = False) -> str:
    """stdout of `cmd` (plus stderr, where qemu writes semihosting output, if `stderr`)."""
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} ... failed ({r.returncode}):\n"
                           f"{r.stdout[-2000:]}{r.stderr[-4000:]}")
    return r.stdout + (r.stderr if stderr else "")
