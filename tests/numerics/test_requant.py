"""Requantization against an independent reference in Python integers and Fractions.

The reference rounds exact rationals by definition (half up, half away from zero, half to even);
it shares no code or integer tricks with ``tvmq.numerics.requant``.
"""

import dataclasses
import doctest
import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import tvmq.numerics.requant
from tvmq.numerics import (
    REQUANT_KINDS,
    ROUNDINGS,
    Requant,
    multiply_by_quantized_multiplier,
    quantize_multiplier,
    requantize,
    requantize_fp32,
    rounding_divide_by_pot,
    saturating_rounding_doubling_high_mul,
)

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1
HALF = Fraction(1, 2)

# ---------------------------------------------------------------------------------------------
# Independent reference
# ---------------------------------------------------------------------------------------------


def sat32(n: int) -> int:
    return max(INT32_MIN, min(INT32_MAX, n))


def round_half_up(f: Fraction) -> int:
    """Nearest integer, ties toward +inf."""
    return math.floor(f + HALF)


def round_half_away(f: Fraction) -> int:
    """Nearest integer, ties away from zero."""
    return math.floor(f + HALF) if f >= 0 else -math.floor(-f + HALF)


def ref_srdhm(a: int, b: int) -> int:
    """ARM VQRDMULH: a*b/2**31 rounded half up, saturated."""
    return sat32(round_half_up(Fraction(a * b, 2**31)))


def ref_rdbpot(x: int, e: int) -> int:
    return round_half_away(Fraction(x, 2**e))


def exact(acc: int, multiplier: int, shift: int) -> Fraction:
    return Fraction(acc * multiplier) * Fraction(2) ** (shift - 31)


def ref_double(acc: int, multiplier: int, shift: int) -> int:
    """Two roundings: a*2**left saturated, high product rounded half up, then by 2**right."""
    x = sat32(acc * 2 ** max(shift, 0))
    return ref_rdbpot(ref_srdhm(x, multiplier), max(-shift, 0))


def ref_single(acc: int, multiplier: int, shift: int) -> int:
    return sat32(round_half_up(exact(acc, multiplier, shift)))


def ref_tonearest(acc: int, multiplier: int, shift: int) -> int:
    return sat32(round_half_away(exact(acc, multiplier, shift)))


REFERENCE = {"double": ref_double, "single": ref_single, "tonearest": ref_tonearest}


def ref_quantize_multiplier(m: float) -> tuple[int, int]:
    """Exponent by comparison with powers of two, mantissa rounded half away from zero."""
    f = Fraction(m)
    if f == 0:
        return 0, 0
    e = f.numerator.bit_length() - f.denominator.bit_length()
    while Fraction(2) ** e <= f:
        e += 1
    while Fraction(2) ** (e - 1) > f:
        e -= 1
    q = round_half_away(f * Fraction(2) ** (31 - e))
    if q == 2**31:
        q, e = 2**30, e + 1
    if e < -31:
        return 0, 0
    return q, e


def ref_fp32(acc: int, scale: float) -> int:
    """float32(acc) * float32(scale) rounded once to float32, then half to even, saturated."""
    a = float(np.float32(acc))  # float64 holds acc exactly; one rounding to float32
    s = float(np.float32(scale))
    with np.errstate(over="ignore"):
        p = float(np.float32(a * s))  # a * s is exact in float64 (24 + 24 bits)
    if math.isinf(p):
        return 2**31 - 128 if p > 0 else INT32_MIN
    return min(max(round(p), INT32_MIN), 2**31 - 128)  # round(): half to even


# ---------------------------------------------------------------------------------------------
# Strategies and examples
# ---------------------------------------------------------------------------------------------

ACC = st.integers(INT32_MIN, INT32_MAX)
MULTIPLIER = st.integers(2**30, INT32_MAX)
SHIFT = st.integers(-31, 30)
# Few significant bits, so acc * multiplier lands exactly on ties.
TIE_MULTIPLIER = st.sampled_from([2**30, 3 * 2**29, 5 * 2**28, 7 * 2**28, 2**31 - 2**27])

