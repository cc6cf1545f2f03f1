"""LBFP, logarithmic block floating point: the golden definition every backend is tested against.

The paper (Ni et al., APCCAS 2020) gives no bit layout; this one is ours and configurable.

Element. `bits` = 1 sign bit + a (bits-1)-bit unsigned code c. With c_max = 2^(bits-1) - 1:

    value = (-1)^s * 2^(E - c / 2^frac_bits)    for c in [0, c_max)
    value = 0                                   for c == c_max (stored with s = 0)

so code 0 is the block's largest magnitude 2^E and each step divides by 2^(2^-frac_bits);
frac_bits = 0 is pure power-of-two. E is an integer exponent shared by a block of `block_size`
consecutive elements along `block_axis` (the last block may be shorter). A code word is stored
as `s << (bits - 1) | c` in a uint8.

Encoding (`encode`) rounds in the log domain by comparing with a table, so every backend that
gets the same table encodes the same way with comparisons only (no log2, no libm):
m = |x| * 2^-E (exact: a power-of-two scaling in float64), and

    c = #{k in [0, c_max) : m < T[k]},   T[k] = 2^(-(k + 1/2) / 2^frac_bits)   (float64)

i.e. the nearest code in log2 distance, ties towards the larger magnitude; m >= 2^E saturates to
code 0; m below the last threshold (half a code step under the smallest magnitude) is zero.
NaN and Inf are refused.

Product. For two elements with codes a, b in blocks with exponents Ea, Eb, the magnitude is
2^(Ea + Eb) * 2^-((a + b) / 2^f). With s = a + b, q = s >> f, r = s & (2^f - 1) it is
2^(Ea + Eb - q) * 2^(-r / 2^f): an integer shift q and a fractional factor from a table of 2^f
entries `LUT[r] = round(2^(lut_bits - r / 2^f))` (lut_bits fractional bits; LUT[0] = 2^lut_bits).

Dot product (`dot`). A conv/matmul output sums products over a reduction whose blocks have static
exponents (weights from the weights, activations from calibration), so the sum is aligned to
one reference exponent E_ref = max over the reduction's block pairs of (Ea + Eb), known at
compile time. Each product contributes `sign * (LUT[r] >> (q + E_ref - Ea - Eb))` (a right shift
truncating the magnitude) to an int64 accumulator in units of 2^(E_ref - lut_bits). Zero codes
contribute 0.

Shared exponents. `max_exponents`: E = ceil(log2 max|x|) per block, nothing saturates.
`kl_exponents` (the paper's choice): among E_max + d for d in `candidates`, the E minimising
KL(P || Q) between the block's calibration values and their LBFP version, both as histograms on
a log2 grid of `bins_per_step` bins per code step: P holds the values, with those above 2^E
(saturated) added to the top kept bin and those under the zero threshold added to the zero bin;
Q spreads each code's share of the unclipped values evenly over the bins of that code where P is
non-zero (TensorRT's entropy calibration, moved to the log domain), and holds only the true zeros
in the zero bin. Exponents are shared across `shared_axes` (e.g. batch and spatial axes of
activations).

Back to LBFP (`acc_to_lbfp`). The accumulator's value acc * 2^(E_ref - lut_bits) is encoded with
the next layer's block exponent by the same threshold rule (the scaling is exact in float64 for
|acc| < 2^53).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from .windows import pad_nchw, windows

MAX_BITS = 8
MAX_FRAC_BITS = 4
EXPONENT_RANGE = (-126, 127)  # a shared exponent fits an int8


@dataclass(frozen=True)
class LBFPFormat:
    """bits in [2, 8] (sign + code), frac_bits in [0, min(4, bits - 2)], block_size >= 1,
    block_axis: the axis blocks run along; lut_bits in [1, 30]: fractional bits of the product
    table. Invalid settings raise ValueError naming the field and the allowed range."""

    bits: int = 8
    frac_bits: int = 2
    block_size: int = 16
    block_axis: int = 1
    lut_bits: int = 15

    def __post_init__(self):
        _field("bits", self.bits, 2, MAX_BITS)
        _field("frac_bits", self.frac_bits, 0, min(MAX_FRAC_BITS, self.bits - 2))
        _field("block_size", self.block_size, 1, 2**20)
        if isinstance(self.block_axis, bool) or not isinstance(self.block_axis, int):
            raise ValueError(f"LBFPFormat.block_axis={self.block_axis!r}: use an int axis")
        _field("lut_bits", self.lut_bits, 1, 30)

    @property
    def c_max(self) -> int:
        """The zero code; magnitudes use codes 0 .. c_max - 1."""
        return 2 ** (self.bits - 1) - 1

    @cached_property
    def thresholds(self) -> np.ndarray:
        """T[k] = 2^(-(k + 1/2) / 2^frac_bits), k in [0, c_max), float64, decreasing."""
        k = np.arange(self.c_max, dtype=np.float64)
        return np.exp2(-(k + 0.5) / 2**self.frac_bits)

    @cached_property
    def magnitudes(self) -> np.ndarray:
        """2^(-c / 2^frac_bits) for c in [0, c_max), then 0 for the zero code; float64."""
        c = np.arange(self.c_max, dtype=np.float64)
        return np.append(np.exp2(-c / 2**self.frac_bits), 0.0)

    @cached_property
    def lut(self) -> np.ndarray:
        """LUT[r] = round(2^(lut_bits - r / 2^frac_bits)), r in [0, 2^frac_bits), int64."""
        r = np.arange(2**self.frac_bits, dtype=np.float64)
        return np.rint(np.exp2(self.lut_bits - r / 2**self.frac_bits)).astype(np.int64)


def _field(name: str, value, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or not lo <= value <= hi:
        raise ValueError(f"LBFPFormat.{name}={value!r}: use an integer in [{lo}, {hi}]")


def activation_axis(ndim: int) -> int:
    """The axis activation blocks run along: channels (axis 1) of NCHW, else the last axis."""
    return 1 if ndim == 4 else ndim - 1


def per_channel(exponents, ndim: int, axis: int) -> np.ndarray:
    """Per-channel exponents (blocks expanded, one per index of `axis`) shaped to broadcast
    against an `ndim`-D tensor; use with a format of block_size 1 on that axis."""
    shape = [1] * ndim
    shape[axis] = -1
    return np.asarray(exponents, np.int64).reshape(shape)


def n_blocks(length: int, fmt: LBFPFormat) -> int:
    return -(-length // fmt.block_size)


def expand_exponents(exponents: np.ndarray, shape, fmt: LBFPFormat) -> np.ndarray:
    """Per-element exponents from per-block ones (block axis of length ceil(n / block_size))."""
    axis = fmt.block_axis % len(shape)
    full = np.repeat(np.asarray(exponents, np.int64), fmt.block_size, axis=axis)
    return np.take(full, np.arange(shape[axis]), axis=axis)


def _check_finite(x: np.ndarray, what: str) -> None:
    if not np.all(np.isfinite(x)):
        bad = np.argwhere(~np.isfinite(x))[0]
        raise ValueError(f"{what} holds {x[tuple(bad)]!r} at index {tuple(int(i) for i in bad)}: "
                         "LBFP encodes finite values only")


def encode(x: np.ndarray, exponents: np.ndarray, fmt: LBFPFormat) -> np.ndarray:
    """Code words (uint8, `s << (bits-1) | c`) of float `x` with per-block `exponents`."""
    x = np.asarray(x, np.float64)
    _check_finite(x, "x")
    e = expand_exponents(exponents, x.shape, fmt)
    m = np.ldexp(np.abs(x), -e)
    ascending = fmt.thresholds[::-1]  # c = how many thresholds lie strictly above m
    c = fmt.c_max - np.searchsorted(ascending, m, side="right")
    sign = (x < 0) & (c < fmt.c_max)
    return ((sign.astype(np.int64) << (fmt.bits - 1)) | c).astype(np.uint8)


def split(words: np.ndarray, fmt: LBFPFormat) -> tuple[np.ndarray, np.ndarray]:
    """(sign 0/1, code) int64 arrays of code words."""
    w = np.asarray(words).astype(np.int64)
    return w >> (fmt.bits - 1), w & fmt.c_max


def decode(words: np.ndarray, exponents: np.ndarray, fmt: LBFPFormat) -> np.ndarray:
    """float64 values of code words: (-1)^s * 2^(E - c / 2^frac_bits), zero for c == c_max."""
    sign, c = split(words, fmt)
    e = expand_exponents(exponents, np.shape(words), fmt)
    return np.where(sign == 1, -1.0, 1.0) * np.ldexp(fmt.magnitudes[c], e)


def max_exponents(x: np.ndarray, fmt: LBFPFormat, shared_axes: tuple[int, ...] = ()) -> np.ndarray:
    """Per-block E = ceil(log2(max |x|)) (the smallest 2^E >= every |x| of the block), exact via
    frexp; 0 for an all-zero block; clipped to EXPONENT_RANGE. `shared_axes` are reduced too
    (kept as size 1)."""
    x = np.asarray(x, np.float64)
    _check_finite(x, "x")
    return _ceil_log2(block_reduce(np.abs(x).max(axis=shared_axes, keepdims=True), fmt, np.max))


def _ceil_log2(amax: np.ndarray) -> np.ndarray:
    """ceil(log2 amax) exactly (frexp), 0 where amax == 0, clipped to EXPONENT_RANGE; int64."""
    mant, e = np.frexp(amax)  # amax = mant * 2^e, mant in [0.5, 1)
    e = np.where(mant == 0.5, e - 1, e)
    return np.clip(np.where(amax == 0, 0, e), *EXPONENT_RANGE).astype(np.int64)


def kl_exponents(x: np.ndarray, fmt: LBFPFormat, shared_axes: tuple[int, ...] = (),
                 candidates: tuple[int, ...] = (-3, -2, -1, 0), bins_per_step: int = 8
                 ) -> np.ndarray:
    """Per-block exponents of calibration values `x` by minimum KL divergence over
    E_max + candidates (see the module text); same shape as `max_exponents`."""
    hist = BlockLogHistograms(np.shape(x), fmt, shared_axes, bins_per_step)
    hist.add(x)
    return hist.kl_exponents(candidates)


class BlockLogHistograms:
    """Streaming per-block statistics of |x| for exponent selection: the exact max and a
    histogram of log2|x| on one global grid of bins 2^-frac_bits / bins_per_step wide (bin g
    holds [g, g + 1) * width), plus the count of zeros. Every candidate exponent's code
    boundaries fall on this grid, so `kl_exponents` reads the same bins for any candidate and
    tensors of any number of calibration batches cost one histogram per block.

    `shape` is one batch's shape; blocks run along fmt.block_axis and are shared over
    `shared_axes` (for activations: every axis but the channel axis)."""

    def __init__(self, shape, fmt: LBFPFormat, shared_axes: tuple[int, ...] = (),
                 bins_per_step: int = 8):
        if bins_per_step < 2 or bins_per_step % 2:
            raise ValueError(f"bins_per_step={bins_per_step}: use an even integer >= 2 (code "
                             "boundaries fall on half steps)")
        self.shape, self.fmt, self.bins_per_step = tuple(shape), fmt, bins_per_step
        ndim = len(self.shape)
        self.shared = tuple(sorted(ax % ndim for ax in shared_axes))
        self.axis = fmt.block_axis % ndim
        out_shape = [1 if ax in self.shared else d for ax, d in enumerate(self.shape)]
        out_shape[self.axis] = n_blocks(self.shape[self.axis], fmt)
        self.out_shape = tuple(out_shape)
        index = [np.zeros(1, np.int64) if ax in self.shared else np.arange(d)
                 for ax, d in enumerate(self.shape)]
        index[self.axis] = index[self.axis] // fmt.block_size
        grids = np.ix_(*index)
        self.block_of = np.broadcast_to(np.ravel_multi_index(grids, self.out_shape), self.shape)
        self.n = int(np.prod(self.out_shape))
        self.width = 2.0**-fmt.frac_bits / bins_per_step
        self.amax = np.zeros(self.n)
        self.zeros = np.zeros(self.n, np.int64)
        self.origin = 0
        self.counts = np.zeros((self.n, 0), np.int64)

    def add(self, x: np.ndarray, what: str = "x") -> None:
        x = np.asarray(x, np.float64)
        if x.shape != self.shape:
            raise ValueError(f"{what} has shape {x.shape}, expected {self.shape}")
        _check_finite(x, what)
        a, blocks = np.abs(x).reshape(-1), self.block_of.reshape(-1)
        np.maximum.at(self.amax, blocks, a)
        self.zeros += np.bincount(blocks[a == 0], minlength=self.n)
        pos = a > 0
        if not pos.any():
            return
        g = np.floor(np.log2(a[pos]) / self.width).astype(np.int64)
        lo, hi = int(g.min()), int(g.max()) + 1
        if self.counts.shape[1] == 0:
            self.origin, self.counts = lo, np.zeros((self.n, hi - lo), np.int64)
        new_lo, new_hi = min(lo, self.origin), max(hi, self.origin + self.counts.shape[1])
        if (new_lo, new_hi) != (self.origin, self.origin + self.counts.shape[1]):
            grown = np.zeros((self.n, new_hi - new_lo), np.int64)
            at = self.origin - new_lo
            grown[:, at:at + self.counts.shape[1]] = self.counts
            self.origin, self.counts = new_lo, grown
        width = self.counts.shape[1]
        flat = blocks[pos] * width + (g - self.origin)
        self.counts += np.bincount(flat, minlength=self.n * width).reshape(self.n, width)

    def max_exponents(self) -> np.ndarray:
        """E = ceil(log2 max|x|) per block (0 for all-zero blocks), like `max_exponents`."""
        return _ceil_log2(self.amax).reshape(self.out_shape)

    def kl_exponents(self, candidates: tuple[int, ...] = (-3, -2, -1, 0)) -> np.ndarray:
        e_max = self.max_exponents().reshape(-1)
        out = e_max.copy()
        for i in range(self.n):
            if self.amax[i] == 0:  # all zero: nothing to choose
                continue
            scores = [self._kl(i, int(e_max[i]) + d) for d in candidates]
            out[i] = int(e_max[i]) + candidates[int(np.argmin(scores))]
        return np.clip(out, *EXPONENT_RANGE).reshape(self.out_shape)

    def _bins(self, i: int, g0: int, g1: int) -> np.ndarray:
        """Counts of block i on grid bins [g0, g1), zero outside the stored range."""
        out = np.zeros(max(g1 - g0, 0), np.int64)
        lo, hi = max(g0, self.origin), min(g1, self.origin + self.counts.shape[1])
        if hi > lo:
            out[lo - g0:hi - g0] = self.counts[i, lo - self.origin:hi - self.origin]
        return out

    def _kl(self, i: int, e: int) -> float:
        """KL(P || Q) of block i against its LBFP version with exponent e (module text)."""
        fmt, per_step = self.fmt, self.bins_per_step
        step = 2.0**-fmt.frac_bits
        g_lo = e * 2**fmt.frac_bits * per_step - (2 * fmt.c_max - 1) * per_step // 2
        g_top = e * 2**fmt.frac_bits * per_step + per_step // 2  # code 0 ends at e + step/2
        total = self.counts[i].sum()
        kept = self._bins(i, g_lo, g_top)
        under = int(self._bins(i, self.origin, g_lo).sum())
        p = kept.astype(np.float64)
        p[-1] += total - kept.sum() - under  # saturated values land on the top code
        centers = (np.arange(g_lo, g_top) + 0.5) * self.width
        code = np.clip(np.floor((e - centers) / step + 0.5), 0, fmt.c_max - 1).astype(int)
        clean = kept.astype(np.float64)
        share = np.bincount(code, clean, fmt.c_max)
        support = np.bincount(code, clean > 0, fmt.c_max)
        q = np.where(clean > 0, share[code] / np.maximum(support[code], 1), 0.0)
        zeros = int(self.zeros[i])
        p = np.append(p, zeros + under)
        q = np.append(q, zeros + q[0])  # the zero code is an edge bin, like the top one
        p, q = p / p.sum(), q / max(q.sum(), 1e-300)
        nz = p > 0
        return float(np.sum(p[nz] * np.log(p[nz] / np.maximum(q[nz], 1e-12))))


def block_reduce(x: np.ndarray, fmt: LBFPFormat, reduce) -> np.ndarray:
    """`reduce` (e.g. np.max) over each block along the block axis (a short last block is padded
    by repeating its own values, which leaves max/min unchanged)."""
    axis = fmt.block_axis % x.ndim
    n = x.shape[axis]
    nb = n_blocks(n, fmt)
    pad = nb * fmt.block_size - n
    if pad:
        last = (nb - 1) * fmt.block_size
        fill = last + np.arange(pad) % (n - last)
        x = np.concatenate([x, np.take(x, fill, axis=axis)], axis=axis)
    shape = (*x.shape[:axis], nb, fmt.block_size, *x.shape[axis + 1:])
    return reduce(x.reshape(shape), axis=axis + 1)


def product_terms(a_words, b_words, shift, fmt: LBFPFormat) -> np.ndarray:
    """sign * (LUT[r] >> (q + shift)) for each pair of code words (s = a + b, q = s >> f,
    r = s & (2^f - 1)); 0 where either is zero. int64, broadcasting."""
    sa, ca = split(a_words, fmt)
    sb, cb = split(b_words, fmt)
    s = ca + cb
    q, r = s >> fmt.frac_bits, s & (2**fmt.frac_bits - 1)
    total = q + np.asarray(shift, np.int64)
    mag = np.where(total >= 63, 0, fmt.lut[r] >> np.minimum(total, 62))
    mag = np.where((ca == fmt.c_max) | (cb == fmt.c_max), 0, mag)
    return np.where((sa ^ sb) == 1, -mag, mag)


def dot(a_words, a_exp, b_words, b_exp, fmt: LBFPFormat) -> tuple[int, int]:
    """(acc, E_ref) of the dot product of two 1-D LBFP vectors with per-element exponents
    `a_exp`, `b_exp`: acc * 2^(E_ref - lut_bits) approximates sum(a * b) (see the module text)."""
    pair = np.asarray(a_exp, np.int64) + np.asarray(b_exp, np.int64)
    e_ref = int(pair.max())
    return int(product_terms(a_words, b_words, e_ref - pair, fmt).sum()), e_ref


def acc_to_lbfp(acc, e_ref, exponents, fmt: LBFPFormat, acc_fmt: LBFPFormat | None = None,
                lo: float = -np.inf, hi: float = np.inf):
    """Code words of accumulator values x = acc * 2^(e_ref - acc_fmt.lut_bits), clipped to
    [lo, hi] (a ReLU/Clip epilogue), with per-block `exponents` of `fmt` (the next layer's
    format; acc_fmt defaults to it). e_ref broadcasts against acc."""
    lut_bits = (acc_fmt or fmt).lut_bits
    acc = np.asarray(acc, np.int64)
    if np.any(np.abs(acc) >= 2**53):
        raise ValueError("acc_to_lbfp: |acc| >= 2^53 cannot be scaled exactly in float64")
    x = np.ldexp(acc.astype(np.float64), np.asarray(e_ref, np.int64) - lut_bits)
    return encode(np.clip(x, lo, hi), exponents, fmt)


def _same_product_table(fmt_x: LBFPFormat, fmt_w: LBFPFormat, op: str) -> None:
    if (fmt_x.frac_bits, fmt_x.lut_bits, fmt_x.bits) != (fmt_w.frac_bits, fmt_w.lut_bits,
                                                         fmt_w.bits):
        raise ValueError(f"lbfp.{op}: activations and weights need the same bits, frac_bits "
                         "and lut_bits (one code adder and product table)")


def conv_e_ref(x_exp, w_exp, groups: int = 1) -> np.ndarray:
    """e_ref[o] = max over output channel o's reduction of x_exp[c] + w_exp[o, c, kh, kw]
    (x_exp: one exponent per input channel; w_exp: per weight element, OIHW)."""
    w_e = np.asarray(w_exp, np.int64)
    o, cg = w_e.shape[:2]
    x_e = np.asarray(x_exp, np.int64).reshape(groups, 1, cg, 1, 1)
    pair = x_e + w_e.reshape(groups, o // groups, cg, *w_e.shape[2:])
    return pair.max(axis=(2, 3, 4)).reshape(o)


def matmul_e_ref(x_exp, w_exp) -> np.ndarray:
    """e_ref[n] = max over k of x_exp[k] + w_exp[k, n] (x (..., K) @ w (K, N))."""
    return (np.asarray(x_exp, np.int64).reshape(-1, 1) + np.asarray(w_exp, np.int64)).max(axis=0)


def matmul(x_words, x_exp, w_words, w_exp, fmt_x: LBFPFormat, fmt_w: LBFPFormat):
    """LBFP x (..., K) @ w (K, N): (acc int64 (..., N), e_ref int64 (N,)).

    `x_exp` holds one exponent per reduction index k (shared over the leading axes), `w_exp` one
    per weight element (K, N). acc[..., n] = sum over k of `product_terms` shifted by
    e_ref[n] - (x_exp[k] + w_exp[k, n]); acc * 2^(e_ref - lut_bits) approximates x @ w.
    """
    _same_product_table(fmt_x, fmt_w, "matmul")
    x_words, w_words = np.asarray(x_words), np.asarray(w_words)
    x_e = np.asarray(x_exp, np.int64).reshape(-1)
    e_ref = matmul_e_ref(x_e, w_exp)
    shift = e_ref - (x_e[:, None] + np.asarray(w_exp, np.int64))  # (K, N)
    flat = x_words.reshape(-1, x_words.shape[-1])
    acc = np.stack([product_terms(row[:, None], w_words, shift, fmt_w).sum(axis=0)
                    for row in flat]) if flat.shape[0] else np.zeros((0, w_words.shape[1]))
    return acc.astype(np.int64).reshape(*x_words.shape[:-1], w_words.shape[1]), e_ref


def conv2d(x_words, x_exp, w_words, w_exp, fmt_x: LBFPFormat, fmt_w: LBFPFormat, *,
           strides=(1, 1), padding=(0, 0, 0, 0), dilation=(1, 1), groups: int = 1):
    """LBFP conv2d, NCHW / OIHW: (acc int64 (N, O, OH, OW), e_ref int64 (O,)).

    `x_exp` holds one exponent per input channel (activation exponents are shared over batch and
    space: shape (C,) or broadcastable (1, C, 1, 1)); `w_exp` one per weight element (blocks
    expanded, shape of `w_words`). Per output channel o, e_ref[o] = max over its reduction of
    x_exp[c] + w_exp[o, c, kh, kw], and acc[n, o, y, x] = sum of `product_terms` shifted by
    e_ref[o] - (x_exp + w_exp), so acc * 2^(e_ref - fmt_w.lut_bits) approximates the conv of the
    decoded values. Padding is the zero code. fmt_x and fmt_w must share frac_bits and lut_bits
    (one product table).
    """
    _same_product_table(fmt_x, fmt_w, "conv2d")
    x_words, w_words = np.asarray(x_words), np.asarray(w_words)
    n, c, _, _ = x_words.shape
    o, cg, kh, kw = w_words.shape
    x_e = np.asarray(x_exp, np.int64).reshape(c)
    w_e = np.asarray(w_exp, np.int64)
    win = windows(pad_nchw(x_words, padding, fmt_x.c_max), kh, kw, strides, dilation)
    og = o // groups
    acc = np.zeros((n, o, win.shape[2], win.shape[3]), np.int64)
    e_ref = conv_e_ref(x_e, w_e, groups)
    for oc in range(o):
        chans = slice(oc // og * cg, oc // og * cg + cg)
        pair = x_e[chans][:, None, None] + w_e[oc]  # (Cg, KH, KW)
        terms = product_terms(win[:, chans].transpose(0, 2, 3, 1, 4, 5), w_words[oc],
                              e_ref[oc] - pair, fmt_w)  # (N, OH, OW, Cg, KH, KW)
        acc[:, oc] = terms.sum(axis=(3, 4, 5))
    return acc, e_ref


def bias_to_acc(bias: np.ndarray, e_ref: np.ndarray, fmt: LBFPFormat) -> np.ndarray:
    """Float bias in accumulator units 2^(e_ref - lut_bits): rint (half to even), int64."""
    return np.rint(np.ldexp(np.asarray(bias, np.float64), fmt.lut_bits - e_ref)).astype(np.int64)
