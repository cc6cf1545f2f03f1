"""Affine quantization parameters and the quantize / dequantize maps.

    q     = clip(rint(x / scale) + zero_point, qmin, qmax)    (rint: round half to even)
    x_hat = (q - zero_point) * scale

``x / scale`` and ``(q - zero_point) * scale`` are single float32 operations, as in TVM's
legalization of ``relax.quantize`` / ``relax.dequantize``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .checks import (
    INT32_MAX,
    INT32_MIN,
    along_axis,
    as_int_array,
    as_real_array,
    check_int,
    check_param_shape,
    frozen,
)


@dataclass(frozen=True, eq=False)
class QParams:
    """Affine quantization parameters: ``x ~= (q - zero_point) * scale`` with q in [qmin, qmax].

    Parameters
    ----------
    scale : array_like
        Step size, stored as float32. Shape ``()`` for per-tensor, ``(C,)`` for per-channel.
        Every entry must be finite and > 0 after the float32 cast.
    zero_point : array_like of int
        The integer that represents real 0, stored as int32; same shape as ``scale`` and every
        entry in ``[qmin, qmax]``.
    qmin, qmax : int
        Integer range of q, ``qmin < qmax``, both within int32.
    axis : int or None
        Channel axis of the quantized tensor; given if and only if ``scale`` has shape ``(C,)``.
        Negative values count from the end and are resolved against the tensor at use.

    Examples
    --------
    >>> qp = QParams(np.float32(0.5), np.int32(0), -127, 127)
    >>> qp.dtype, qp.bits
    ('int8', 8)
    """

    scale: np.ndarray
    zero_point: np.ndarray
    qmin: int
    qmax: int
    axis: int | None = None

    def __post_init__(self) -> None:
        qmin = check_int(self.qmin, "qmin", INT32_MIN, INT32_MAX)
        qmax = check_int(self.qmax, "qmax", INT32_MIN, INT32_MAX)
        if qmin >= qmax:
            raise ValueError(f"qmin must be < qmax, got qmin={qmin}, qmax={qmax}")

        scale = np.asarray(self.scale)
        if scale.dtype.kind not in "fiu":
            raise ValueError(f"scale must be real numbers, got dtype {scale.dtype}")
        check_param_shape(scale, "scale")
        with np.errstate(over="ignore"):
            scale = scale.astype(np.float32)
        bad = ~(np.isfinite(scale) & (scale > 0))
        if np.any(bad):
            value = scale[bad][0] if scale.ndim else scale[()]
            raise ValueError(
                f"scale contains {float(value)!r} (after the float32 cast); "
                "allowed: finite float32 values > 0"
            )

        zero_point = as_int_array(self.zero_point, "zero_point", qmin, qmax)
        if zero_point.shape != scale.shape:
            raise ValueError(
                f"zero_point must have the shape of scale {scale.shape}, got {zero_point.shape}"
            )

        axis = self.axis
        if scale.ndim == 1 and axis is None:
            raise ValueError(
                f"per-channel scale (shape {scale.shape}) needs an axis, got axis=None"
            )
        if scale.ndim == 0 and axis is not None:
            raise ValueError(f"per-tensor scale (shape ()) takes axis=None, got axis={axis!r}")
        if axis is not None:
            axis = check_int(axis, "axis", -64, 63)

        object.__setattr__(self, "scale", frozen(scale))
        object.__setattr__(self, "zero_point", frozen(zero_point.astype(np.int32)))
        object.__setattr__(self, "qmin", qmin)
        object.__setattr__(self, "qmax", qmax)
        object.__setattr__(self, "axis", axis)

    @property
    def dtype(self) -> str:
        """Smallest NumPy integer dtype holding [qmin, qmax]: unsigned if qmin >= 0."""
        for width in (8, 16, 32):
            if self.qmin >= 0 and self.qmax <= 2**width - 1:
                return f"uint{width}"
            if -(2 ** (width - 1)) <= self.qmin and self.qmax <= 2 ** (width - 1) - 1:
                return f"int{width}"
        raise AssertionError("unreachable: qmin and qmax are validated to fit int32")

    @property
    def bits(self) -> int:
        """Fewest bits of a two's complement (qmin < 0) or unsigned integer holding the range."""
        if self.qmin >= 0:
            return self.qmax.bit_length()
        return 1 + max((-self.qmin - 1).bit_length(), max(self.qmax, 0).bit_length())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, QParams):
            return NotImplemented
        return (
            (self.qmin, self.qmax, self.axis) == (other.qmin, other.qmax, other.axis)
            and np.array_equal(self.scale, other.scale)
            and self.scale.shape == other.scale.shape
            and np.array_equal(self.zero_point, other.zero_point)
        )

    def __hash__(self) -> int:
        return hash(
            (
                self.scale.shape,
                self.scale.tobytes(),
                self.zero_point.tobytes(),
                self.qmin,
                self.qmax,
                self.axis,
            )
        )


