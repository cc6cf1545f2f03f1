"""Where a compile's time goes: wall seconds per phase (`report.timings`, `tvmq compile
--timings`).

A compile records into one `Timings` (`recording(t)`); code anywhere below it times a phase
with `with phase("calibrate"): ...` (a no-op when nothing records). A phase entered again
adds to its total. Phases nest: inside "build", `phase("codegen")` is recorded as
"build/codegen", so a parent's seconds include its children's.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar


class Timings:
    """Seconds per phase, in the order the phases were first entered."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._open: list[str] = []

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        path = "/".join([*self._open, name])
        self._open.append(name)
        self.seconds.setdefault(path, 0.0)
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[path] += time.perf_counter() - start
            self._open.pop()


def timings_table(seconds: dict[str, float], total: float | None = None) -> str:
    """One line per phase (children indented under their parent) with seconds and the share
    of `total` (default: the sum of the top-level phases)."""
    top = sum(s for name, s in seconds.items() if "/" not in name)
    total = total or top or 1.0
    width = max((len(name.rsplit("/", 1)[-1]) + 2 * name.count("/") for name in seconds),
                default=5)
    lines = []
    for name, s in seconds.items():
        label = "  " * name.count("/") + name.rsplit("/", 1)[-1]
        lines.append(f"  {label:<{width}} {s:8.2f} s {s / total:6.1%}")
    if total > top + 0.005:
        lines.append(f"  {'(other)':<{width}} {total - top:8.2f} s {(total - top) / total:6.1%}")
    return "\n".join(lines)


_CURRENT: ContextVar[Timings | None] = ContextVar("tvmq_timings", default=None)


@contextmanager
def recording(timings: Timings) -> Iterator[Timings]:
    """Make `timings` the one `phase()` records into, for the duration of the block."""
    token = _CURRENT.set(timings)
    try:
        yield timings
    finally:
        _CURRENT.reset(token)


@contextmanager
def phase(name: str) -> Iterator[None]:
    """Time `name` in the Timings being recorded (see `recording`); nothing when none is."""
    timings = _CURRENT.get()
    if timings is None:
        yield
        return
    with timings.phase(name):
        yield
