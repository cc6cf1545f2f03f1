"""The Target interface and registry: all `tvmq.compile` knows about a target.

A target takes the realized integer module (the contract in `tvmq.ir`) to something that runs.
`compile` creates one per compile and calls it in this order:

    target = get(name)(quant, option)        check the scheme and the target's own settings
    host_mod = target.lower(realized, info)  Relax for the host build (the realized module on
                                             "host"; layers turned into emulator calls on "accel")
    target.add_to_report(report, host)       the target's own report fields
    target.write(out, host, samples)         the target's files of `CompiledModel.export`

Every target is also built for this machine (tvmq.targets.host.build): that build is the product
on "host", it calls the emulator on "accel", and on "mcu" it is what the generated C equals bit for
bit. How to add a target: DESIGN.md, "Targets".
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import tvm

from tvmq.config import QuantConfig


@dataclass(frozen=True)
class LowerInfo:
    """What compile knows about the realized module that a target may need to lower it."""

    float_ops: tuple[str, ...]  # ops left in float, as the report lists them
    output_names: tuple[str, ...]  # the model's outputs, in order
    operand_bits: dict | None = None  # scheme "mixed": layer -> (w_bits, a_bits, out_bits)


class Target:
    """One compile's target. Subclasses set `name` (the `target=` string), `option` (the
    `tvmq.compile` keyword carrying their settings, if any) and override what they need."""

    name: ClassVar[str]
    option: ClassVar[str | None] = None
    build_products: tuple[str, ...] = ()  # files an exported project's own build writes
    # the host build of `lower`'s module may come from the build cache (host/build_cache.py)
    reuses_builds: ClassVar[bool] = True

    def __init__(self, quant: QuantConfig, setting=None):
        """Validate `setting` (the value of `compile(..., <option>=)`) against `quant`; raise
        TypeError/ValueError/CompileError naming what is wrong before any work is done."""
        self.quant = quant

    @property
    def artifact(self):
        """What users inspect as `cm.<name>` (e.g. the accelerator's counters), or None."""
        return None

    def lower(self, realized: tvm.IRModule, info: LowerInfo) -> tvm.IRModule:
        """The Relax module the host build compiles (must keep `main`'s signature)."""
        return realized

    def add_to_report(self, report, host, inp) -> None:
        """Fill the target's own fields of `report` (a tvmq.Report) after the build."""

    def write(self, out: Path, host, samples: np.ndarray) -> None:
        """Write the target's files of an export into the (new, empty) folder `out`."""
        raise NotImplementedError


_REGISTRY: dict[str, type[Target]] = {}


def register(cls: type[Target]) -> type[Target]:
    """Class decorator: make `cls` available as `tvmq.compile(..., target=cls.name)`."""
    _REGISTRY[cls.name] = cls
    return cls


def names() -> tuple[str, ...]:
    """The registered target names, in registration order."""
    return tuple(_REGISTRY)


def options() -> tuple[str, ...]:
    """The `tvmq.compile` keywords the registered targets take."""
    return tuple(cls.option for cls in _REGISTRY.values() if cls.option)


def get(name: str) -> type[Target]:
    """The Target class registered as `name`; ValueError listing the names otherwise."""
    if name not in _REGISTRY:
        raise ValueError(f"target={name!r} is not available; use one of {names()}.")
    return _REGISTRY[name]
