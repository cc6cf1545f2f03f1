"""LBFP golden format: exhaustive round trips and products for every format up to 8 bits."""

import dataclasses
import math

import numpy as np
import pytest

from tvmq.numerics import lbfp
from tvmq.numerics.lbfp import LBFPFormat

FORMATS = [LBFPFormat(bits=b, frac_bits=f, block_size=4, block_axis=0)
           for b in range(2, 9) for f in range(0, min(4, b - 2) + 1)]
IDS = [f"b{f.bits}f{f.frac_bits}" for f in FORMATS]


def _all_words(fmt):
    """Every canonical code word: both signs of every magnitude code, and +0."""
    c = np.arange(fmt.c_max)
    return np.concatenate([c, c | (1 << (fmt.bits - 1)), [fmt.c_max]]).astype(np.uint8)


@pytest.mark.parametrize("fmt", FORMATS, ids=IDS)
def test_every_code_round_trips(fmt):
    words = _all_words(fmt)
    exps = np.random.default_rng(fmt.bits).integers(-20, 20, lbfp.n_blocks(len(words), fmt))
    values = lbfp.decode(words, exps, fmt)
    np.testing.assert_array_equal(lbfp.encode(values, exps, fmt), words)
    e = lbfp.expand_exponents(exps, words.shape, fmt)
    c = words.astype(int) & fmt.c_max
    want = [0.0 if ci == fmt.c_max else
            (-1) ** int(w >> (fmt.bits - 1)) * 2.0 ** (ei - ci / 2**fmt.frac_bits)
            for w, ci, ei in zip(words, c, e)]
    np.testing.assert_allclose(values, want, rtol=1e-15, atol=0)


@pytest.mark.parametrize("fmt", FORMATS, ids=IDS)
def test_encode_is_nearest_in_log2(fmt):
    rng = np.random.default_rng(1)
    x = rng.choice([-1, 1], 4000) * np.exp2(rng.uniform(-(fmt.c_max + 3) / 2**fmt.frac_bits, 1.5,
                                                        4000))
    words = lbfp.encode(x, np.zeros(lbfp.n_blocks(len(x), fmt), np.int64), fmt)
    steps = -np.log2(np.abs(x)) * 2**fmt.frac_bits  # distance below 2^0 in code steps
    away_from_ties = np.abs(steps - np.floor(steps) - 0.5) > 1e-6
    ref = np.clip(np.floor(steps + 0.5), 0, fmt.c_max).astype(int)  # c_max: below the last one
    sign, c = lbfp.split(words, fmt)
    np.testing.assert_array_equal(c[away_from_ties], ref[away_from_ties])
    np.testing.assert_array_equal(sign, ((x < 0) & (c < fmt.c_max)).astype(int))


def test_ties_saturation_and_zero():
    fmt = LBFPFormat(bits=4, frac_bits=0, block_size=8, block_axis=0)  # codes 0..6, zero = 7
    x = np.array([2**-0.5, 8.0, 1.0, 0.0, -0.0, 2**-6.5, -(2**-6.6), -(2**-6)])
    sign, c = lbfp.split(lbfp.encode(x, [0], fmt), fmt)
    # ties go to the larger magnitude (2^-0.5 -> 2^0, 2^-6.5 -> 2^-6, not zero); above 2^E
    # saturates; below half a step under 2^-6 is zero, and zero is stored with sign 0
    assert c.tolist() == [0, 0, 0, 7, 7, 6, 7, 6]
    assert sign.tolist() == [0, 0, 0, 0, 0, 0, 0, 1]


