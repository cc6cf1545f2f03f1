"""Calibration observers: contracts, errors, and the ranges they pick on known distributions."""

import doctest

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tvmq.calibration import (
    OBSERVERS,
    KLObserver,
    MinMaxObserver,
    MSEObserver,
    Observer,
    PercentileObserver,
    make_observer,
    observers,
)


def observe_all(obs, data, num_batches=10):
    for batch in np.array_split(data, num_batches):
        obs.observe(batch)
    return obs


def symmetric_fake_quant_mse(x, lo, hi, bits=8):
    """Mean squared error of int8 symmetric (narrow range) fake quantization over [lo, hi]."""
    qmax = 2 ** (bits - 1) - 1
    scale = max(-lo, hi) / qmax
    x_hat = np.clip(np.rint(x / scale), -qmax, qmax) * scale
    return float(np.mean((x - x_hat) ** 2))


# --- contract shared by every observer ------------------------------------------------------


@pytest.mark.parametrize("kind", OBSERVERS)
def test_range_before_observe_raises(kind):
    obs = make_observer(kind, name="conv1.out")
    with pytest.raises(RuntimeError, match=r"'conv1.out'.*observe\(\) was never called"):
        obs.range()
    obs.observe(np.zeros((0, 3)))  # empty batches do not count
    with pytest.raises(RuntimeError, match="run calibration data through the model first"):
        obs.range()


@pytest.mark.parametrize("kind", OBSERVERS)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_inf_raise_with_tensor_name(kind, bad):
    obs = make_observer(kind, name="fc2.out")
    obs.observe(np.ones(3))
    with pytest.raises(ValueError, match=r"NaN/Inf in tensor 'fc2.out' \(1 of 4 values"):
        obs.observe(np.array([0.0, bad, 1.0, 2.0]))
    assert obs.num_observed == 3  # the bad batch is not recorded


@pytest.mark.parametrize("kind", OBSERVERS)
def test_non_real_input_raises(kind):
    with pytest.raises(ValueError, match="'t' must be real numbers, got dtype complex128"):
        make_observer(kind, name="t").observe(np.ones(3, dtype=complex))


@pytest.mark.parametrize("kind", OBSERVERS)
def test_all_zeros_give_zero_range(kind):
    obs = make_observer(kind)
    obs.observe(np.zeros(10))
    assert obs.range() == (0.0, 0.0)


finite = st.floats(-1e300, 1e300, allow_nan=False, allow_infinity=False)
batches = st.lists(
    hnp.arrays(np.float64, st.integers(1, 30), elements=finite), min_size=1, max_size=4
)


@settings(max_examples=60, deadline=None)
@given(batches=batches, kind=st.sampled_from(OBSERVERS), bits=st.sampled_from([2, 4, 8]))
def test_range_is_finite_ordered_and_within_data(batches, kind, bits):
    obs = make_observer(kind, bits=bits, num_bins=1024) if kind != "minmax" else MinMaxObserver()
    for batch in batches:
        obs.observe(batch)
    data = np.concatenate(batches)
    lo, hi = obs.range()
    assert obs.num_observed == data.size
    assert np.isfinite([lo, hi]).all() and lo <= hi
    assert min(data.min(), 0.0) <= lo and hi <= max(data.max(), 0.0)
    if kind in ("minmax", "percentile"):
        assert data.min() <= lo and hi <= data.max()


def test_docstring_examples_run():
    assert doctest.testmod(observers).failed == 0


# --- minmax --------------------------------------------------------------------------------


def test_minmax_is_exact_over_batches():
    rng = np.random.default_rng(0)
    data = rng.standard_normal(10_000).astype(np.float32) * 3
    obs = MinMaxObserver()
    for batch in np.array_split(data.reshape(100, 100), 7):
        obs.observe(batch)
    assert obs.range() == (float(data.min()), float(data.max()))
    assert obs.num_observed == data.size


def test_minmax_accepts_integers():
    obs = MinMaxObserver()
    obs.observe(np.array([[3, -7], [2, 5]], dtype=np.int8))
    assert obs.range() == (-7.0, 5.0)


# --- percentile ----------------------------------------------------------------------------


@pytest.mark.parametrize("p", [99.99, 99.0, 90.0])
def test_percentile_of_gaussian_is_within_a_bin_of_numpy(p):
    rng = np.random.default_rng(1)
    data = rng.standard_normal(1_000_000)
    obs = observe_all(PercentileObserver(percentile=p), data)
    bin_width = obs._hist.bin_width
    lo, hi = obs.range()
    assert abs(lo - np.percentile(data, 100 - p)) <= bin_width
    assert abs(hi - np.percentile(data, p)) <= bin_width


def test_percentile_100_is_minmax():
    data = np.random.default_rng(2).standard_normal(1000)
    obs = observe_all(PercentileObserver(percentile=100), data)
    assert obs.range() == (data.min(), data.max())


@pytest.mark.parametrize("p", [49.9, 100.5, "99", True])
def test_percentile_out_of_range_raises(p):
    with pytest.raises(ValueError, match=r"percentile must be a number in \[50, 100\]"):
        PercentileObserver(percentile=p)


