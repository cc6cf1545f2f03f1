"""The host target: the realized module built for this CPU; exported as model.so."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..target import Target, register
from .tvm_log import drop_scope_lines


def export_library(host, path: Path, options: list[str] | None = None) -> None:
    """Write a host build's executable as a shared library TVM's VM loads (`targets.host.load`)."""
    with drop_scope_lines():  # TVM prints a line per constant (tvm_log.py)
        host.executable.export_library(str(path), options=options or [])


@register
class HostTarget(Target):
    name = "host"

    def write(self, out: Path, host, samples: np.ndarray) -> None:
        export_library(host, out / "model.so")
