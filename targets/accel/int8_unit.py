"""The accelerator's INT8 unit on the C emulator: the requant unit, and conv2d as a loop over
output-channel tiles (``accel_conv2d_tile``), with 4- or 8-bit operands and cycle counters.

Bit-exact with tvmq's realized conv: ``acc = conv(x - in_zp, w) + bias`` (int32), then
``tvmq.numerics.requantize(acc, requant, zero_point=out_zp, qmin, qmax, axis=1)``. A layer is
an int32 descriptor (``c_api.DESC_FIELDS``) and a requant register file, checked by the C
checker when built (`conv2d_descriptor`); a compiled model calls the same tile function.

Examples
--------
>>> import numpy as np
>>> from tvmq.numerics import Requant
>>> rq = Requant.from_scale(0.5, "mult_shift", "double")
>>> requant(np.array([5, -5], np.int32), "mult_shift", "double", rq.multiplier, rq.shift, None,
...         0, -128, 127)
array([ 3, -2], dtype=int32)
"""

from __future__ import annotations

import numpy as np

from tvmq.numerics import Requant
from tvmq.numerics.weights import pack_int4

from .c_api import (
    DESC_FIELDS,
    KINDS,
    as_pointer,
    c_float_p,
    c_int8_p,
    c_int32_p,
    check_status,
)
from .config import AccelConfig
from .conv_layer import conv_geometry, hw_fields, tile_loop_runner
from .counters import clear_counters, read_counters, scratch_slot
from .library import load


def _kind(kind: str, rounding: str | None) -> int:
    """The ACCEL_RQ_* code of a requant kind and rounding; ValueError for a pair it has not."""
    if kind == "fp32" and rounding is None:
        return KINDS["fp32"]
    if kind == "mult_shift" and rounding in ("double", "single", "tonearest"):
        return KINDS[rounding]
    raise ValueError(f"kind={kind!r}, rounding={rounding!r}: use kind='mult_shift' with rounding "
                     "'double'/'single'/'tonearest', or kind='fp32' with rounding=None")


def _params(kind: int, multiplier, shift, scale):
    """(multiplier, shift, scale) as flat contiguous arrays: int32 ones for mult_shift, the
    float32 scale for fp32 (the others None)."""
    if kind == KINDS["fp32"]:
        return None, None, np.ascontiguousarray(scale, np.float32).reshape(-1)
    return (np.ascontiguousarray(multiplier, np.int32).reshape(-1),
            np.ascontiguousarray(shift, np.int32).reshape(-1), None)


def requant(acc: np.ndarray, kind: str, rounding: str | None, multiplier, shift, scale,
            out_zp: int, qmin: int, qmax: int) -> np.ndarray:
    """The accelerator's requant unit on int32 ``acc`` with per-tensor parameters.

    ``clip(requant(acc) + out_zp, qmin, qmax)``, bit-exact with
    :func:`tvmq.numerics.requantize`.

    Parameters
    ----------
    acc : numpy.ndarray
        int32 accumulators, any shape.
    kind, rounding : "mult_shift" with "double"/"single"/"tonearest", or "fp32" with None.
    multiplier, shift : int or 0-d/1-element array, for mult_shift (else ignored).
    scale : float or 0-d/1-element array, for fp32 (else ignored).
    out_zp, qmin, qmax : int32 zero point and clamp.

    Returns
    -------
    numpy.ndarray
        int32 with the shape of ``acc``.
    """
    lib = load()
    k = _kind(kind, rounding)
    mult, sh, sc = _params(k, multiplier, shift, scale)
    for name, p in (("multiplier", mult), ("shift", sh), ("scale", sc)):
        if p is not None and p.size != 1:
            raise ValueError(f"{name} has {p.size} entries; requant takes per-tensor parameters")
    acc32 = np.ascontiguousarray(acc, np.int32)
    out = np.empty_like(acc32)
    status = lib.accel_requant(as_pointer(acc32, c_int32_p), acc32.size, k,
                               as_pointer(mult, c_int32_p), as_pointer(sh, c_int32_p),
                               as_pointer(sc, c_float_p), out_zp, qmin, qmax,
                               as_pointer(out, c_int32_p))
    check_status(lib, status, "accel_requant")
    return out


def conv2d(hw: AccelConfig, x: np.ndarray, in_zp: int, w: np.ndarray, bias: np.ndarray | None,
           strides, padding, dilation, groups: int, requant: Requant, out_zp: int, qmin: int,
           qmax: int, w_bits: int = 8, a_bits: int = 8,
           y_bits: int = 8) -> tuple[np.ndarray, dict[str, int]]:
    """Integer conv2d on the emulated accelerator, with its cycle counters.

    Bit-exact with tvmq's realized conv: ``acc = conv(x - in_zp, w) + bias`` (int32), then
    ``tvmq.numerics.requantize(acc, requant, zero_point=out_zp, qmin, qmax, axis=1)``.

    Parameters
    ----------
    hw : AccelConfig
    x : numpy.ndarray
        int8, NCHW with N == 1.
    in_zp : int
        Input zero point (padding contributes 0, i.e. pads with in_zp).
    w : numpy.ndarray
        int8, OIHW, I == C / groups.
    bias : numpy.ndarray or None
        int32, (O,).
    strides, dilation : (h, w)
    padding : (top, left, bottom, right)
    groups : int
    requant : tvmq.numerics.Requant
        Per-tensor or per-output-channel (O,).
    out_zp, qmin, qmax : int
        Output zero point and clamp, within [-128, 127] ([-8, 7] for y_bits 4).
    w_bits, a_bits, y_bits : int
        Operand widths (4 or 8, each in hw.operand_bits): w holds int4 values for w_bits 4 (it
        is packed here with `pack_int4`, as the accelerator stores it), x int4 values for
        a_bits 4 (checked by the emulator).

    Returns
    -------
    y : numpy.ndarray
        int8, (1, O, OH, OW).
    counters : dict
        ``cycles, compute_cycles, dma_cycles, requant_cycles, macs, dma_bytes, tiles`` (see the
        cycle model at the top of ``emulator/accel.c``).
    """
    if x.ndim != 4 or x.shape[0] != 1 or w.ndim != 4:
        raise ValueError(f"x must be NCHW with N == 1 and w OIHW, got x{x.shape}, w{w.shape}")
    desc, rq = conv2d_descriptor(hw, x.shape, w.shape, in_zp, strides, padding, dilation,
                                 groups, requant, out_zp, qmin, qmax, scratch_slot(),
                                 w_bits=w_bits, a_bits=a_bits, y_bits=y_bits)
    x8 = np.ascontiguousarray(x, np.int8)
    w8 = pack_weights(w, w_bits)
    o, oh, ow = (int(desc[DESC_FIELDS.index(f)]) for f in ("O", "OH", "OW"))
    b32 = None if bias is None else np.ascontiguousarray(bias, np.int32).reshape(-1)
    if b32 is not None and b32.size != o:
        raise ValueError(f"bias has {b32.size} entries, conv2d has O={o}")
    y = np.empty((1, o, oh, ow), np.int8)
    clear_counters(scratch_slot())
    run_tiles(desc, rq, x8, w8, b32, y)
    return y, read_counters(scratch_slot())


