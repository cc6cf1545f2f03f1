"""LBFPObserver: the shared exponents of one activation tensor from calibration data."""

from __future__ import annotations

import dataclasses

import numpy as np

from ..errors import CompileError
from ..numerics import lbfp


class LBFPObserver:
    """Blocks of `fmt.block_size` channels (lbfp.activation_axis), shared over the batch and
    spatial axes; `method` "kl" (the LBFP paper) or "max". Streams: memory is one log2
    histogram per block however many samples are observed (lbfp.BlockLogHistograms)."""

    def __init__(self, fmt: lbfp.LBFPFormat, method: str = "kl", name: str = "tensor"):
        if method not in ("kl", "max"):
            raise ValueError(f"LBFPObserver method={method!r}; use 'kl' or 'max'")
        self.fmt, self.method, self.name = fmt, method, name
        self._hist: lbfp.BlockLogHistograms | None = None

    def observe(self, x: np.ndarray) -> None:
        x = np.asarray(x)
        if self._hist is None:
            axis = lbfp.activation_axis(x.ndim)
            fmt = dataclasses.replace(self.fmt, block_axis=axis)
            shared = tuple(ax for ax in range(x.ndim) if ax != axis)
            self._hist = lbfp.BlockLogHistograms(x.shape, fmt, shared)
        try:
            self._hist.add(x, what=f"tensor {self.name!r}")
        except ValueError as err:
            raise CompileError(f"calibration: {err}") from None

    def exponents(self) -> np.ndarray:
        """One exponent per channel (the block's), int64."""
        if self._hist is None:
            raise ValueError(f"LBFPObserver for {self.name!r}: nothing observed")
        h = self._hist
        blocks = h.kl_exponents() if self.method == "kl" else h.max_exponents()
        full = lbfp.expand_exponents(blocks, (*blocks.shape[:h.axis], h.shape[h.axis],
                                              *blocks.shape[h.axis + 1:]), h.fmt)
        return full.reshape(-1)