EDGE_CASES = [
    (INT32_MIN, 2**30, 0),
    (INT32_MAX, 2**30, 0),
    (INT32_MIN, INT32_MAX, 0),
    (INT32_MAX, INT32_MAX, 0),
    (0, INT32_MAX, 30),
    (0, 2**30, -31),
    (INT32_MIN, 2**30, -31),  # exactly -0.5
    (INT32_MIN, INT32_MAX, -31),
    (INT32_MAX, INT32_MAX, -31),
    (-5, 2**30, 0),  # -2.5
    (5, 2**30, 0),  # 2.5
    (1, 2**30, 0),  # 0.5
    (-1, 2**30, 0),  # -0.5
    (-6, 2**30, -1),  # -1.5
    (6, 2**30, -1),  # 1.5
    (-3, 2**30, -1),  # -0.75
    (1, 3 * 2**29, -1),  # 0.375: double rounding gives 1
    (-1, 3 * 2**29, -1),
    (2**20, 2**30, 12),  # exactly 2**31: saturates
    (INT32_MAX, INT32_MAX, 30),  # saturates with positive shift
    (INT32_MIN, INT32_MAX, 30),
    (INT32_MIN, 2**30, 1),  # exactly INT32_MIN
    (-(2**30), 2**30, 2),  # exactly INT32_MIN via saturating left shift
]


def with_edge_cases(test):
    for acc, multiplier, shift in EDGE_CASES:
        test = example(acc=acc, multiplier=multiplier, shift=shift)(test)
    return test


# ---------------------------------------------------------------------------------------------
# multiply_by_quantized_multiplier
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rounding", ROUNDINGS)
@settings(max_examples=300, deadline=None)
@given(acc=ACC, multiplier=MULTIPLIER, shift=SHIFT)
@with_edge_cases
def test_multiply_by_quantized_multiplier_matches_reference(rounding, acc, multiplier, shift):
    got = multiply_by_quantized_multiplier(np.int32(acc), multiplier, shift, rounding)
    assert got.dtype == np.int32 and got.shape == ()
    assert int(got) == REFERENCE[rounding](acc, multiplier, shift)


@pytest.mark.parametrize("rounding", ROUNDINGS)
@settings(max_examples=150, deadline=None)
@given(cases=st.lists(st.tuples(ACC, MULTIPLIER, SHIFT), min_size=1, max_size=64))
def test_multiply_by_quantized_multiplier_matches_reference_batched(rounding, cases):
    acc, multiplier, shift = (np.array(column, dtype=np.int32) for column in zip(*cases))
    got = multiply_by_quantized_multiplier(acc, multiplier, shift, rounding)
    assert got.tolist() == [REFERENCE[rounding](*case) for case in cases]


@pytest.mark.parametrize("rounding", ROUNDINGS)
@settings(max_examples=150, deadline=None)
@given(
    cases=st.lists(
        st.tuples(st.integers(-(2**20), 2**20), TIE_MULTIPLIER, st.integers(-31, 8)),
        min_size=1,
        max_size=64,
    )
)
def test_multiply_by_quantized_multiplier_ties(rounding, cases):
    acc, multiplier, shift = (np.array(column, dtype=np.int32) for column in zip(*cases))
    got = multiply_by_quantized_multiplier(acc, multiplier, shift, rounding)
    assert got.tolist() == [REFERENCE[rounding](*case) for case in cases]


