"""Weight and bias quantization for conv2d / matmul.

Weights: symmetric, narrow range int8 [-127, 127], zero point 0, one scale per output channel
(`axis`) or per tensor:  s_w[c] = max|W[c]| / 127,  Wq = clip(round_half_even(W / s_w), -127, 127).
Bias:    int32 at the accumulator's scale:  bq[c] = clip(round_half_even(b[c] / (s_x * s_w[c])),
INT32_MIN, INT32_MAX), computed in float64.
"""

from __future__ import annotations

import numpy as np

from .qparams import QParams, choose_qparams, quantize

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


def quantize_weight(
    w: np.ndarray, *, axis: int = 0, per_channel: bool = True, bits: int = 8
) -> tuple[np.ndarray, QParams]:
    """Quantize a float weight tensor symmetrically (narrow range); returns (Wq, qparams)."""
    w = np.asarray(w, dtype=np.float32)
    if per_channel:
        reduce_axes = tuple(i for i in range(w.ndim) if i != axis % w.ndim)
        lo, hi = w.min(axis=reduce_axes), w.max(axis=reduce_axes)
        qp = choose_qparams(lo, hi, bits=bits, symmetric=True, narrow_range=True, axis=axis)
    else:
        qp = choose_qparams(w.min(), w.max(), bits=bits, symmetric=True, narrow_range=True)
    return quantize(w, qp), qp


def quantize_bias(b: np.ndarray, input_scale: float, weight_scale: np.ndarray) -> np.ndarray:
    """int32 bias at scale input_scale * weight_scale[c] (round half to even, saturating)."""
    scale = np.float64(input_scale) * np.asarray(weight_scale, dtype=np.float64)
    q = np.rint(np.asarray(b, dtype=np.float64) / scale)
    return np.clip(q, INT32_MIN, INT32_MAX).astype(np.int32)


def pack_int4(q: np.ndarray) -> np.ndarray:
    """Two int4 values per byte: flattened (C order) element 2k in the low nibble of byte k,
    2k+1 in the high nibble, two's complement; an odd count leaves the last high nibble 0."""
    flat = np.asarray(q).reshape(-1)
    if flat.dtype.kind not in "iu":
        raise ValueError(f"pack_int4 takes integers, got dtype {flat.dtype}")
    bad = np.flatnonzero((flat < -8) | (flat > 7))
    if bad.size:
        raise ValueError(f"pack_int4: value {int(flat[bad[0]])} at flat index {int(bad[0])} is "
                         "outside int4 [-8, 7]")
    nibbles = (flat.astype(np.int16) & 0xF).astype(np.uint8)
    if nibbles.size % 2:
        nibbles = np.append(nibbles, np.uint8(0))
    return (nibbles[0::2] | (nibbles[1::2] << 4)).astype(np.uint8)


def unpack_int4(packed: np.ndarray, n: int) -> np.ndarray:
    """The first n int4 values of `pack_int4` bytes, sign-extended to int8."""
    b = np.asarray(packed, np.uint8).reshape(-1)
    if not 0 <= n <= 2 * b.size:
        raise ValueError(f"unpack_int4: n={n} but {b.size} bytes hold at most {2 * b.size}")
    nibbles = np.stack([b & 0xF, b >> 4], axis=1).reshape(-1)[:n].astype(np.int8)
    return np.where(nibbles >= 8, nibbles - 16, nibbles).astype(np.int8)
