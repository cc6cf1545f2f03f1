"""Quantization parameters, quantize and dequantize against an independent reference.

The reference works on Python floats (float64) and rounds to float32 once per operation: for
float32 inputs a float64 quotient or product rounded to float32 is the IEEE float32 result (the
product is even exact). Python's ``round`` rounds half to even.
"""

import dataclasses
import doctest
import math

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import tvmq.numerics.qparams
from tvmq.numerics import QParams, choose_qparams, dequantize, qrange, quantize

F32_TINY = float(np.finfo(np.float32).tiny)


def f32(x: float) -> float:
    """Round a Python float to the nearest float32 (ties to even)."""
    with np.errstate(over="ignore"):
        return float(np.float32(x))


def ref_quantize(x: float, scale: float, zero_point: int, qmin: int, qmax: int) -> int:
    v = f32(f32(x) / f32(scale))
    if math.isinf(v):
        return qmax if v > 0 else qmin
    return min(max(round(v) + zero_point, qmin), qmax)


def ref_dequantize(q: int, scale: float, zero_point: int) -> float:
    return f32(float(q - zero_point) * f32(scale))


@st.composite
def formats(draw):
    signed = draw(st.booleans())
    return {
        "bits": draw(st.integers(2, 16)),
        "signed": signed,
        "narrow_range": signed and draw(st.booleans()),
        "symmetric": draw(st.booleans()),
    }


# ---------------------------------------------------------------------------------------------
# qrange
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bits, signed, narrow_range, expected",
    [
        (8, True, False, (-128, 127)),
        (8, True, True, (-127, 127)),
        (8, False, False, (0, 255)),
        (4, True, False, (-8, 7)),
        (4, False, False, (0, 15)),
        (2, True, True, (-1, 1)),
        (2, True, False, (-2, 1)),
        (16, True, False, (-32768, 32767)),
        (16, False, False, (0, 65535)),
    ],
)
def test_qrange(bits, signed, narrow_range, expected):
    assert qrange(bits, signed=signed, narrow_range=narrow_range) == expected


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"bits": 1}, r"bits=1 is out of range; allowed: integers in \[2, 16\]"),
        ({"bits": 17}, "bits=17 is out of range"),
        ({"bits": 8.0}, "bits must be an integer"),
        ({"bits": True}, "bits must be an integer"),
        ({"bits": 8, "signed": False, "narrow_range": True}, "only defined for signed ranges"),
    ],
)
def test_qrange_rejects_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        qrange(**kwargs)


# ---------------------------------------------------------------------------------------------
# QParams
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "qmin, qmax, dtype, bits",
    [
        (-128, 127, "int8", 8),
        (-127, 127, "int8", 8),
        (0, 255, "uint8", 8),
        (-8, 7, "int8", 4),
        (0, 15, "uint8", 4),
        (-1, 1, "int8", 2),
        (-129, 127, "int16", 9),
        (0, 256, "uint16", 9),
        (-32768, 32767, "int16", 16),
        (0, 65535, "uint16", 16),
        (-(2**31), 2**31 - 1, "int32", 32),
    ],
)
def test_qparams_dtype_and_bits(qmin, qmax, dtype, bits):
    qp = QParams(np.float32(1.0), np.int32(max(qmin, 0)), qmin, qmax)
    assert qp.dtype == dtype
    assert qp.bits == bits


