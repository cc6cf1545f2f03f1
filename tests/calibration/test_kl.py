"""The vectorized KL threshold search against a per-candidate loop written from the paper."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tvmq.calibration._kl import EPS, entropy_threshold_bins, kl_divergences


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


def test_trailing_empty_bins_are_not_candidates():
    counts = np.zeros(64, dtype=np.int64)
    counts[:10] = 5
    assert entropy_threshold_bins(counts, 4) <= 10


def test_fewer_bins_than_levels_keeps_them_all():
    assert entropy_threshold_bins(np.array([3, 0, 2, 0, 0]), 8) == 3


def test_empty_histogram_raises():
    with pytest.raises(ValueError, match="empty"):
        entropy_threshold_bins(np.zeros(8, dtype=np.int64), 4)
