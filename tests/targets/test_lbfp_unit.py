"""The LBFP MAC mode of the C accel emulator against tvmq.numerics.lbfp, bit for bit."""

import re

import numpy as np
import pytest
from tvmq.targets.accel import AccelConfig, library
from tvmq.targets.accel.c_api import (
    LBFP_DESC_FIELDS,
    as_pointer,
    c_double_p,
    c_int32_p,
    c_int64_p,
    c_uint8_p,
)
from tvmq.targets.accel.counters import alloc_counters, read_counters
from tvmq.targets.accel.lbfp_unit import (
    lbfp_check_layer,
    lbfp_conv2d,
    lbfp_conv2d_descriptor,
    lbfp_tile_runner,
)

from tvmq.numerics import lbfp
from tvmq.numerics.lbfp import LBFPFormat
from tvmq.toolchain import find_compiler

pytestmark = pytest.mark.skipif(find_compiler() is None,
                                reason="the accel emulator needs a C compiler (cc/gcc or $CC)")

ACT_AXES = (0, 2, 3)  # activation exponents are shared over batch and space


def _layer(rng, c, h, w_, o, kh, kw, groups, fmt, wide=False):
    """Realistic LBFP operands: float data encoded with calibrated block exponents. Returns the
    input words (1, C, H, W), per-channel x_exp (C,), weight words and per-element w_exp (OIHW).
    wide: the first input block 2^-60 smaller, so its product shifts reach 63 and beyond."""
    x = rng.normal(0, 1, (1, c, h, w_)) * np.exp2(rng.integers(-3, 4, (1, c, 1, 1)))
    x[rng.random(x.shape) < 0.1] = 0.0
    if wide:
        x[:, :fmt.block_size] *= 2.0**-60
    xe_blocks = lbfp.max_exponents(x, fmt, ACT_AXES)  # lowered by 0-1 as KL calibration may
    xe_blocks -= rng.integers(0, 2, xe_blocks.shape)   # choose (some inputs saturate)
    w = rng.normal(0, 0.2, (o, c // groups, kh, kw))
    we_blocks = lbfp.max_exponents(w, fmt)  # blocks along I (block_axis 1 of OIHW)
    x_exp = lbfp.expand_exponents(xe_blocks, (1, c, 1, 1), fmt).reshape(c)
    w_exp = lbfp.expand_exponents(we_blocks, w.shape, fmt)
    return lbfp.encode(x, xe_blocks, fmt), x_exp, lbfp.encode(w, we_blocks, fmt), w_exp


def _golden(xw, x_exp, ww, w_exp, fmt, bias_acc, out_blocks, lo, hi, conv):
    """lbfp.conv2d, + bias, acc_to_lbfp with the output's block exponents."""
    acc, e_ref = lbfp.conv2d(xw, x_exp, ww, w_exp, fmt, fmt, **conv)
    if bias_acc is not None:
        acc += bias_acc[:, None, None]
    return lbfp.acc_to_lbfp(acc, e_ref[:, None, None], out_blocks, fmt, lo=lo, hi=hi), acc, e_ref


def _out_blocks(rng, acc, e_ref, fmt, lo, hi):
    """Output block exponents from the clipped real output (max_exponents), some lowered by 1-2
    as a KL calibration would choose (so some outputs saturate)."""
    v = np.clip(np.ldexp(acc.astype(np.float64), e_ref[:, None, None] - fmt.lut_bits), lo, hi)
    e = lbfp.max_exponents(v, fmt, ACT_AXES)
    return e - rng.integers(0, 3, e.shape)


# (bits, frac_bits, block_size, lut_bits, C, H, W, O, KH, KW, strides, padding, dilation, groups,
#  bias, clip (lo, hi), t_oc, wide exponent range)
INF = np.inf
CASES = {
    "b2f0_3x3_relu": (2, 0, 1, 15, 6, 6, 6, 5, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1, True,
                      (0.0, INF), 4, False),
    "b3f1_stride2_asym": (3, 1, 2, 12, 5, 7, 9, 6, 3, 3, (2, 2), (0, 1, 2, 1), (1, 1), 1, False,
                          (-INF, INF), 4, False),
    "b4f2_grouped": (4, 2, 3, 10, 8, 5, 6, 6, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 2, True,
                     (0.0, 6.0), 4, False),
    "b5f3_depthwise": (5, 3, 1, 15, 12, 5, 5, 12, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 12, True,
                       (0.0, INF), 8, False),
    "b6f4_dilated": (6, 4, 16, 20, 4, 7, 7, 4, 3, 3, (1, 2), (2, 2, 2, 2), (2, 2), 1, True,
                     (-INF, INF), 4, False),
    "b7f0_1x1": (7, 0, 16, 8, 16, 5, 5, 20, 1, 1, (1, 1), (0, 0, 0, 0), (1, 1), 1, False,
                 (0.0, 6.0), 8, False),
    "b8f2_3x3": (8, 2, 16, 15, 8, 6, 6, 10, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1, True,
                 (-INF, INF), 4, False),
    "b8f4_stride2_depthwise": (8, 4, 8, 30, 6, 8, 7, 6, 3, 3, (2, 2), (1, 0, 1, 2), (1, 1), 6,
                               True, (0.0, INF), 4, False),
    "b8f1_lut4_wide_exponents": (8, 1, 4, 4, 6, 5, 5, 7, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1,
                                 True, (-INF, INF), 4, True),
    "b6f2_grouped_stride2_dilated": (6, 2, 2, 16, 6, 9, 9, 9, 2, 3, (2, 1), (0, 2, 1, 0),
                                     (2, 1), 3, False, (0.0, 6.0), 4, False),
}


@pytest.mark.parametrize("name", list(CASES))
def test_lbfp_conv2d_matches_golden(name):
    (bits, frac, block, lut_bits, c, h, w_, o, kh, kw, strides, padding, dilation, groups,
     has_bias, (lo, hi), t_oc, wide) = CASES[name]
    rng = np.random.default_rng(list(CASES).index(name))
    fmt = LBFPFormat(bits=bits, frac_bits=frac, block_size=block, lut_bits=lut_bits)
    xw, x_exp, ww, w_exp = _layer(rng, c, h, w_, o, kh, kw, groups, fmt, wide)
    conv = dict(strides=strides, padding=padding, dilation=dilation, groups=groups)
    e_ref = lbfp.conv_e_ref(x_exp, w_exp, groups)
    bias = lbfp.bias_to_acc(rng.normal(0, 0.5, o), e_ref, fmt) if has_bias else None
    acc, _ = lbfp.conv2d(xw, x_exp, ww, w_exp, fmt, fmt, **conv)
    out_blocks = _out_blocks(rng, acc + (0 if bias is None else bias[:, None, None]), e_ref,
                             fmt, lo, hi)
    want, _, _ = _golden(xw, x_exp, ww, w_exp, fmt, bias, out_blocks, lo, hi, conv)
    out_exp = lbfp.expand_exponents(out_blocks, (1, o, 1, 1), fmt).reshape(o)

    hw = AccelConfig(t_oc=t_oc, t_ic=4)
    y, counters = lbfp_conv2d(xw[0], x_exp, ww, w_exp, fmt, bias_acc=bias, out_exp=out_exp,
                              lo=lo, hi=hi, hw=hw, **conv)
    np.testing.assert_array_equal(y, want)
    assert counters["tiles"] == -(-o // t_oc)
    assert (want != fmt.c_max).any() and acc.any()  # not vacuous


def test_lbfp_conv2d_defaults_and_nchw_input():
    fmt = LBFPFormat()
    rng = np.random.default_rng(7)
    xw, x_exp, ww, w_exp = _layer(rng, 16, 4, 4, 12, 3, 3, 1, fmt)
    acc, e_ref = lbfp.conv2d(xw, x_exp, ww, w_exp, fmt, fmt)
    out_blocks = _out_blocks(rng, acc, e_ref, fmt, -INF, INF)
    want = lbfp.acc_to_lbfp(acc, e_ref[:, None, None], out_blocks, fmt)
    y, counters = lbfp_conv2d(xw, x_exp.reshape(1, -1, 1, 1), ww, w_exp, fmt,
                              out_exp=lbfp.expand_exponents(out_blocks, (1, 12, 1, 1), fmt))
    np.testing.assert_array_equal(y, want)
    assert counters["tiles"] == 2  # npu-small: t_oc = 8


def test_lbfp_output_conversion_on_threshold_ties():
    # All-zero input codes: acc = bias exactly (e_ref = 0). Each threshold T[k] = mant * 2^ex
    # (mant < 2^53) is hit exactly with bias = mant and out_exp = -ex - lut_bits (ties go to the
    # larger magnitude: code k), and missed by one unit either side; both signs.
    fmt = LBFPFormat(bits=4, frac_bits=1, block_size=1, lut_bits=15)
    mant, ex = np.frexp(fmt.thresholds)
    mant, ex = (mant * 2.0**53).astype(np.int64), ex - 53
    bias = np.concatenate([sign * (mant + d) for sign in (1, -1) for d in (-1, 0, 1)])
    out_exp = np.tile(-ex - fmt.lut_bits, 6)
    o = bias.size
    xw = np.full((1, 1, 1), fmt.c_max, np.uint8)
    ww = np.zeros((o, 1, 1, 1), np.uint8)
    y, _ = lbfp_conv2d(xw, np.zeros(1), ww, np.zeros(ww.shape), fmt, bias_acc=bias,
                       out_exp=out_exp)
    want = lbfp.acc_to_lbfp(bias.reshape(1, o, 1, 1), 0, out_exp.reshape(1, o, 1, 1), fmt)
    np.testing.assert_array_equal(y, want)
    codes = lbfp.split(want, fmt)[1].reshape(6, -1)
    k = np.arange(fmt.c_max)
    assert (codes[1] == k).all() and (codes[0] == k + 1).all() and (codes[2] == k).all()


def _lbfp_counts(hw: AccelConfig, w_block: int) -> dict[str, int]:
    """Counters of an LBFP conv: C=6, 5x5 input, O=10, 3x3 kernel, no padding."""
    fmt = LBFPFormat(bits=4, frac_bits=1, block_size=1)
    xw = np.full((6, 5, 5), fmt.c_max, np.uint8)
    ww = np.zeros((10, 6, 3, 3), np.uint8)
    _, counters = lbfp_conv2d(xw, np.zeros(6), ww, np.zeros(ww.shape), fmt, out_exp=0, hw=hw,
                              w_block=w_block)
    return counters


def test_lbfp_cycles_by_hand():
    # C=6, 5x5, O=10, 3x3 no pad -> 3x3 = 9 positions, Cg=6, 9 taps; tiles of 4, 4, 2 channels.
    # w_block=4 -> ceil(6/4) = 2 exponent bytes per (o, kh, kw).
    # compute per tile = 9*9*ceil(6/4) = 162; the input (150 B) fits act_buffer: tile 1 pays it.
    # tile 1: codes 4*6*9=216 + exps 4*2*9=72 + act 150 + out 4*9=36 = 474 B -> ceil(474/8) = 60
    # tile 2: 216 + 72 + 0 + 36 = 324 B -> 41.  tile 3: 108 + 36 + 0 + 18 = 162 B -> 21.
    # each tile: cycles = max(162, dma) + 9 (conversion) = 171.
    hw = AccelConfig(t_oc=4, t_ic=4, dma_bytes_per_cycle=8)
    assert _lbfp_counts(hw, w_block=4) == dict(
        cycles=513, compute_cycles=486, dma_cycles=122, requant_cycles=27, macs=9 * 10 * 6 * 9,
        dma_bytes=960, tiles=3)


def test_lbfp_cycles_dma_bound_by_hand():
    # As above, but the input does not fit act_buffer_bytes=16 (every tile loads its 150 B) and
    # one byte per cycle; w_block=1 -> 6 exponent bytes per (o, kh, kw).
    # tile 1: 216 + 4*6*9=216 + 150 + 36 = 618 -> 618 + 9;  tile 2: the same;
    # tile 3: 108 + 108 + 150 + 18 = 384 -> 384 + 9.
    hw = AccelConfig(t_oc=4, t_ic=4, act_buffer_bytes=16, dma_bytes_per_cycle=1)
    assert _lbfp_counts(hw, w_block=1) == dict(
        cycles=627 + 627 + 393, compute_cycles=486, dma_cycles=1620, requant_cycles=27,
        macs=4860, dma_bytes=1620, tiles=3)


def _desc(**changes) -> np.ndarray:
    desc = lbfp_conv2d_descriptor(AccelConfig(t_oc=4, t_ic=4), (1, 6, 5, 5), (10, 6, 3, 3),
                                  LBFPFormat(bits=6, frac_bits=2, block_size=4), (1, 1),
                                  (0, 0, 0, 0), (1, 1), 1, counter_slot=alloc_counters(1))
    for field, value in changes.items():
        desc[LBFP_DESC_FIELDS.index(field)] = value
    return desc


# descriptor field changes -> the checker's message
BAD_FIELDS = {
    "bits_9": (dict(bits=9), r"bits=9: use \[2, 8\]"),
    "bits_1": (dict(bits=1), r"bits=1: use \[2, 8\]"),
    "frac_bits_5": (dict(frac_bits=5), r"frac_bits=5: use \[0, min\(4, bits - 2\)\] = \[0, 4\]"),
    "frac_bits_over_bits": (dict(bits=3, frac_bits=2), r"frac_bits=2: .* = \[0, 1\]"),
    "frac_bits_negative": (dict(frac_bits=-1), r"frac_bits=-1"),
    "lut_bits_31": (dict(lut_bits=31), r"lut_bits=31: use \[1, 30\]"),
    "lut_bits_0": (dict(lut_bits=0), r"lut_bits=0: use \[1, 30\]"),
    "w_block_0": (dict(w_block=0), r"w_block=0: use >= 1"),
    "weight_buffer": (dict(weight_buffer_bytes=256),
                      r"weight_buffer_bytes=256 too small: .* needs 288 bytes "
                      r"\(4 x 6 x 3 x 3 code words \+ 4 x 2 x 3 x 3 exponent bytes"),
    "acc_buffer": (dict(acc_buffer_bytes=31),
                   r"acc_buffer_bytes=31 too small: 4 int64 accumulators need 32"),
    "groups": (dict(groups=4), r"groups=4 must divide C=6 and O=10"),
    "OH": (dict(OH=4), r"OH=4 OW=3: the conv formula gives OH=3 OW=3"),
    "KW": (dict(KW=0), r"KW=0"),
    "t_ic": (dict(t_ic=0), r"t_ic=0"),
    "counter_slot": (dict(counter_slot=-1), r"counter_slot=-1: use \[0, 1048576\)"),
}


@pytest.mark.parametrize("case", list(BAD_FIELDS))
def test_lbfp_bad_descriptor_names_the_field(case):
    changes, message = BAD_FIELDS[case]
    assert lbfp_check_layer(_desc()) is None
    reason = lbfp_check_layer(_desc(**changes))
    assert reason is not None
    assert re.search(message, reason), reason


def test_lbfp_bad_settings_raise():
    hw = AccelConfig(t_oc=4, t_ic=4, weight_buffer_bytes=256)
    fmt = LBFPFormat(bits=6, frac_bits=2, block_size=4)
    with pytest.raises(ValueError, match=r"weight_buffer_bytes=256 too small: .* needs 288 bytes"):
        lbfp_conv2d_descriptor(hw, (1, 6, 5, 5), (10, 6, 3, 3), fmt, (1, 1), (0, 0, 0, 0),
                               (1, 1), 1, counter_slot=0)
    with pytest.raises(ValueError, match="w_block=0: use >= 1"):
        lbfp_conv2d(np.zeros((6, 5, 5), np.uint8), np.zeros(6), np.zeros((4, 6, 3, 3)),
                    np.zeros((4, 6, 3, 3)), fmt, out_exp=0, w_block=0)


def _tile_args(fmt: LBFPFormat):
    """Valid arguments of accel_lbfp_conv2d_tile for a 6x5x5 input, 10x6x3x3 weights."""
    rng = np.random.default_rng(5)
    xw, x_exp, ww, w_exp = _layer(rng, 6, 5, 5, 10, 3, 3, 1, fmt)
    return dict(desc=_desc(), x=xw, w=ww, x_exp=x_exp.astype(np.int32),
                w_exp=w_exp.astype(np.int32),
                e_ref=lbfp.conv_e_ref(x_exp, w_exp).astype(np.int32), bias=None,
                out_exp=np.zeros(10, np.int32), clip=np.array([-INF, INF]), lut=fmt.lut,
                thresholds=fmt.thresholds, y=np.zeros((1, 10, 3, 3), np.uint8))


def _set(key, index, value):
    return lambda a: a[key].__setitem__(index, value)


def _replace(key, make):
    return lambda a: a.__setitem__(key, make(a[key]))


BAD_TILE_DATA = {
    "e_ref_below_max": (lambda a: a["e_ref"].__setitem__(3, a["e_ref"][3] - 1),
                        r"e_ref\[3\]=.* < x_exp\[.*\] \+ w_exp\[.*\] = .*: use lbfp.conv_e_ref"),
    "x_word": (_set("x", (0, 1, 2, 3), 64), r"x\[38\]=64: a 6-bit code word must be < 64"),
    "w_word": (_set("w", (0, 0, 0, 1), 200), r"w\[1\]=200: a 6-bit code word"),
    "out_exp": (_set("out_exp", 2, 128), r"out_exp\[2\]=128: use \[-126, 127\]"),
    "x_exp": (_set("x_exp", 0, -127), r"x_exp\[0\]=-127: use \[-126, 127\]"),
    "clip_nan": (_replace("clip", lambda _: np.array([np.nan, 1.0])), r"clip=\{nan, 1\}"),
    "clip_lo_inf": (_replace("clip", lambda _: np.array([INF, INF])),
                    r"clip=\{inf, inf\}: use lo < inf"),
    "lut": (_replace("lut", lambda t: t * 4), r"lut\[0\]=.*: use \[0, 2\^lut_bits"),
    "thresholds": (_replace("thresholds", lambda t: t[::-1].copy()),
                   r"thresholds\[1\]=.*: use finite positive decreasing"),
    "acc_2_53": (_replace("bias", lambda _: np.full(10, 2**53, np.int64)),
                 r"acc=\d+ at \(o=\d+, y=0, x=0\): \|acc\| >= 2\^53"),
}


@pytest.mark.parametrize("case", list(BAD_TILE_DATA))
def test_lbfp_bad_tile_data_is_an_error(case):
    change, message = BAD_TILE_DATA[case]
    fmt = LBFPFormat(bits=6, frac_bits=2, block_size=4)
    args = _tile_args(fmt)
    lbfp_tile_runner(**args)()  # valid
    change(args)
    with pytest.raises(ValueError, match="accel_lbfp_conv2d_tile: " + message):
        lbfp_tile_runner(**args)()


def test_lbfp_tile_calls_and_counter_bank():
    fmt = LBFPFormat(bits=6, frac_bits=2, block_size=4)
    args = _tile_args(fmt)
    slot = int(args["desc"][LBFP_DESC_FIELDS.index("counter_slot")])
    lbfp_tile_runner(**args)()
    want, counts = lbfp_conv2d(args["x"], args["x_exp"], args["w"], args["w_exp"], fmt,
                               out_exp=args["out_exp"], hw=AccelConfig(t_oc=4, t_ic=4))
    np.testing.assert_array_equal(args["y"], want)
    assert read_counters(slot) == counts and counts["tiles"] == 3
    lib = library.load()
    ptrs = [as_pointer(args[k], t) for k, t in (
        ("desc", c_int32_p), ("x", c_uint8_p), ("w", c_uint8_p), ("x_exp", c_int32_p),
        ("w_exp", c_int32_p), ("e_ref", c_int32_p))]
    rest = [None, as_pointer(args["out_exp"], c_int32_p), as_pointer(args["clip"], c_double_p),
            as_pointer(args["lut"], c_int64_p), as_pointer(args["thresholds"], c_double_p)]
    y = as_pointer(args["y"], c_uint8_p)
    for o0, why in ((2, b"o0=2: use a multiple of t_oc=4"), (12, b"in [0, O=10)")):
        assert lib.accel_lbfp_conv2d_tile(*ptrs, *rest, y, o0) != 0
        assert why in lib.accel_last_error()
    assert lib.accel_lbfp_conv2d_tile(*ptrs, *rest, None, 0) != 0
    assert b"or y is NULL" in lib.accel_last_error()
    assert lib.accel_lbfp_desc_len() == len(LBFP_DESC_FIELDS)
