"""Gradient quantizers: tvmq.numerics.gradq against independent references (Python floats and
float32 scalars, one element at a time), and the accelerator's C unit
(targets/accel/emulator/gradq.c) against the golden model, bit for bit."""

import ctypes
import doctest
import math
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tvmq.targets.accel import gradq as accel_gradq
from tvmq.targets.accel import library

import tvmq.numerics.gradq
from tvmq.numerics import GradQuant, clip_value, fake_quantize_gradient, quantize_gradient
from tvmq.numerics.gradq import CLIPS, ROUNDINGS, step_size, uniform
from tvmq.toolchain import find_compiler

needs_cc = pytest.mark.skipif(find_compiler() is None,
                              reason="the accel emulator needs a C compiler (cc/gcc or $CC)")

AXES = [None, 0, 1, -1]
ROUNDING_BOUND = 1 + 2.0**-22  # two float32 roundings: g / step, then code * step


def _half_step_bound(g: np.ndarray, step: np.ndarray) -> np.ndarray:
    """|code * step - g| of nearest rounding: step / 2, plus the float32 rounding of g / step."""
    return step.astype(np.float64) / 2 + np.abs(g.astype(np.float64)) * 2.0**-23


def _gradients(seed: int, shape=(6, 4, 5)) -> dict[str, np.ndarray]:
    """Test tensors: Gaussian, Cauchy (heavy tails), log-uniform magnitudes over 40 decades,
    and Gaussian with one all-zero channel along every axis and a 1000x outlier."""
    rng = np.random.default_rng(seed)
    spiky = rng.normal(0, 1e-3, shape)
    spiky[1] = 0.0
    spiky[:, 2] = 0.0
    spiky[..., 3] = 0.0
    spiky[0, 0, 0] = 1.0
    signs = rng.choice([-1.0, 1.0], shape)
    return {
        "normal": rng.normal(0, 0.05, shape).astype(np.float32),
        "cauchy": (rng.standard_cauchy(shape) * 1e-4).astype(np.float32),
        "log_uniform": (signs * 10.0 ** rng.uniform(-30, 10, shape)).astype(np.float32),
        "spiky": spiky.astype(np.float32),
    }


def _channel_elements(g: np.ndarray, axis: int | None) -> list[list[float]]:
    """Each channel's elements as Python floats in C order of the channel (outer, inner)."""
    if axis is None:
        return [[float(v) for v in g.reshape(-1)]]
    a = axis % g.ndim
    return [[float(v) for v in np.take(g, c, axis=a).reshape(-1)] for c in range(g.shape[a])]


def _reference_clip(values: list[float], clip: str, k: float) -> np.float32:
    """clip_value of one channel in Python floats (sequential sums), independent of NumPy."""
    top = max(abs(v) for v in values)
    if clip == "max":
        return np.float32(top)
    if clip == "none":
        c = 0.0 if top == 0 else 2.0 ** math.ceil(math.log2(top))
        return np.float32(c)
    s1 = 0.0
    for v in values:
        s1 += v
    mean = s1 / len(values)
    s2 = 0.0
    for v in values:
        s2 += (v - mean) * (v - mean)
    return np.float32(min(abs(mean) + k * math.sqrt(s2 / len(values)), top))


def _reference_code(v: np.float32, step: np.float32, q: GradQuant, u: np.float32) -> int:
    """One code from float32 scalars and Python integer rounding."""
    x = min(max(np.float32(v) / step, np.float32(-q.qmax - 1)), np.float32(q.qmax + 1))
    if q.rounding == "rtz":
        r = int(x)  # truncates
    elif q.rounding == "nearest":
        r = round(float(x))  # half to even
    else:
        fl = np.float32(math.floor(float(x)))
        r = int(fl) + (1 if u < np.float32(x - fl) else 0)
    return min(max(r, -q.qmax), q.qmax)


# ---- GradQuant --------------------------------------------------------------------------------


def test_gradquant_defaults():
    q = GradQuant()
    assert (q.bits, q.rounding, q.clip, q.k, q.axis, q.qmax) == (8, "rtz", "zscore", 3.0, None,
                                                                  127)
    assert GradQuant(bits=16, k=2).qmax == 32767 and isinstance(GradQuant(k=2).k, float)
    assert GradQuant(bits=np.int64(4), axis=np.int32(-1)) == GradQuant(bits=4, axis=-1)


