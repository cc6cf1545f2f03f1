"""The emulator's counter bank: one slot of cycle counters per layer, in the C library.

Every tile call adds its counts (``COUNTERS``: cycles, compute/dma/requant cycles, MACs, DMA
bytes, tiles) into the slot its descriptor names; compiled models and Python share the bank
because the library is loaded once per process (:func:`.library.load`).
"""

from __future__ import annotations

import ctypes

from .c_api import COUNTERS, AccelCounters, check_status
from .library import load


def alloc_counters(n: int) -> int:
    """The first of `n` new zeroed slots of the emulator's counter bank."""
    slot = load().accel_counters_alloc(n)
    if slot < 0:
        raise MemoryError(f"the accel counter bank cannot grow by {n} slots")
    return slot


def read_counters(slot: int) -> dict[str, int]:
    """{name: count} of `slot`, for every name in COUNTERS."""
    lib, out = load(), AccelCounters()
    check_status(lib, lib.accel_counters_read(slot, ctypes.byref(out)), "accel_counters_read")
    return {name: int(getattr(out, name)) for name in COUNTERS}


def clear_counters(slot: int) -> None:
    """Zero every counter of `slot`."""
    lib = load()
    check_status(lib, lib.accel_counters_clear(slot), "accel_counters_clear")


_SCRATCH: dict[int, int] = {}


def scratch_slot() -> int:
    """The counter slot a one-layer call (`int8_unit.conv2d`, `lbfp_unit.lbfp_conv2d`) uses,
    one per loaded library."""
    lib = id(load())
    if lib not in _SCRATCH:
        _SCRATCH[lib] = alloc_counters(1)
    return _SCRATCH[lib]
