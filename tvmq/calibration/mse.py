"""Clipping threshold that minimizes the expected squared quantization error of a histogram.

For a threshold ``T`` the quantization grid is

- signed (data has negatives): ``s = T / (2**(bits-1) - 1)``, ``q`` in ``[-(2**(bits-1) - 1),
  2**(bits-1) - 1]`` (symmetric, narrow range: int8 ``scale = T / 127`` as in TensorRT);
- unsigned (``min >= 0``): ``s = T / (2**bits - 1)``, ``q`` in ``[0, 2**bits - 1]``;

and ``fq_T(x) = clip(rint(x / s), qmin, qmax) * s`` (clipping and rounding in one step). The
expected error is ``E_T = sum_b n_b * (c_b - fq_T(c_b))**2 / sum_b n_b`` over the histogram bins
``b`` with count ``n_b`` and center ``c_b``.

Approximation: every value is replaced by its bin center. For values spread evenly within a bin of
width ``w`` that lies inside one quantization step this is exact up to the constant ``w**2 / 12``,
which does not move the argmin; it is good while ``w`` is well below the step ``s``. With the
default 4096 bins per side ``w < max|x| / 2048``, so at 8 bits and ``T >= max|x| / 4``,
``w < s / 4`` (signed) or ``w < s / 2`` (unsigned).
"""

from __future__ import annotations

import numpy as np


def grid(bits: int, signed: bool) -> tuple[int, int]:
    """``(qmin, qmax)`` of the grid above: symmetric narrow range if signed, else unsigned."""
    if signed:
        return -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def expected_errors(
    centers: np.ndarray, counts: np.ndarray, thresholds: np.ndarray, bits: int, signed: bool
) -> np.ndarray:
    """``E_T`` (module docstring) for each threshold ``T > 0`` in ``thresholds``."""
    qmin, qmax = grid(bits, signed)
    keep = counts > 0
    c = np.asarray(centers, dtype=np.float64)[keep][None, :]
    n = np.asarray(counts, dtype=np.float64)[keep][None, :]
    s = (np.asarray(thresholds, dtype=np.float64) / qmax)[:, None]
    fq = np.clip(np.rint(c / s), qmin, qmax) * s
    return np.sum(n * (c - fq) ** 2, axis=1) / n.sum()


def mse_threshold(
    centers: np.ndarray,
    counts: np.ndarray,
    amax: float,
    bits: int,
    signed: bool,
    num_candidates: int,
) -> float:
    """The ``T_j = amax * j / num_candidates`` (``j = 1..num_candidates``) with the least ``E_T``.

    Scored in units of ``amax`` (the argmin is scale-free), so huge values cannot overflow.
    Ties go to the smallest ``T``.
    """
    fractions = np.arange(1, num_candidates + 1) / num_candidates
    errors = expected_errors(np.asarray(centers) / amax, counts, fractions, bits, signed)
    return float(amax * fractions[np.argmin(errors)])
