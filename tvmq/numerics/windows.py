"""NCHW padding and convolution windows, shared by the golden numerics and the oracle."""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def pad_nchw(x: np.ndarray, padding, value) -> np.ndarray:
    """Pad H and W by (top, left, bottom, right), or (h, w) on both sides, with `value`."""
    pads = [int(p) for p in padding]
    top, left, bottom, right = pads if len(pads) == 4 else pads * 2
    return np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)), constant_values=value)


def windows(x: np.ndarray, kh: int, kw: int, strides, dilation) -> np.ndarray:
    """(N, C, OH, OW, kh, kw) view of the windows of an already padded NCHW `x`."""
    sh, sw = (int(s) for s in strides)
    dh, dw = (int(d) for d in dilation)
    win = sliding_window_view(x, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(2, 3))
    return win[:, :, ::sh, ::sw, ::dh, ::dw]
