"""Gradient quantizers: a clip value per tensor or channel, then nearest, stochastic or
round-toward-zero rounding to ``bits``-bit symmetric integer codes.

For a gradient ``g`` (float32) and a channel's elements ``G`` (the whole tensor per tensor):

    c     = clip value of G                       ("none", "max" or "zscore", see clip_value)
    step  = float32(c / qmax), qmax = 2**(bits-1) - 1    (1.0 if that is 0: an all-zero channel)
    x     = float32(g / step), clamped to [-(qmax+1), qmax+1]  (no effect on the codes)
    code  = clip(round(x), -qmax, qmax)            int16; fake-quantized value code * step

Every operation is one IEEE float32 (clip value: float64) operation in a fixed order, so the
accelerator's C unit (``targets/accel/emulator/gradq.c``) reproduces it bit for bit. The
stochastic rounding draws come from a counter-based hash (`uniform`): element ``i`` (flat C
order) of a call with ``(seed, offset)`` always gets the same draw, with no generator state.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ROUNDINGS = ("nearest", "stochastic", "rtz")
CLIPS = ("none", "max", "zscore")

MIN_BITS, MAX_BITS = 2, 16
_UINT32 = 2**32
_MAX_POW2_CLIP = 2.0**127  # the largest power of two in float32


@dataclass(frozen=True)
class GradQuant:
    """A gradient quantizer.

    Parameters
    ----------
    bits : int
        Code width in [2, 16]; codes lie in [-qmax, qmax], ``qmax = 2**(bits-1) - 1``.
    rounding : {"nearest", "stochastic", "rtz"}
        Round half to even, stochastic (unbiased: ``E[code] = x``), or toward zero.
    clip : {"none", "max", "zscore"}
        How the clip value ``c`` is chosen (see :func:`clip_value`).
    k : float
        The z-score multiplier of ``clip="zscore"``, finite and > 0.
    axis : int or None
        None: one clip value for the tensor; an int: one per index of that axis (negative
        counts from the end).

    Examples
    --------
    >>> GradQuant(bits=4, rounding="nearest", clip="max").qmax
    7
    """

    bits: int = 8
    rounding: str = "rtz"
    clip: str = "zscore"
    k: float = 3.0
    axis: int | None = None

    def __post_init__(self) -> None:
        bits = self.bits
        if isinstance(bits, bool) or not isinstance(bits, int | np.integer):
            raise ValueError(f"GradQuant.bits={bits!r}: use an integer in [{MIN_BITS}, {MAX_BITS}]")
        if not MIN_BITS <= bits <= MAX_BITS:
            raise ValueError(f"GradQuant.bits={bits}: use an integer in [{MIN_BITS}, {MAX_BITS}]")
        object.__setattr__(self, "bits", int(bits))
        if not isinstance(self.rounding, str) or self.rounding not in ROUNDINGS:
            raise ValueError(f"GradQuant.rounding={self.rounding!r}: use one of {ROUNDINGS}")
        if not isinstance(self.clip, str) or self.clip not in CLIPS:
            raise ValueError(f"GradQuant.clip={self.clip!r}: use one of {CLIPS}")
        k = self.k
        if isinstance(k, bool) or not isinstance(k, int | float | np.integer | np.floating):
            raise ValueError(f"GradQuant.k={k!r}: use a finite number > 0")
        if not (np.isfinite(k) and k > 0):
            raise ValueError(f"GradQuant.k={k!r}: use a finite number > 0")
        object.__setattr__(self, "k", float(k))
        axis = self.axis
        if axis is not None:
            if isinstance(axis, bool) or not isinstance(axis, int | np.integer):
                raise ValueError(f"GradQuant.axis={axis!r}: use None (per tensor) or an int axis")
            object.__setattr__(self, "axis", int(axis))

    @property
    def qmax(self) -> int:
        """The largest code, ``2**(bits-1) - 1``."""
        return 2 ** (self.bits - 1) - 1


def as_gradient(g: object, axis: int | None) -> tuple[np.ndarray, tuple[int, int, int]]:
    """``g`` as a contiguous float32 array and its layout ``(outer, channels, inner)``.

    The layout views ``g`` as [outer][channels][inner] with ``channels = g.shape[axis]``
    (per tensor, ``axis=None``: ``(1, 1, g.size)``). Raises ValueError if ``g`` is empty, not
    real, not finite after the float32 cast, or ``axis`` is not one of its axes.
    """
    arr = np.asarray(g)
    if arr.dtype.kind not in "fiu":
        raise ValueError(f"g must be real numbers, got dtype {arr.dtype}")
    if arr.size == 0:
        raise ValueError(f"g has shape {arr.shape}; a gradient needs at least one element")
    with np.errstate(over="ignore"):
        g32 = np.asarray(arr, np.float32, order="C")  # ascontiguousarray makes 0-d 1-d
    bad = ~np.isfinite(g32)
    if np.any(bad):
        index = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"g contains {float(g32[index])!r} at index {index} (after the float32 "
                         "cast); allowed: finite float32 values")
    if axis is None:
        return g32, (1, 1, g32.size)
    ndim = g32.ndim
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis={axis} is not an axis of g with shape {g32.shape}; allowed: "
                         f"None or integers in [{-ndim}, {ndim - 1}]")
    a = axis % ndim
    outer = int(np.prod(g32.shape[:a], dtype=np.int64))
    return g32, (outer, g32.shape[a], int(np.prod(g32.shape[a + 1:], dtype=np.int64)))


def as_uint32(value: object, name: str) -> int:
    """An integer seed or counter offset reduced mod 2**32 (ValueError if not an integer)."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"{name}={value!r}: use an integer (it is taken mod 2**32)")
    return int(value) % _UINT32


