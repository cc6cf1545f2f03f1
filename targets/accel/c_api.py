"""The ctypes mirror of the emulator's C API (``emulator/accel.h`` and ``emulator/gradq.c``).

Pointer types, the three structs, the requant kind codes (ACCEL_RQ_*), the field order of the
INT8 and LBFP layer descriptors (the ACCEL_D_* and ACCEL_L_* enums), and `declare(lib, path)`,
which gives every entry point its argument and return types and checks that the C library and
this module agree on the descriptor lengths. Every entry point returns 0 or an error whose text
is ``accel_last_error()``: `check_status` turns it into a ValueError.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np

c_int8_p = ctypes.POINTER(ctypes.c_int8)
c_int16_p = ctypes.POINTER(ctypes.c_int16)
c_int32_p = ctypes.POINTER(ctypes.c_int32)
c_int64_p = ctypes.POINTER(ctypes.c_int64)
c_uint8_p = ctypes.POINTER(ctypes.c_uint8)
c_float_p = ctypes.POINTER(ctypes.c_float)
c_double_p = ctypes.POINTER(ctypes.c_double)

KINDS = {"double": 0, "single": 1, "tonearest": 2, "fp32": 3}  # accel.h ACCEL_RQ_*
COUNTERS = ("cycles", "compute_cycles", "dma_cycles", "requant_cycles", "macs", "dma_bytes",
            "tiles")

# The layer descriptor's int32 fields, in the order of accel.h's ACCEL_D_* enum.
DESC_FIELDS = ("C", "H", "W", "in_zp", "O", "KH", "KW", "groups", "stride_h", "stride_w",
               "pad_top", "pad_left", "pad_bottom", "pad_right", "dil_h", "dil_w", "kind",
               "per_channel", "out_zp", "qmin", "qmax", "OH", "OW", "t_oc", "t_ic",
               "weight_buffer_bytes", "act_buffer_bytes", "acc_buffer_bytes",
               "dma_bytes_per_cycle", "counter_slot", "w_bits", "a_bits", "y_bits")

# The LBFP layer descriptor's int32 fields, in the order of accel.h's ACCEL_L_* enum.
LBFP_DESC_FIELDS = ("C", "H", "W", "O", "KH", "KW", "groups", "stride_h", "stride_w", "pad_top",
                    "pad_left", "pad_bottom", "pad_right", "dil_h", "dil_w", "OH", "OW", "bits",
                    "frac_bits", "lut_bits", "w_block", "t_oc", "t_ic", "weight_buffer_bytes",
                    "act_buffer_bytes", "acc_buffer_bytes", "dma_bytes_per_cycle",
                    "counter_slot")


class AccelHw(ctypes.Structure):
    """accel.h ``accel_hw``."""

    _fields_ = [(n, ctypes.c_int32) for n in ("t_oc", "t_ic", "weight_buffer_bytes",
                                              "act_buffer_bytes", "acc_buffer_bytes",
                                              "dma_bytes_per_cycle")]


class AccelConvArgs(ctypes.Structure):
    """accel.h ``accel_conv_args`` (one whole-layer `accel_conv2d` call)."""

    _fields_ = [
        ("x", c_int8_p), *((n, ctypes.c_int32) for n in ("C", "H", "W", "in_zp")),
        ("w", c_int8_p), *((n, ctypes.c_int32) for n in ("O", "KH", "KW", "groups")),
        *((n, ctypes.c_int32) for n in ("stride_h", "stride_w", "pad_top", "pad_left",
                                        "pad_bottom", "pad_right", "dil_h", "dil_w")),
        ("bias", c_int32_p), ("kind", ctypes.c_int32), ("mult", c_int32_p),
        ("shift", c_int32_p), ("scale", c_float_p), ("per_channel", ctypes.c_int32),
        *((n, ctypes.c_int32) for n in ("out_zp", "qmin", "qmax")),
        ("y", c_int8_p), ("OH", ctypes.c_int32), ("OW", ctypes.c_int32),
        *((n, ctypes.c_int32) for n in ("w_bits", "a_bits", "y_bits")),  # 0 reads as 8
    ]


class AccelCounters(ctypes.Structure):
    """accel.h ``accel_counters``: one uint64 per name in COUNTERS."""

    _fields_ = [(n, ctypes.c_uint64) for n in COUNTERS]


def declare(lib: ctypes.CDLL, path: Path) -> None:
    """Set the argument and return types of every entry point of `lib` (loaded from `path`).

    Raises RuntimeError if accel.h's descriptor lengths differ from DESC_FIELDS or
    LBFP_DESC_FIELDS.
    """
    lib.accel_requant.argtypes = [c_int32_p, ctypes.c_int64, ctypes.c_int, c_int32_p, c_int32_p,
                                  c_float_p, ctypes.c_int32, ctypes.c_int32, ctypes.c_int32,
                                  c_int32_p]
    lib.accel_requant.restype = ctypes.c_int
    lib.accel_conv2d.argtypes = [ctypes.POINTER(AccelHw), ctypes.POINTER(AccelConvArgs),
                                 ctypes.POINTER(AccelCounters)]
    lib.accel_conv2d.restype = ctypes.c_int
    lib.accel_last_error.argtypes = []
    lib.accel_last_error.restype = ctypes.c_char_p
    lib.accel_desc_len.restype = ctypes.c_int
    lib.accel_conv2d_check.argtypes = [c_int32_p, c_int32_p]
    lib.accel_conv2d_check.restype = ctypes.c_int
    lib.accel_conv2d_tile.argtypes = [c_int32_p, c_int8_p, c_int8_p, c_int32_p, c_int32_p,
                                      c_int8_p, ctypes.c_int32]
    lib.accel_conv2d_tile.restype = ctypes.c_int
    lib.accel_counters_alloc.argtypes = [ctypes.c_int32]
    lib.accel_counters_alloc.restype = ctypes.c_int32
    lib.accel_counters_read.argtypes = [ctypes.c_int32, ctypes.POINTER(AccelCounters)]
    lib.accel_counters_read.restype = ctypes.c_int
    lib.accel_counters_clear.argtypes = [ctypes.c_int32]
    lib.accel_counters_clear.restype = ctypes.c_int
    if lib.accel_desc_len() != len(DESC_FIELDS):
        raise RuntimeError(f"{path}: accel.h has {lib.accel_desc_len()} descriptor fields, "
                           f"c_api.py {len(DESC_FIELDS)}; update DESC_FIELDS")
    _declare_lbfp(lib, path)
    _declare_gradq(lib)


def _declare_lbfp(lib: ctypes.CDLL, path: Path) -> None:
    """Argument types of the LBFP entry points; the descriptor layouts must agree."""
    lib.accel_lbfp_desc_len.restype = ctypes.c_int
    lib.accel_lbfp_conv2d_check.argtypes = [c_int32_p]
    lib.accel_lbfp_conv2d_check.restype = ctypes.c_int
    lib.accel_lbfp_conv2d_tile.argtypes = [c_int32_p, c_uint8_p, c_uint8_p, c_int32_p, c_int32_p,
                                           c_int32_p, c_int64_p, c_int32_p, c_double_p,
                                           c_int64_p, c_double_p, c_uint8_p, ctypes.c_int32]
    lib.accel_lbfp_conv2d_tile.restype = ctypes.c_int
    if lib.accel_lbfp_desc_len() != len(LBFP_DESC_FIELDS):
        raise RuntimeError(f"{path}: accel.h has {lib.accel_lbfp_desc_len()} LBFP descriptor "
                           f"fields, c_api.py {len(LBFP_DESC_FIELDS)}; update LBFP_DESC_FIELDS")


def _declare_gradq(lib: ctypes.CDLL) -> None:
    """Argument types of the gradient quantization unit (gradq.c)."""
    lib.accel_gradq.argtypes = [c_float_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
                                ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_double,
                                ctypes.c_uint32, ctypes.c_uint32, c_int16_p, c_float_p]
    lib.accel_gradq.restype = ctypes.c_int
    lib.accel_uniform.argtypes = [ctypes.c_uint32, ctypes.c_uint32, ctypes.c_int64, c_float_p]
    lib.accel_uniform.restype = ctypes.c_int


def check_status(lib: ctypes.CDLL, status: int, what: str) -> None:
    """Raise ValueError(f"{what}: {accel_last_error()}") if `status` is nonzero."""
    if status != 0:
        raise ValueError(f"{what}: {lib.accel_last_error().decode()}")


def as_pointer(a: np.ndarray | None, ctype):
    """`a`'s data as a `ctype` pointer (a ctypes POINTER type above), or None for None."""
    return None if a is None else a.ctypes.data_as(ctype)
