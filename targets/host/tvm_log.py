"""Quiet TVM's "Scope Saving" / "Scope Loaded" lines around saving and loading a model.so.

TVM 0.27's runtime prints one line per constant of a Relax VM executable when it saves one
(`export_library`) and again when it loads one (`tvm.runtime.load_module`), 35 of each for the
digits CNN:

    [12:00:00] /project/src/runtime/vm/executable.cc:276: Warning: Scope Saving:
    [12:00:00] /project/src/runtime/vm/executable.cc:340: Warning: Scope Loaded:

They are unconditional `LOG(WARNING)`s in src/runtime/vm/executable.cc, written straight to
`std::cerr`: TVM has no level setting that reaches them (TVM_LOG_DEBUG only adds debug lines)
and no Python logger sees them. `drop_scope_lines()` therefore filters file descriptor 2 for
the duration of the save or load: those lines are dropped, and every other line, from TVM, a
compiler it runs or Python, goes to the real stderr as soon as it is written, so a real
warning or error still reaches the user (also right before a crash).
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
from collections.abc import Iterator

SCOPE_LINE = re.compile(rb"vm/executable\.cc:\d+: Warning: Scope (Saving|Loaded):")


@contextlib.contextmanager
def drop_scope_lines() -> Iterator[None]:
    """Inside the block, lines written to file descriptor 2 that match SCOPE_LINE are dropped;
    the others pass through, line by line, as they are written."""
    sys.stderr.flush()
    stderr = os.dup(2)
    read_end, write_end = os.pipe()
    forward = threading.Thread(target=_forward, args=(read_end, stderr), daemon=True)
    forward.start()
    os.dup2(write_end, 2)
    os.close(write_end)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(stderr, 2)  # closes the pipe's last write end here: the thread reads to EOF
        forward.join(timeout=10)  # a child process still holding the pipe cannot hang us


def _forward(read_end: int, stderr: int) -> None:
    """Copy lines from the pipe to `stderr` (then closed), except SCOPE_LINE ones."""
    with open(read_end, "rb") as pipe, open(stderr, "wb") as out:
        for line in pipe:
            if not SCOPE_LINE.search(line):
                out.write(line)
                out.flush()
