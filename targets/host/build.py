"""Build a Relax module for this CPU and run it through the Relax VM."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

TARGET = {"kind": "llvm"}


class HostModule:
    """A compiled module: `run(x)` -> numpy output(s) of `main` (or of another Relax function)."""

    def __init__(self, executable: tvm.runtime.Executable):
        self.executable = executable
        self.vm = relax.VirtualMachine(executable, tvm.cpu())

    def run(self, x: np.ndarray, function: str = "main"):
        out = self.vm[function](tvm.runtime.tensor(np.ascontiguousarray(x)))
        if isinstance(out, tvm.runtime.Tensor):
            return out.numpy()
        return [o.numpy() for o in out]


def build(mod: tvm.IRModule) -> HostModule:
    """Compile `mod` for llvm with `relax.get_default_pipeline` (FoldConstant, FuseOps, FuseTIR)."""
    target = tvm.target.Target(TARGET)
    mod = relax.transform.InlinePrivateFunctions()(mod)
    executable = tvm.compile(mod, target=target, relax_pipeline=relax.get_default_pipeline(target))
    return HostModule(executable)
