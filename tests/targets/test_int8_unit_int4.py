"""4-bit operands on the accelerator emulator: exact with tvmq.numerics, packed weights, the
Bit Fusion cycle model by hand, and the checks."""

import numpy as np
import pytest
from tvmq.targets.accel import AccelConfig
from tvmq.targets.accel.int8_unit import conv2d, conv2d_descriptor

from tests.targets.test_int8_unit import SHAPES
from tvmq import oracle
from tvmq.numerics import Requant, requantize
from tvmq.numerics.weights import pack_int4, unpack_int4
from tvmq.toolchain import find_compiler

pytestmark = pytest.mark.skipif(find_compiler() is None,
                                reason="the accel emulator needs a C compiler (cc/gcc or $CC)")

BITS = [(8, 8), (4, 8), (8, 4), (4, 4)]


def test_pack_int4_round_trip_and_layout():
    q = np.array([-8, 7, -1, 0, 3], np.int8)
    packed = pack_int4(q)
    assert packed.dtype == np.uint8 and packed.tolist() == [0x78, 0x0F, 0x03]
    np.testing.assert_array_equal(unpack_int4(packed, 5), q)
    every_byte = np.arange(256, dtype=np.uint8)
    np.testing.assert_array_equal(pack_int4(unpack_int4(every_byte, 512)), every_byte)
    with pytest.raises(ValueError, match="value 8 at flat index 1"):
        pack_int4(np.array([0, 8]))


