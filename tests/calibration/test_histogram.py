"""The growing histogram behind the percentile, KL and MSE observers."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tvmq.calibration.histogram import Histogram


def test_growth_matches_histogram_built_at_final_range():
    # Final range R = 8 with 16 bins of width 1. Every value sits at a bin center, so NumPy's
    # [a, b) bins and ours, (a, b] in magnitude, agree.
    rng = np.random.default_rng(0)
    centers = np.arange(-8, 8) + 0.5
    batch_a = rng.choice([-0.5, 0.5], size=300)  # R starts at 0.5
    batch_b = rng.choice(centers[6:10], size=400)  # |x| <= 1.5: R doubles 0.5 -> 1 -> 2
    batch_c = rng.choice(centers, size=500)  # |x| <= 7.5: R doubles 2 -> 4 -> 8
    grown = Histogram(num_bins=16)
    for batch in (batch_a, batch_b, batch_c):
        grown.add(batch)
    assert grown.range == 8.0
    data = np.concatenate([batch_a, batch_b, batch_c])

    direct = Histogram(num_bins=16, initial_range=8.0)
    direct.add(data)
    np.testing.assert_array_equal(grown.signed_counts(), direct.signed_counts())

    expected, _ = np.histogram(data, bins=np.arange(-8.0, 9.0))
    np.testing.assert_array_equal(grown.signed_counts(), expected)
    assert grown.total == data.size == 1200


finite = st.floats(-1e300, 1e300, allow_nan=False, allow_infinity=False)
batches = st.lists(hnp.arrays(np.float64, st.integers(0, 40), elements=finite), max_size=5)


@settings(max_examples=200, deadline=None)
@given(batches=batches, num_bins=st.sampled_from([4, 8, 64]))
def test_growth_is_exact_for_any_data(batches, num_bins):
    grown = Histogram(num_bins=num_bins)
    for batch in batches:
        grown.add(batch)
    data = np.concatenate([np.zeros(0), *batches])
    assert grown.total == data.size
    if grown.range == 0:
        assert not np.any(data)
        return
    assert grown.range >= np.abs(data).max()
    direct = Histogram(num_bins=num_bins, initial_range=grown.range)
    direct.add(data)
    np.testing.assert_array_equal(grown.pos, direct.pos)
    np.testing.assert_array_equal(grown.neg, direct.neg)


def test_range_stays_below_twice_max():
    hist = Histogram(num_bins=64)
    hist.add(np.array([0.3]))
    hist.add(np.array([-5.0]))  # 0.3 doubles to 4.8, then 9.6
    assert hist.range == pytest.approx(9.6)
    assert 5.0 <= hist.range < 10.0


def test_zeros_before_first_nonzero_value_stay_in_bin_zero():
    hist = Histogram(num_bins=8)
    hist.add(np.zeros(5))
    assert hist.range == 0.0 and hist.total == 5
    hist.add(np.array([-2.0, 4.0]))  # R = 4, w = 1: -2.0 lands in [-2, -1)
    np.testing.assert_array_equal(hist.signed_counts(), [0, 0, 1, 0, 5, 0, 0, 1])


def test_integer_input_does_not_wrap():
    hist = Histogram(num_bins=8)
    hist.add(np.array([-128, 64], dtype=np.int8))
    assert hist.range == 128.0
    np.testing.assert_array_equal(hist.signed_counts(), [1, 0, 0, 0, 0, 1, 0, 0])


def test_magnitude_counts_fold_both_signs():
    hist = Histogram(num_bins=8)
    hist.add(np.array([-3.9, -0.5, 0.0, 0.5, 3.9, 4.0]))
    np.testing.assert_array_equal(hist.magnitude_counts(), [3, 0, 0, 3])


def test_quantile_interpolates_within_a_bin():
    hist = Histogram(num_bins=4, initial_range=2.0)  # bins [-2,-1) [-1,0) [0,1] (1,2]
    hist.add(np.array([0.1, 0.2, 0.3, 0.4]))
    # rank q*(N-1) + 0.5 of 4 samples spread evenly over [0, 1]
    assert hist.quantile(0.0) == pytest.approx(0.125)
    assert hist.quantile(1.0) == pytest.approx(0.875)
    assert hist.quantile(0.5) == pytest.approx(0.5)


@pytest.mark.parametrize("num_bins", [0, 3, 6, 100, 8.0, True])
def test_num_bins_must_be_a_power_of_two(num_bins):
    with pytest.raises(ValueError, match="num_bins must be a power of two"):
        Histogram(num_bins=num_bins)