@pytest.mark.parametrize("rounding", ROUNDINGS)
def test_multiply_by_quantized_multiplier_vectorized(rounding):
    rng = np.random.default_rng(20240601)
    n = 4000
    acc = np.concatenate(
        [
            rng.integers(INT32_MIN, INT32_MAX, n // 2, endpoint=True),
            rng.integers(-(2**12), 2**12, n // 2, endpoint=True),
        ]
    ).astype(np.int32)
    multiplier = rng.integers(2**30, INT32_MAX, n, endpoint=True).astype(np.int32)
    shift = rng.integers(-31, 30, n, endpoint=True).astype(np.int32)
    got = multiply_by_quantized_multiplier(acc, multiplier, shift, rounding)
    cases = zip(acc.tolist(), multiplier.tolist(), shift.tolist())
    expected = [REFERENCE[rounding](*case) for case in cases]
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, np.array(expected, dtype=np.int64))


@pytest.mark.parametrize("rounding", ROUNDINGS)
def test_multiply_by_quantized_multiplier_broadcasts_per_channel(rounding):
    acc = np.arange(-12, 12, dtype=np.int32).reshape(4, 6) * 1001
    multiplier = np.array([2**30, 3 * 2**29, INT32_MAX, 2**30 + 7, 1234567890, 2**31 - 2**27])
    shift = np.array([0, -1, -5, 3, -31, -12])
    got = multiply_by_quantized_multiplier(acc, multiplier, shift, rounding)
    assert got.shape == (4, 6)
    for (i, c), value in np.ndenumerate(got):
        expected = REFERENCE[rounding](int(acc[i, c]), int(multiplier[c]), int(shift[c]))
        assert value == expected


# Hand-checked values (M = 0.5 is (2**30, 0), 0.25 is (2**30, -1), 0.375 is (3 * 2**29, -1)):
#   acc=5,  M=0.5:   2.5  -> 3 everywhere.
#   acc=-5, M=0.5:  -2.5  -> SRDHM rounds half up to -2 (double), half up -2 (single), half away
#                            -3 (tonearest).
#   acc=-6, M=0.25: -1.5  -> SRDHM exact -3, RDBPOT(-3, 1) = -2 (double), -1 (single), -2.
#   acc=1,  M=0.375: 0.375 -> SRDHM(1, 3*2**29) = round(0.75) = 1, RDBPOT(1, 1) = round(0.5) = 1
#                            (double rounding); single and tonearest give 0.
#   acc=-1, M=0.375: -0.375 -> SRDHM gives round_half_up(-0.75) = -1, RDBPOT(-1, 1) = -1; 0, 0.
HAND_CHECKED = [
    (5, 0.5, {"double": 3, "single": 3, "tonearest": 3}),
    (-5, 0.5, {"double": -2, "single": -2, "tonearest": -3}),
    (-6, 0.25, {"double": -2, "single": -1, "tonearest": -2}),
    (1, 0.375, {"double": 1, "single": 0, "tonearest": 0}),
    (-1, 0.375, {"double": -1, "single": 0, "tonearest": 0}),
]


@pytest.mark.parametrize("acc, real_multiplier, expected", HAND_CHECKED)
def test_rounding_modes_hand_checked(acc, real_multiplier, expected):
    multiplier, shift = quantize_multiplier(real_multiplier)
    for rounding in ROUNDINGS:
        got = multiply_by_quantized_multiplier(acc, multiplier, shift, rounding)
        assert int(got) == expected[rounding], rounding
        assert REFERENCE[rounding](acc, int(multiplier), int(shift)) == expected[rounding]


def test_rounding_modes_differ_pairwise():
    results = {
        r: [
            int(multiply_by_quantized_multiplier(a, *quantize_multiplier(m), r))
            for a, m, _ in HAND_CHECKED
        ]
        for r in ROUNDINGS
    }
    assert results["double"] != results["single"]
    assert results["double"] != results["tonearest"]
    assert results["single"] != results["tonearest"]


@pytest.mark.parametrize(
    "rounding, expected",
    [
        ("single", [INT32_MAX, INT32_MIN, INT32_MAX, INT32_MIN]),
        ("tonearest", [INT32_MAX, INT32_MIN, INT32_MAX, INT32_MIN]),
        # double saturates acc * 2**12 first, then halves it with SRDHM(x, 2**30).
        ("double", [2**30, -(2**30), 2**30, -(2**30)]),
    ],
)
def test_saturates_with_positive_shift(rounding, expected):
    acc = np.array([INT32_MAX, INT32_MIN, 2**20, -(2**20) - 1], dtype=np.int32)
    got = multiply_by_quantized_multiplier(acc, 2**30, 12, rounding)  # M = 2**11
    assert got.tolist() == expected


def test_zero_multiplier_gives_zero():
    acc = np.array([INT32_MIN, -1, 0, 1, INT32_MAX], dtype=np.int32)
    for rounding in ROUNDINGS:
        assert multiply_by_quantized_multiplier(acc, 0, 0, rounding).tolist() == [0] * 5


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"rounding": "nearest"}, r"rounding must be one of \('double', 'single', 'tonearest'\)"),
        ({"rounding": None}, "rounding must be one of"),
        ({"acc": 2**31}, r"acc contains 2147483648; allowed: integers in \[-2147483648"),
        ({"acc": [0, -(2**31) - 1]}, r"acc contains -2147483649 at index \(1,\)"),
        ({"acc": 1.5}, "acc must have an integer dtype"),
        ({"multiplier": -1}, r"multiplier contains -1; allowed: integers in \[0, 2147483647\]"),
        ({"multiplier": 2**31}, "multiplier contains 2147483648"),
        ({"shift": 31}, r"shift contains 31; allowed: integers in \[-31, 30\]"),
        ({"shift": -32}, "shift contains -32"),
        ({"acc": [1, 2, 3], "multiplier": [2**30, 2**30]}, "shapes do not broadcast"),
    ],
)
def test_multiply_by_quantized_multiplier_rejects_bad_input(kwargs, match):
    args = {"acc": 7, "multiplier": 2**30, "shift": 0, "rounding": "double"} | kwargs
    with pytest.raises(ValueError, match=match):
        multiply_by_quantized_multiplier(**args)