@pytest.mark.parametrize("fmt", FORMATS, ids=IDS)
def test_every_product_pair(fmt):
    """sign(a b) * (LUT[r] >> q) is within 1.5 units of 2^lut_bits * |a b| for every code pair,
    and is exactly floor(round(2^(L - r/2^f)) / 2^q) computed independently."""
    words = _all_words(fmt)
    a, b = np.meshgrid(words, words, indexing="ij")
    terms = lbfp.product_terms(a, b, 0, fmt)
    one_block = dataclasses.replace(fmt, block_size=len(words))
    exact = lbfp.decode(a, [[0]], one_block) * lbfp.decode(b, [[0]], one_block)
    assert np.all(np.abs(terms - exact * 2**fmt.lut_bits) < 1.5)
    f, big = fmt.frac_bits, fmt.c_max
    for wa, wb, t in zip(a.flat, b.flat, terms.flat):
        ca, cb = int(wa) & big, int(wb) & big
        if big in (ca, cb):
            assert t == 0
            continue
        s = ca + cb
        lut = round(2 ** (fmt.lut_bits - (s % 2**f) / 2**f))
        mag = lut >> (s >> f)
        assert t == (-mag if (int(wa) ^ int(wb)) >> (fmt.bits - 1) else mag)


def test_dot_aligns_blocks_to_the_largest_exponent():
    fmt = LBFPFormat(bits=8, frac_bits=2, block_size=4, block_axis=0, lut_bits=15)
    rng = np.random.default_rng(2)
    a, b = rng.normal(0, 1, 12), rng.normal(0, 3, 12)
    ea, eb = lbfp.max_exponents(a, fmt), lbfp.max_exponents(b, fmt)
    wa, wb = lbfp.encode(a, ea, fmt), lbfp.encode(b, eb, fmt)
    pa, pb = lbfp.expand_exponents(ea, a.shape, fmt), lbfp.expand_exponents(eb, b.shape, fmt)
    acc, e_ref = lbfp.dot(wa, pa, wb, pb, fmt)
    ref = 0  # independent: Python ints, one shift per product
    for x, y, ex, ey in zip(wa, wb, pa, pb):
        cx, cy = int(x) & fmt.c_max, int(y) & fmt.c_max
        if fmt.c_max in (cx, cy):
            continue
        s = cx + cy
        mag = int(fmt.lut[s & 3]) >> ((s >> 2) + e_ref - int(ex + ey))
        ref += -mag if (int(x) ^ int(y)) >> 7 else mag
    assert acc == ref and e_ref == int((pa + pb).max())
    approx = acc * 2.0 ** (e_ref - fmt.lut_bits)
    exact = float(np.sum(lbfp.decode(wa, ea, fmt) * lbfp.decode(wb, eb, fmt)))
    assert abs(approx - exact) <= 12 * 1.5 * 2.0 ** (e_ref - fmt.lut_bits)
    assert abs(exact - float(a @ b)) < 0.2 * np.abs(a * b).sum()


def test_acc_to_lbfp_encodes_the_accumulator_value():
    fmt = LBFPFormat(bits=6, frac_bits=1, block_size=2, block_axis=0)
    acc = np.array([0, 5, -40000, 123456, -1, 2**40])
    exps = np.array([3, 10, 40])
    want = lbfp.encode(acc * 2.0 ** (4 - fmt.lut_bits), exps, fmt)
    np.testing.assert_array_equal(lbfp.acc_to_lbfp(acc, 4, exps, fmt), want)
    with pytest.raises(ValueError, match="2\\^53"):
        lbfp.acc_to_lbfp(np.array([2**53]), 0, [0], fmt)


def test_max_exponents_cover_each_block():
    fmt = LBFPFormat(bits=8, frac_bits=0, block_size=3, block_axis=1)
    x = np.array([[0.3, -1.0, 0.2, 0.0, 0.0, 0.0, 5.0],
                  [2.0**-30, 0.0, 0.0, 1.5, -4.0, 4.0, 0.0]])
    e = lbfp.max_exponents(x, fmt)
    assert e.tolist() == [[0, 0, 3], [-30, 2, 0]]  # exact powers of two stay; all-zero -> 0
    words = lbfp.encode(x, e, fmt)
    assert (lbfp.split(words, fmt)[1][0, 3:6] == fmt.c_max).all()  # zero encodes exactly
    np.testing.assert_array_equal(lbfp.decode(words, e, fmt)[x == 0], 0.0)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_refused(bad):
    fmt = LBFPFormat(block_axis=0)
    with pytest.raises(ValueError, match=r"holds .* at index \(2,\).*finite"):
        lbfp.encode(np.array([1.0, 2.0, bad]), [1], fmt)
    with pytest.raises(ValueError, match="finite"):
        lbfp.max_exponents(np.array([1.0, bad]), fmt)


