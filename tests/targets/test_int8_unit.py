"""The C emulator of the accel target against tvmq.numerics and tvmq.oracle, bit for bit."""

import ctypes
import doctest

import numpy as np
import pytest
from tvmq.targets.accel import AccelConfig, int8_unit, library
from tvmq.targets.accel.c_api import (
    DESC_FIELDS,
    AccelConvArgs,
    AccelCounters,
    AccelHw,
    as_pointer,
    c_float_p,
    c_int8_p,
    c_int32_p,
)
from tvmq.targets.accel.counters import alloc_counters, clear_counters, read_counters
from tvmq.targets.accel.int8_unit import check_layer, conv2d, conv2d_descriptor, requant

from tvmq import oracle
from tvmq.numerics import Requant, requantize
from tvmq.toolchain import find_compiler

pytestmark = pytest.mark.skipif(find_compiler() is None,
                                reason="the accel emulator needs a C compiler (cc/gcc or $CC)")

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
MODES = [("mult_shift", "double"), ("mult_shift", "single"), ("mult_shift", "tonearest"),
         ("fp32", None)]


def _accs() -> np.ndarray:
    ties = np.arange(-12, 13)
    edges = [INT32_MIN, INT32_MIN + 1, INT32_MAX, INT32_MAX - 1, 2**30, -(2**30), 2**24 + 1]
    draws = np.random.default_rng(0).integers(INT32_MIN, INT32_MAX, 4000, endpoint=True)
    return np.concatenate([ties, edges, draws]).astype(np.int32)


@pytest.mark.parametrize("kind,rounding", MODES)
@pytest.mark.parametrize("scale", [0.5, 0.375, 1.5, 2**-20, 2**-31, 0.0, 1234.567, 0.7071])
@pytest.mark.parametrize("zp,qmin,qmax", [(0, INT32_MIN, INT32_MAX), (-3, -128, 127)])
def test_requant_unit_matches_numerics(kind, rounding, scale, zp, qmin, qmax):
    rq = Requant.from_scale(scale, kind, rounding)
    acc = _accs()
    got = requant(acc, kind, rounding, rq.multiplier, rq.shift, rq.scale, zp, qmin, qmax)
    want = requantize(acc, rq, zero_point=zp, qmin=qmin, qmax=qmax)
    np.testing.assert_array_equal(got, want)


# (C, H, W, O, KH, KW, strides, padding (top, left, bottom, right), dilation, groups, bias)
SHAPES = {
    "3x3_pad1": (8, 6, 6, 8, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1, True),
    "stride2_asym_pad": (5, 7, 9, 6, 3, 3, (2, 2), (0, 1, 2, 1), (1, 1), 1, True),
    "depthwise": (12, 5, 5, 12, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 12, True),
    "grouped": (8, 5, 6, 6, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 2, True),
    "1x1": (16, 5, 5, 20, 1, 1, (1, 1), (0, 0, 0, 0), (1, 1), 1, False),
    "dilated": (4, 7, 7, 4, 3, 3, (1, 2), (2, 2, 2, 2), (2, 2), 1, True),
}


def _hw(t_oc: int) -> AccelConfig:
    return AccelConfig(t_oc=t_oc, t_ic=4)


