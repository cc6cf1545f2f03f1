"""RealizeQuantization per op kind: integer graph, host == oracle bit for bit, close to float."""

import numpy as np
import pytest
from onnx import helper
from tvmq.targets.host import build

import tvmq
from tests.conftest import make_onnx
from tvmq.frontend import load_model

RNG = np.random.default_rng(3)


def _w(*shape):
    return RNG.normal(scale=0.5, size=shape)


def _conv(name, x, out, w, **attrs):
    return helper.make_node("Conv", [x, w], [out], name=name, **attrs)


CASES = {
    "conv_stride2_asym_pad": (
        [_conv("c", "input", "output", "w", strides=[2, 2], pads=[0, 1, 1, 0])],
        {"w": _w(4, 3, 3, 3)}, [1, 3, 7, 6], [1, 4, 3, 3]),
    "grouped_conv_relu": (
        [_conv("c", "input", "h", "w", group=2, pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["h"], ["output"])],
        {"w": _w(4, 2, 3, 3)}, [1, 4, 5, 5], [1, 4, 5, 5]),
    "gemm_no_bias_clip": (
        [helper.make_node("Gemm", ["input", "w"], ["h"], transB=1),
         helper.make_node("Clip", ["h", "lo", "hi"], ["output"])],
        {"w": _w(5, 6), "lo": np.array(-0.5), "hi": np.array(1.0)}, [1, 6], [1, 5]),
    "add_relu_of_two_convs": (
        [_conv("a", "input", "a", "wa", pads=[1, 1, 1, 1]),
         _conv("b", "input", "b", "wb", pads=[1, 1, 1, 1]),
         helper.make_node("Add", ["a", "b"], ["s"]), helper.make_node("Relu", ["s"], ["output"])],
        {"wa": _w(3, 2, 3, 3), "wb": _w(3, 2, 3, 3) * 3}, [1, 2, 4, 4], [1, 3, 4, 4]),
    "concat3_pools_transpose": (
        [helper.make_node("MaxPool", ["input"], ["m"], kernel_shape=[3, 3], pads=[1, 1, 0, 0]),
         helper.make_node("AveragePool", ["input"], ["a"], kernel_shape=[2, 2]),
         _conv("c", "input", "c", "w", kernel_shape=[2, 2]),
         helper.make_node("Concat", ["m", "a", "c"], ["cat"], axis=1),
         helper.make_node("Transpose", ["cat"], ["output"], perm=[0, 2, 3, 1])],
        {"w": _w(2, 3, 2, 2)}, [1, 3, 5, 5], [1, 4, 4, 8]),
    "clip_on_input_then_global_pool": (
        [helper.make_node("Clip", ["input", "lo", "hi"], ["c"]),
         helper.make_node("GlobalAveragePool", ["c"], ["g"]),
         helper.make_node("Flatten", ["g"], ["output"])],
        {"lo": np.array(-1.0), "hi": np.array(1.0)}, [1, 3, 4, 4], [1, 3]),
}
CONFIGS = [tvmq.QuantConfig(sqnr_samples=0),
           tvmq.QuantConfig(requant="fp32", sqnr_samples=0),
           tvmq.QuantConfig(rounding="single", per_channel_weights=False,
                            symmetric_activations=True, sqnr_samples=0)]


@pytest.mark.parametrize("config", CONFIGS, ids=["double", "fp32", "single-pertensor-sym"])
@pytest.mark.parametrize("case", list(CASES))
def test_op_is_integer_and_bit_exact(case, config):
    nodes, inits, in_shape, out_shape = CASES[case]
    model = make_onnx(nodes, inits, in_shape, out_shape)
    calib = RNG.normal(size=(16, *in_shape[1:])).astype(np.float32)
    cm = tvmq.compile(model, config=config, calib=calib, progress=False)
    assert cm.report().float_ops == []
    float_host = build(load_model(model)[0])
    oracle = cm.oracle()
    for x in calib[:4]:
        got = cm.run(x[None])
        np.testing.assert_array_equal(got, oracle.run(x[None]))
        ref = float_host.run(x[None])
        err = np.sum((ref - got) ** 2) / max(np.sum(ref**2), 1e-12)
        assert err < 0.01, f"{case}: relative error {err:.3g}"


def test_unquantizable_op_stays_float_and_is_reported():
    model = make_onnx(
        [_conv("a", "input", "a", "wa", pads=[1, 1, 1, 1]),
         helper.make_node("Sigmoid", ["a"], ["s"]),
         _conv("b", "s", "output", "wb", pads=[1, 1, 1, 1])],
        {"wa": _w(3, 2, 3, 3), "wb": _w(2, 3, 3, 3)}, [1, 2, 4, 4], [1, 2, 4, 4])
    calib = RNG.normal(size=(16, 2, 4, 4)).astype(np.float32)
    cm = tvmq.compile(model, calib=calib, progress=False)
    assert [name.split(" ")[1] for name in cm.report().float_ops] == ["(sigmoid)"]
    assert [row.op for row in cm.report().layers] == ["conv2d", "conv2d"]
    ref, got = build(load_model(model)[0]).run(calib[:1]), cm.run(calib[:1])
    assert np.sum((ref - got) ** 2) / np.sum(ref**2) < 0.01
