"""Microcontroller target: self-contained C (TVM's C codegen for kernels, a generated model.c
over a static arena), built for the host and for Cortex-M4 (qemu mps2-an386)."""

from .build import McuBuild, build_host, build_m4, build_mcu, m4_sizes, run_host, run_qemu
from .config import McuConfig

__all__ = ["McuBuild", "McuConfig", "build_host", "build_m4", "build_mcu", "m4_sizes",
           "run_host", "run_qemu"]
