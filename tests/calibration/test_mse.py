"""The histogram MSE of the MSE observer against fake quantization of the samples themselves."""

import numpy as np
import pytest

from tvmq.calibration.mse import expected_errors, grid, mse_threshold


def fake_quant(x, t, bits, signed):
    qmax = 2 ** (bits - 1) - 1 if signed else 2**bits - 1
    qmin = -qmax if signed else 0
    scale = t / qmax
    return np.clip(np.round(x / scale), qmin, qmax) * scale


@pytest.mark.parametrize("signed", [True, False])
def test_equals_sample_mse_when_values_sit_at_bin_centers(signed):
    rng = np.random.default_rng(0)
    centers = np.linspace(-3.0, 3.0, 61) if signed else np.linspace(0.0, 3.0, 31)
    counts = rng.integers(0, 50, centers.size)
    samples = np.repeat(centers, counts)
    thresholds = np.array([0.5, 1.0, 2.0, 3.0])
    got = expected_errors(centers, counts, thresholds, bits=4, signed=signed)
    want = [np.mean((samples - fake_quant(samples, t, 4, signed)) ** 2) for t in thresholds]
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_grid():
    assert grid(8, signed=True) == (-127, 127)
    assert grid(8, signed=False) == (0, 255)


def test_threshold_is_a_candidate_and_scale_free():
    centers = np.linspace(-1.0, 1.0, 41)
    counts = np.exp(-8 * np.abs(centers)).round(3) * 1000
    t = mse_threshold(centers, counts, 1.0, bits=3, signed=True, num_candidates=20)
    assert t in np.arange(1, 21) / 20
    scaled = mse_threshold(centers * 1e200, counts, 1e200, 3, True, 20)
    assert scaled == pytest.approx(t * 1e200)
