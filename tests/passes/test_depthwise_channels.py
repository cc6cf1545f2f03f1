"""A depthwise conv reading a float tensor quantizes it per channel (zero point 0), each
channel's scale folded into its requant: bit-exact on host, accel and oracle."""

import numpy as np
import pytest
from conftest import make_onnx
from onnx import helper

import tvmq
from tvmq.debug import debug

C, H = 6, 8
SPREAD = (10.0 ** (np.arange(C) / 2)).reshape(C, 1, 1, 1).astype(np.float32)  # 1 .. 316


def _depthwise_weight(rng):
    """Undoes SPREAD: the depthwise conv's output channels have like ranges again, so every
    input channel matters to its SQNR."""
    return (rng.normal(size=(C, 1, 3, 3)) / SPREAD).astype(np.float32)


@pytest.fixture(scope="module")
def model():
    """conv (channel c scaled by 10^(c/2)) -> sigmoid * x (SiLU, float) -> depthwise 3x3 conv:
    the depthwise input's channels span ranges 300x apart."""
    rng = np.random.default_rng(3)  # each model its own: data does not depend on test order
    w1 = rng.normal(size=(C, 3, 1, 1)).astype(np.float32) * SPREAD
    w2 = _depthwise_weight(rng)
    nodes = [helper.make_node("Conv", ["input", "w1"], ["c1"]),
             helper.make_node("Sigmoid", ["c1"], ["s"]),
             helper.make_node("Mul", ["c1", "s"], ["silu"]),
             helper.make_node("Conv", ["silu", "w2", "b2"], ["output"], group=C,
                              pads=[1, 1, 1, 1])]
    inits = {"w1": w1, "w2": w2, "b2": rng.normal(size=C).astype(np.float32)}
    return make_onnx(nodes, inits, (1, 3, H, H), (1, C, H, H))


def _samples(n, seed):
    return np.random.default_rng(seed).normal(size=(n, 3, H, H)).astype(np.float32)


@pytest.mark.parametrize("target", ["host", "accel"])
def test_depthwise_input_per_channel_is_exact_and_accurate(model, target):
    cm = tvmq.compile(model, target=target, calib=_samples(16, 0), progress=False)
    script = cm.quant_mod.script()
    assert "silu" not in [layer.name for layer in cm.layers]
    dw = cm.layers[-1]
    assert dw.kind == "conv2d" and f"{dw.inputs[0]}_qc" in script
    assert cm.verify(_samples(3, 1), n=3).ok
    if target == "accel":
        assert dw.name not in cm.report().accel["host_layers"]
    # one scale for channels 300x apart leaves the small ones a few levels (about 15 dB)
    assert debug(cm, _samples(3, 1), n=3).layers[-1].isolated_db > 30


def test_mixed_four_bit_input_per_channel(model):
    cm = tvmq.compile(model, config=tvmq.QuantConfig(
        scheme="mixed", layer_bits={"conv2d_3": (8, 4)}), calib=_samples(16, 0), progress=False)
    assert [layer.name for layer in cm.layers][-1] == "conv2d_3"
    assert cm.verify(_samples(2, 1), n=2).ok


@pytest.fixture(scope="module")
def conv_then_depthwise():
    """conv (channels 300x apart, ReLU) -> depthwise conv -> conv: the first conv's output
    only the depthwise conv reads."""
    rng = np.random.default_rng(4)
    w1 = rng.normal(size=(C, 3, 1, 1)).astype(np.float32) * SPREAD
    nodes = [helper.make_node("Conv", ["input", "w1"], ["c1"]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["dw"], group=C, pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["dw", "w3"], ["output"])]
    inits = {"w1": w1, "w2": _depthwise_weight(rng),
             "w3": rng.normal(size=(C, C, 1, 1)).astype(np.float32)}
    return make_onnx(nodes, inits, (1, 3, H, H), (1, C, H, H))


@pytest.mark.parametrize("target", ["host", "accel"])
def test_a_conv_only_depthwise_reads_writes_per_channel(conv_then_depthwise, target):
    cm = tvmq.compile(conv_then_depthwise, target=target, calib=_samples(16, 0), progress=False)
    first, dw, _ = cm.layers
    assert cm.act_qparams[first.name].axis == 1 and cm.act_qparams[dw.name].axis is None
    assert cm.verify(_samples(3, 1), n=3).ok
    if target == "accel":
        assert cm.report().accel["host_layers"] == {}
    assert debug(cm, _samples(3, 1), n=3).layers[1].isolated_db > 30


def test_a_regular_conv_reading_the_same_tensor_stays_per_tensor():
    """silu feeds a depthwise conv and a 1x1 conv with fewer output channels: only the
    depthwise one may fold per-channel input scales into its requant."""
    rng = np.random.default_rng(5)
    w1 = rng.normal(size=(C, 3, 1, 1)).astype(np.float32) * SPREAD
    nodes = [helper.make_node("Conv", ["input", "w1"], ["c1"]),
             helper.make_node("Sigmoid", ["c1"], ["s"]),
             helper.make_node("Mul", ["c1", "s"], ["silu"]),
             helper.make_node("Conv", ["silu", "w2"], ["dw"], group=C, pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["silu", "w3"], ["pw"]),
             helper.make_node("Concat", ["dw", "pw"], ["output"], axis=1)]
    inits = {"w1": w1, "w2": _depthwise_weight(rng),
             "w3": rng.normal(size=(2, C, 1, 1)).astype(np.float32)}
    model = make_onnx(nodes, inits, (1, 3, H, H), (1, C + 2, H, H))
    cm = tvmq.compile(model, calib=_samples(16, 0), progress=False)
    assert cm.verify(_samples(2, 1), n=2).ok
    rows = {r.name: r for r in debug(cm, _samples(3, 1), n=3).layers}
    dw, pw = [layer.name for layer in cm.layers if layer.kind == "conv2d"][1:3]
    assert rows[dw].isolated_db > 30 and rows[pw].isolated_db > 25


def test_a_conv_of_a_one_channel_input_is_not_depthwise(compile_digits):
    """digits' first conv has one input channel (weight (16, 1, 3, 3)) and one group: its
    input stays per tensor, asymmetric."""
    cm = compile_digits()
    assert "input_qc" not in cm.quant_mod.script()
    assert cm.act_qparams["input"].axis is None and int(cm.act_qparams["input"].zero_point) != 0
