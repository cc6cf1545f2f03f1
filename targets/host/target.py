"""The host target: the realized module built for this CPU; exported as model.so."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..target import Target, register
from .tvm_log import drop_scope_lines


def export_library(host, path: Path, options: list[str] | None = None) -> None:
    """Write a host build's executable as a shared library TVM's VM loads (`targets.host.load`);
    a build loaded from the build cache is that library already: written as it is."""
    if host.library is not None:
        if options:
            raise ValueError("a host build from the build cache cannot be linked again with "
                             f"{options}: build it with reuse=False")
        Path(path).write_bytes(host.library)
        return
    export_executable(host.executable, path, options)


def export_executable(executable, path: Path, options: list[str] | None = None) -> None:
    """`executable.export_library(path)`, without TVM's line per constant (tvm_log.py)."""
    with drop_scope_lines():
        executable.export_library(str(path), options=options or [])


@register
class HostTarget(Target):
    name = "host"

    def write(self, out: Path, host, samples: np.ndarray) -> None:
        export_library(host, out / "model.so")