# ---------------------------------------------------------------------------------------------
# Primitives
# ---------------------------------------------------------------------------------------------


@settings(max_examples=500, deadline=None)
@given(a=ACC, b=ACC)
@example(a=INT32_MIN, b=INT32_MIN)  # the one overflow: saturates to INT32_MAX
@example(a=INT32_MIN, b=INT32_MAX)
@example(a=INT32_MAX, b=INT32_MAX)
@example(a=2**30, b=1)  # 0.5 -> 1
@example(a=-(2**30), b=1)  # -0.5 -> 0 (half up)
@example(a=-3 * 2**29, b=2)  # -1.5 -> -1
@example(a=0, b=INT32_MIN)
def test_saturating_rounding_doubling_high_mul(a, b):
    got = saturating_rounding_doubling_high_mul(np.int32(a), np.int32(b))
    assert got.dtype == np.int32
    assert int(got) == ref_srdhm(a, b)


def test_saturating_rounding_doubling_high_mul_saturates():
    assert int(saturating_rounding_doubling_high_mul(INT32_MIN, INT32_MIN)) == INT32_MAX


@settings(max_examples=500, deadline=None)
@given(x=ACC, e=st.integers(0, 31))
@example(x=INT32_MIN, e=31)  # -1 exactly
@example(x=INT32_MAX, e=31)  # 0.99.. -> 1
@example(x=-(2**30), e=31)  # -0.5 -> -1
@example(x=2**30, e=31)  # 0.5 -> 1
@example(x=-(2**30) + 1, e=31)  # just above -0.5 -> 0
@example(x=-3, e=1)
@example(x=3, e=1)
@example(x=INT32_MIN, e=0)
def test_rounding_divide_by_pot(x, e):
    got = rounding_divide_by_pot(np.int32(x), e)
    assert got.dtype == np.int32
    assert int(got) == ref_rdbpot(x, e)


