"""Reading scheduled TIR in tests: the loops around each block (this TVM has no Python TIR
visitor, so the loops are read through a schedule)."""

from __future__ import annotations

import tvm
from tvm import s_tir


def loop_nests(func: tvm.tirx.PrimFunc) -> dict[str, list[tuple[tvm.tirx.ForKind, int]]]:
    """Each block of `func` by name -> (kind, extent) of the loops around it, outermost first."""
    sch = s_tir.Schedule(func)
    nests = {}

    def walk(parent):
        for block in sch.get_child_blocks(parent):
            loops = [sch.get(loop) for loop in sch.get_loops(block)]
            nests[sch.get(block).name_hint] = [(loop.kind, int(loop.extent)) for loop in loops]
            walk(block)

    walk(sch.get_sblock("root"))
    return nests
