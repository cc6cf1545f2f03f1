"""The accelerator's LBFP MAC mode on the C emulator: conv2d on LBFP code words as a loop over
output-channel tiles (``accel_lbfp_conv2d_tile``), with cycle counters.

Bit-exact with the golden model :mod:`tvmq.numerics.lbfp`: ``acc, e_ref = lbfp.conv2d(...)``,
``acc += bias``, then ``lbfp.acc_to_lbfp(acc, e_ref, out_exp, fmt, lo, hi)``. A layer is an
int32 descriptor (``c_api.LBFP_DESC_FIELDS``: geometry, one format for activations, weights and
output, the weight block size, the hardware, a counter slot), checked by the C checker when
built (`lbfp_conv2d_descriptor`); a compiled model calls the same tile function.
"""

from __future__ import annotations

import numpy as np

from tvmq.numerics import lbfp

from .c_api import (
    LBFP_DESC_FIELDS,
    as_pointer,
    c_double_p,
    c_int32_p,
    c_int64_p,
    c_uint8_p,
)
from .config import PRESETS, AccelConfig
from .conv_layer import conv_geometry, hw_fields, tile_loop_runner
from .counters import clear_counters, read_counters, scratch_slot
from .library import load


def lbfp_conv2d_descriptor(hw: AccelConfig, x_shape, w_shape, fmt: lbfp.LBFPFormat, strides,
                           padding, dilation, groups: int, counter_slot: int,
                           w_block: int | None = None) -> np.ndarray:
    """The LBFP layer descriptor (int32, LBFP_DESC_FIELDS) of a conv2d with NCHW input
    `x_shape` (N == 1), OIHW weights `w_shape` and format `fmt` (bits, frac_bits, lut_bits;
    shared by activations, weights and output). `w_block` (default fmt.block_size) is the
    weight block size along input channels, which sets the exponent bytes the DMA moves.
    Raises ValueError for shapes or settings the accelerator cannot take (the reason names the
    field; it comes from the C checker, see `lbfp_check_layer`)."""
    fields = dict(**conv_geometry(x_shape, w_shape, strides, padding, dilation, groups),
                  **hw_fields(hw), bits=fmt.bits, frac_bits=fmt.frac_bits,
                  lut_bits=fmt.lut_bits, w_block=fmt.block_size if w_block is None else w_block,
                  counter_slot=counter_slot)
    desc = np.array([int(fields[f]) for f in LBFP_DESC_FIELDS], np.int32)
    reason = lbfp_check_layer(desc)
    if reason is not None:
        raise ValueError(reason)
    return desc


def lbfp_check_layer(desc: np.ndarray) -> str | None:
    """None if the accelerator can run the LBFP layer `desc`, else the C checker's reason."""
    lib = load()
    desc = np.ascontiguousarray(desc, np.int32)
    if lib.accel_lbfp_conv2d_check(as_pointer(desc, c_int32_p)) == 0:
        return None
    return lib.accel_last_error().decode()


def lbfp_tile_runner(desc, x, w, x_exp, w_exp, e_ref, bias, out_exp, clip, lut, thresholds, y):
    """The tile loop of an LBFP layer (`accel_lbfp_conv2d_tile` for o0 = 0, t_oc, ...) as a
    no-argument callable, on contiguous arrays typed as in accel.h: int32 desc, x_exp, w_exp,
    e_ref, out_exp; uint8 x, w, y; int64 bias (or None) and lut; float64 clip and thresholds."""
    ptrs = (as_pointer(desc, c_int32_p), as_pointer(x, c_uint8_p), as_pointer(w, c_uint8_p),
            as_pointer(x_exp, c_int32_p), as_pointer(w_exp, c_int32_p),
            as_pointer(e_ref, c_int32_p), as_pointer(bias, c_int64_p),
            as_pointer(out_exp, c_int32_p), as_pointer(clip, c_double_p),
            as_pointer(lut, c_int64_p), as_pointer(thresholds, c_double_p),
            as_pointer(y, c_uint8_p))
    return tile_loop_runner("accel_lbfp_conv2d_tile", desc, LBFP_DESC_FIELDS, ptrs)