@pytest.mark.parametrize("field,value,allowed", [
    ("bits", 1, r"\[2, 16\]"), ("bits", 17, r"\[2, 16\]"), ("bits", 8.0, r"\[2, 16\]"),
    ("bits", True, r"\[2, 16\]"), ("rounding", "up", "nearest"), ("rounding", None, "rtz"),
    ("clip", "p99", "zscore"), ("k", 0.0, "> 0"), ("k", -1.0, "> 0"), ("k", math.nan, "> 0"),
    ("k", math.inf, "> 0"), ("k", "3", "> 0"), ("axis", 1.5, "int axis"),
])
def test_gradquant_rejects(field, value, allowed):
    with pytest.raises(ValueError, match=rf"GradQuant\.{field}=.*{allowed}"):
        GradQuant(**{field: value})


# ---- clip values and steps ----------------------------------------------------------------


@pytest.mark.parametrize("clip", CLIPS)
@pytest.mark.parametrize("axis", AXES)
def test_clip_value_matches_python_reference(clip, axis):
    for name, g in _gradients(1).items():
        q = GradQuant(clip=clip, axis=axis, k=2.5)
        c = clip_value(g, q)
        want = [_reference_clip(vals, clip, q.k) for vals in _channel_elements(g, axis)]
        assert c.dtype == np.float32 and c.shape == (
            (1, 1, 1) if axis is None else tuple(n if i == axis % 3 else 1
                                                 for i, n in enumerate(g.shape)))
        np.testing.assert_array_equal(c.reshape(-1), np.array(want, np.float32), err_msg=name)


def test_zscore_sums_sequentially_over_a_long_channel():
    g = (np.random.default_rng(2).standard_t(2, 5000) * 1e-3).astype(np.float32)
    g[::7] *= 1e4  # a wide dynamic range, so the summation order shows in float64
    got = clip_value(g, GradQuant(clip="zscore", k=0.5))
    assert got[0] == _reference_clip([float(v) for v in g], "zscore", 0.5)


@pytest.mark.parametrize("axis", AXES)
def test_zscore_clip_bounds_and_saturation(axis):
    for name, g in _gradients(3).items():
        for rounding in ROUNDINGS:
            q = GradQuant(bits=6, rounding=rounding, clip="zscore", axis=axis)
            c = clip_value(g, q)
            g64 = g.astype(np.float64)
            keep = tuple(i for i in range(g.ndim) if axis is None or i != axis % g.ndim)
            mean = np.mean(g64, axis=keep, keepdims=True)
            assert np.all(c <= np.max(np.abs(g), axis=keep, keepdims=True)), name
            assert np.all(c >= np.abs(mean).astype(np.float32)), name
            codes, _ = quantize_gradient(g, q, seed=1)
            assert codes.dtype == np.int16 and np.all(np.abs(codes) <= q.qmax)
            beyond = np.abs(g) > c * (1 + 2.0**-10)
            np.testing.assert_array_equal(codes[beyond], np.sign(g[beyond]) * q.qmax,
                                          err_msg=f"{name} {rounding}")