# --- KL ------------------------------------------------------------------------------------


@pytest.mark.parametrize("outliers", [[15.0, -12.0, 20.0, -18.0], [40.0, -60.0, 80.0, -100.0]])
def test_kl_clips_rare_huge_outliers(outliers):
    rng = np.random.default_rng(3)
    data = rng.standard_normal(500_000)
    data[rng.choice(data.size, len(outliers), replace=False)] = outliers
    lo, hi = observe_all(KLObserver(), data).range()
    assert 2.0 < hi < 0.5 * max(outliers) and lo == -hi  # sigma = 1


def test_kl_keeps_nearly_all_of_uniform_data():
    data = np.random.default_rng(4).uniform(-1.0, 1.0, 500_000)
    lo, hi = observe_all(KLObserver(), data).range()
    assert hi >= 0.9 * data.max() and lo <= 0.9 * data.min()


def test_kl_after_relu_starts_at_zero():
    rng = np.random.default_rng(5)
    data = np.maximum(rng.standard_normal(200_000), 0.0)
    data[:2] = [30.0, 50.0]
    lo, hi = observe_all(KLObserver(), data).range()
    assert lo == 0.0 and 2.0 < hi < 10.0


def se_gate(rng, samples, channels=8):
    """Squeeze-and-excite gates: hard-sigmoid of a pooled conv, mostly in [0.15, 0.35], not 0."""
    return np.clip(0.2 * rng.normal(-1.35, 0.2, (samples, channels)) + 0.5, 0.0, 1.0)


@pytest.mark.parametrize(
    "make",
    [
        lambda rng: se_gate(rng, 64),  # 512 post-ReLU values, none near 0 (PP-OCR relu_12)
        lambda rng: -1.3 - 0.25 * np.abs(rng.standard_normal((64, 8))),  # all negative (conv2d_9)
        lambda rng: se_gate(rng, 25_000),  # the same with 200k values: not a sample-count issue
    ],
    ids=["few-gates", "few-negative", "many-gates"],
)
def test_kl_does_not_clip_data_away_from_zero_onto_its_minimum(make):
    # Regression: the candidate keeping only the smallest |x| had KL(P || Q) = 0 (P and Q the same
    # point mass), so KL clipped ~all values onto min|x|: hi = 0.124 for gates up to 0.34.
    data = make(np.random.default_rng(9))
    obs = KLObserver()
    for sample in data:
        obs.observe(sample)
    lo, hi = obs.range()
    amax = np.abs(data).max()
    assert max(-lo, hi) >= 0.9 * amax
    assert np.mean((data < lo) | (data > hi)) < 0.01


def test_kl_runs_fast_on_full_histogram():
    import time

    obs = KLObserver()
    obs.observe(np.random.default_rng(6).laplace(size=100_000))
    start = time.perf_counter()
    obs.range()
    assert time.perf_counter() - start < 0.5


def test_kl_needs_enough_bins_for_the_levels():
    with pytest.raises(ValueError, match=r"num_bins >= 4 \* 2\*\*bits = 1024"):
        KLObserver(bits=8, num_bins=512)


# --- MSE -----------------------------------------------------------------------------------


def test_mse_on_laplace_beats_minmax():
    data = np.random.default_rng(7).laplace(size=200_000)
    lo, hi = observe_all(MSEObserver(), data).range()
    amax = np.abs(data).max()
    assert hi < 0.95 * amax and lo == -hi
    mse = symmetric_fake_quant_mse(data, lo, hi)
    minmax = symmetric_fake_quant_mse(data, data.min(), data.max())
    assert mse < 0.8 * minmax


def test_mse_after_relu_starts_at_zero():
    data = np.maximum(np.random.default_rng(8).laplace(size=100_000), 0.0)
    lo, hi = observe_all(MSEObserver(bits=4), data).range()
    assert lo == 0.0 and 0.0 < hi < data.max()


@pytest.mark.parametrize("n", [0, -1, 2.5])
def test_mse_num_candidates_must_be_positive(n):
    with pytest.raises(ValueError, match="num_candidates must be an integer >= 1"):
        MSEObserver(num_candidates=n)


# --- factory and shared arguments ----------------------------------------------------------


def test_make_observer_builds_each_kind():
    classes = [MinMaxObserver, PercentileObserver, KLObserver, MSEObserver]
    assert OBSERVERS == ("minmax", "percentile", "kl", "mse")
    for kind, cls in zip(OBSERVERS, classes, strict=True):
        obs = make_observer(kind, bits=4, name="x")
        assert type(obs) is cls and isinstance(obs, Observer)
        assert (obs.bits, obs.name) == (4, "x")
    assert make_observer("percentile", percentile=99.9).percentile == 99.9


def test_make_observer_unknown_name_lists_allowed():
    with pytest.raises(ValueError, match="unknown observer 'entropy'; allowed: 'minmax', "):
        make_observer("entropy")


@pytest.mark.parametrize("bits", [1, 17, 8.0, True])
def test_bits_out_of_range_raises(bits):
    with pytest.raises(ValueError, match=r"bits of .* tensor 'x' must be an integer in \[2, 16\]"):
        MinMaxObserver(bits=bits, name="x")