@pytest.mark.parametrize("t_oc", [4, 16, 64])
@pytest.mark.parametrize("per_channel", [False, True], ids=["per_tensor", "per_channel"])
@pytest.mark.parametrize("kind,rounding", MODES)
@pytest.mark.parametrize("shape", list(SHAPES))
def test_conv2d_matches_oracle(shape, kind, rounding, per_channel, t_oc):
    c, h, w_, o, kh, kw, strides, padding, dilation, groups, has_bias = SHAPES[shape]
    rng = np.random.default_rng([list(SHAPES).index(shape), MODES.index((kind, rounding)),
                                 per_channel])
    x = rng.integers(-128, 128, (1, c, h, w_)).astype(np.int8)
    w = rng.integers(-127, 128, (o, c // groups, kh, kw)).astype(np.int8)
    bias = rng.integers(-5000, 5000, o).astype(np.int32) if has_bias else None
    in_zp, out_zp = -7, 3
    scale = rng.uniform(5e-4, 5e-3, o) if per_channel else 2e-3
    rq = Requant.from_scale(scale, kind, rounding)

    y, _ = conv2d(_hw(t_oc), x, in_zp, w, bias, strides, padding, dilation, groups, rq,
                  out_zp, -128, 127)

    acc = oracle.conv2d(x.astype(np.int64) - in_zp, w, strides, padding, dilation, groups)
    if bias is not None:
        acc = acc + bias.reshape(1, -1, 1, 1)
    want = requantize(acc, rq, zero_point=out_zp, qmin=-128, qmax=127, axis=1)
    np.testing.assert_array_equal(y, want.astype(np.int8))


def _counts(hw: AccelConfig, c, h, w_, o, kh, kw, padding=(0, 0, 0, 0), groups=1):
    x = np.zeros((1, c, h, w_), np.int8)
    w = np.ones((o, c // groups, kh, kw), np.int8)
    rq = Requant.from_scale(0.5, "mult_shift", "double")
    _, counters = conv2d(hw, x, 0, w, None, (1, 1), padding, (1, 1), groups, rq, 0, -128, 127)
    return counters


def test_cycles_one_tile():
    hw = AccelConfig(t_oc=16, t_ic=8, dma_bytes_per_cycle=8)
    # C=8, 4x4, O=4, 3x3 pad 1 -> OH=OW=4 (16 positions), Cg=8, one tile of 4 channels.
    # compute = 16*9*ceil(8/8) = 144; weights 4*8*9=288 + act 8*16=128 + out 4*16=64 = 480 B;
    # dma = 480/8 = 60; requant = 16; cycles = max(144, 60) + 16 = 160; macs = 16*4*8*9.
    assert _counts(hw, 8, 4, 4, 4, 3, 3, (1, 1, 1, 1)) == dict(
        cycles=160, compute_cycles=144, dma_cycles=60, requant_cycles=16, macs=4608,
        dma_bytes=480, tiles=1)


def test_cycles_many_tiles_compute_bound():
    hw = AccelConfig(t_oc=4, t_ic=4, dma_bytes_per_cycle=8)
    # C=6, 5x5, O=10, 3x3 no pad -> 3x3 = 9 positions, Cg=6; tiles of 4, 4, 2 channels.
    # compute per tile = 9*9*ceil(6/4) = 162; the input (150 B) fits act_buffer: tile 1 pays it.
    # tile 1: 4*54=216 + 150 + 4*9=36 = 402 B -> ceil(402/8) = 51; cycles 162 + 9 = 171
    # tile 2: 216 + 0 + 36 = 252 B -> 32; 171.  tile 3: 108 + 0 + 18 = 126 B -> 16; 171.
    assert _counts(hw, 6, 5, 5, 10, 3, 3) == dict(
        cycles=513, compute_cycles=486, dma_cycles=99, requant_cycles=27, macs=9 * 10 * 6 * 9,
        dma_bytes=780, tiles=3)


def test_cycles_dma_bound():
    hw = AccelConfig(t_oc=4, t_ic=4, act_buffer_bytes=16, dma_bytes_per_cycle=1)
    # As above, but the input (150 B) does not fit act_buffer_bytes=16: every tile loads it,
    # and one byte per cycle. tile 1: 216+150+36 = 402 cycles of DMA > 162 compute -> 402 + 9;
    # tile 2: 402 + 9; tile 3: 108+150+18 = 276 + 9.
    assert _counts(hw, 6, 5, 5, 10, 3, 3) == dict(
        cycles=411 + 411 + 285, compute_cycles=486, dma_cycles=1080, requant_cycles=27,
        macs=4860, dma_bytes=1080, tiles=3)


def test_cycles_depthwise_tiles_load_their_own_channels():
    hw = AccelConfig(t_oc=4, t_ic=4, dma_bytes_per_cycle=8)
    # C=O=8, groups=8, 4x4, 3x3 pad 1 -> 16 positions, Cg=1; tiles of 4 read channels 0-3, 4-7.
    # per tile: compute = 16*9*ceil(1/4) = 144; 4*9=36 + 4*16=64 + 4*16=64 = 164 B -> 21;
    # cycles = 144 + 16 = 160.
    assert _counts(hw, 8, 4, 4, 8, 3, 3, (1, 1, 1, 1), groups=8) == dict(
        cycles=320, compute_cycles=288, dma_cycles=42, requant_cycles=32, macs=16 * 8 * 9,
        dma_bytes=328, tiles=2)


def test_weight_tile_larger_than_buffer_is_an_error():
    hw = AccelConfig(t_oc=16, t_ic=16, weight_buffer_bytes=256)
    with pytest.raises(ValueError, match=r"weight_buffer_bytes=256 too small: .* needs 2304 bytes"):
        _counts(hw, 16, 4, 4, 16, 3, 3)


def test_bad_arguments_are_errors():
    hw = AccelConfig(t_oc=4, t_ic=4)
    x = np.zeros((1, 4, 4, 4), np.int8)
    w = np.zeros((4, 4, 3, 3), np.int8)
    rq = Requant.from_scale(0.5, "fp32")
    with pytest.raises(ValueError, match=r"qmin=-200 qmax=127: need -128 <= qmin"):
        conv2d(hw, x, 0, w, None, (1, 1), (1, 1, 1, 1), (1, 1), 1, rq, 0, -200, 127)
    with pytest.raises(ValueError, match=r"shift\[0\]=31: use \[-31, 30\]"):
        requant(np.zeros(3, np.int32), "mult_shift", "single", 2**30, 31, None, 0, -128, 127)
    with pytest.raises(ValueError, match="kind='fp32' with rounding=None"):
        requant(np.zeros(3, np.int32), "fp32", "double", None, None, 0.5, 0, -128, 127)

    lib = library.load()
    out = np.zeros(1, np.int32)
    assert lib.accel_requant(None, 0, 7, None, None, None, 0, 0, 0, None) != 0
    assert b"kind=7" in lib.accel_last_error()
    assert lib.accel_requant(None, 1, 0, None, None, None, 0, 0, 0,
                             out.ctypes.data_as(c_int32_p)) != 0
    assert b"NULL" in lib.accel_last_error()

    y = np.zeros((1, 4, 4, 4), np.int8)
    scale = np.array([0.5], np.float32)
    args = AccelConvArgs(x.ctypes.data_as(c_int8_p), 4, 4, 4, 0, w.ctypes.data_as(c_int8_p),
                         4, 3, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, None, 3, None, None,
                         scale.ctypes.data_as(c_float_p), 0, 0, -128, 127,
                         y.ctypes.data_as(c_int8_p), 4, 4)
    hw_c = AccelHw(4, 4, 4096, 4096, 64, 8)
    counters = AccelCounters()
    call = lambda: lib.accel_conv2d(ctypes.byref(hw_c), ctypes.byref(args),  # noqa: E731
                                    ctypes.byref(counters))
    assert call() != 0 and b"groups=3 must divide C=4 and O=4" in lib.accel_last_error()
    args.groups, args.OH = 1, 5
    assert call() != 0 and b"OH=5 OW=4: the conv formula gives OH=4 OW=4" in lib.accel_last_error()
    args.OH, args.KH = 4, 0
    assert call() != 0 and b"KH=0" in lib.accel_last_error()
    args.KH, args.x = 3, None
    assert call() != 0 and b"x, w or y is NULL" in lib.accel_last_error()
    args.x = x.ctypes.data_as(c_int8_p)
    hw_c.acc_buffer_bytes = 8
    assert call() != 0 and b"acc_buffer_bytes=8 too small" in lib.accel_last_error()
    hw_c.acc_buffer_bytes = 64
    assert call() == 0 and counters.tiles == 1
    cycles = counters.cycles
    assert call() == 0 and (counters.tiles, counters.cycles) == (2, 2 * cycles)  # accumulated


def test_tile_calls_and_counter_bank():
    hw = AccelConfig(t_oc=4, t_ic=4)
    rng = np.random.default_rng(3)
    x = rng.integers(-128, 128, (1, 6, 5, 5), dtype=np.int8)
    w = rng.integers(-127, 128, (10, 6, 3, 3), dtype=np.int8)
    rq = Requant.from_scale(np.full(10, 0.01, np.float32), "mult_shift", "double")
    a, b = alloc_counters(1), alloc_counters(2)
    assert b == a + 1 and read_counters(b + 1)["tiles"] == 0
    desc, regs = conv2d_descriptor(hw, x.shape, w.shape, 0, (1, 1), (0, 0, 0, 0), (1, 1), 1,
                                   rq, 0, -128, 127, counter_slot=b)
    assert dict(zip(DESC_FIELDS, desc.tolist()))["counter_slot"] == b
    assert regs.shape == (10, 2) and (regs[:, 0] == rq.multiplier).all()
    lib, y = library.load(), np.zeros((1, 10, 3, 3), np.int8)

    def tile(o0):
        return lib.accel_conv2d_tile(as_pointer(desc, c_int32_p), as_pointer(x, c_int8_p),
                                     as_pointer(w, c_int8_p), None, as_pointer(regs, c_int32_p),
                                     as_pointer(y, c_int8_p), o0)

    assert [tile(o0) for o0 in (0, 4, 8)] == [0, 0, 0]
    want, counts = conv2d(hw, x, 0, w, None, (1, 1), (0, 0, 0, 0), (1, 1), 1, rq, 0, -128, 127)
    np.testing.assert_array_equal(y, want)
    assert read_counters(b) == counts and read_counters(a)["tiles"] == 0
    for o0, why in ((2, b"o0=2: use a multiple of t_oc=4"), (12, b"in [0, O=10)")):
        assert tile(o0) != 0 and why in lib.accel_last_error()
    clear_counters(b)
    assert read_counters(b)["cycles"] == 0
    with pytest.raises(ValueError, match="counter slot -1"):
        read_counters(-1)
    assert lib.accel_counters_alloc(0) == -1
    hw_small = AccelConfig(t_oc=4, t_ic=4, weight_buffer_bytes=64)
    bad = desc.copy()
    bad[DESC_FIELDS.index("weight_buffer_bytes")] = 64
    assert "weight_buffer_bytes=64 too small" in check_layer(bad, regs)
    with pytest.raises(ValueError, match="needs 216 bytes"):
        conv2d_descriptor(hw_small, x.shape, w.shape, 0, (1, 1), (0, 0, 0, 0), (1, 1), 1,
                          rq, 0, -128, 127, counter_slot=b)


def test_module_example_runs():
    assert doctest.testmod(int8_unit, extraglobs={"np": np}).failed == 0