def qrange(bits: int, *, signed: bool = True, narrow_range: bool = False) -> tuple[int, int]:
    """Integer range of a ``bits``-wide integer.

    signed: ``[-2**(bits-1), 2**(bits-1) - 1]``, or ``[-2**(bits-1) + 1, 2**(bits-1) - 1]`` with
    ``narrow_range`` (symmetric around 0); unsigned: ``[0, 2**bits - 1]``.

    Parameters
    ----------
    bits : int
        Width in bits, 2 to 16.
    signed : bool
        Two's complement (True) or unsigned (False).
    narrow_range : bool
        Drop the most negative value. Only for signed ranges.

    Returns
    -------
    tuple of int
        ``(qmin, qmax)``.

    Raises
    ------
    ValueError
        If ``bits`` is outside 2..16, or ``narrow_range`` is asked for an unsigned range.

    Examples
    --------
    >>> qrange(8), qrange(8, narrow_range=True), qrange(4, signed=False)
    ((-128, 127), (-127, 127), (0, 15))
    """
    bits = check_int(bits, "bits", 2, 16)
    if not signed:
        if narrow_range:
            raise ValueError(
                "narrow_range=True is only defined for signed ranges, got signed=False"
            )
        return 0, 2**bits - 1
    return -(2 ** (bits - 1)) + int(bool(narrow_range)), 2 ** (bits - 1) - 1


def choose_qparams(
    min_val: object,
    max_val: object,
    *,
    bits: int = 8,
    symmetric: bool = False,
    narrow_range: bool = False,
    signed: bool = True,
    axis: int | None = None,
) -> QParams:
    """Quantization parameters covering the real range [min_val, max_val].

    With ``(qmin, qmax) = qrange(bits, signed=signed, narrow_range=narrow_range)`` and the range
    widened to contain 0, ``lo = min(min_val, 0)``, ``hi = max(max_val, 0)`` (float64):

    - symmetric: ``scale = max(-lo, hi) / ((qmax - qmin) / 2)``; ``zero_point = 0`` when signed,
      ``(qmin + qmax + 1) // 2`` when unsigned (128 for uint8). int8 narrow gives
      ``scale = amax / 127`` over [-127, 127]; int8 full gives ``amax / 127.5``.
    - asymmetric: ``scale = (hi - lo) / (qmax - qmin)``;
      ``zero_point = clip(rint(qmin - lo / scale), qmin, qmax)`` evaluated in float64 with the
      float32 ``scale`` (rint: round half to even).

    ``scale`` is computed in float64 and cast to float32 (round to nearest even). If the float32
    scale is 0 or subnormal it is replaced by 1.0 when the range is all zeros (``lo == hi == 0``,
    e.g. a constant-zero channel), else by ``np.finfo(np.float32).tiny``. Real 0 is always
    exactly representable: ``quantize(0) == zero_point``.

    Parameters
    ----------
    min_val, max_val : float or array_like
        Observed minimum and maximum; scalars for per-tensor, 1-D arrays of equal shape (C,)
        for per-channel. Finite, with ``min_val <= max_val`` elementwise.
    bits, signed, narrow_range
        Integer format, see :func:`qrange`.
    symmetric : bool
        Symmetric (zero point fixed at the middle of the range) or asymmetric (affine).
    axis : int or None
        Channel axis; required for per-channel ranges, must be None for per-tensor.

    Returns
    -------
    QParams

    Raises
    ------
    ValueError
        On NaN/Inf, ``min_val > max_val``, mismatched shapes, a missing or superfluous axis, or a
        range so wide that the scale overflows float32.

    Examples
    --------
    >>> qp = choose_qparams(-1.0, 3.0, signed=False)
    >>> float(qp.scale), int(qp.zero_point)
    (0.01568627543747425, 64)
    """
    qmin, qmax = qrange(bits, signed=signed, narrow_range=narrow_range)
    lo = as_real_array(min_val, "min_val")
    hi = as_real_array(max_val, "max_val")
    check_param_shape(lo, "min_val")
    if lo.shape != hi.shape:
        raise ValueError(
            f"min_val and max_val must have the same shape, got {lo.shape} and {hi.shape}"
        )
    if lo.ndim == 1 and axis is None:
        raise ValueError(f"per-channel ranges (shape {lo.shape}) need an axis, got axis=None")
    if lo.ndim == 0 and axis is not None:
        raise ValueError(f"per-tensor ranges (scalars) take axis=None, got axis={axis!r}")
    inverted = lo > hi
    if np.any(inverted):
        i = np.argwhere(inverted)[0]
        where = f" at index {tuple(int(j) for j in i)}" if lo.ndim else ""
        raise ValueError(
            f"min_val must be <= max_val, got min_val={float(lo[tuple(i)])!r} > "
            f"max_val={float(hi[tuple(i)])!r}{where}"
        )

    lo = np.minimum(lo, 0.0)
    hi = np.maximum(hi, 0.0)
    with np.errstate(over="ignore"):
        if symmetric:
            scale64 = np.maximum(-lo, hi) / ((qmax - qmin) / 2)
        else:
            scale64 = (hi - lo) / (qmax - qmin)
        scale = scale64.astype(np.float32)
    if not np.all(np.isfinite(scale)):
        raise ValueError(
            f"the range [{min_val!r}, {max_val!r}] is too wide: its scale overflows float32"
        )
    tiny = np.finfo(np.float32).tiny
    fallback = np.where(hi == lo, np.float32(1.0), tiny).astype(np.float32)
    scale = np.where(scale < tiny, fallback, scale).astype(np.float32)

    if symmetric:
        zp_value = 0 if signed else (qmin + qmax + 1) // 2
        zero_point = np.full(scale.shape, zp_value, dtype=np.int32)
    else:
        zero_point = np.clip(np.rint(qmin - lo / scale.astype(np.float64)), qmin, qmax)
        zero_point = zero_point.astype(np.int32)
    return QParams(scale, zero_point, qmin, qmax, axis)


