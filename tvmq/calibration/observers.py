"""Calibration observers: watch one tensor's float values, then propose a clipping range.

Call :meth:`Observer.observe` on every calibration batch of the tensor, then
:meth:`Observer.range` for the ``(lo, hi)`` to quantize it over; turning that range into a scale
and zero point is the quantizer's job (it also widens the range to contain 0).

- ``minmax``: the observed ``(min, max)``.
- ``percentile``: the ``100 - p`` and ``p`` percentiles.
- ``kl``: TensorRT's entropy calibration ("8-bit Inference with TensorRT", Migacz 2017), also
  charging for the fraction of values clipped.
- ``mse``: the threshold minimizing the expected squared quantization error.

The last three read a histogram that grows by doubling its range (``histogram.py``), so memory is
constant however many values are observed. Every observer also tracks the exact min and max, and
its range never reaches beyond them (except ``lo = 0`` for data without negatives).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from .histogram import Histogram
from .kl import entropy_threshold_bins
from .mse import mse_threshold

OBSERVERS = ("minmax", "percentile", "kl", "mse")


def _check_int(value: object, what: str, lo: int, hi: int | None = None) -> int:
    """``value`` as an int after checking it is an integer in ``[lo, hi]`` (``hi=None``: no cap)."""
    ok = not isinstance(value, bool) and isinstance(value, int | np.integer)
    if not ok or value < lo or (hi is not None and value > hi):
        allowed = f"an integer >= {lo}" if hi is None else f"an integer in [{lo}, {hi}]"
        raise ValueError(f"{what} must be {allowed}, got {value!r}")
    return int(value)


class Observer(ABC):
    """Base class: validates and counts the observed values and tracks their exact min and max.

    Parameters
    ----------
    bits : int
        Bit width the tensor will be quantized to, 2 to 16. Used by ``kl`` and ``mse``; the other
        observers accept and ignore it, so that one set of arguments fits every observer.
    name : str
        Tensor name used in error messages.
    """

    def __init__(self, *, bits: int = 8, name: str = "tensor") -> None:
        if not isinstance(name, str):
            raise ValueError(f"name must be a str (the tensor name), got {name!r}")
        self.name = name
        self.bits = _check_int(bits, f"bits of the observer for tensor {name!r}", 2, 16)
        self._count = 0
        self._min = np.inf
        self._max = -np.inf

    @property
    def num_observed(self) -> int:
        """Number of values (elements) observed so far."""
        return self._count

    def observe(self, x: object) -> None:
        """Record one batch of the tensor's values.

        Parameters
        ----------
        x : array_like
            Real values of any shape; an empty array is ignored.

        Raises
        ------
        ValueError
            If ``x`` is not real-valued or contains NaN or Inf.
        """
        arr = np.asarray(x)
        if arr.dtype.kind not in "fiu":
            raise ValueError(
                f"calibration data for tensor {self.name!r} must be real numbers, "
                f"got dtype {arr.dtype}"
            )
        if arr.size == 0:
            return
        finite = np.isfinite(arr)
        if not finite.all():
            bad = arr.size - int(np.count_nonzero(finite))
            raise ValueError(
                f"calibration data contains NaN/Inf in tensor {self.name!r} ({bad} of {arr.size} "
                "values in this batch); check the model inputs and the layers producing it"
            )
        self._min = min(self._min, float(arr.min()))
        self._max = max(self._max, float(arr.max()))
        self._count += arr.size
        self._update(arr)

    def range(self) -> tuple[float, float]:
        """The proposed clipping range.

        Returns
        -------
        tuple of float
            ``(lo, hi)``, finite, ``lo <= hi``.

        Raises
        ------
        RuntimeError
            If no value has been observed yet.
        """
        self._check_observed()
        lo, hi = self._range()
        return float(lo), float(hi)

    def observed_range(self) -> tuple[float, float]:
        """``(min(x), max(x))`` over everything observed, whatever the observer proposes."""
        self._check_observed()
        return self._min, self._max

    def _check_observed(self) -> None:
        if self._count == 0:
            raise RuntimeError(
                f"{type(self).__name__} for tensor {self.name!r} has no data: observe() was never "
                "called (or only with empty arrays); run calibration data through the model first"
            )

    def _update(self, x: np.ndarray) -> None:
        """Fold a validated, non-empty batch into the observer's state."""

    @abstractmethod
    def _range(self) -> tuple[float, float]:
        """``(lo, hi)`` from the state; called only after some values were observed."""


