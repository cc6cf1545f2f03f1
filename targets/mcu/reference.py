"""The reference run of a `Program`: its kernels built with TVM's llvm target, step by step.

`run_program(program, x)` returns every tensor by name; the generated C (a build with
TVMQ_TRACE shows the same tensors) and the Cortex-M4 image are compared with it bit for bit.
"""

from __future__ import annotations

import numpy as np
import tvm

from .program import Program


def run_program(program: Program, x: np.ndarray) -> dict[str, np.ndarray]:
    """Run the program's kernels built with TVM's llvm target, step by step, on one float input;
    return every tensor by name. The reference the generated C is compared with (a C build
    with TVMQ_TRACE shows the same tensors)."""
    ex = program.llvm()
    values = {program.steps["quantize"][0].args[0]: np.asarray(x, np.float32)}
    for steps in program.steps.values():
        for step in steps:
            out = program.tensors[step.out]
            if step.kernel is None:
                values[step.out] = values[step.args[0]].reshape(out.shape)
                continue
            args = [tvm.runtime.tensor(program.tensors[a].value if program.tensors[a].kind
                                       == "const" else values[a]) for a in step.args]
            result = tvm.runtime.tensor(np.zeros(out.shape, out.dtype))
            ex[step.kernel](*args, result)
            values[step.out] = result.numpy()
    return values