def test_primitives_reject_bad_input():
    with pytest.raises(ValueError, match=r"exponent contains 32; allowed: integers in \[0, 31\]"):
        rounding_divide_by_pot(1, 32)
    with pytest.raises(ValueError, match="x contains 2147483648"):
        rounding_divide_by_pot(2**31, 1)
    with pytest.raises(ValueError, match="b contains -2147483649"):
        saturating_rounding_doubling_high_mul(1, -(2**31) - 1)


# ---------------------------------------------------------------------------------------------
# quantize_multiplier
# ---------------------------------------------------------------------------------------------


@settings(max_examples=600, deadline=None)
@given(m=st.floats(min_value=2.0**-40, max_value=2.0**29))
@example(m=2.0**-32)  # smallest non-negligible power of two: (2**30, -31)
@example(m=2.0**-33)  # negligible: (0, 0)
@example(m=(2**31 - 0.25) / 2**31 * 2.0**-32)  # rounds up into range: (2**30, -31)
@example(m=(2**31 - 0.25) / 2**31 * 2.0**-3)  # the 2**31 boundary: (2**30, -2)
@example(m=(2**30 + 0.5) / 2**31 * 2.0**-5)  # tie: half away from zero gives 2**30 + 1
@example(m=0.5)
@example(m=1.0)
@example(m=2.0**29)
def test_quantize_multiplier(m):
    multiplier, shift = quantize_multiplier(m)
    assert multiplier.dtype == np.int32 and shift.dtype == np.int32
    assert multiplier.shape == () and shift.shape == ()
    q, s = int(multiplier), int(shift)
    assert (q, s) == ref_quantize_multiplier(m)
    if q == 0:
        assert s == 0 and m < 2.0**-32
    else:
        assert 2**30 <= q <= INT32_MAX and -31 <= s <= 30
        error = abs(Fraction(q) * Fraction(2) ** (s - 31) - Fraction(m))
        assert error <= Fraction(m) * Fraction(1, 2**31)


@pytest.mark.parametrize(
    "m, expected",
    [
        (0.0, (0, 0)),
        (1e-300, (0, 0)),
        (0.5, (2**30, 0)),
        (0.25, (2**30, -1)),
        (0.375, (3 * 2**29, -1)),
        (1.0, (2**30, 1)),
        (2.0**-32, (2**30, -31)),
        ((2**31 - 0.25) / 2**31 * 2.0**-3, (2**30, -2)),  # rounds up to 2**31: shift + 1
        ((2**31 - 0.75) / 2**31 * 2.0**-3, (2**31 - 1, -3)),
        ((2**30 + 0.5) / 2**31 * 2.0**-5, (2**30 + 1, -5)),  # tie: away from zero (std::round)
        (2.0**30 - 0.5, (2**31 - 1, 30)),  # largest accepted
    ],
)
def test_quantize_multiplier_values(m, expected):
    multiplier, shift = quantize_multiplier(m)
    assert (int(multiplier), int(shift)) == expected


def test_quantize_multiplier_keeps_shape():
    m = np.array([[0.5, 0.0], [1e-3, 0.999999]])
    multiplier, shift = quantize_multiplier(m)
    assert multiplier.shape == shift.shape == (2, 2)
    assert multiplier.dtype == shift.dtype == np.int32
    for idx in np.ndindex(2, 2):
        assert (multiplier[idx], shift[idx]) == ref_quantize_multiplier(float(m[idx]))


@pytest.mark.parametrize(
    "m, match",
    [
        (-0.5, "real_multiplier contains -0.5; allowed: finite numbers >= 0"),
        (float("nan"), "real_multiplier contains nan"),
        (float("inf"), "real_multiplier contains inf"),
        ([0.5, -1.0], "real_multiplier contains -1.0"),
        (2.0**30 - 0.25, "allowed: values below 2\\*\\*30"),
        (2.0**30, "allowed: values below 2\\*\\*30"),
        ("0.5", "real_multiplier must be real numbers"),
    ],
)
def test_quantize_multiplier_rejects_bad_input(m, match):
    with pytest.raises(ValueError, match=match):
        quantize_multiplier(m)