class MinMaxObserver(Observer):
    """Running minimum and maximum: ``range() = (min(x), max(x))`` over all batches.

    Parameters
    ----------
    bits : int
        Accepted for a uniform signature; unused.
    name : str
        Tensor name used in error messages.

    Examples
    --------
    >>> obs = MinMaxObserver(name="conv1.out")
    >>> obs.observe(np.array([-1.0, 2.0]))
    >>> obs.observe(np.array([[0.5, 3.0]]))
    >>> obs.range(), obs.num_observed
    ((-1.0, 3.0), 4)
    """

    def _range(self) -> tuple[float, float]:
        return self._min, self._max


class HistogramObserver(Observer):
    """An observer that keeps a growing :class:`Histogram` of the values."""

    def __init__(self, *, bits: int = 8, num_bins: int = 8192, name: str = "tensor") -> None:
        super().__init__(bits=bits, name=name)
        self._hist = Histogram(num_bins)

    def _update(self, x: np.ndarray) -> None:
        self._hist.add(x)


class PercentileObserver(HistogramObserver):
    """Percentile clipping: ``lo`` = the ``100 - p`` percentile, ``hi`` = the ``p`` percentile.

    Read from the histogram by linear interpolation within a bin, within about one bin width of
    ``np.percentile`` of all observed values, then clipped to ``[min, max]``.

    Parameters
    ----------
    percentile : float
        ``p``, in [50, 100]; 100 gives exactly ``(min, max)``.
    bits : int
        Accepted for a uniform signature; unused.
    num_bins : int
        Histogram bins over ``[-R, R]`` with ``max|x| <= R < 2 max|x|``; a power of two >= 4.
    name : str
        Tensor name used in error messages.

    Examples
    --------
    >>> obs = PercentileObserver(percentile=99.0)
    >>> obs.observe(np.linspace(-1.0, 1.0, 100_001))
    >>> [round(v, 3) for v in obs.range()]
    [-0.98, 0.98]
    """

    def __init__(
        self,
        *,
        percentile: float = 99.99,
        bits: int = 8,
        num_bins: int = 8192,
        name: str = "tensor",
    ) -> None:
        super().__init__(bits=bits, num_bins=num_bins, name=name)
        is_number = isinstance(percentile, int | float | np.integer | np.floating)
        if isinstance(percentile, bool) or not is_number or not 50 <= percentile <= 100:
            raise ValueError(f"percentile must be a number in [50, 100], got {percentile!r}")
        self.percentile = float(percentile)

    def _range(self) -> tuple[float, float]:
        if self.percentile == 100:
            return self._min, self._max
        q = self.percentile / 100
        lo = self._hist.quantile(1 - q)
        hi = self._hist.quantile(q)
        return float(np.clip(lo, self._min, self._max)), float(np.clip(hi, self._min, self._max))


class KLObserver(HistogramObserver):
    """TensorRT entropy calibration: the threshold minimizing ``KL(P || Q)`` of ``|x|``, plus a cost
    for the fraction of values clipped.

    Over the histogram of ``|x|`` (``num_bins // 2`` bins of width ``w`` over ``[0, R]``), each
    candidate ``i`` keeps bins ``[0, i)`` with the clipped outliers added to the last one (P) and
    compares it with its quantization into ``L`` levels (Q); see ``kl.py`` for the exact
    definition. Unlike TensorRT, the search minimizes ``KL(P || Q) - log(1 - f)``, ``f`` the
    fraction of values clipped: ``KL(P || Q)`` alone is 0 when clipping collapses data away from 0
    (e.g. squeeze-and-excite gates in [0.12, 0.34]) onto its smallest value, while the extra term
    costs ``log N`` there and only about ``f`` (~1e-4) for ordinary outlier clipping. With ``i*``
    the argmin, ``T = (i* + 0.5) * w`` and

    - ``min >= 0`` (e.g. after ReLU): ``L = 2**bits``, ``range() = (0, min(T, max))``;
    - otherwise: ``L = 2**(bits-1)``, ``range() = (max(min, -T), min(max, T))``.

    Parameters
    ----------
    bits : int
        Quantized bit width, 2 to 16; needs ``2**bits <= num_bins // 4``.
    num_bins : int
        Histogram bins over ``[-R, R]`` with ``max|x| <= R < 2 max|x|``, a power of two; the
        default 8192 puts at least 2048 bins over ``[0, max|x|]``, as TensorRT uses.
    name : str
        Tensor name used in error messages.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> obs = KLObserver(name="fc1.out")
    >>> obs.observe(np.append(rng.standard_normal(100_000), 50.0))  # one outlier at 50
    >>> lo, hi = obs.range()
    >>> bool(-10 < lo < -2 and 2 < hi < 10)
    True
    """

    def __init__(self, *, bits: int = 8, num_bins: int = 8192, name: str = "tensor") -> None:
        super().__init__(bits=bits, num_bins=num_bins, name=name)
        if 2**self.bits > self._hist.num_bins // 4:
            raise ValueError(
                f"KLObserver with bits={self.bits} needs num_bins >= 4 * 2**bits = "
                f"{4 * 2**self.bits} (so at least 2**bits bins cover [0, max|x|]), "
                f"got num_bins={self._hist.num_bins}; raise num_bins or lower bits"
            )
        self._zeros = 0

    def _update(self, x: np.ndarray) -> None:
        super()._update(x)
        self._zeros += x.size - int(np.count_nonzero(x))

    def _range(self) -> tuple[float, float]:
        if self._min == self._max == 0:
            return 0.0, 0.0
        unsigned = self._min >= 0
        levels = 2**self.bits if unsigned else 2 ** (self.bits - 1)
        # Exact zeros are always exact after quantization (zero point), whatever the threshold;
        # left in, the spike of zeros after a ReLU drives the search to tiny thresholds.
        counts = self._hist.magnitude_counts().copy()
        counts[0] -= self._zeros
        if not counts.any():
            return self._min, self._max
        kept = entropy_threshold_bins(counts, levels)
        t = (kept + 0.5) * self._hist.bin_width
        if unsigned:
            return 0.0, min(t, self._max)
        return max(self._min, -t), min(self._max, t)


