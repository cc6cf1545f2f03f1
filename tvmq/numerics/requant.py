"""Requantization of an int32 accumulator to the output scale.

An accumulator ``acc`` in the input*weight scale becomes ``round(acc * M)`` in the output scale,
``M = s_in * s_w / s_out``. Two ways to compute it:

- integer multiply and shift: ``M ~= multiplier * 2**(shift - 31)`` with a 31-bit
  ``multiplier``; three rounding conventions (``ROUNDINGS``) used by real kernels;
- float32: one float32 multiply and round half to even.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .checks import (
    INT32_MAX,
    INT32_MIN,
    along_axis,
    as_int_array,
    check_int,
    check_param_shape,
    frozen,
)

ROUNDINGS = ("double", "single", "tonearest")
REQUANT_KINDS = ("mult_shift", "fp32")

_SHIFT_MIN = -31
_SHIFT_MAX = 30
_FP32_INT32_MAX = 2**31 - 128  # largest float32 below 2**31


def _saturate_int32(x: np.ndarray) -> np.ndarray:
    """Clamp int64 values to [INT32_MIN, INT32_MAX], as int32."""
    return np.asarray(np.clip(x, INT32_MIN, INT32_MAX).astype(np.int32))


def quantize_multiplier(real_multiplier: object) -> tuple[np.ndarray, np.ndarray]:
    """Split M into ``(multiplier, shift)`` with ``M ~= multiplier * 2**(shift - 31)``.

    ``mant, e = frexp(M)`` (``M = mant * 2**e``, ``mant`` in [0.5, 1)), then
    ``multiplier = round(mant * 2**31)`` rounding half away from zero (C ``std::round``, as in
    TFLite ``QuantizeMultiplier`` and TVM ``GetFixedPointMultiplierShift``) and ``shift = e``. If
    the rounding reaches 2**31, ``multiplier = 2**30`` and ``shift = e + 1``. So
    ``multiplier`` is in [2**30, 2**31 - 1], ``shift`` in [-31, 30] and the relative error is at
    most 2**-31.

    ``M == 0`` gives ``(0, 0)``. So does a multiplier too small to matter: if ``shift < -31`` then
    ``M < 2**-32`` and ``|acc * M| < 0.5`` for every int32 ``acc``, so every rounding gives 0.

    Parameters
    ----------
    real_multiplier : float or array_like
        M, finite, ``0 <= M < 2**30 - 2**-2`` (larger values would need ``shift > 30``).

    Returns
    -------
    multiplier, shift : numpy.ndarray
        int32 arrays with the shape of ``real_multiplier`` (0-d for a scalar).

    Raises
    ------
    ValueError
        If M is negative, NaN, infinite, or too large.

    Examples
    --------
    >>> m, s = quantize_multiplier(0.375)
    >>> int(m), int(s), int(m) * 2.0 ** (int(s) - 31)
    (1610612736, -1, 0.375)
    """
    arr = np.asarray(real_multiplier)
    if arr.dtype.kind not in "fiu":
        raise ValueError(f"real_multiplier must be real numbers, got dtype {arr.dtype}")
    m = arr.astype(np.float64)
    bad = ~(np.isfinite(m) & (m >= 0))
    if np.any(bad):
        value = m[bad][0] if m.ndim else m[()]
        raise ValueError(f"real_multiplier contains {float(value)!r}; allowed: finite numbers >= 0")
    mant, exp = np.frexp(m)
    q = np.floor(mant * 2.0**31 + 0.5).astype(np.int64)  # exact: mant * 2**31 < 2**31
    carry = q == 2**31
    q = np.where(carry, 2**30, q)
    exp = np.where(carry, exp + 1, exp).astype(np.int64)
    too_big = exp > _SHIFT_MAX
    if np.any(too_big):
        value = m[too_big][0] if m.ndim else m[()]
        raise ValueError(
            f"real_multiplier contains {float(value)!r}; allowed: values below 2**30 - 2**-2 "
            "(a requantization multiplier needs shift <= 30)"
        )
    negligible = exp < _SHIFT_MIN
    multiplier = np.where(negligible, 0, q).astype(np.int32)
    shift = np.where(negligible | (q == 0), 0, exp).astype(np.int32)
    return np.asarray(multiplier), np.asarray(shift)


def _srdhm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """SaturatingRoundingDoublingHighMul on int64 arrays holding int32 values; int64 result."""
    ab = a * b  # |ab| <= 2**62
    s = ab + np.where(ab >= 0, 2**30, 1 - 2**30)
    q = s >> 31  # floor
    q = q + ((s < 0) & ((s & (2**31 - 1)) != 0))  # C division truncates toward zero
    return np.where((a == INT32_MIN) & (b == INT32_MIN), INT32_MAX, q)


def _rdbpot(x: np.ndarray, exponent: np.ndarray) -> np.ndarray:
    """RoundingDivideByPOT on int64 arrays holding int32 values, exponent in [0, 31]."""
    mask = (np.int64(1) << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (x < 0)
    return (x >> exponent) + (remainder > threshold)


def saturating_rounding_doubling_high_mul(a: object, b: object) -> np.ndarray:
    """gemmlowp ``SaturatingRoundingDoublingHighMul``, same as ARM ``VQRDMULH`` / ``SQRDMULH``.

    ``round(a * b / 2**31)`` rounding half up (toward +Inf), saturated: the one overflowing
    input, ``a == b == INT32_MIN``, gives INT32_MAX. In integers:
    ``nudge = 2**30 if a*b >= 0 else 1 - 2**30``; result ``(a*b + nudge) / 2**31`` with C
    division (truncation toward zero).

    Parameters
    ----------
    a, b : array_like of int
        int32 values, broadcastable against each other.

    Returns
    -------
    numpy.ndarray
        int32.

    Examples
    --------
    >>> saturating_rounding_doubling_high_mul([5, -5, -2**31], [2**30, 2**30, -2**31])
    array([         3,         -2, 2147483647], dtype=int32)
    """
    a64 = as_int_array(a, "a", INT32_MIN, INT32_MAX)
    b64 = as_int_array(b, "b", INT32_MIN, INT32_MAX)
    _check_broadcast(a=a64, b=b64)
    return np.asarray(_srdhm(a64, b64).astype(np.int32))


def rounding_divide_by_pot(x: object, exponent: object) -> np.ndarray:
    """gemmlowp ``RoundingDivideByPOT``: ``round(x / 2**exponent)``, rounding half away from 0.

    ``mask = 2**exponent - 1``; ``threshold = (mask >> 1) + (1 if x < 0 else 0)``;
    result ``(x >> exponent) + (1 if (x & mask) > threshold else 0)`` with arithmetic shifts.
    Same as ARM ``VRSHL`` / ``SRSHL`` by a negative amount for x >= 0.

    Parameters
    ----------
    x : array_like of int
        int32 values.
    exponent : array_like of int
        In [0, 31], broadcastable against ``x``.

    Returns
    -------
    numpy.ndarray
        int32.

    Examples
    --------
    >>> rounding_divide_by_pot([3, -3, 5, -5], 1)
    array([ 2, -2,  3, -3], dtype=int32)
    """
    x64 = as_int_array(x, "x", INT32_MIN, INT32_MAX)
    e64 = as_int_array(exponent, "exponent", 0, 31)
    _check_broadcast(x=x64, exponent=e64)
    return np.asarray(_rdbpot(x64, e64).astype(np.int32))


def _check_broadcast(**arrays: np.ndarray) -> None:
    """Raise ValueError naming the arguments if their shapes do not broadcast."""
    try:
        np.broadcast_shapes(*(a.shape for a in arrays.values()))
    except ValueError:
        shapes = ", ".join(f"{k}{v.shape}" for k, v in arrays.items())
        raise ValueError(f"shapes do not broadcast: {shapes}") from None


def _double(acc: np.ndarray, multiplier: np.ndarray, shift: np.ndarray) -> np.ndarray:
    left = np.maximum(shift, 0)
    right = np.maximum(-shift, 0)
    x = np.clip(acc * (np.int64(1) << left), INT32_MIN, INT32_MAX)
    return _rdbpot(_srdhm(x, multiplier), right)


def _single(acc: np.ndarray, multiplier: np.ndarray, shift: np.ndarray) -> np.ndarray:
    k = 31 - shift  # 1..62
    return (((acc * multiplier) >> (k - 1)) + 1) >> 1


def _tonearest(acc: np.ndarray, multiplier: np.ndarray, shift: np.ndarray) -> np.ndarray:
    k = 31 - shift  # 1..62
    p = acc * multiplier  # |p| < 2**62, so p + 2**61 cannot overflow int64
    half = np.int64(1) << (k - 1)
    return (p + np.where(p >= 0, half, half - 1)) >> k


_MODES = {"double": _double, "single": _single, "tonearest": _tonearest}


def _check_rounding(rounding: object) -> str:
    if not isinstance(rounding, str) or rounding not in ROUNDINGS:
        raise ValueError(f"rounding must be one of {ROUNDINGS}, got {rounding!r}")
    return rounding


def multiply_by_quantized_multiplier(
    acc: object, multiplier: object, shift: object, rounding: str
) -> np.ndarray:
    """``round(acc * multiplier * 2**(shift - 31))`` saturated to int32, in integer arithmetic.

    With ``p = acc * multiplier`` (exact, int64) and ``k = 31 - shift`` (1..62):

    - ``"double"``: gemmlowp / TFLite ``MultiplyByQuantizedMultiplier`` ("double rounding").
      ``left = max(shift, 0)``, ``right = max(-shift, 0)``;
      ``x = saturate_int32(acc * 2**left)`` (a saturating shift like ARM ``VQSHL``; TFLite's
      plain ``acc * (1 << left)`` is undefined on overflow, so an overflowing ``x`` leaves the
      result near ``±2**31 * multiplier / 2**31``, not at INT32_MAX/INT32_MIN);
      ``y = saturating_rounding_doubling_high_mul(x, multiplier)`` (half up);
      result ``rounding_divide_by_pot(y, right)`` (half away from zero). Two roundings.
    - ``"single"``: CMSIS-NN ``arm_nn_requantize`` with ``CMSIS_NN_USE_SINGLE_ROUNDING``, TVM QNN
      ``UPWARD``: ``((p >> (k - 1)) + 1) >> 1``, i.e. ``floor(p / 2**k + 1/2)``, half up.
    - ``"tonearest"``: TVM QNN ``TONEAREST``: ``(p + r) >> k`` with ``r = 2**(k-1)`` if
      ``p >= 0`` else ``2**(k-1) - 1``, i.e. half away from zero.

    Shifts are arithmetic. The result saturates to [INT32_MIN, INT32_MAX] (CMSIS-NN and TVM
    wrap instead; they agree whenever the result fits int32).

    Parameters
    ----------
    acc : array_like of int
        Accumulator, int32 values.
    multiplier : array_like of int
        In [0, 2**31 - 1] (in [2**30, 2**31 - 1] or 0 from :func:`quantize_multiplier`).
    shift : array_like of int
        In [-31, 30].
    rounding : {"double", "single", "tonearest"}

    Returns
    -------
    numpy.ndarray
        int32 with the broadcast shape of the inputs. Per-channel callers reshape
        ``multiplier`` and ``shift`` to broadcast along the channel axis themselves.

    Examples
    --------
    >>> [int(multiply_by_quantized_multiplier(-5, 2**30, 0, r)) for r in ROUNDINGS]
    [-2, -2, -3]
    """
    mode = _MODES[_check_rounding(rounding)]
    acc64 = as_int_array(acc, "acc", INT32_MIN, INT32_MAX)
    m64 = as_int_array(multiplier, "multiplier", 0, INT32_MAX)
    s64 = as_int_array(shift, "shift", _SHIFT_MIN, _SHIFT_MAX)
    _check_broadcast(acc=acc64, multiplier=m64, shift=s64)
    return _saturate_int32(mode(acc64, m64, s64))


def _as_fp32_scale(scale: object, name: str) -> np.ndarray:
    arr = np.asarray(scale)
    if arr.dtype.kind not in "fiu":
        raise ValueError(f"{name} must be real numbers, got dtype {arr.dtype}")
    with np.errstate(over="ignore"):
        arr = arr.astype(np.float32)
    bad = ~(np.isfinite(arr) & (arr >= 0))
    if np.any(bad):
        value = arr[bad][0] if arr.ndim else arr[()]
        raise ValueError(
            f"{name} contains {float(value)!r} (after the float32 cast); "
            "allowed: finite float32 values >= 0"
        )
    return arr


def requantize_fp32(acc: object, scale: object) -> np.ndarray:
    """Float32 requantization: ``rint(float32(acc) * float32(scale))`` saturated to int32.

    Exactly: ``acc`` converted to float32 (round to nearest even, inexact for |acc| > 2**24 as
    in hardware), one IEEE float32 multiply, ``rint`` (round half to even), clip to
    [-2**31, 2**31 - 128] in float32 (2**31 - 128 is the largest float32 below 2**31), then
    conversion to int32. Every backend must do exactly this: one float32 multiply, no FMA, no
    float64, no reciprocal, round half to even.

    Parameters
    ----------
    acc : array_like of int
        Accumulator, int32 values.
    scale : float or array_like
        Requantization scale, cast to float32, finite and >= 0, broadcastable against ``acc``.

    Returns
    -------
    numpy.ndarray
        int32.

    Examples
    --------
    >>> requantize_fp32([5, 7, -5, 2**31 - 1], np.float32(0.5))
    array([         2,          4,         -2, 1073741824], dtype=int32)
    """
    acc64 = as_int_array(acc, "acc", INT32_MIN, INT32_MAX)
    scale32 = _as_fp32_scale(scale, "scale")
    _check_broadcast(acc=acc64, scale=scale32)
    with np.errstate(over="ignore"):
        product = acc64.astype(np.int32).astype(np.float32) * scale32
    clipped = np.clip(np.rint(product), np.float32(INT32_MIN), np.float32(_FP32_INT32_MAX))
    return np.asarray(clipped.astype(np.int32))


@dataclass(frozen=True, eq=False)
class Requant:
    """How an int32 accumulator becomes an integer in the output scale (before zero point).

    Parameters
    ----------
    kind : {"mult_shift", "fp32"}
        Integer multiply and shift, or float32 multiply.
    rounding : {"double", "single", "tonearest"} or None
        Rounding of ``mult_shift`` (see :func:`multiply_by_quantized_multiplier`); None for
        ``fp32``.
    multiplier, shift : array_like of int or None
        ``mult_shift`` parameters, int32, shape ``()`` or ``(C,)``, multiplier in
        [0, 2**31 - 1], shift in [-31, 30]; None for ``fp32``.
    scale : array_like or None
        ``fp32`` scale, float32, shape ``()`` or ``(C,)``, finite and >= 0; None for
        ``mult_shift``.

    Examples
    --------
    >>> rq = Requant.from_scale(0.375, "mult_shift", "tonearest")
    >>> rq.apply(np.array([1, 4, -4], dtype=np.int32))
    array([ 0,  2, -2], dtype=int32)
    """

    kind: str
    rounding: str | None = None
    multiplier: np.ndarray | None = None
    shift: np.ndarray | None = None
    scale: np.ndarray | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.kind, str) or self.kind not in REQUANT_KINDS:
            raise ValueError(f"kind must be one of {REQUANT_KINDS}, got {self.kind!r}")
        if self.kind == "mult_shift":
            _check_rounding(self.rounding)
            if self.multiplier is None or self.shift is None or self.scale is not None:
                raise ValueError(
                    "kind='mult_shift' needs multiplier and shift and scale=None, got "
                    f"multiplier={self.multiplier!r}, shift={self.shift!r}, scale={self.scale!r}"
                )
            multiplier = as_int_array(self.multiplier, "multiplier", 0, INT32_MAX)
            shift = as_int_array(self.shift, "shift", _SHIFT_MIN, _SHIFT_MAX)
            check_param_shape(multiplier, "multiplier")
            if shift.shape != multiplier.shape:
                raise ValueError(
                    f"shift must have the shape of multiplier {multiplier.shape}, got {shift.shape}"
                )
            object.__setattr__(self, "multiplier", frozen(multiplier.astype(np.int32)))
            object.__setattr__(self, "shift", frozen(shift.astype(np.int32)))
        else:
            if self.rounding is not None:
                raise ValueError(f"kind='fp32' takes rounding=None, got {self.rounding!r}")
            if self.scale is None or self.multiplier is not None or self.shift is not None:
                raise ValueError(
                    "kind='fp32' needs scale and multiplier=None, shift=None, got "
                    f"multiplier={self.multiplier!r}, shift={self.shift!r}, scale={self.scale!r}"
                )
            scale = _as_fp32_scale(self.scale, "scale")
            check_param_shape(scale, "scale")
            object.__setattr__(self, "scale", frozen(scale))

    @classmethod
    def from_scale(cls, real_scale: object, kind: str, rounding: str | None = None) -> Requant:
        """Requantization by ``real_scale = s_in * s_w / s_out``.

        Parameters
        ----------
        real_scale : float or array_like
            Shape ``()`` or ``(C,)``, best given in float64. ``mult_shift`` uses
            :func:`quantize_multiplier`; ``fp32`` casts it to float32 (round to nearest even).
        kind : {"mult_shift", "fp32"}
        rounding : {"double", "single", "tonearest"} or None
            Required for ``mult_shift``, None for ``fp32``.

        Returns
        -------
        Requant
        """
        if not isinstance(kind, str) or kind not in REQUANT_KINDS:
            raise ValueError(f"kind must be one of {REQUANT_KINDS}, got {kind!r}")
        if kind == "mult_shift":
            _check_rounding(rounding)
            multiplier, shift = quantize_multiplier(real_scale)
            return cls(kind, rounding, multiplier=multiplier, shift=shift)
        return cls(kind, rounding, scale=_as_fp32_scale(real_scale, "real_scale"))

    def apply(self, acc: object, axis: int | None = None) -> np.ndarray:
        """Requantized accumulator, int32, before the zero point and the clamp.

        ``mult_shift``: :func:`multiply_by_quantized_multiplier`; ``fp32``:
        :func:`requantize_fp32`.

        Parameters
        ----------
        acc : array_like of int
            int32 values.
        axis : int or None
            Channel axis of ``acc``; required for per-channel parameters, ignored otherwise.

        Returns
        -------
        numpy.ndarray
            int32 with the shape of ``acc``.
        """
        acc64 = as_int_array(acc, "acc", INT32_MIN, INT32_MAX)
        if self.kind == "fp32":
            scale = along_axis(self.scale, acc64.shape, axis, "scale", "acc")
            return requantize_fp32(acc64, scale)
        multiplier = along_axis(self.multiplier, acc64.shape, axis, "multiplier", "acc")
        shift = along_axis(self.shift, acc64.shape, axis, "shift", "acc")
        return multiply_by_quantized_multiplier(acc64, multiplier, shift, self.rounding)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Requant):
            return NotImplemented
        return (self.kind, self.rounding) == (other.kind, other.rounding) and all(
            (a is None and b is None)
            or (a is not None and b is not None and a.shape == b.shape and np.array_equal(a, b))
            for a, b in (
                (self.multiplier, other.multiplier),
                (self.shift, other.shift),
                (self.scale, other.scale),
            )
        )

    def __hash__(self) -> int:
        arrays = (self.multiplier, self.shift, self.scale)
        keys = tuple(None if a is None else (a.shape, a.tobytes()) for a in arrays)
        return hash((self.kind, self.rounding, *keys))


def requantize(
    acc: object,
    rq: Requant,
    *,
    zero_point: object,
    qmin: int,
    qmax: int,
    axis: int | None = None,
) -> np.ndarray:
    """Output integers: ``clip(rq.apply(acc, axis) + zero_point, qmin, qmax)``.

    The zero point is added in int64, so it cannot wrap, then clipped.

    Parameters
    ----------
    acc : array_like of int
        Accumulator (bias included), int32 values.
    rq : Requant
    zero_point : int or array_like of int
        Output zero point, int32 values, shape ``()`` or ``(C,)`` along ``axis``.
    qmin, qmax : int
        Output clamp, int32, ``qmin <= qmax`` (a fused activation may narrow it).
    axis : int or None
        Channel axis of ``acc``; required when ``rq`` or ``zero_point`` is per-channel.

    Returns
    -------
    numpy.ndarray
        int32 with the shape of ``acc``.

    Examples
    --------
    >>> rq = Requant.from_scale(0.5, "fp32")
    >>> requantize([5, 1000, -1000], rq, zero_point=-3, qmin=-128, qmax=127)
    array([  -1,  127, -128], dtype=int32)
    """
    if not isinstance(rq, Requant):
        raise ValueError(f"rq must be a Requant, got {type(rq).__name__}")
    qmin = check_int(qmin, "qmin", INT32_MIN, INT32_MAX)
    qmax = check_int(qmax, "qmax", INT32_MIN, INT32_MAX)
    if qmin > qmax:
        raise ValueError(f"qmin must be <= qmax, got qmin={qmin}, qmax={qmax}")
    zp = as_int_array(zero_point, "zero_point", INT32_MIN, INT32_MAX)
    check_param_shape(zp, "zero_point")
    acc64 = as_int_array(acc, "acc", INT32_MIN, INT32_MAX)
    zp = along_axis(zp, acc64.shape, axis, "zero_point", "acc")
    out = rq.apply(acc64, axis).astype(np.int64) + zp
    return np.asarray(np.clip(out, qmin, qmax).astype(np.int32))
