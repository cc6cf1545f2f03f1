"""A signed histogram over [-R, R] that grows by doubling R, so no samples are kept.

Each side (x >= 0 and x < 0) has ``num_bins // 2`` bins of width ``w = R / (num_bins // 2)``
over the magnitude ``|x|``; magnitude bin ``k`` holds ``k*w < |x| <= (k+1)*w`` (bin 0 also
holds 0), i.e. ``k = max(ceil(|x| / w) - 1, 0)``.

The first batch with a nonzero value sets ``R = max|x|`` (zeros seen before that are counted in
bin 0, which holds 0 for every R; R is floored at ``(num_bins // 2) * tiny`` so that ``w`` is a
normal float). A later batch with ``max|x| > R`` first doubles R as often as needed; each doubling
merges magnitude bins ``2k`` and ``2k+1`` into bin ``k``. This is exact: ``num_bins`` is a power
of two, so ``w = R / (num_bins // 2)`` is exact and doubles exactly, ``y = |x| / w`` halves
exactly, and ``ceil(y / 2) - 1 == (ceil(y) - 1) // 2``. The merged counts therefore equal those of
a histogram built at the final R from the start, for any data.

A batch only doubles R while its ``max|x|`` exceeds R, so ``R < 2 * max|x|`` (above the floor)
and more than ``num_bins // 4`` magnitude bins cover ``[0, max|x|]``. The default
``num_bins = 8192`` thus gives the entropy calibration at least the 2048 bins over
``[0, max|x|]`` that TensorRT uses.
"""

from __future__ import annotations

import numpy as np

_CHUNK = 1 << 20  # values binned at a time, to bound the temporaries of a huge batch


class Histogram:
    """Counts of ``x`` in ``num_bins`` equal bins over [-R, R], R doubling as data arrives.

    Parameters
    ----------
    num_bins : int
        Total bins over [-R, R]; a power of two >= 4 (``num_bins // 2`` per sign).
    initial_range : float
        Start with this R > 0 instead of taking R from the first nonzero batch.
    """

    def __init__(self, num_bins: int = 8192, initial_range: float | None = None) -> None:
        if (
            isinstance(num_bins, bool)
            or not isinstance(num_bins, int | np.integer)
            or num_bins < 4
            or num_bins & (num_bins - 1)
        ):
            raise ValueError(
                f"num_bins must be a power of two >= 4 (so that doubling the range merges bins "
                f"exactly), got {num_bins!r}"
            )
        self.bins_per_side = int(num_bins) // 2
        self.range = 0.0  # R; 0 until a nonzero value (or initial_range) sets it
        if initial_range is not None:
            if not (np.isfinite(initial_range) and initial_range > 0):
                raise ValueError(f"initial_range must be finite and > 0, got {initial_range!r}")
            self.range = max(float(initial_range), self._min_range)
        self.pos = np.zeros(self.bins_per_side, dtype=np.int64)  # x >= 0, by magnitude bin
        self.neg = np.zeros(self.bins_per_side, dtype=np.int64)  # x < 0, by magnitude bin

    @property
    def _min_range(self) -> float:
        """Smallest R, so that ``w`` is a normal float (smaller magnitudes all land in bin 0)."""
        return float(np.finfo(np.float64).tiny) * self.bins_per_side

    @property
    def num_bins(self) -> int:
        """Total number of signed bins over [-R, R]."""
        return 2 * self.bins_per_side

    @property
    def bin_width(self) -> float:
        """``w = R / (num_bins // 2)``; 0 while R is unset."""
        return self.range / self.bins_per_side

    @property
    def total(self) -> int:
        """Number of values counted."""
        return int(self.pos.sum() + self.neg.sum())

    def add(self, x: np.ndarray) -> None:
        """Count the finite real values of ``x`` (any shape), growing R first if needed."""
        x = np.ravel(x)
        if x.size == 0:
            return
        amax = max(-float(x.min()), float(x.max()))  # not np.abs: abs(int8(-128)) wraps
        if self.range == 0.0:
            if amax == 0.0:
                self.pos[0] += x.size
                return
            self.range = max(amax, self._min_range)
        elif amax > self.range:
            self._grow(amax)
        for start in range(0, x.size, _CHUNK):
            self._add_chunk(np.asarray(x[start : start + _CHUNK], dtype=np.float64))

    def _grow(self, amax: float) -> None:
        """Double R until ``R >= amax``, merging magnitude bins pairwise at each doubling."""
        doublings = 0
        while self.range < amax:
            self.range *= 2.0
            doublings += 1
        if not np.isfinite(self.range):
            raise ValueError(
                f"values up to {amax!r} are too large to histogram (the range overflows float64)"
            )
        # d doublings at once: new bin k = old bins [k * 2**d, (k + 1) * 2**d).
        factor = 2**doublings
        for counts in (self.pos, self.neg):
            merged = np.zeros_like(counts)
            if factor >= self.bins_per_side:
                merged[0] = counts.sum()
            else:
                merged[: self.bins_per_side // factor] = counts.reshape(-1, factor).sum(axis=1)
            counts[:] = merged

    def _add_chunk(self, x: np.ndarray) -> None:
        """Bin one float64 chunk whose magnitudes are all <= R."""
        y = np.abs(x) / self.bin_width
        k = np.clip(np.ceil(y).astype(np.int64) - 1, 0, self.bins_per_side - 1)
        negative = x < 0
        self.pos += np.bincount(k[~negative], minlength=self.bins_per_side)
        self.neg += np.bincount(k[negative], minlength=self.bins_per_side)

    def magnitude_counts(self) -> np.ndarray:
        """Histogram of ``|x|``: ``num_bins // 2`` bins over [0, R] (``pos + neg``)."""
        return self.pos + self.neg

    def signed_counts(self) -> np.ndarray:
        """Histogram of ``x``: ``num_bins`` bins over [-R, R], left to right."""
        return np.concatenate([self.neg[::-1], self.pos])

    def signed_edges(self) -> np.ndarray:
        """The ``num_bins + 1`` bin edges ``-R + j*w`` of :meth:`signed_counts`."""
        j = np.arange(-self.bins_per_side, self.bins_per_side + 1, dtype=np.float64)
        return j * self.bin_width

    def quantile(self, q: float) -> float:
        """Value below which a fraction ``q`` of the counts lie, interpolating within the bin.

        The counts are read as ``N`` samples, the one of (0-based) rank ``r`` filling cumulative
        mass ``(r, r + 1]``. The result is the point of the piecewise-linear CDF at mass
        ``q*(N-1) + 0.5``: inside the bin of the sample nearest to rank ``q*(N-1)``, which is
        where NumPy's default ('linear') percentile lies, so the two agree to about one bin width.
        """
        counts = self.signed_counts()
        cumulative = np.cumsum(counts)
        n = int(cumulative[-1])
        if n == 0:
            raise ValueError("the histogram is empty; add values before asking for a quantile")
        target = q * (n - 1) + 0.5
        j = int(np.searchsorted(cumulative, target, side="left"))  # counts[j] > 0
        below = cumulative[j] - counts[j]
        edges = self.signed_edges()
        return float(edges[j] + (target - below) / counts[j] * self.bin_width)
