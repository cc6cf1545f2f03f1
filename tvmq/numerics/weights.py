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