# ---------------------------------------------------------------------------------------------
# requantize_fp32
# ---------------------------------------------------------------------------------------------

FP32_SCALE = st.one_of(
    st.floats(min_value=0.0, max_value=1.0, width=32),
    st.floats(min_value=0.0, max_value=float(np.finfo(np.float32).max), width=32),
)


@settings(max_examples=600, deadline=None)
@given(acc=ACC, scale=FP32_SCALE)
@example(acc=5, scale=0.5)
@example(acc=7, scale=0.5)
@example(acc=-5, scale=0.5)
@example(acc=2**24 + 1, scale=1.0)
@example(acc=INT32_MAX, scale=1.0)
@example(acc=INT32_MIN, scale=1.0)
@example(acc=INT32_MIN, scale=2.0)
@example(acc=INT32_MAX, scale=3.4e38)
@example(acc=0, scale=3.4e38)
def test_requantize_fp32_matches_reference(acc, scale):
    got = requantize_fp32(np.int32(acc), np.float32(scale))
    assert got.dtype == np.int32
    assert int(got) == ref_fp32(acc, scale)


@pytest.mark.parametrize(
    "acc, scale, expected",
    [
        (5, 0.5, 2),  # 2.5 -> 2 (half to even)
        (7, 0.5, 4),  # 3.5 -> 4
        (-5, 0.5, -2),  # -2.5 -> -2
        (-7, 0.5, -4),
        (3, 0.5, 2),  # 1.5 -> 2
        (2**24 + 1, 1.0, 2**24),  # int -> float32 rounds to nearest even
        (2**24 + 3, 1.0, 2**24 + 4),
        (INT32_MAX, 1.0, 2**31 - 128),  # float32(INT32_MAX) == 2**31, clipped
        (INT32_MAX, 0.5, 2**30),
        (INT32_MIN, 1.0, INT32_MIN),
        (INT32_MIN, 4.0, INT32_MIN),
        (INT32_MAX, 3e38, 2**31 - 128),  # overflow to +inf, clipped
        (-1, 3e38, INT32_MIN),
        (123, 0.0, 0),
    ],
)
def test_requantize_fp32_values(acc, scale, expected):
    assert int(requantize_fp32(acc, scale)) == expected


def test_requantize_fp32_vectorized():
    rng = np.random.default_rng(7)
    acc = rng.integers(INT32_MIN, INT32_MAX, 3000, endpoint=True).astype(np.int32)
    acc[:1000] //= 2**16
    scale = (10.0 ** rng.uniform(-9, 1, 3000)).astype(np.float32)
    got = requantize_fp32(acc, scale)
    expected = [ref_fp32(int(a), float(s)) for a, s in zip(acc, scale)]
    np.testing.assert_array_equal(got, np.array(expected, dtype=np.int64))


@pytest.mark.parametrize(
    "scale, match",
    [
        (float("nan"), "scale contains nan"),
        (-0.5, "scale contains -0.5"),
        (1e39, "scale contains inf \\(after the float32 cast\\)"),
    ],
)
def test_requantize_fp32_rejects_bad_scale(scale, match):
    with pytest.raises(ValueError, match=match):
        requantize_fp32(3, scale)


# ---------------------------------------------------------------------------------------------
# Requant and requantize
# ---------------------------------------------------------------------------------------------

KINDS_AND_ROUNDINGS = [("fp32", None)] + [("mult_shift", r) for r in ROUNDINGS]


