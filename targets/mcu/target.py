"""The microcontroller target: the realized module lowered to self-contained C (`build_mcu`);
`run` uses the host build, which the C equals bit for bit; export writes the C project."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tvm

from tvmq.config import QuantConfig
from tvmq.errors import CompileError

from ..target import LowerInfo, Target, register
from .build import McuBuild, build_mcu
from .config import McuConfig


@register
class McuTarget(Target):
    name = "mcu"
    option = "mcu"  # tvmq.compile(..., mcu=McuConfig(...))
    build_products = McuBuild.build_products

    def __init__(self, quant: QuantConfig, setting: McuConfig | None = None):
        super().__init__(quant, setting)
        if quant.is_lbfp:
            raise CompileError(f"target 'mcu' runs integer schemes (int8, mixed); scheme "
                               f"{quant.scheme!r} is not supported there yet.")
        if setting is not None and not isinstance(setting, McuConfig):
            raise TypeError(f"mcu must be a tvmq.McuConfig, got {type(setting).__name__}")
        self.config = setting or McuConfig()
        self.built: McuBuild | None = None

    @property
    def artifact(self) -> McuBuild | None:
        return self.built

    def lower(self, realized: tvm.IRModule, info: LowerInfo) -> tvm.IRModule:
        self.built = build_mcu(realized, self.config, list(info.float_ops),
                               list(info.output_names))
        return realized

    def add_to_report(self, report, host, inp) -> None:
        report.mcu = self.built.summary()

    def write(self, out: Path, host, samples: np.ndarray) -> None:
        self.built.write(out, samples)