class MSEObserver(HistogramObserver):
    """The threshold minimizing the expected squared error of clipping plus rounding.

    Candidates are ``T_j = A * j / num_candidates``, ``j = 1..num_candidates``, with
    ``A = max|x|``. Each is scored on the histogram (values at their bin centers) with the grid

    - ``min >= 0``: ``2**bits`` levels ``k * T / (2**bits - 1)`` over ``[0, T]``;
      ``range() = (0, T)``;
    - otherwise: symmetric ``k * T / (2**(bits-1) - 1)``, ``|k| <= 2**(bits-1) - 1``;
      ``range() = (max(min, -T), min(max, T))``;

    see ``mse.py`` for the formula and the bin-center approximation.

    Parameters
    ----------
    bits : int
        Quantized bit width, 2 to 16.
    num_candidates : int
        Number of evenly spaced thresholds tried, >= 1.
    num_bins : int
        Histogram bins over ``[-R, R]`` with ``max|x| <= R < 2 max|x|``; a power of two >= 4.
    name : str
        Tensor name used in error messages.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> x = rng.laplace(size=100_000)
    >>> obs = MSEObserver(bits=4)
    >>> obs.observe(x)
    >>> lo, hi = obs.range()
    >>> bool(hi < 0.6 * np.abs(x).max())  # at 4 bits, clip hard
    True
    """

    def __init__(
        self,
        *,
        bits: int = 8,
        num_candidates: int = 100,
        num_bins: int = 8192,
        name: str = "tensor",
    ) -> None:
        super().__init__(bits=bits, num_bins=num_bins, name=name)
        self.num_candidates = _check_int(num_candidates, "num_candidates", 1)

    def _range(self) -> tuple[float, float]:
        signed = self._min < 0
        amax = max(-self._min, self._max)
        if amax == 0:
            return 0.0, 0.0
        edges = self._hist.signed_edges()
        centers = (edges[:-1] + edges[1:]) / 2
        counts = self._hist.signed_counts()
        t = mse_threshold(centers, counts, amax, self.bits, signed, self.num_candidates)
        if not signed:
            return 0.0, t
        return max(self._min, -t), min(self._max, t)


def make_observer(name: str, /, **kwargs: object) -> Observer:
    """Build an observer by name.

    Parameters
    ----------
    name : str
        One of :data:`OBSERVERS`: ``"minmax"``, ``"percentile"``, ``"kl"``, ``"mse"``.
        Positional-only, so the tensor name can still be passed as ``name=`` in ``kwargs``.
    **kwargs
        Keyword arguments of the observer class, e.g. ``bits``, ``name``, ``percentile``.

    Returns
    -------
    Observer

    Raises
    ------
    ValueError
        If ``name`` is not one of :data:`OBSERVERS`.

    Examples
    --------
    >>> obs = make_observer("percentile", percentile=99.9, name="conv1.out")
    >>> type(obs).__name__, obs.percentile, obs.name
    ('PercentileObserver', 99.9, 'conv1.out')
    """
    classes = dict(zip(OBSERVERS, (MinMaxObserver, PercentileObserver, KLObserver, MSEObserver)))
    if name not in classes:
        allowed = ", ".join(repr(n) for n in OBSERVERS)
        raise ValueError(f"unknown observer {name!r}; allowed: {allowed}")
    return classes[name](**kwargs)