@pytest.mark.parametrize("w_bits,a_bits", BITS)
@pytest.mark.parametrize("shape", ["3x3_pad1", "stride2_asym_pad", "depthwise", "1x1", "grouped"])
def test_int4_conv_matches_numerics(shape, w_bits, a_bits):
    c, h, w_, o, kh, kw, strides, padding, dilation, groups, has_bias = SHAPES[shape]
    rng = np.random.default_rng([BITS.index((w_bits, a_bits)), list(SHAPES).index(shape)])
    a_hi, w_hi = 2 ** (a_bits - 1), 2 ** (w_bits - 1)
    x = rng.integers(-a_hi, a_hi, (1, c, h, w_)).astype(np.int8)
    w = rng.integers(-w_hi + 1, w_hi, (o, c // groups, kh, kw)).astype(np.int8)
    bias = rng.integers(-500, 500, o).astype(np.int32) if has_bias else None
    in_zp = -3 if a_bits == 4 else -20
    rq = Requant.from_scale(rng.uniform(5e-3, 5e-2, o), "mult_shift", "double")
    for t_oc in (4, 16):
        y, _ = conv2d(AccelConfig(t_oc=t_oc, t_ic=4), x, in_zp, w, bias, strides, padding,
                      dilation, groups, rq, 1, -8, 7, w_bits=w_bits, a_bits=a_bits,
                      y_bits=4)
        acc = oracle.conv2d(x.astype(np.int64) - in_zp, w, strides, padding, dilation, groups)
        if bias is not None:
            acc = acc + bias.reshape(1, -1, 1, 1)
        want = requantize(acc, rq, zero_point=1, qmin=-8, qmax=7, axis=1)
        np.testing.assert_array_equal(y, want.astype(np.int8))


def _counters(hw, c, o, w_bits, a_bits, groups=1, y_bits=8):
    x = np.zeros((1, c, 4, 4), np.int8)
    w = np.zeros((o, c // groups, 3, 3), np.int8)
    rq = Requant.from_scale(1e-3, "mult_shift", "double")
    lo, hi = -(2 ** (y_bits - 1)), 2 ** (y_bits - 1) - 1
    return conv2d(hw, x, 0, w, None, (1, 1), (1, 1, 1, 1), (1, 1), groups, rq, 0, lo, hi,
                  w_bits=w_bits, a_bits=a_bits, y_bits=y_bits)[1]


def test_cycle_model_by_hand():
    # C=32, 4x4 input, O=8, 3x3 pad 1 -> 4x4 output, t_oc=8, t_ic=4, one tile, DMA 4 B/cycle.
    hw = AccelConfig(t_oc=8, t_ic=4, dma_bytes_per_cycle=4)
    pos, taps = 16, 9
    for (w_bits, a_bits), fused in zip(BITS, (1, 2, 2, 4)):
        n = _counters(hw, 32, 8, w_bits, a_bits)
        # each input lane reduces 9 taps x 32/4 channels = 72 products, `fused` per step
        assert n["compute_cycles"] == pos * 72 // fused  # 1152 / 576 / 576 / 288
        weight = 8 * 32 * taps * w_bits // 8
        act = 32 * 16 * a_bits // 8
        assert n["dma_bytes"] == weight + act + 8 * pos
        assert n["cycles"] == max(n["compute_cycles"], -(-n["dma_bytes"] // 4)) + pos
    # 4-bit outputs halve the output bytes
    assert _counters(hw, 32, 8, 8, 8)["dma_bytes"] - _counters(hw, 32, 8, 8, 8, y_bits=4)[
        "dma_bytes"] == 8 * pos // 2
    # depthwise: one busy input lane; its fused units take 4 of the 9 taps per step at w4a4
    dw8, dw4 = _counters(hw, 8, 8, 8, 8, groups=8), _counters(hw, 8, 8, 4, 4, groups=8)
    assert (dw8["compute_cycles"], dw4["compute_cycles"]) == (pos * 9, pos * 3)
    assert dw4["dma_bytes"] < dw8["dma_bytes"]
    # few channels: 4 channels on 4 lanes is one product per lane and tap; w4a4 fuses taps
    assert _counters(hw, 4, 8, 4, 4)["compute_cycles"] == pos * 3


def test_input_outside_a_bits_is_refused():
    x = np.zeros((1, 4, 3, 3), np.int8)
    x[0, 2, 1, 0] = 9
    w = np.zeros((4, 4, 1, 1), np.int8)
    rq = Requant.from_scale(1e-3, "mult_shift", "double")
    with pytest.raises(ValueError, match=r"input value 9 at channel 2, row 1, column 0 is "
                                         r"outside a_bits=4"):
        conv2d(AccelConfig(t_oc=4, t_ic=4), x, 0, w, None, (1, 1), (0, 0, 0, 0), (1, 1), 1,
               rq, 0, -128, 127, a_bits=4)


def test_descriptor_checks_the_widths():
    rq = Requant.from_scale(1e-3, "mult_shift", "double")
    args = dict(x_shape=(1, 4, 3, 3), w_shape=(4, 4, 1, 1), in_zp=0, strides=(1, 1),
                padding=(0, 0, 0, 0), dilation=(1, 1), groups=1, requant=rq, out_zp=0,
                qmin=-8, qmax=7, counter_slot=0)
    int8_only = AccelConfig(name="int8-only", t_oc=4, t_ic=4, operand_bits=(8,))
    with pytest.raises(ValueError, match=r"'int8-only' operand_bits=\(8,\) has no 4-bit operands "
                                         r"\(a_bits=4\)"):
        conv2d_descriptor(int8_only, **args, a_bits=4)
    hw = AccelConfig(t_oc=4, t_ic=4)
    with pytest.raises(ValueError, match="no 3-bit operands"):
        conv2d_descriptor(hw, **args, w_bits=3)
    with pytest.raises(ValueError, match="y_bits=4 needs"):
        conv2d_descriptor(hw, **{**args, "qmin": -128}, y_bits=4)
    with pytest.raises(ValueError, match="a_bits=4 needs a zero point"):
        conv2d_descriptor(hw, **{**args, "in_zp": 9}, a_bits=4)


def test_packed_weight_tile_fits_where_int8_does_not():
    # one tile of 4 x 16 x 3 x 3 = 576 weights: 576 bytes at 8 bits, 288 at 4
    hw = AccelConfig(t_oc=4, t_ic=4, weight_buffer_bytes=300)
    rq = Requant.from_scale(1e-3, "mult_shift", "double")
    args = dict(x_shape=(1, 16, 5, 5), w_shape=(8, 16, 3, 3), in_zp=0, strides=(1, 1),
                padding=(1, 1, 1, 1), dilation=(1, 1), groups=1, requant=rq, out_zp=0,
                qmin=-128, qmax=127, counter_slot=0)
    with pytest.raises(ValueError, match=r"weight_buffer_bytes=300 too small.*576 bytes"):
        conv2d_descriptor(hw, **args)
    conv2d_descriptor(hw, **args, w_bits=4)
