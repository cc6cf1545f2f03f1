"""Static memory plan: every activation gets an offset in one arena, by liveness.

A tensor is live from the step that writes it to the last step that reads it (a view shares its
source's storage and extends its life). Two tensors whose lives overlap may not overlap in the
arena. Placement is greedy by size (largest first, each at the lowest aligned offset that clears
every placed tensor it is live with), the heuristic TFLite Micro also uses. Lower bound for any
plan: the most bytes live at one step (`peak_live`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .program import Program, Step

ALIGN = 16
EXTERNAL = ("input", "output", "float_input", "float_output", "const")  # not in the arena


@dataclass
class MemoryPlan:
    """offsets: tensor name -> arena offset (views included); arena_bytes: the arena size."""

    offsets: dict[str, int]
    arena_bytes: int
    peak_live: int  # most bytes live at one step: no plan can use less
    largest_pair: int  # the two largest tensors live at one step
    total_bytes: int  # every activation in its own buffer (no reuse)
    lives: dict[str, tuple[int, int]] = field(default_factory=dict)

    def table(self, tensors=None) -> str:
        """The summary line; with the program's `tensors`, one row per activation too."""
        lines = [f"arena {self.arena_bytes:,} B | peak live {self.peak_live:,} B | "
                 f"largest live pair {self.largest_pair:,} B | no reuse {self.total_bytes:,} B"]
        if tensors is not None:
            lines.append(f"{'tensor':<24} {'bytes':>9} {'offset':>9}  live steps")
            for name in sorted(self.offsets, key=lambda n: (self.offsets[n], n)):
                life = self.lives.get(name)
                span = f"{life[0]}..{life[1]}" if life else "view"
                lines.append(f"{name:<24} {tensors[name].nbytes:>9,} {self.offsets[name]:>9,}"
                             f"  {span}")
        return "\n".join(lines)


def align(n: int) -> int:
    """n rounded up to a multiple of ALIGN."""
    return (n + ALIGN - 1) // ALIGN * ALIGN


def plan_memory(program: Program, phase: str = "run") -> MemoryPlan:
    """Arena offsets for the activations of one phase's steps."""
    steps: list[Step] = program.steps[phase]
    tensors = program.tensors
    root = {}  # view -> the tensor owning its storage
    for step in steps:
        if step.kernel is None:
            src = step.args[0]
            root[step.out] = root.get(src, src)
    owner = {name: root.get(name, name) for name in tensors}
    lives: dict[str, list[int]] = {}
    for i, step in enumerate(steps):
        for name in (*step.args, step.out):
            o = owner[name]
            if tensors[o].kind in EXTERNAL:
                continue
            span = lives.setdefault(o, [i, i])
            span[0], span[1] = min(span[0], i), max(span[1], i)
    sizes = {name: align(tensors[name].nbytes) for name in lives}
    offsets: dict[str, int] = {}
    for name in sorted(lives, key=lambda n: (-sizes[n], lives[n][0])):
        lo, hi = lives[name]
        busy = sorted((offsets[o], offsets[o] + sizes[o]) for o in offsets
                      if lives[o][0] <= hi and lo <= lives[o][1])
        offset = 0
        for start, end in busy:
            if offset + sizes[name] <= start:
                break
            offset = max(offset, end)
        offsets[name] = offset
    arena = max((offsets[n] + sizes[n] for n in offsets), default=0)
    live = [sorted((sizes[n] for n, (lo, hi) in lives.items() if lo <= i <= hi), reverse=True)
            for i in range(len(steps))]  # sizes live at each step, largest first
    peak = max((sum(s) for s in live), default=0)
    pair = max((sum(s[:2]) for s in live), default=0)
    for name in tensors:  # views take their owner's offset
        if owner[name] in offsets and name not in offsets:
            offsets[name] = offsets[owner[name]]
    return MemoryPlan(offsets, arena, peak, pair, sum(sizes.values()),
                      {n: tuple(v) for n, v in lives.items()})