def test_qparams_normalizes_and_is_immutable():
    qp = QParams([0.5, 0.25], [1, 2], np.int64(-128), 127, axis=np.int64(0))
    assert qp.scale.dtype == np.float32 and qp.zero_point.dtype == np.int32
    assert type(qp.qmin) is int and type(qp.axis) is int
    same = QParams(np.array([0.5, 0.25], np.float32), np.array([1, 2], np.int32), -128, 127, 0)
    assert qp == same and hash(qp) == hash(same)
    assert qp != QParams([0.5, 0.25], [1, 2], -128, 127, axis=1)
    assert qp != QParams([0.5, 0.25], [1, 3], -128, 127, axis=0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        qp.qmin = 0
    with pytest.raises(ValueError):
        qp.scale[0] = 1.0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"scale": 0.0}, r"scale contains 0.0 .*allowed: finite float32 values > 0"),
        ({"scale": -1.0}, "scale contains -1.0"),
        ({"scale": float("nan")}, "scale contains nan"),
        ({"scale": float("inf")}, "scale contains inf"),
        ({"scale": 1e39}, r"scale contains inf \(after the float32 cast\)"),
        ({"scale": 1e-46}, r"scale contains 0.0 \(after the float32 cast\)"),
        ({"scale": "a"}, "scale must be real numbers"),
        ({"scale": [[1.0]], "zero_point": [[0]]}, r"scale must have shape \(\) \(per-tensor\)"),
        ({"scale": [], "zero_point": [], "axis": 0}, r"got shape \(0,\)"),
        ({"zero_point": 128}, r"zero_point contains 128; allowed: integers in \[-128, 127\]"),
        ({"zero_point": 0.0}, "zero_point must have an integer dtype"),
        ({"zero_point": [0]}, r"zero_point must have the shape of scale \(\), got \(1,\)"),
        ({"qmin": 127}, "qmin must be < qmax, got qmin=127, qmax=127"),
        ({"qmin": False}, "qmin must be an integer"),
        ({"qmax": 2**31}, "qmax=2147483648 is out of range"),
        ({"axis": 0}, "per-tensor scale .* takes axis=None, got axis=0"),
        ({"scale": [1.0], "zero_point": [0]}, "per-channel scale .* needs an axis"),
        ({"scale": [1.0], "zero_point": [0], "axis": True}, "axis must be an integer"),
    ],
)
def test_qparams_rejects_bad_fields(kwargs, match):
    args = {"scale": 1.0, "zero_point": 0, "qmin": -128, "qmax": 127} | kwargs
    with pytest.raises(ValueError, match=match):
        QParams(**args)


# ---------------------------------------------------------------------------------------------
# choose_qparams
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "min_val, max_val, kwargs, scale, zero_point, qmin, qmax",
    [
        # symmetric int8 narrow: amax / 127 over [-127, 127]
        (-2.0, 1.0, {"symmetric": True, "narrow_range": True}, 2 / 127, 0, -127, 127),
        # symmetric int8 full: amax / 127.5
        (-1.0, 2.55, {"symmetric": True}, 2.55 / 127.5, 0, -128, 127),
        # symmetric uint8: zero point in the middle, (0 + 255 + 1) // 2
        (-1.0, 1.0, {"symmetric": True, "signed": False}, 1 / 127.5, 128, 0, 255),
        # symmetric int4
        (-0.5, 0.3, {"symmetric": True, "bits": 4}, 0.5 / 7.5, 0, -8, 7),
        # asymmetric uint8: zero point rint(0 + 1 / (4 / 255)) = rint(63.75)
        (-1.0, 3.0, {"signed": False}, 4 / 255, 64, 0, 255),
        (-1.0, 3.0, {}, 4 / 255, -64, -128, 127),
        # the range is widened to contain 0
        (1.0, 3.0, {}, 3 / 255, -128, -128, 127),
        (-3.0, -1.0, {}, 3 / 255, 127, -128, 127),
        (1.0, 3.0, {"symmetric": True, "narrow_range": True}, 3 / 127, 0, -127, 127),
        # zero range: scale 1, never 0
        (0.0, 0.0, {"symmetric": True}, 1.0, 0, -128, 127),
        (0.0, 0.0, {}, 1.0, -128, -128, 127),
        (0.0, 0.0, {"signed": False}, 1.0, 0, 0, 255),
        (0.0, 0.0, {"symmetric": True, "signed": False}, 1.0, 128, 0, 255),
        # float32 scale would be 0 or subnormal: smallest normal float32
        (-1e-45, 1e-45, {"symmetric": True}, F32_TINY, 0, -128, 127),
        (0.0, 1e-40, {"signed": False}, F32_TINY, 0, 0, 255),
    ],
)
def test_choose_qparams_values(min_val, max_val, kwargs, scale, zero_point, qmin, qmax):
    qp = choose_qparams(min_val, max_val, **kwargs)
    assert qp.scale.dtype == np.float32 and qp.scale.shape == ()
    assert qp.scale == np.float32(scale)
    assert qp.zero_point == zero_point
    assert (qp.qmin, qp.qmax, qp.axis) == (qmin, qmax, None)


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("signed", [False, True])
def test_choose_qparams_per_channel_matches_per_tensor(symmetric, signed):
    min_val = np.array([-1.0, 0.0, 0.5, -3.0, -1e-3, 0.0])
    max_val = np.array([2.0, 0.0, 4.0, -1.0, 1e-3, 7.0])
    qp = choose_qparams(min_val, max_val, symmetric=symmetric, signed=signed, axis=1)
    assert qp.axis == 1 and qp.scale.shape == qp.zero_point.shape == (6,)
    assert qp.scale[1] == 1.0  # the all-zero channel
    for c in range(6):
        one = choose_qparams(min_val[c], max_val[c], symmetric=symmetric, signed=signed)
        assert (qp.scale[c], qp.zero_point[c]) == (one.scale, one.zero_point)