def _channels(g32: np.ndarray, layout: tuple[int, int, int]) -> np.ndarray:
    """(channels, outer*inner): row c holds channel c's elements, outer then inner index."""
    outer, channels, inner = layout
    return g32.reshape(layout).transpose(1, 0, 2).reshape(channels, outer * inner)


def _keepdims_shape(shape: tuple[int, ...], axis: int | None) -> tuple[int, ...]:
    if axis is None:
        return (1,) * len(shape)
    return tuple(n if i == axis % len(shape) else 1 for i, n in enumerate(shape))


def _sequential_sum(a: np.ndarray) -> np.ndarray:
    """Row sums of a 2-D float64 array, added left to right (``np.sum`` adds pairwise)."""
    return np.cumsum(a, axis=1)[:, -1]


def _clip_rows(rows: np.ndarray, q: GradQuant) -> np.ndarray:
    """The clip value of each row of a (channels, n) float32 array, float32 (channels,)."""
    top = np.max(np.abs(rows), axis=1)
    if q.clip == "max":
        return top
    if q.clip == "none":
        mant, exp = np.frexp(top)
        pow2 = np.where((mant == 0.5) | (top == 0), top, np.ldexp(np.float64(1.0), exp))
        if np.any(pow2 > _MAX_POW2_CLIP):
            raise ValueError(f"clip='none' rounds max|g|={float(np.max(top))!r} up to 2**128, "
                             "beyond float32; use clip='max' or 'zscore'")
        return pow2.astype(np.float32)
    g64 = rows.astype(np.float64)
    n = np.float64(rows.shape[1])
    mean = _sequential_sum(g64) / n
    dev = g64 - mean[:, None]
    var = _sequential_sum(dev * dev) / n
    c64 = np.abs(mean) + q.k * np.sqrt(var)
    return np.minimum(c64, top.astype(np.float64)).astype(np.float32)


def clip_value(g: object, q: GradQuant) -> np.ndarray:
    """The clip value ``c`` per tensor or per channel, float32, in keepdims shape.

    Over the elements ``G`` of a channel (all of ``g`` per tensor), ``m = max|G|``:

    - ``"max"``: ``c = m``.
    - ``"none"``: ``c = m`` rounded up to a power of two (``2**ceil(log2 m)``, exact from
      ``frexp``; 0 stays 0). Nothing is clipped and ``c`` is a pure exponent. This is tvmq's own
      choice for "no clip". ValueError if ``m > 2**127`` (its power of two is not a float32).
    - ``"zscore"``: ``c = float32(min(|mean| + k * std, m))`` with, in float64 and summing
      sequentially in C order of the channel's elements (outer index, then inner):
      ``mean = sum(G) / n``, ``std = sqrt(sum((G - mean)**2) / n)`` (population, two passes).

    Parameters
    ----------
    g : array_like
        The gradient, any shape, finite after the float32 cast.
    q : GradQuant

    Returns
    -------
    numpy.ndarray
        float32 of ``g``'s shape with every axis but ``q.axis`` of size 1 (all of them per
        tensor).

    Examples
    --------
    >>> clip_value([0.5, -3.0, 1.0], GradQuant(clip="none"))
    array([4.], dtype=float32)
    """
    g32, layout = as_gradient(g, _check_quant(q).axis)
    c = _clip_rows(_channels(g32, layout), q)
    return c.reshape(_keepdims_shape(g32.shape, q.axis))


def step_size(c: object, q: GradQuant) -> np.ndarray:
    """``float32(c) / float32(qmax)`` (float32 division), and 1.0 where that is 0 (``c == 0``,
    an all-zero channel, or ``c`` so small the division underflows)."""
    with np.errstate(under="ignore"):
        step = np.asarray(c, np.float32) / np.float32(q.qmax)
    return np.where(step == 0, np.float32(1.0), step).astype(np.float32)


_SEED_MIX = 0x9E3779B9  # 2**32 / golden ratio


def _lowbias32(x: np.ndarray) -> np.ndarray:
    """The lowbias32 integer hash of uint32 ``x`` (multiplications wrap mod 2**32)."""
    x = x ^ (x >> np.uint32(16))
    x = x * np.uint32(0x7FEB352D)
    x = x ^ (x >> np.uint32(15))
    x = x * np.uint32(0x846CA68B)
    return x ^ (x >> np.uint32(16))


