"""Lower a realized integer module to an MCU `Program`: kernels plus the steps calling them.

`lower_program(quant_mod)` runs, in order:

- `split_phases` (phases.py): `main` split at the model's boundary quantize and dequantizes
  into the phases quantize, run and one dequantize per output;
- `pack_int4_weights` (int4_weights.py): weights that fit in int4 stored two per byte and
  unpacked inside the kernels;
- LegalizeOps (a reshape stays a view), then `group_kernels` (kernel_groups.py) and FuseTIR:
  one kernel per group of bindings between int8 tensors;
- `phase_steps` (steps.py): each phase as `Step`s over named `Tensor`s (program.py);
- `fuse_per_output` (schedule.py) on every kernel used.

The kernels stay in TIR; `codegen` turns them into C with TVM's C target.
"""

from __future__ import annotations

import tvm
from tvm import relax

from tvmq.ir import returned_fields

from .int4_weights import pack_int4_weights
from .kernel_groups import group_kernels
from .phases import split_phases
from .program import Program, Tensor, dequantize_phase, output_names
from .schedule import fuse_per_output
from .steps import phase_steps


def lower_program(quant_mod: tvm.IRModule) -> Program:
    """The MCU program of a realized int8 module (see the module docstring)."""
    split = split_phases(quant_mod)
    phases = list(split)
    mod = tvm.IRModule({gv: f for gv, f in quant_mod.functions_items()
                        if isinstance(f, tvm.tirx.PrimFunc)})
    for phase, func in split.items():
        mod[phase] = func
    mod, weights = pack_int4_weights(mod)
    mod = relax.transform.LegalizeOps({"relax.reshape": _keep})(mod)
    mod = group_kernels(mod, phases)
    mod = tvm.transform.Sequential([
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FuseTIR(),
        relax.transform.DeadCodeElimination(phases),
    ])(mod)
    outputs = output_names(len(returned_fields(quant_mod["main"])))
    boundary = {"quantize": (("float_input", "input"), ["input_q"]),
                "run": (("input", "output"), [q for q, _ in outputs])}
    for i, (q, f) in enumerate(outputs):
        boundary[dequantize_phase(i, len(outputs))] = (("output", "float_output"), [f])
    tensors: dict[str, Tensor] = {}
    steps = {phase: phase_steps(mod[phase], tensors, *boundary[phase]) for phase in phases}
    used = {s.kernel for phase in steps.values() for s in phase if s.kernel}
    kernels = tvm.IRModule({name: fuse_per_output(mod[name]).with_attr("global_symbol", name)
                            for name in sorted(used)})
    return Program(kernels, steps, tensors, weights, outputs)


def _keep(bb, call):
    """LegalizeOps rule that leaves the call as it is (a reshape stays a view)."""
    return call