@pytest.mark.parametrize(
    "min_val, max_val, kwargs, match",
    [
        (float("nan"), 1.0, {}, "min_val contains nan; allowed: finite numbers"),
        (-1.0, float("inf"), {}, "max_val contains inf"),
        ([0.0, -1.0], [1.0, float("-inf")], {"axis": 0}, r"max_val contains -inf at index \(1,\)"),
        (2.0, 1.0, {}, "min_val must be <= max_val, got min_val=2.0 > max_val=1.0"),
        ([0.0, 3.0], [1.0, 2.0], {"axis": 0}, r"got min_val=3.0 > max_val=2.0 at index \(1,\)"),
        ([0.0, 1.0], [1.0], {"axis": 0}, r"same shape, got \(2,\) and \(1,\)"),
        ([0.0, 1.0], [1.0, 2.0], {}, "per-channel ranges .* need an axis"),
        (0.0, 1.0, {"axis": 0}, "per-tensor ranges .* take axis=None"),
        ([[0.0]], [[1.0]], {"axis": 0}, r"min_val must have shape \(\) \(per-tensor\)"),
        (-1e300, 1e300, {}, "too wide: its scale overflows float32"),
        (-1e39, 1e39, {"bits": 2}, "too wide"),
        (-1.7e308, 1.7e308, {}, "too wide"),
        (0.0, 1.0, {"bits": 32}, "bits=32 is out of range"),
        (0.0, 1.0, {"signed": False, "narrow_range": True}, "only defined for signed"),
    ],
)
def test_choose_qparams_rejects_bad_input(min_val, max_val, kwargs, match):
    with pytest.raises(ValueError, match=match):
        choose_qparams(min_val, max_val, **kwargs)


@settings(max_examples=400, deadline=None)
@given(
    fmt=formats(),
    a=st.floats(-1e6, 1e6),
    b=st.floats(-1e6, 1e6),
)
@example(fmt={"bits": 8, "signed": True, "narrow_range": False, "symmetric": False}, a=0.0, b=0.0)
def test_zero_is_exactly_representable(fmt, a, b):
    qp = choose_qparams(min(a, b), max(a, b), **fmt)
    q = quantize(np.array([0.0, -0.0]), qp)
    assert q.tolist() == [int(qp.zero_point)] * 2
    assert dequantize(q, qp).tolist() == [0.0, 0.0]


@settings(max_examples=500, deadline=None)
@given(
    fmt=formats(),
    a=st.floats(-1e4, 1e4),
    b=st.floats(-1e4, 1e4),
    t=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=32),
)
@example(
    fmt={"bits": 8, "signed": True, "narrow_range": False, "symmetric": True},
    a=-1.0,
    b=1.0,
    t=[0.0, 1.0, 0.5],
)
@example(
    fmt={"bits": 2, "signed": False, "narrow_range": False, "symmetric": True},
    a=-1.0,
    b=1.0,
    t=[0.0, 1.0],
)
def test_round_trip_error_is_at_most_half_a_step(fmt, a, b, t):
    qp = choose_qparams(min(a, b), max(a, b), **fmt)
    lo, hi = min(a, b, 0.0), max(a, b, 0.0)
    x = np.clip(lo + np.array(t) * (hi - lo), lo, hi)
    error = np.abs(dequantize(quantize(x, qp), qp).astype(np.float64) - x)
    step = float(qp.scale)
    # half a step, plus float32 rounding of x, x / scale, the product and of the scale itself
    bound = step * (0.5 + 2.0**-7) + np.abs(x) * 2.0**-21 + F32_TINY
    assert np.all(error <= bound), (x, error, bound, qp)


# ---------------------------------------------------------------------------------------------
# quantize / dequantize
# ---------------------------------------------------------------------------------------------

INT_FORMATS = [(-128, 127), (-127, 127), (0, 255), (-8, 7), (-32768, 32767), (0, 65535)]


FORMAT_AND_ZERO_POINT = st.sampled_from(INT_FORMATS).flatmap(
    lambda fmt: st.tuples(st.just(fmt), st.integers(*fmt))
)