def _broadcast_params(qp: QParams, shape: tuple[int, ...], target: str):
    """Scale and zero point of ``qp`` shaped to broadcast against an array of ``shape``."""
    scale = along_axis(qp.scale, shape, qp.axis, "scale", target)
    zero_point = along_axis(qp.zero_point, shape, qp.axis, "zero_point", target)
    return scale, zero_point


def quantize(x: object, qp: QParams) -> np.ndarray:
    """Quantize real values: ``q = clip(rint(x / scale) + zero_point, qmin, qmax)``.

    Exactly: ``x`` is cast to float32 (round to nearest even); ``x / scale`` is one IEEE float32
    division (no reciprocal multiply); ``rint`` rounds half to even; the rounded value plus the
    zero point is clipped to [qmin, qmax] exactly (±Inf from overflow clip to qmin/qmax). For
    ranges within ±2**24, which covers every :func:`qrange`, this equals adding the zero point
    in float32 as TVM's ``relax.quantize`` does. Note that TVM then clips to the full range of
    the output dtype, not to [qmin, qmax].

    Parameters
    ----------
    x : array_like
        Real values, no NaN. Per-channel ``qp`` broadcasts along ``x``'s axis ``qp.axis``.
    qp : QParams

    Returns
    -------
    numpy.ndarray
        ``q`` with ``x``'s shape and dtype ``qp.dtype``.

    Examples
    --------
    >>> qp = QParams(np.float32(0.5), np.int32(0), -128, 127)
    >>> quantize([0.25, 0.75, -0.75, 100.0], qp)
    array([  0,   2,  -2, 127], dtype=int8)
    """
    arr = np.asarray(x)
    if arr.dtype.kind not in "fiu":
        raise ValueError(f"x must be real numbers, got dtype {arr.dtype}")
    with np.errstate(over="ignore"):
        x32 = arr.astype(np.float32)
    if np.any(np.isnan(x32)):
        raise ValueError("x contains NaN; quantize is only defined for numbers and ±Inf")
    scale, zero_point = _broadcast_params(qp, x32.shape, "x")
    with np.errstate(over="ignore"):
        rounded = np.rint(x32 / scale)
    q = np.clip(rounded.astype(np.float64) + zero_point, qp.qmin, qp.qmax)
    return np.asarray(q.astype(qp.dtype))


def dequantize(q: object, qp: QParams) -> np.ndarray:
    """Dequantize integers: ``x_hat = float32(q - zero_point) * scale``.

    Exactly: ``q - zero_point`` in integers (int64, so it cannot wrap), converted to float32
    (round to nearest even; exact for |q - zero_point| <= 2**24), times the float32 ``scale`` in
    one IEEE float32 multiply.

    Parameters
    ----------
    q : array_like of int
        Quantized values. Per-channel ``qp`` broadcasts along ``q``'s axis ``qp.axis``.
    qp : QParams

    Returns
    -------
    numpy.ndarray
        float32 array with ``q``'s shape.

    Examples
    --------
    >>> qp = QParams(np.float32(0.5), np.int32(3), 0, 255)
    >>> dequantize(np.array([3, 4, 0], dtype=np.uint8), qp)
    array([ 0. ,  0.5, -1.5], dtype=float32)
    """
    q64 = as_int_array(q, "q", INT32_MIN, INT32_MAX)
    scale, zero_point = _broadcast_params(qp, q64.shape, "q")
    return np.asarray((q64 - zero_point).astype(np.float32) * scale)

