"""The accelerator target: conv2d/matmul layers lowered to calls into the C emulator
(`LowerToAccel`), the rest on the host; per-layer cycle counters in the report; export ships the
emulator library beside model.so."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import tvm

from tvmq.config import QuantConfig
from tvmq.errors import CompileError

from ..host.target import export_library
from ..target import LowerInfo, Target, register
from . import library
from .config import hardware_for
from .lower import AccelRuntime, LowerToAccel


@register
class AccelTarget(Target):
    name = "accel"
    option = "accel"  # tvmq.compile(..., accel="npu-mid" or AccelConfig(...))
    reuses_builds = False  # model.so is linked against the emulator at export (`write`)

    def __init__(self, quant: QuantConfig, setting=None):
        super().__init__(quant, setting)
        self.runtime = AccelRuntime(hardware_for(setting, quant))
        load_emulator("target='accel'")

    @property
    def artifact(self) -> AccelRuntime:
        return self.runtime

    def lower(self, realized: tvm.IRModule, info: LowerInfo) -> tvm.IRModule:
        return LowerToAccel(self.runtime, info.operand_bits)(realized)

    def add_to_report(self, report, host, inp) -> None:
        """Per-layer emulator counters of one inference (they depend on shapes, not values)."""
        counters = self.runtime.one_inference(host, np.zeros(inp.shape, np.float32))
        hw = self.runtime.hw
        for row in report.layers:
            c = counters.get(row.name)
            if c is not None:
                row.cycles, row.macs = c["cycles"], c["macs"]
                row.utilization = c["macs"] / max(1, c["cycles"] * hw.macs_per_cycle)
        cycles = sum(c["cycles"] for c in counters.values())
        report.accel = {"config": hw.to_dict(), "cycles": cycles,
                        "latency_us": cycles / hw.clock_mhz,
                        "host_layers": dict(self.runtime.host_layers)}

    def write(self, out: Path, host, samples: np.ndarray) -> None:
        # The tile loops call the emulator: ship it beside model.so, found there at load time
        # ($ORIGIN); TVM puts these options before the objects.
        lib = shutil.copy2(library.build(), out / "libaccel.so")
        export_library(host, out / "model.so", [f"-L{out}", "-Wl,-rpath,$ORIGIN",
                                                "-Wl,--no-as-needed", f"-l:{Path(lib).name}"])


def load_emulator(why: str) -> None:
    """Build (on first use) and load the C emulator; CompileError saying `why` it was needed."""
    try:
        library.load()
    except RuntimeError as err:
        raise CompileError(f"{why}: {err}") from None