@pytest.mark.parametrize("field,value,allowed", [
    ("bits", 9, r"\[2, 8\]"), ("bits", 1, r"\[2, 8\]"), ("frac_bits", 3, r"\[0, 2\]"),
    ("frac_bits", -1, r"\[0, 2\]"), ("block_size", 0, r"\[1, "), ("lut_bits", 31, r"\[1, 30\]"),
    ("bits", 4.0, r"\[2, 8\]")])
def test_bad_format_fields_name_the_field(field, value, allowed):
    kwargs = {"bits": 4, field: value} if field != "bits" else {field: value}
    with pytest.raises(ValueError, match=rf"LBFPFormat\.{field}=.*{allowed}"):
        LBFPFormat(**kwargs)
    with pytest.raises(ValueError, match="block_axis"):
        LBFPFormat(block_axis="1")
    assert math.isclose(LBFPFormat().thresholds[0], 2 ** -0.125)


def _log_uniform(rng, n, lo, hi):
    return rng.choice([-1, 1], n) * np.exp2(rng.uniform(lo, hi, n))


def test_kl_keeps_the_max_exponent_without_outliers():
    fmt = LBFPFormat(bits=4, frac_bits=0, block_size=1, block_axis=1)  # 6 magnitudes: 2^E..2^E-5
    x = _log_uniform(np.random.default_rng(3), 5000, -4.5, 1.0).reshape(-1, 1)
    assert lbfp.max_exponents(x, fmt, shared_axes=(0,)).tolist() == [[1]]
    assert lbfp.kl_exponents(x, fmt, shared_axes=(0,)).tolist() == [[1]]


def test_kl_saturates_a_rare_outlier():
    fmt = LBFPFormat(bits=4, frac_bits=0, block_size=1, block_axis=1)
    x = np.append(_log_uniform(np.random.default_rng(4), 5000, -4.5, 1.0), 8.0).reshape(-1, 1)
    assert lbfp.max_exponents(x, fmt, shared_axes=(0,)).tolist() == [[3]]
    e = lbfp.kl_exponents(x, fmt, shared_axes=(0,))
    assert e.tolist() in ([[0]], [[1]])  # clip the one outlier instead of flushing half the data
    err = {k: np.abs(lbfp.decode(lbfp.encode(x, [[k]], fmt), [[k]], fmt) - x).sum() for k in (3, 1)}
    assert err[1] < err[3]


def test_kl_exponents_per_activation_block():
    fmt = LBFPFormat(bits=8, frac_bits=2, block_size=2, block_axis=1)
    rng = np.random.default_rng(5)
    base = rng.normal(0, 1, (6, 2, 3, 3))
    x = np.concatenate([base, 16 * base, np.zeros((6, 1, 3, 3))], axis=1)
    e = lbfp.kl_exponents(x, fmt, shared_axes=(0, 2, 3))
    e_max = lbfp.max_exponents(x, fmt, shared_axes=(0, 2, 3))
    assert e.shape == e_max.shape == (1, 3, 1, 1)
    assert e[0, 2, 0, 0] == e_max[0, 2, 0, 0] == 0  # the all-zero channel block
    assert np.all((e <= e_max) & (e >= e_max - 3))
    assert e[0, 1, 0, 0] - e[0, 0, 0, 0] == 4  # 16x the values: exactly 4 more
    words = lbfp.encode(x, e, fmt)
    assert words.shape == x.shape and np.all(lbfp.decode(words, e, fmt)[:, 4] == 0)
    with pytest.raises(ValueError, match="bins_per_step"):
        lbfp.kl_exponents(x, fmt, bins_per_step=3)


