"""The accelerator's gradient quantization unit (``emulator/gradq.c``), bit-exact with
:mod:`tvmq.numerics.gradq`.

Examples
--------
>>> import numpy as np
>>> from tvmq.numerics import GradQuant
>>> codes, step = quantize_gradient(np.array([0.5, -1.0, 0.26], np.float32),
...                                 GradQuant(bits=3, clip="max", rounding="nearest"))
>>> codes, step
(array([ 2, -3,  1], dtype=int16), array([0.33333334], dtype=float32))
"""

from __future__ import annotations

import ctypes

import numpy as np

from tvmq.numerics import gradq
from tvmq.numerics.gradq import GradQuant

from .library import load

ROUNDING_CODES = {"nearest": 0, "stochastic": 1, "rtz": 2}  # accel.h ACCEL_GRADQ_*
CLIP_CODES = {"none": 0, "max": 1, "zscore": 2}  # accel.h ACCEL_GRADQ_CLIP_*

_f32p = ctypes.POINTER(ctypes.c_float)
_i16p = ctypes.POINTER(ctypes.c_int16)


def _check(lib: ctypes.CDLL, status: int, what: str) -> None:
    if status != 0:
        raise ValueError(f"{what}: {lib.accel_last_error().decode()}")


def quantize_gradient(g: object, q: GradQuant, *, seed: int = 0,
                      offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """:func:`tvmq.numerics.gradq.quantize_gradient` on the emulated accelerator.

    Parameters
    ----------
    g : array_like
        The gradient, any non-empty shape, finite after the float32 cast.
    q : GradQuant
    seed, offset : int
        Stochastic rounding key and counter of the first element (C order), each mod 2**32.

    Returns
    -------
    codes : numpy.ndarray
        int16 of ``g``'s shape, in [-qmax, qmax].
    step : numpy.ndarray
        float32, ``g``'s shape with every axis but ``q.axis`` of size 1.
    """
    if not isinstance(q, GradQuant):
        raise TypeError(f"q must be a GradQuant, got {type(q).__name__}")
    g32, (outer, channels, inner) = gradq.as_gradient(g, q.axis)
    seed32, offset32 = gradq.as_uint32(seed, "seed"), gradq.as_uint32(offset, "offset")
    codes = np.empty(g32.shape, np.int16)
    step = np.empty(channels, np.float32)
    lib = load()
    status = lib.accel_gradq(g32.ctypes.data_as(_f32p), outer, channels, inner, q.bits,
                             ROUNDING_CODES[q.rounding], CLIP_CODES[q.clip], q.k, seed32,
                             offset32, codes.ctypes.data_as(_i16p), step.ctypes.data_as(_f32p))
    _check(lib, status, "accel_gradq")
    shape = [1] * g32.ndim
    if q.axis is not None:
        shape[q.axis] = channels
    return codes, step.reshape(shape)


def uniform(seed: int, offset: int, n: int) -> np.ndarray:
    """:func:`tvmq.numerics.gradq.uniform` (the stochastic rounding draws) from the C unit."""
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 0:
        raise ValueError(f"n={n!r}: use an integer >= 0")
    u = np.empty(int(n), np.float32)
    lib = load()
    _check(lib, lib.accel_uniform(gradq.as_uint32(seed, "seed"), gradq.as_uint32(offset, "offset"),
                                  int(n), u.ctypes.data_as(_f32p)), "accel_uniform")
    return u


def fake_quantize_gradient(g: object, q: GradQuant, *, seed: int = 0,
                           offset: int = 0) -> np.ndarray:
    """:func:`tvmq.numerics.gradq.fake_quantize_gradient` on the emulated accelerator:
    ``codes * step`` (float32 multiply)."""
    codes, step = quantize_gradient(g, q, seed=seed, offset=offset)
    return codes.astype(np.float32) * step