def test_requant_from_scale_mult_shift():
    rq = Requant.from_scale(np.array([0.375, 1e-3]), "mult_shift", "single")
    multiplier, shift = quantize_multiplier(np.array([0.375, 1e-3]))
    assert rq.kind == "mult_shift" and rq.rounding == "single" and rq.scale is None
    np.testing.assert_array_equal(rq.multiplier, multiplier)
    np.testing.assert_array_equal(rq.shift, shift)
    assert rq.multiplier.dtype == rq.shift.dtype == np.int32


def test_requant_from_scale_fp32():
    rq = Requant.from_scale(0.1, "fp32")
    assert rq.kind == "fp32" and rq.rounding is None and rq.multiplier is None
    assert rq.scale.dtype == np.float32 and rq.scale == np.float32(0.1)


def test_requant_is_an_immutable_value():
    rq = Requant.from_scale([0.5, 0.25], "mult_shift", "double")
    same = Requant("mult_shift", "double", [2**30, 2**30], [0, -1])
    assert rq == same and hash(rq) == hash(same)
    assert rq != Requant.from_scale([0.5, 0.25], "mult_shift", "single")
    assert rq != Requant.from_scale([0.5, 0.25], "fp32")
    with pytest.raises(dataclasses.FrozenInstanceError):
        rq.kind = "fp32"
    with pytest.raises(ValueError):
        rq.multiplier[0] = 1


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        (("mult", "double"), {}, r"kind must be one of \('mult_shift', 'fp32'\)"),
        (("mult_shift",), {}, "rounding must be one of"),
        (("mult_shift", "nearest"), {}, "rounding must be one of"),
        (("fp32", "double"), {}, "kind='fp32' takes rounding=None"),
    ],
)
def test_requant_from_scale_rejects_bad_input(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        Requant.from_scale(0.5, *args, **kwargs)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"kind": "mult_shift", "rounding": "double"}, "needs multiplier and shift"),
        (
            {"kind": "mult_shift", "rounding": "double", "multiplier": 2**30, "shift": [0, 1]},
            "shift must have the shape of multiplier",
        ),
        (
            {"kind": "mult_shift", "rounding": "double", "multiplier": [[2**30]], "shift": [[0]]},
            r"multiplier must have shape \(\) \(per-tensor\) or \(C,\)",
        ),
        (
            {"kind": "mult_shift", "rounding": "double", "multiplier": 2**30, "shift": 40},
            "shift contains 40",
        ),
        ({"kind": "fp32"}, "kind='fp32' needs scale"),
        ({"kind": "fp32", "scale": -1.0}, "scale contains -1.0"),
        ({"kind": "fp32", "scale": 0.5, "multiplier": 2**30}, "kind='fp32' needs scale"),
    ],
)
def test_requant_rejects_bad_fields(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Requant(**kwargs)


@pytest.mark.parametrize("kind, rounding", KINDS_AND_ROUNDINGS)
@pytest.mark.parametrize("axis", [1, -2])
def test_requant_apply_per_channel(kind, rounding, axis):
    rng = np.random.default_rng(3)
    acc = rng.integers(-(2**20), 2**20, (2, 3, 4)).astype(np.int32)
    real_scale = np.array([0.0037, 0.5, 1.9e-5])
    per_channel = Requant.from_scale(real_scale, kind, rounding)
    got = per_channel.apply(acc, axis=axis)
    assert got.dtype == np.int32 and got.shape == acc.shape
    for c in range(3):
        per_tensor = Requant.from_scale(real_scale[c], kind, rounding)
        np.testing.assert_array_equal(got[:, c, :], per_tensor.apply(acc[:, c, :]))


def test_requant_apply_matches_reference():
    acc = np.array([INT32_MIN, -7, -6, -5, 0, 5, 6, 7, INT32_MAX], dtype=np.int32)
    for rounding in ROUNDINGS:
        rq = Requant.from_scale(0.25, "mult_shift", rounding)
        expected = [REFERENCE[rounding](int(a), 2**30, -1) for a in acc]
        assert rq.apply(acc).tolist() == expected
    rq = Requant.from_scale(0.25, "fp32")
    assert rq.apply(acc).tolist() == [ref_fp32(int(a), 0.25) for a in acc]


def test_requant_apply_rejects_bad_axis():
    rq = Requant.from_scale([0.5, 0.25, 0.125], "fp32")
    acc = np.zeros((2, 3), dtype=np.int32)
    with pytest.raises(ValueError, match=r"per-channel .* so an axis of acc is required"):
        rq.apply(acc)
    with pytest.raises(ValueError, match="scale has 3 channels but acc has 2 entries along axis 0"):
        rq.apply(acc, axis=0)
    with pytest.raises(ValueError, match=r"axis=2 is not a valid axis of acc"):
        rq.apply(acc, axis=2)


@pytest.mark.parametrize("kind, rounding", KINDS_AND_ROUNDINGS)
def test_requantize_adds_zero_point_and_clamps(kind, rounding):
    rq = Requant.from_scale(0.5, kind, rounding)
    acc = np.array([-1000, -300, -2, 0, 2, 100, 300, 1000], dtype=np.int32)
    got = requantize(acc, rq, zero_point=10, qmin=-128, qmax=127)
    expected = np.clip(rq.apply(acc).astype(np.int64) + 10, -128, 127)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, expected)
    assert got.tolist() == [-128, -128, 9, 10, 11, 60, 127, 127]


