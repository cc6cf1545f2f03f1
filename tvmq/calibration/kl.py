"""Entropy (KL-divergence) threshold search of TensorRT ("8-bit Inference with TensorRT", Migacz).

Given a histogram ``h`` of ``|x|`` and ``L`` quantized levels, each candidate ``i`` in
``[L, n]`` (``n`` = bins up to the last nonzero one) keeps bins ``[0, i)`` and scores

- ``P = h[:i]`` with the clipped outliers ``sum(h[i:])`` added to ``P[i-1]``;
- ``Q``: ``h[:i]`` (without the outliers, as in the paper) merged into ``L`` groups of
  ``m = i // L`` consecutive bins, the last group also taking the ``i - L*m`` remaining bins; each
  group's sum is spread evenly over the bins of the group where ``P > 0`` (bins with ``P == 0``
  stay 0);
- ``KL(P || Q) = sum_{P_j > 0} P_j * log(P_j / Q_j)`` with ``P`` and ``Q`` normalized. Where
  ``Q_j == 0 < P_j`` (the outliers land in a group whose own bins are empty) ``Q_j`` is taken as
  ``EPS``, an unnormalized smoothing that charges ``P_j * log(P_j / EPS)`` for the miss.

All candidates are scored at once from prefix sums: per candidate only the ``L`` group sums are
formed, so the cost is ``O(n * L)`` rather than ``O(n**2)``.

The threshold (:func:`entropy_threshold_bins`) departs from TensorRT in one way: it minimizes
``KL(P || Q) - log(1 - f)``, ``f`` the fraction of values clipped by the candidate.
``KL(P || Q)`` compares the clipped distribution with its own quantization, so it cannot see
the clipping itself: when ``[0, i)`` holds a single occupied bin, ``P`` and ``Q`` are the same
point mass and ``KL = 0`` however much was clipped. Data away from 0 (a squeeze-and-excite gate
in [0.12, 0.34], a conv output that is all negative) always has that candidate at its smallest
``|x|``, and the plain argmin clipped ~all values onto it. ``-log(1 - f)`` is ``KL`` of the kept
values' distribution from all values' (``log(N / N_kept)``); for outlier clipping ``f`` is
~1e-4 and the argmin hardly moves, while clipping all but one of ``N`` values costs ``log N``.
"""

from __future__ import annotations

import numpy as np

EPS = 1e-8


def _xlogx(v: np.ndarray) -> np.ndarray:
    """``v * log(v)`` with ``0 * log(0) = 0``."""
    v = np.asarray(v, dtype=np.float64)
    return v * np.log(np.where(v > 0, v, 1.0))


def kl_divergences(counts: np.ndarray, num_levels: int) -> tuple[np.ndarray, np.ndarray]:
    """``KL(P_i || Q_i)`` for every candidate ``i`` in ``[num_levels, len(counts)]``.

    ``counts`` is a histogram of ``|x|`` with at least ``num_levels`` bins and a nonzero total.
    Returns the candidates ``i`` and their divergences (see the module docstring).
    """
    h = np.asarray(counts, dtype=np.float64)
    levels = int(num_levels)
    cum = np.concatenate([[0.0], np.cumsum(h)])
    nonzero = np.concatenate([[0], np.cumsum(h > 0)])
    hlogh = np.concatenate([[0.0], np.cumsum(_xlogx(h))])
    total = cum[-1]

    i = np.arange(levels, h.size + 1)
    width = i // levels
    start = np.arange(levels)[None, :] * width[:, None]
    stop = start + width[:, None]
    stop[:, -1] = i
    qsum = cum[stop] - cum[start]  # group sums of h[:i], shape (candidates, levels)
    nz = nonzero[stop] - nonzero[start]

    tail = total - cum[i]
    last = h[i - 1]
    nz[:, -1] += (last == 0) & (tail > 0)  # P[i-1] > 0 thanks to the outliers alone
    psum = qsum.copy()
    psum[:, -1] += tail

    with np.errstate(divide="ignore", invalid="ignore"):
        q = qsum / (nz * cum[i][:, None])  # normalized Q on each P > 0 bin of the group
    q = np.where(qsum > 0, q, EPS)
    cross = np.sum(np.where(psum > 0, psum * np.log(q), 0.0), axis=1)  # sum_j p_j log Q_j
    self_term = hlogh[i - 1] + _xlogx(last + tail)  # sum_j p_j log p_j
    return i, (self_term - cross) / total - np.log(total)


def entropy_threshold_bins(counts: np.ndarray, num_levels: int) -> int:
    """Number of ``|x|`` bins to keep: the candidate minimizing ``KL(P || Q) - log(1 - f)``.

    ``f`` is the fraction of the counts the candidate clips (see the module docstring for why
    the term is there). Trailing empty bins are dropped first. If fewer than ``num_levels`` bins
    remain there is nothing to clip and all of them are kept. Ties go to the smallest candidate.
    """
    h = np.asarray(counts)
    nonzero = np.flatnonzero(h)
    if nonzero.size == 0:
        raise ValueError("the histogram is empty; observe data before searching a threshold")
    h = h[: nonzero[-1] + 1]
    if h.size < num_levels:
        return int(h.size)
    candidates, divergences = kl_divergences(h, num_levels)
    kept = np.cumsum(h, dtype=np.float64)[candidates - 1]
    with np.errstate(divide="ignore"):
        clipping = np.log(kept[-1] / kept)  # -log(1 - f); inf when [0, i) holds nothing
    return int(candidates[np.argmin(divergences + clipping)])