@settings(max_examples=300, deadline=None)
@given(
    fmt_zp=FORMAT_AND_ZERO_POINT,
    scale=st.floats(f32(1e-30), f32(1e30), width=32),
    x=st.lists(st.floats(allow_nan=False), min_size=1, max_size=32),
)
@example(fmt_zp=((-128, 127), 0), scale=0.5, x=[0.25, 0.75, 1.25, -0.25, -0.75, 63.75, 64.0])
@example(fmt_zp=((0, 255), 3), scale=1e-30, x=[1e-45, 3e38, -3e38, 1e300, -1e300])
def test_quantize_matches_reference(fmt_zp, scale, x):
    (qmin, qmax), zero_point = fmt_zp
    qp = QParams(np.float32(scale), np.int32(zero_point), qmin, qmax)
    got = quantize(np.array(x), qp)
    assert got.dtype == np.dtype(qp.dtype)
    assert got.tolist() == [ref_quantize(v, scale, zero_point, qmin, qmax) for v in x]
    x_hat = dequantize(got, qp)
    assert x_hat.dtype == np.float32
    assert x_hat.tolist() == [ref_dequantize(int(q), scale, zero_point) for q in got]


def test_quantize_rounds_half_to_even_and_clips():
    qp = QParams(np.float32(0.5), np.int32(0), -128, 127)
    x = [0.25, 0.75, 1.25, -0.25, -0.75, -1.25, 1e9, -1e9, np.inf, -np.inf]
    assert quantize(x, qp).tolist() == [0, 2, 2, 0, -2, -2, 127, -128, 127, -128]


def test_quantize_casts_x_to_float32_first():
    qp = QParams(np.float32(1.0), np.int32(0), -32768, 32767)
    # 0.5 + 2**-30 is above the tie in float64 but rounds to 0.5 in float32: then half to even
    assert quantize(np.float64(0.5 + 2.0**-30), qp) == 0
    assert quantize(np.float64(1.5 + 2.0**-30), qp) == 2


def test_quantize_divides_by_the_scale():
    # Near ties, float32(x) / scale (correctly rounded) and x * (1 / scale) round differently.
    scale = np.float32(0.1)
    ties = ((np.arange(3000) + 0.5) * np.float64(scale)).astype(np.float32)
    x = np.concatenate([ties, np.nextafter(ties, np.float32(np.inf))])
    by_division = np.rint(x / scale)
    differs = by_division != np.rint(x * (np.float32(1) / scale))
    assert np.count_nonzero(differs) >= 50
    qp = QParams(scale, np.int32(0), -32768, 32767)
    np.testing.assert_array_equal(quantize(x, qp), by_division)
    assert quantize(x[differs], qp).tolist() == [
        ref_quantize(v, 0.1, 0, -32768, 32767) for v in x[differs].tolist()
    ]


@pytest.mark.parametrize("axis", [0, -2])
def test_quantize_per_channel(axis):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 5)).astype(np.float32) * 4
    qp = choose_qparams(x.min(axis=1), x.max(axis=1), signed=False, axis=axis)
    q = quantize(x, qp)
    x_hat = dequantize(q, qp)
    assert q.dtype == np.uint8 and q.shape == (3, 5) and x_hat.shape == (3, 5)
    for c in range(3):
        one = QParams(qp.scale[c], qp.zero_point[c], qp.qmin, qp.qmax)
        np.testing.assert_array_equal(q[c], quantize(x[c], one))
        np.testing.assert_array_equal(x_hat[c], dequantize(q[c], one))


def test_dequantize_values():
    qp = QParams(np.float32(0.1), np.int32(-3), -128, 127)
    q = np.array([-128, -3, 0, 127], dtype=np.int8)
    expected = [ref_dequantize(int(v), 0.1, -3) for v in q]
    assert dequantize(q, qp).tolist() == expected
    assert dequantize(q, qp)[1] == 0.0


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda qp: quantize([1.0, np.nan], qp), "x contains NaN"),
        (lambda qp: quantize(["a"], qp), "x must be real numbers"),
        (lambda qp: dequantize([0.5], qp), "q must have an integer dtype"),
        (lambda qp: quantize(np.zeros((2, 3)), qp), "scale has 4 channels but x has 3 entries"),
        (lambda qp: quantize(np.float32(1.0), qp), "scale is per-channel .* but x is a scalar"),
        (lambda qp: dequantize(np.zeros((4,), np.int8), qp), "axis=1 is not a valid axis of q"),
    ],
)
def test_quantize_rejects_bad_input(call, match):
    qp = QParams(np.ones(4, np.float32), np.zeros(4, np.int32), -128, 127, axis=1)
    with pytest.raises(ValueError, match=match):
        call(qp)


def test_docstring_examples():
    result = doctest.testmod(tvmq.numerics.qparams, extraglobs={"np": np}, raise_on_error=False)
    assert result.attempted > 0 and result.failed == 0