def uniform(seed: int, offset: int, n: int) -> np.ndarray:
    """``n`` counter-based uniforms in [0, 1), float32.

    Element ``i`` uses the counter ``t = (offset + i) mod 2**32``:
    ``h = lowbias32(t ^ lowbias32((seed mod 2**32) ^ 0x9e3779b9))``, ``u = (h >> 8) * 2**-24``
    (exact in float32); the constant keeps seed 0 from giving the key 0 (``lowbias32(0) == 0``,
    which would leave small counters correlated). ``lowbias32(x)`` is ``x ^= x >> 16;
    x *= 0x7feb352d; x ^= x >> 15; x *= 0x846ca68b; x ^= x >> 16`` on uint32.

    Examples
    --------
    >>> uniform(0, 0, 3).dtype
    dtype('float32')
    """
    key = _lowbias32(np.array([as_uint32(seed, "seed") ^ _SEED_MIX], np.uint32))
    start = as_uint32(offset, "offset")
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 0:
        raise ValueError(f"n={n!r}: use an integer >= 0")
    counters = ((np.arange(n, dtype=np.uint64) + np.uint64(start)) % np.uint64(_UINT32))
    h = _lowbias32(counters.astype(np.uint32) ^ key)
    return (h >> np.uint32(8)).astype(np.float32) * np.float32(2.0**-24)


def _round(x: np.ndarray, q: GradQuant, seed: int, offset: int) -> np.ndarray:
    """``x`` rounded to integers in float32 by ``q.rounding``."""
    if q.rounding == "rtz":
        return np.trunc(x)
    if q.rounding == "nearest":
        return np.rint(x)
    fl = np.floor(x)
    u = uniform(seed, offset, x.size).reshape(x.shape)
    return fl + (u < x - fl).astype(np.float32)


def quantize_gradient(g: object, q: GradQuant, *, seed: int = 0,
                      offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Quantize a gradient to int16 codes and a float32 step per tensor or channel.

    ``step = step_size(clip_value(g, q), q)``; ``x = float32(g) / step`` (float32 division,
    broadcast), clamped to [-(qmax+1), qmax+1]; then

    - ``"rtz"``: ``trunc(x)``;
    - ``"nearest"``: ``rint(x)`` (half to even);
    - ``"stochastic"``: ``fl = floor(x)``, ``fl + (u < x - fl)`` with
      ``u = uniform(seed, offset, g.size)`` in C order of ``g`` (element ``i`` uses counter
      ``offset + i``), so ``E[code] = x``;

    clipped to [-qmax, qmax]. All rounding is in float32, so rtz keeps
    ``|code * step| <= |g|`` only up to the rounding of ``g / step`` (relative 2**-23): when
    ``float32(c / qmax)`` rounds up, an element equal to ``c`` gets ``qmax - 1``.

    Parameters
    ----------
    g : array_like
        The gradient, any non-empty shape, finite after the float32 cast.
    q : GradQuant
    seed, offset : int
        Stochastic rounding key and counter of the first element, each taken mod 2**32.
        Ignored by the other roundings.

    Returns
    -------
    codes : numpy.ndarray
        int16 of ``g``'s shape, in [-qmax, qmax].
    step : numpy.ndarray
        float32 in the keepdims shape of :func:`clip_value`.

    Examples
    --------
    >>> codes, step = quantize_gradient([0.5, -1.0, 0.26], GradQuant(bits=3, clip="max",
    ...                                                              rounding="nearest"))
    >>> codes, step
    (array([ 2, -3,  1], dtype=int16), array([0.33333334], dtype=float32))
    """
    g32, layout = as_gradient(g, _check_quant(q).axis)
    seed, offset = as_uint32(seed, "seed"), as_uint32(offset, "offset")
    shape = _keepdims_shape(g32.shape, q.axis)
    step = step_size(_clip_rows(_channels(g32, layout), q), q).reshape(shape)
    limit = np.float32(q.qmax + 1)
    with np.errstate(over="ignore"):
        x = np.clip(g32 / step, -limit, limit)
    codes = np.clip(_round(x, q, seed, offset), -q.qmax, q.qmax).astype(np.int16)
    return codes, step


def fake_quantize_gradient(g: object, q: GradQuant, *, seed: int = 0,
                           offset: int = 0) -> np.ndarray:
    """``codes * step`` (float32 multiply) of :func:`quantize_gradient`, in ``g``'s shape.

    Examples
    --------
    >>> fake_quantize_gradient([0.5, -1.0], GradQuant(bits=3, clip="none", rounding="rtz"))
    array([ 0.33333334, -1.        ], dtype=float32)
    """
    codes, step = quantize_gradient(g, q, seed=seed, offset=offset)
    return codes.astype(np.float32) * step


def _check_quant(q: object) -> GradQuant:
    if not isinstance(q, GradQuant):
        raise TypeError(f"q must be a GradQuant, got {type(q).__name__}")
    return q