def pack_weights(w: np.ndarray, w_bits: int) -> np.ndarray:
    """The weight buffer the accelerator reads: int8 OIHW, or `pack_int4` bytes (as int8)."""
    if w_bits == 4:
        return pack_int4(np.asarray(w)).view(np.int8)
    return np.ascontiguousarray(w, np.int8)


def run_tiles(desc: np.ndarray, rq: np.ndarray, x: np.ndarray, w: np.ndarray,
              bias: np.ndarray | None, y: np.ndarray) -> None:
    """The tile loop a compiled model runs in TIR: `accel_conv2d_tile` for o0 = 0, t_oc, ...
    on contiguous int32 desc/rq/bias, int8 x/w and the int8 output buffer y."""
    tile_runner(desc, rq, x, w, bias, y)()


def tile_runner(desc, rq, x, w, bias, y):
    """`run_tiles` with its arguments converted once: a no-argument callable (for timing the
    emulator without ctypes' per-call argument conversion)."""
    ptrs = (as_pointer(desc, c_int32_p), as_pointer(x, c_int8_p), as_pointer(w, c_int8_p),
            as_pointer(bias, c_int32_p), as_pointer(rq, c_int32_p), as_pointer(y, c_int8_p))
    return tile_loop_runner("accel_conv2d_tile", desc, DESC_FIELDS, ptrs)


def conv2d_descriptor(hw: AccelConfig, x_shape, w_shape, in_zp: int, strides, padding, dilation,
                      groups: int, requant: Requant, out_zp: int, qmin: int, qmax: int,
                      counter_slot: int, w_bits: int = 8, a_bits: int = 8,
                      y_bits: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """The layer descriptor (int32, DESC_FIELDS) and requant register file (int32, (P, 2)) of a
    conv2d with NCHW input `x_shape` (N == 1) and OIHW weights `w_shape`.

    The register file holds {M0, shift} per parameter set for mult_shift, {float32 bits of the
    scale, 0} for fp32; P = O per channel, else 1. w_bits / a_bits / y_bits are the operand
    widths (4 or 8; each must be in hw.operand_bits). Raises ValueError for shapes or parameters
    the accelerator cannot take (the reason comes from the C checker, see `check_layer`).
    """
    for name, bits in (("w_bits", w_bits), ("a_bits", a_bits), ("y_bits", y_bits)):
        if bits not in hw.operand_bits:
            raise ValueError(f"AccelConfig {hw.name!r} operand_bits={hw.operand_bits} has no "
                             f"{bits}-bit operands ({name}={bits}); add {bits} to operand_bits.")
    geometry = conv_geometry(x_shape, w_shape, strides, padding, dilation, groups)
    o = geometry["O"]
    k = _kind(requant.kind, requant.rounding)
    if k == KINDS["fp32"]:
        params = np.asarray(requant.scale, np.float32)
        rq = np.stack([params.reshape(-1).view(np.int32),
                       np.zeros(params.size, np.int32)], axis=1)
    else:
        params = np.asarray(requant.multiplier)
        rq = np.stack([params.reshape(-1), np.asarray(requant.shift).reshape(-1)],
                      axis=1).astype(np.int32)
    per_channel = params.ndim == 1
    if per_channel and params.size != o:
        raise ValueError(f"per-channel requant has {params.size} entries, conv2d has O={o}")
    fields = dict(**geometry, **hw_fields(hw), in_zp=in_zp, kind=k,
                  per_channel=int(per_channel), out_zp=out_zp, qmin=qmin, qmax=qmax,
                  counter_slot=counter_slot, w_bits=w_bits, a_bits=a_bits, y_bits=y_bits)
    desc = np.array([int(fields[f]) for f in DESC_FIELDS], np.int32)
    rq = np.ascontiguousarray(rq)
    reason = check_layer(desc, rq)
    if reason is not None:
        raise ValueError(reason)
    return desc, rq


def check_layer(desc: np.ndarray, rq: np.ndarray) -> str | None:
    """None if the accelerator can run the layer, else the C checker's reason."""
    lib = load()
    if lib.accel_conv2d_check(as_pointer(desc, c_int32_p), as_pointer(rq, c_int32_p)) == 0:
        return None
    return lib.accel_last_error().decode()
