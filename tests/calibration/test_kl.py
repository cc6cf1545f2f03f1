"""The vectorized KL threshold search against a per-candidate loop written from the paper."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tvmq.calibration.kl import EPS, entropy_threshold_bins, kl_divergences


def reference_kl(counts, levels):
    """Migacz 2017, slide 'Entropy Calibration - pseudo code', one candidate at a time."""
    hist = np.asarray(counts, dtype=np.float64)
    divergences = []
    for i in range(levels, hist.size + 1):
        p = hist[:i].copy()
        p[i - 1] += hist[i:].sum()  # outliers clipped into the last kept bin
        group = i // levels
        q = np.zeros(i)
        for g in range(levels):
            start, stop = g * group, (i if g == levels - 1 else (g + 1) * group)
            nonzero = p[start:stop] > 0
            if nonzero.any():  # spread the group's count over its nonzero bins
                q[start:stop][nonzero] = hist[start:stop].sum() / nonzero.sum()
        p /= p.sum()
        if q.sum() > 0:
            q /= q.sum()
        support = p > 0
        q_support = np.where(q[support] > 0, q[support], EPS)
        divergences.append(np.sum(p[support] * np.log(p[support] / q_support)))
    return np.array(divergences)


histograms = hnp.arrays(
    np.int64,
    st.integers(2, 70),
    elements=st.one_of(st.just(0), st.integers(0, 1000)),
).filter(lambda h: h.sum() > 0)


@settings(max_examples=150, deadline=None)
@given(counts=histograms, levels=st.integers(1, 8))
def test_matches_per_candidate_loop(counts, levels):
    if counts.size < levels:
        return
    candidates, divergences = kl_divergences(counts, levels)
    np.testing.assert_array_equal(candidates, np.arange(levels, counts.size + 1))
    np.testing.assert_allclose(divergences, reference_kl(counts, levels), rtol=1e-9, atol=1e-12)


def test_clipping_everything_into_one_occupied_bin_is_not_free():
    # Data away from 0 (bins 40..59). Keeping [0, 41) holds one occupied bin, so P and Q are the
    # same point mass and KL(P || Q) = 0 although 99.5% of the values are clipped; the clipped
    # fraction's -log(1 - f) = log(210) must rule that candidate out.
    counts = np.zeros(64, dtype=np.int64)
    counts[40:60] = np.arange(1, 21)
    candidates, divergences = kl_divergences(counts[:60], 8)
    assert divergences[candidates == 41] == 0.0
    assert entropy_threshold_bins(counts, 8) == 60


@pytest.mark.parametrize("levels", [128, 256])
@pytest.mark.parametrize("dist", ["normal", "laplace"])
def test_dense_8bit_search_is_unchanged_by_the_clipping_term(levels, dist):
    # TensorRT's setting: 2048 bins, 8-bit levels, dense data from 0 with a thin tail. The
    # clipped fraction is ~1e-5 where the KL curve has its minimum, so the threshold is TensorRT's
    # plain argmin of KL(P || Q).
    x = np.abs(getattr(np.random.default_rng(0), dist)(size=500_000))
    x[:3] = [3 * x.max(), 4 * x.max(), 5 * x.max()]  # outliers to clip
    counts, _ = np.histogram(x, bins=2048, range=(0, x.max()))
    candidates, divergences = kl_divergences(counts, levels)
    plain = candidates[np.argmin(divergences)]
    assert plain < 1024  # the outliers are clipped
    assert entropy_threshold_bins(counts, levels) == plain


def test_trailing_empty_bins_are_not_candidates():
    counts = np.zeros(64, dtype=np.int64)
    counts[:10] = 5
    assert entropy_threshold_bins(counts, 4) <= 10


def test_fewer_bins_than_levels_keeps_them_all():
    assert entropy_threshold_bins(np.array([3, 0, 2, 0, 0]), 8) == 3


def test_empty_histogram_raises():
    with pytest.raises(ValueError, match="empty"):
        entropy_threshold_bins(np.zeros(8, dtype=np.int64), 4)