def test_requantize_zero_point_addition_does_not_wrap():
    rq = Requant.from_scale(1 - 2.0**-20, "mult_shift", "double")
    acc = np.array([INT32_MAX, INT32_MIN], dtype=np.int32)
    high, low = rq.apply(acc).tolist()
    assert (high, low) == (INT32_MAX - 2**11, INT32_MIN + 2**11)
    assert requantize(acc, rq, zero_point=100, qmin=-128, qmax=127).tolist() == [127, -128]
    assert requantize(acc, rq, zero_point=-100, qmin=0, qmax=255).tolist() == [255, 0]
    got = requantize(acc, rq, zero_point=INT32_MAX, qmin=INT32_MIN, qmax=INT32_MAX)
    assert got.tolist() == [INT32_MAX, low + INT32_MAX]


def test_requantize_per_channel_zero_point():
    rq = Requant.from_scale([0.5, 0.25], "mult_shift", "tonearest")
    acc = np.array([[4, 4], [-4, -4], [1000, 1000]], dtype=np.int32)
    got = requantize(acc, rq, zero_point=np.array([1, -1]), qmin=-128, qmax=127, axis=1)
    assert got.tolist() == [[3, 0], [-1, -2], [127, 127]]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"qmin": 5, "qmax": 4}, "qmin must be <= qmax, got qmin=5, qmax=4"),
        ({"qmin": -(2**31) - 1}, r"qmin=-2147483649 is out of range"),
        ({"qmax": 1.5}, "qmax must be an integer"),
        ({"zero_point": 2**31}, "zero_point contains 2147483648"),
        ({"zero_point": [1, 2, 3]}, r"zero_point is per-channel .* so an axis of acc is required"),
        ({"rq": 0.5}, "rq must be a Requant, got float"),
    ],
)
def test_requantize_rejects_bad_input(kwargs, match):
    args = {
        "acc": np.zeros(3, dtype=np.int32),
        "rq": Requant.from_scale(0.5, "fp32"),
        "zero_point": 0,
        "qmin": -128,
        "qmax": 127,
    } | kwargs
    acc, rq = args.pop("acc"), args.pop("rq")
    with pytest.raises(ValueError, match=match):
        requantize(acc, rq, **args)


def test_requant_kinds_and_roundings_are_public():
    assert REQUANT_KINDS == ("mult_shift", "fp32")
    assert ROUNDINGS == ("double", "single", "tonearest")


def test_docstring_examples():
    result = doctest.testmod(tvmq.numerics.requant, extraglobs={"np": np}, raise_on_error=False)
    assert result.attempted > 0 and result.failed == 0