def _exact(a, dtype, name: str, shape=None) -> np.ndarray:
    """`a` as a contiguous `dtype` array (reshaped to `shape` if given); ValueError if a value
    does not survive the conversion (e.g. a word outside [0, 255] or a fractional exponent)."""
    src = np.asarray(a)
    if shape is not None:
        if src.size != int(np.prod(shape)):
            raise ValueError(f"{name} has shape {src.shape}, expected {tuple(shape)} entries")
        src = src.reshape(shape)
    out = np.ascontiguousarray(src, dtype)
    if not np.array_equal(out, src):
        raise ValueError(f"{name} does not fit {np.dtype(dtype).name} exactly")
    return out


def _per_channel(a, o: int) -> np.ndarray:
    """(O,) from O values of any shape (e.g. (1, O, 1, 1)) or one value broadcast."""
    a = np.asarray(a)
    return a.reshape(-1) if a.size == o else np.broadcast_to(a, (o,))


def lbfp_conv2d(x_words, x_exp, w_words, w_exp, fmt: lbfp.LBFPFormat, *, out_exp,
                bias_acc=None, lo: float = -np.inf, hi: float = np.inf, strides=(1, 1),
                padding=(0, 0, 0, 0), dilation=(1, 1), groups: int = 1,
                hw: AccelConfig = PRESETS["npu-small"], w_block: int | None = None
                ) -> tuple[np.ndarray, dict[str, int]]:
    """LBFP conv2d on the emulated accelerator, with its cycle counters.

    Bit-exact with the golden model: ``acc, e_ref = lbfp.conv2d(x, x_exp, w, w_exp, fmt, fmt,
    ...)``, ``acc += bias_acc[:, None, None]``, then ``lbfp.acc_to_lbfp(acc, e_ref[:, None,
    None], out_exp (per channel), fmt, lo=lo, hi=hi)``.

    Parameters
    ----------
    x_words : uint8 code words, (C, H, W) or (1, C, H, W).
    x_exp : (C,) exponents, one per input channel (blocks expanded).
    w_words : uint8 code words, OIHW, I == C / groups.
    w_exp : exponents of `w_words`' shape (per element, blocks expanded).
    fmt : the format of activations, weights and output (bits, frac_bits, lut_bits).
    out_exp : (O,) output exponents (the exponent of the block holding channel o).
    bias_acc : (O,) int64 bias in accumulator units 2^(e_ref - lut_bits)
        (`lbfp.bias_to_acc`), or None.
    lo, hi : the clip epilogue (ReLU: lo=0).
    strides, dilation : (h, w); padding : (top, left, bottom, right); groups : int.
    hw : AccelConfig (default the 'npu-small' preset).
    w_block : weight block size along input channels for the exponent DMA bytes
        (default fmt.block_size).

    Returns
    -------
    y : uint8 code words, (1, O, OH, OW).
    counters : dict
        ``cycles, compute_cycles, dma_cycles, requant_cycles, macs, dma_bytes, tiles`` (the LBFP
        cycle model at the top of ``emulator/accel.c``).
    """
    x = np.asarray(x_words)
    x = x[None] if x.ndim == 3 else x
    w = np.asarray(w_words)
    if x.ndim != 4 or x.shape[0] != 1 or w.ndim != 4:
        raise ValueError(f"x_words must be CHW or NCHW with N == 1 and w_words OIHW, got "
                         f"x{np.shape(x_words)}, w{w.shape}")
    desc = lbfp_conv2d_descriptor(hw, x.shape, w.shape, fmt, strides, padding, dilation, groups,
                                  scratch_slot(), w_block)
    c, o, oh, ow = (int(desc[LBFP_DESC_FIELDS.index(f)]) for f in ("C", "O", "OH", "OW"))
    x_e = _exact(x_exp, np.int32, "x_exp", (c,))
    w_e = _exact(w_exp, np.int32, "w_exp", w.shape)
    args = dict(desc=desc, x=_exact(x, np.uint8, "x_words"), w=_exact(w, np.uint8, "w_words"),
                x_exp=x_e, w_exp=w_e,
                e_ref=_exact(lbfp.conv_e_ref(x_e, w_e, groups), np.int32, "e_ref"),
                bias=None if bias_acc is None else _exact(bias_acc, np.int64, "bias_acc", (o,)),
                out_exp=_exact(_per_channel(out_exp, o), np.int32, "out_exp"),
                clip=np.array([lo, hi], np.float64), lut=np.ascontiguousarray(fmt.lut, np.int64),
                thresholds=np.ascontiguousarray(fmt.thresholds, np.float64))
    y = np.empty((1, o, oh, ow), np.uint8)
    clear_counters(scratch_slot())
    lbfp_tile_runner(**args, y=y)()
    return y, read_counters(scratch_slot())
