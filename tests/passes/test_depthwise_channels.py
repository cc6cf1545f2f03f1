"""A depthwise conv reading a float tensor quantizes it per channel (zero point 0), each
channel's scale folded into its requant: bit-exact on host, accel and oracle."""

import numpy as np
import pytest
from conftest import make_onnx
from onnx import helper

import tvmq
from tvmq.debug import debug

C, H = 6, 8
RNG = np.random.default_rng(3)


@pytest.fixture(scope="module")
def model():
    """conv (channel c scaled by 10^(c/2)) -> sigmoid * x (SiLU, float) -> depthwise 3x3 conv:
    the depthwise input's channels span ranges 1000x apart."""
    w1 = RNG.normal(size=(C, 3, 1, 1)).astype(np.float32)
    w1 *= (10.0 ** (np.arange(C) / 2)).reshape(C, 1, 1, 1).astype(np.float32)
    w2 = RNG.normal(size=(C, 1, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["input", "w1"], ["c1"]),
             helper.make_node("Sigmoid", ["c1"], ["s"]),
             helper.make_node("Mul", ["c1", "s"], ["silu"]),
             helper.make_node("Conv", ["silu", "w2", "b2"], ["output"], group=C,
                              pads=[1, 1, 1, 1])]
    inits = {"w1": w1, "w2": w2, "b2": RNG.normal(size=C).astype(np.float32)}
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
    # one scale for channels 1000x apart would leave the small ones a few levels
    assert debug(cm, _samples(3, 1), n=3).layers[-1].isolated_db > 35


def test_mixed_four_bit_input_per_channel(model):
    cm = tvmq.compile(model, config=tvmq.QuantConfig(
        scheme="mixed", layer_bits={"conv2d_3": (8, 4)}), calib=_samples(16, 0), progress=False)
    assert [layer.name for layer in cm.layers][-1] == "conv2d_3"
    assert cm.verify(_samples(2, 1), n=2).ok
