"""What the INT8 and LBFP conv layers of the accelerator share: the geometry and hardware fields
of their descriptors, and the loop over output-channel tiles that runs one.

A layer runs as ``entry(*pointers, o0)`` for o0 = 0, t_oc, 2 t_oc, ... < O, where `entry` is a
per-tile C function (``accel_conv2d_tile``, ``accel_lbfp_conv2d_tile``); a compiled model runs
the same loop in TIR.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .c_api import check_status
from .config import AccelConfig
from .library import load


def conv_geometry(x_shape, w_shape, strides, padding, dilation, groups: int) -> dict[str, int]:
    """C, H, W, O, KH, KW, groups, stride_*, pad_*, dil_*, OH, OW of a conv2d with NCHW input
    `x_shape` and OIHW weights `w_shape`: OH = (H + pad_top + pad_bottom - dil_h*(KH-1) - 1) //
    stride_h + 1, likewise OW. ValueError if OH or OW < 1 or I * groups != C."""
    _, c, h, wd = (int(v) for v in x_shape)
    o, _, kh, kw = (int(v) for v in w_shape)
    sh, sw = (int(v) for v in strides)
    pt, pl, pb, pr = (int(v) for v in padding)
    dh, dw = (int(v) for v in dilation)
    oh = (h + pt + pb - dh * (kh - 1) - 1) // sh + 1
    ow = (wd + pl + pr - dw * (kw - 1) - 1) // sw + 1
    if oh < 1 or ow < 1:
        raise ValueError(f"conv2d output would be {oh}x{ow} for input {h}x{wd}, kernel {kh}x{kw}")
    if int(w_shape[1]) * groups != c:
        raise ValueError(f"w{tuple(w_shape)} with groups={groups} needs C == "
                         f"{int(w_shape[1]) * groups}, got C={c}")
    return dict(C=c, H=h, W=wd, O=o, KH=kh, KW=kw, groups=groups, stride_h=sh, stride_w=sw,
                pad_top=pt, pad_left=pl, pad_bottom=pb, pad_right=pr, dil_h=dh, dil_w=dw, OH=oh,
                OW=ow)


def hw_fields(hw: AccelConfig) -> dict[str, int]:
    """The hardware fields of a layer descriptor."""
    return dict(t_oc=hw.t_oc, t_ic=hw.t_ic, weight_buffer_bytes=hw.weight_buffer_bytes,
                act_buffer_bytes=hw.act_buffer_bytes, acc_buffer_bytes=hw.acc_buffer_bytes,
                dma_bytes_per_cycle=hw.dma_bytes_per_cycle)


def tile_loop_runner(entry: str, desc: np.ndarray, fields: tuple[str, ...],
                     ptrs) -> Callable[[], None]:
    """A no-argument callable running the C per-tile `entry(*ptrs, o0)` for o0 = 0, t_oc, ...
    < O (read from `desc` laid out as `fields`), raising ValueError on a nonzero return."""
    lib = load()
    fn = getattr(lib, entry)
    o, t_oc = (int(desc[fields.index(f)]) for f in ("O", "t_oc"))

    def run() -> None:
        for o0 in range(0, o, t_oc):
            check_status(lib, fn(*ptrs, o0), entry)

    return run
