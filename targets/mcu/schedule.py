"""The schedule of every MCU kernel: `fuse_per_output`, so no kernel allocates a workspace the
size of a tensor.

Elementwise stages read once per consumer element are inlined; the others (a conv's reduction,
a requant's first stage) are computed at their consumer's innermost loop, and reductions are
decomposed: the int32 accumulator of a conv is a scalar per output element.
"""

from __future__ import annotations

import tvm
from tvm import s_tir

from ..host.schedules import inline_single_reads, intermediates


def fuse_per_output(func: tvm.tirx.PrimFunc) -> tvm.tirx.PrimFunc:
    """Inline every intermediate stage read once per consumer element; compute the others (a
    conv's reduction, a requant's first stage) at their consumer's innermost loop, so after
    lowering they are scalars instead of whole-tensor workspaces."""
    sch = s_tir.Schedule(tvm.IRModule({"f": func}))
    sch.work_on("f")
    root = sch.get_sblock("root")
    inline_single_reads(sch, root)
    for block in reversed(intermediates(sch, root)):
        consumers = sch.get_consumers(block)
        if len(consumers) != 1:
            continue
        for loop in reversed(sch.get_loops(consumers[0])):
            try:
                sch.compute_at(block, loop, preserve_unit_loops=False)
                break
            except s_tir.ScheduleError:
                continue
    for block in sch.get_child_blocks(root) + _nested(sch, root):
        if sch.get(block).init is None:
            continue
        for loop in reversed(sch.get_loops(block)):  # the outermost reduction loop succeeds
            try:
                sch.decompose_reduction(block, loop)
                break
            except s_tir.ScheduleError:
                continue
    return sch.mod["f"]


def _nested(sch, root):
    """Blocks moved under another block's loops by compute_at (not children of root)."""
    out = []
    for child in sch.get_child_blocks(root):
        for loop in sch.get_loops(child):
            out += [b for b in sch.get_child_blocks(loop) if not any(
                sch.get(b).same_as(sch.get(c)) for c in sch.get_child_blocks(root))]
    return out