@pytest.mark.parametrize("groups,padding,strides", [(1, (1, 1, 1, 1), (1, 1)),
                                                    (3, (0, 1, 2, 0), (2, 1))])
def test_conv2d_is_the_dot_of_every_window(groups, padding, strides):
    fmt_x = LBFPFormat(bits=8, frac_bits=2, block_size=2, block_axis=1)
    fmt_w = LBFPFormat(bits=8, frac_bits=2, block_size=2, block_axis=1)
    rng = np.random.default_rng(6)
    x = rng.normal(0, 1, (2, 6, 5, 5)) * np.array([1, 4, 4, 0.25, 1, 1])[None, :, None, None]
    w = rng.normal(0, 0.3, (6, 6 // groups, 3, 3))
    xe = lbfp.max_exponents(x, fmt_x, shared_axes=(0, 2, 3))
    we = lbfp.max_exponents(w, fmt_w)
    xw, ww = lbfp.encode(x, xe, fmt_x), lbfp.encode(w, we, fmt_w)
    x_e = lbfp.expand_exponents(xe, (1, 6, 1, 1), fmt_x).reshape(6)
    w_e = lbfp.expand_exponents(we, w.shape, fmt_w)
    acc, e_ref = lbfp.conv2d(xw, x_e, ww, w_e, fmt_x, fmt_w, strides=strides, padding=padding,
                             groups=groups)
    top, left, bottom, right = padding
    xp = np.pad(xw, ((0, 0), (0, 0), (top, bottom), (left, right)), constant_values=fmt_x.c_max)
    cg = 6 // groups
    for n, oc, y, z in np.ndindex(*acc.shape):
        g = oc // (6 // groups)
        patch = xp[n, g * cg:(g + 1) * cg, y * strides[0]:y * strides[0] + 3,
                   z * strides[1]:z * strides[1] + 3]
        pe = np.broadcast_to(x_e[g * cg:(g + 1) * cg, None, None], patch.shape)
        want, want_ref = lbfp.dot(patch.reshape(-1), pe.reshape(-1), ww[oc].reshape(-1),
                                  w_e[oc].reshape(-1), fmt_w)
        assert (acc[n, oc, y, z], e_ref[oc]) == (want, want_ref)
    approx = acc * np.exp2(e_ref - fmt_w.lut_bits)[None, :, None, None]
    exact = oracle_conv(lbfp.decode(xw, xe, fmt_x), lbfp.decode(ww, we, fmt_w), strides, padding,
                        groups)
    assert np.abs(approx - exact).max() < 0.01 * np.abs(exact).max()
    bias = lbfp.bias_to_acc(np.array([0.5, -1.25, 3.0, 0, 0, 0]), e_ref, fmt_w)
    np.testing.assert_array_equal(bias[:3] * np.exp2(e_ref[:3] - fmt_w.lut_bits), [0.5, -1.25, 3])


def oracle_conv(x, w, strides, padding, groups):
    from tvmq.oracle import conv2d
    return conv2d(x, w, strides, padding, (1, 1), groups)


def test_streaming_histograms_equal_one_shot_exponents():
    """Calibration adds one sample at a time; the exponents equal those of the whole set."""
    from tvmq.calibration.lbfp_observer import LBFPObserver

    fmt = LBFPFormat(bits=6, frac_bits=2, block_size=3)
    rng = np.random.default_rng(8)
    x = rng.normal(size=(10, 7, 4, 4)) * np.exp(rng.normal(size=(1, 7, 1, 1)) * 3)
    x[:, 2] = 0
    x[3] *= 40  # one sample widens the histogram's range after the first ones
    for method, whole in (("kl", lbfp.kl_exponents), ("max", lbfp.max_exponents)):
        obs = LBFPObserver(fmt, method, "t")
        for sample in x:
            obs.observe(sample[None])
        blocks = whole(x, dataclasses.replace(fmt, block_axis=1), shared_axes=(0, 2, 3))
        np.testing.assert_array_equal(obs.exponents(), np.repeat(blocks.reshape(-1), 3)[:7])