def test_zscore_clips_an_outlier_and_equals_max_for_large_k():
    g = np.random.default_rng(4).normal(0, 1e-2, 4096).astype(np.float32)
    g[17] = 5.0
    c = clip_value(g, GradQuant(clip="zscore"))
    g64 = g.astype(np.float64)
    assert c[0] == pytest.approx(abs(g64.mean()) + 3 * g64.std(), rel=1e-6)
    assert c[0] < 0.3  # the outlier inflates std, yet c stays far below it
    codes, _ = quantize_gradient(g, GradQuant(clip="zscore", rounding="nearest"))
    assert codes[17] == 127
    big_k = GradQuant(clip="zscore", k=1e9, rounding="nearest", axis=0)
    as_max = GradQuant(clip="max", rounding="nearest", axis=0)
    for a, b in zip(quantize_gradient(g, big_k), quantize_gradient(g, as_max), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("axis", AXES)
def test_none_clip_is_a_power_of_two_and_clips_nothing(axis):
    for name, g in _gradients(5).items():
        q = GradQuant(bits=5, rounding="nearest", clip="none", axis=axis)
        keep = tuple(i for i in range(g.ndim) if axis is None or i != axis % g.ndim)
        top = np.max(np.abs(g), axis=keep, keepdims=True)
        c = clip_value(g, q)
        nonzero = top > 0
        mant, _ = np.frexp(c[nonzero])
        assert np.all(mant == 0.5) and np.all(c >= top) and np.all(c[nonzero] / 2 < top[nonzero])
        codes, step = quantize_gradient(g, q)
        np.testing.assert_array_equal(step, step_size(c, q))
        err = np.abs(codes * step.astype(np.float64) - g)
        assert np.all(err <= _half_step_bound(g, step)), name  # no element is clipped
    assert clip_value(np.float32([4.0, -1.0]), GradQuant(clip="none"))[0] == 4.0
    assert clip_value(np.float32([4.5, -1.0]), GradQuant(clip="none"))[0] == 8.0


def test_none_clip_refuses_a_range_beyond_float32():
    g = np.float32([3e38, 1.0])
    with pytest.raises(ValueError, match="2\\*\\*128"):
        quantize_gradient(g, GradQuant(clip="none"))
    assert clip_value(np.float32([2.0**127]), GradQuant(clip="none"))[0] == 2.0**127


def test_step_of_an_all_zero_channel_is_one():
    g = np.zeros((3, 4), np.float32)
    g[0] = [1.0, -2.0, 0.5, 0.0]
    for clip in CLIPS:
        codes, step = quantize_gradient(g, GradQuant(clip=clip, axis=0))
        np.testing.assert_array_equal(step[1:], np.ones((2, 1), np.float32))
        assert not codes[1:].any()
    np.testing.assert_array_equal(step_size(np.float32([0.0, 1e-45, 127.0]), GradQuant()),
                                  np.float32([1.0, 1.0, 1.0]))


# ---- rounding ---------------------------------------------------------------------------------


@pytest.mark.parametrize("rounding", ROUNDINGS)
@pytest.mark.parametrize("clip", CLIPS)
@pytest.mark.parametrize("axis", [None, 1])
def test_quantize_matches_scalar_reference(rounding, clip, axis):
    seed, offset = 11, 2**32 - 40  # the counters wrap inside the tensor
    for name, g in _gradients(6, shape=(4, 3, 5)).items():
        q = GradQuant(bits=4, rounding=rounding, clip=clip, axis=axis)
        codes, step = quantize_gradient(g, q, seed=seed, offset=offset)
        steps = np.broadcast_to(step, g.shape).reshape(-1)
        u = uniform(seed, offset, g.size)
        want = [_reference_code(v, s, q, ui) for v, s, ui in zip(g.reshape(-1), steps, u,
                                                                strict=True)]
        np.testing.assert_array_equal(codes.reshape(-1), want, err_msg=name)
        fake = fake_quantize_gradient(g, q, seed=seed, offset=offset)
        np.testing.assert_array_equal(fake, codes.astype(np.float32) * step)


@pytest.mark.parametrize("clip", CLIPS)
@pytest.mark.parametrize("axis", AXES)
def test_rtz_never_increases_magnitude(clip, axis):
    for bits in (2, 8, 16):
        for name, g in _gradients(7).items():
            q = GradQuant(bits=bits, rounding="rtz", clip=clip, axis=axis)
            codes, step = quantize_gradient(g, q)
            x = g / step  # the float32 quotient the codes truncate
            assert np.all(np.abs(codes) <= np.abs(x)), name
            fake = np.abs(fake_quantize_gradient(g, q).astype(np.float64))
            assert np.all(fake <= np.abs(g.astype(np.float64)) * ROUNDING_BOUND), name


@settings(max_examples=200, deadline=None)
@given(values=st.lists(st.floats(-(2.0**100), 2.0**100, width=32), min_size=1, max_size=40),
       bits=st.integers(2, 16), clip=st.sampled_from(CLIPS))
def test_rtz_never_increases_magnitude_hypothesis(values, bits, clip):
    g = np.array(values, np.float32)
    fake = fake_quantize_gradient(g, GradQuant(bits=bits, rounding="rtz", clip=clip))
    assert np.all(np.abs(fake.astype(np.float64)) <= np.abs(g.astype(np.float64)) *
                  ROUNDING_BOUND)
    assert np.all(np.sign(fake) * np.sign(g) >= 0)


@pytest.mark.parametrize("clip", ["none", "max"])
@pytest.mark.parametrize("axis", AXES)
def test_nearest_error_at_most_half_a_step(clip, axis):
    for name, g in _gradients(8).items():
        q = GradQuant(bits=4, rounding="nearest", clip=clip, axis=axis)
        codes, step = quantize_gradient(g, q)
        err = np.abs(codes * step.astype(np.float64) - g)
        assert np.all(err <= _half_step_bound(g, step)), name


def test_nearest_ties_round_to_even():
    # clip max = 7 * 2**-3 with bits 4 makes the step exactly 2**-3: x = 2 * v is a half integer
    half_steps = np.arange(-14, 15)
    g = np.append(half_steps / 2 * 2.0**-3, 7 * 2.0**-3).astype(np.float32)
    codes, step = quantize_gradient(g, GradQuant(bits=4, rounding="nearest", clip="max"))
    assert step[0] == 2.0**-3
    np.testing.assert_array_equal(codes[:-1], [round(h / 2) for h in half_steps])
    np.testing.assert_array_equal(codes[[0, 1, 15, 16, 17]], [-7, -6, 0, 1, 2])


def test_per_channel_steps_differ_along_the_axis():
    rng = np.random.default_rng(9)
    scales = np.array([1e-3, 1.0, 50.0], np.float32)
    g = (rng.normal(0, 1, (4, 3, 6)) * scales[None, :, None]).astype(np.float32)
    for clip in CLIPS:
        q = GradQuant(bits=8, rounding="nearest", clip=clip, axis=1)
        codes, step = quantize_gradient(g, q)
        assert step.shape == (1, 3, 1) and len(set(step.reshape(-1).tolist())) == 3
        for c in range(3):
            one = GradQuant(bits=8, rounding="nearest", clip=clip)
            codes_c, step_c = quantize_gradient(g[:, c], one)
            assert step_c.reshape(()) == step[0, c, 0]
            np.testing.assert_array_equal(codes_c, codes[:, c])
        assert quantize_gradient(g, GradQuant(axis=-2))[1].shape == (1, 3, 1)


def test_stochastic_is_unbiased():
    draws, n = 4000, 60
    rng = np.random.default_rng(10)
    g = rng.normal(0, 1, n).astype(np.float32)
    g[0] = 4.0  # the clip value of every draw
    q = GradQuant(bits=4, rounding="stochastic", clip="max")
    step = float(quantize_gradient(g, q)[1][0])
    # one call over `draws` copies: copy d uses counters d*n .. d*n + n-1 (different offsets)
    fake = fake_quantize_gradient(np.tile(g, (draws, 1)), q, seed=123)
    mean = fake.astype(np.float64).mean(axis=0)
    tol = 5 * step * 0.5 / math.sqrt(draws) + 1e-6  # 5 sigma of a Bernoulli mean
    np.testing.assert_array_less(np.abs(mean - g), tol)
    assert len(np.unique(fake[:, 1])) == 2  # it does round both ways
    per_seed = [fake_quantize_gradient(g, q, seed=s) for s in range(draws)]
    np.testing.assert_array_less(np.abs(np.mean(per_seed, axis=0) - g), tol)


def test_stochastic_is_deterministic_per_seed_and_counter():
    g = np.random.default_rng(11).normal(0, 1, (8, 9)).astype(np.float32)
    q = GradQuant(bits=3, rounding="stochastic", clip="max")
    a = quantize_gradient(g, q, seed=5, offset=9)[0]
    np.testing.assert_array_equal(a, quantize_gradient(g, q, seed=5, offset=9)[0])
    assert not np.array_equal(a, quantize_gradient(g, q, seed=6, offset=9)[0])
    assert not np.array_equal(a, quantize_gradient(g, q, seed=5, offset=10)[0])
    np.testing.assert_array_equal(a, quantize_gradient(g, q, seed=5 - 2**32, offset=9 + 2**32)[0])
    # element i uses counter offset + i: dropping the first row shifts the offset by 9
    g[1, 0] = np.abs(g).max() * 1.5  # the max stays in the rows kept
    a = quantize_gradient(g, q, seed=5, offset=9)[0]
    np.testing.assert_array_equal(a[1:], quantize_gradient(g[1:], q, seed=5, offset=18)[0])


# ---- the uniform draws ------------------------------------------------------------------------


def _lowbias32(x: int) -> int:
    x ^= x >> 16
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    return x ^ (x >> 16)


def test_uniform_matches_python_reference_and_pinned_values():
    seed, offset = 2024, 2**32 - 500  # the counter wraps
    u = uniform(seed, offset, 1000)
    key = _lowbias32(seed ^ 0x9E3779B9)
    want = [(_lowbias32(((offset + i) % 2**32) ^ key) >> 8) / 2**24 for i in range(1000)]
    np.testing.assert_array_equal(u, np.array(want, np.float32))
    # pinned: a change of the generator changes every stochastic rounding
    np.testing.assert_array_equal(uniform(0, 0, 4) * 2**24, [11431808, 10517626, 948174, 8264657])
    np.testing.assert_array_equal(uniform(12345, 7, 3) * 2**24, [16353784, 8915508, 16036097])
    np.testing.assert_array_equal(uniform(-1, -2, 3) * 2**24, [7103146, 9416076, 12347192])


def test_uniform_range_and_moments():
    n = 200_000
    u32 = uniform(7, 0, n)
    u = u32.astype(np.float64)
    assert u32.dtype == np.float32 and np.all((u >= 0) & (u < 1))
    assert abs(u.mean() - 0.5) < 5 * math.sqrt(1 / 12 / n)
    assert abs(u.var() - 1 / 12) < 0.002
    assert np.all(u * 2**24 == np.floor(u * 2**24))
    assert uniform(1, 0, 0).shape == (0,)


# ---- errors -----------------------------------------------------------------------------------


QUANTIZERS = [quantize_gradient,
              pytest.param(accel_gradq.quantize_gradient, marks=needs_cc, id="accel")]


@pytest.mark.parametrize("quantize", QUANTIZERS)
@pytest.mark.parametrize("g,axis,match", [
    (np.float32([1.0, np.nan]), None, "nan"),
    (np.float32([[1.0], [-np.inf]]), 0, "inf"),
    (np.float64([1e39, 0.0]), None, "after the float32 cast"),
    (np.zeros((2, 3)), 2, "axis=2"),
    (np.zeros((2, 3)), -3, "axis=-3"),
    (np.float32(1.0), 0, "axis=0"),
    (np.zeros((0, 3)), None, "at least one element"),
    (np.array(["a"]), None, "real numbers"),
])
def test_bad_gradients_raise(quantize, g, axis, match):
    with pytest.raises(ValueError, match=match):
        quantize(g, GradQuant(axis=axis))


@pytest.mark.parametrize("quantize", QUANTIZERS)
def test_bad_seed_offset_and_quantizer_raise(quantize):
    with pytest.raises(ValueError, match=r"seed=1\.5"):
        quantize(np.ones(3), GradQuant(), seed=1.5)
    with pytest.raises(ValueError, match="offset=True"):
        quantize(np.ones(3), GradQuant(), offset=True)
    with pytest.raises(TypeError, match="GradQuant"):
        quantize(np.ones(3), "rtz")


def test_scalar_gradient_per_tensor():
    q = GradQuant(clip="max", bits=4, rounding="nearest")
    codes, step = quantize_gradient(np.float32(-0.25), q)
    assert codes.shape == () and step.shape == () and codes == -7
    # rtz: step = float32(0.25 / 7) rounds up, so x = -6.9999995 truncates to -6
    assert quantize_gradient(np.float32(-0.25), GradQuant(clip="max", bits=4))[0] == -6


@pytest.mark.parametrize("module", [tvmq.numerics.gradq,
                                    pytest.param(accel_gradq, marks=needs_cc, id="accel")])
def test_doctests(module):
    result = doctest.testmod(module, extraglobs={"np": np}, raise_on_error=False)
    assert result.failed == 0


# ---- the C unit against the golden model --------------------------------------------------


LAYOUTS = [((5, 3, 7, 2), None), ((5, 3, 7, 2), 0), ((5, 3, 7, 2), 1), ((5, 3, 7, 2), -1),
           ((1,), None), ((1,), 0), ((1,), -1), ((13,), None), ((13,), 0), ((13,), -1)]


def _matrix_data(shape, axis, bits, seed) -> dict[str, np.ndarray]:
    """Heavy-tailed values; half-step grid values whose clip max makes the step exactly 2**-3,
    so nearest meets exact ties; all zeros. Channel 1 (when there is one) is all zero."""
    rng = np.random.default_rng(seed)
    qmax = 2 ** (bits - 1) - 1
    heavy = rng.standard_t(2, shape) * 10.0 ** rng.integers(-6, 3)
    grid = rng.integers(-2 * qmax, 2 * qmax + 1, shape) / 2 * 2.0**-3
    out = {}
    for name, g in (("heavy", heavy), ("grid", grid)):
        a = None if axis is None else axis % len(shape)
        lead = int(np.prod(shape[:a])) if a is not None else 1
        g3 = g.reshape(lead, shape[a] if a is not None else 1, -1)
        if name == "grid":
            g3[0, :, 0] = qmax * 2.0**-3
        if g3.shape[1] > 1:
            g3[:, 1, :] = 0.0
        out[name] = g3.reshape(shape).astype(np.float32)
    out["zeros"] = np.zeros(shape, np.float32)
    return out


@needs_cc
@pytest.mark.parametrize("bits", [2, 4, 8, 16])
@pytest.mark.parametrize("shape,axis", LAYOUTS, ids=[f"{s}-{a}" for s, a in LAYOUTS])
@pytest.mark.parametrize("clip", CLIPS)
@pytest.mark.parametrize("rounding", ROUNDINGS)
def test_accel_matches_golden(rounding, clip, shape, axis, bits):
    q = GradQuant(bits=bits, rounding=rounding, clip=clip, axis=axis, k=2.0)
    seed = [ROUNDINGS.index(rounding), CLIPS.index(clip), LAYOUTS.index((shape, axis)), bits]
    for name, g in _matrix_data(shape, axis, bits, seed).items():
        want = quantize_gradient(g, q, seed=77, offset=2**32 - 100)
        got = accel_gradq.quantize_gradient(g, q, seed=77, offset=2**32 - 100)
        for w, r in zip(want, got, strict=True):
            assert r.dtype == w.dtype and r.shape == w.shape
            np.testing.assert_array_equal(r, w, err_msg=name)


@needs_cc
@pytest.mark.parametrize("clip", CLIPS)
@pytest.mark.parametrize("axis", AXES)
def test_accel_matches_golden_on_a_large_tensor(clip, axis):
    g = (np.random.default_rng(12).standard_t(2, (64, 33, 17)) * 1e-2).astype(np.float32)
    for rounding in ROUNDINGS:
        q = GradQuant(bits=8, rounding=rounding, clip=clip, axis=axis)
        want = quantize_gradient(g, q, seed=3)
        got = accel_gradq.quantize_gradient(g, q, seed=3)
        for w, r in zip(want, got, strict=True):
            np.testing.assert_array_equal(r, w)


@needs_cc
def test_accel_uniform_matches_golden():
    for seed, offset in ((0, 0), (12345, 2**32 - 300), (2**32 - 1, 17)):
        np.testing.assert_array_equal(accel_gradq.uniform(seed, offset, 1000),
                                      uniform(seed, offset, 1000))


@needs_cc
def test_accel_refuses_what_the_golden_refuses():
    with pytest.raises(ValueError, match="2\\*\\*128"):
        accel_gradq.quantize_gradient(np.float32([3e38]), GradQuant(clip="none"))


@needs_cc
@pytest.mark.parametrize("args,match", [
    (dict(bits=1), "bits=1"), (dict(bits=17), "bits=17"), (dict(rounding=3), "rounding=3"),
    (dict(clip=-1), "clip=-1"), (dict(k=0.0), "k=0"), (dict(k=math.nan), "k=nan"),
    (dict(channels=0), "channels=0"), (dict(g=[1.0, math.inf, 0.0]), "g\\[1\\]=inf"),
])
def test_accel_checks_its_arguments(args, match):
    """The C unit validates on its own (callers other than the Python wrapper)."""
    lib = library.load()
    call = dict(g=[1.0, -2.0, 0.5], outer=1, channels=1, inner=3, bits=8, rounding=0, clip=1,
                k=3.0)
    call.update(args)
    g = np.array(call.pop("g"), np.float32)
    codes, step = np.zeros(3, np.int16), np.zeros(3, np.float32)
    f32p, i16p = ctypes.POINTER(ctypes.c_float), ctypes.POINTER(ctypes.c_int16)
    status = lib.accel_gradq(g.ctypes.data_as(f32p), *call.values(), 0, 0,
                             codes.ctypes.data_as(i16p), step.ctypes.data_as(f32p))
    assert status != 0
    assert re.search(match, lib.accel_last_error().decode())
