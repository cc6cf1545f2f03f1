"""The realized graph means what quantization means: an independent integer reference, computed
from the float ONNX model and the calibrated qparams (tests/reference/int_reference.py), equals
the oracle's output exactly, and every layer's integer codes too, for every requant mode.
Bias correction is off here: the reference reads the ONNX model's biases (that the corrected
ones are realized exactly is tests/boosters/test_bias_correction.py's)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import tvmq
from tests.reference.int_reference import IntReference, read_layers
from tvmq import data

MODES = {  # id -> QuantConfig fields
    "double": dict(rounding="double"),
    "single": dict(rounding="single"),
    "tonearest": dict(rounding="tonearest"),
    "fp32": dict(requant="fp32"),
}
WEIGHTS = {"per_channel": True, "per_tensor": False}


def assert_reference_equals_oracle(cm, model, xs, samples_with_codes: int = 2) -> None:
    """On the first samples of the stack `xs`, every layer's integer output equals the
    oracle's (`<layer>_q`; the first layer that differs is named) and lies in its range; on
    all of `xs`, the float outputs are exactly equal."""
    ref = IntReference.of(cm, model)
    oracle = cm.oracle()
    for x in xs[:samples_with_codes]:
        ref.run_one(x[None])
        _, named = oracle.run(x[None], keep=True)
        for name, (codes, qp) in ref.codes.items():
            np.testing.assert_array_equal(codes, named[f"{name}_q"], err_msg=f"layer {name}")
            assert qp.qmin <= codes.min() and codes.max() <= qp.qmax, name
    got, want = ref.run(xs), oracle.run(xs)
    got, want = (got, want) if isinstance(got, tuple) else ((got,), (want,))
    assert len(got) == len(want) == len(cm.outputs)
    for g, w, out in zip(got, want, cm.outputs):
        assert g.dtype == w.dtype == np.float32, out.name
        np.testing.assert_array_equal(g, w, err_msg=f"output {out.name}")


# -- the bundled digits CNN -----------------------------------------------------------------------

@pytest.fixture(scope="module", params=[(m, w) for w in WEIGHTS for m in MODES],
                ids=lambda p: f"{p[0]}-{p[1]}")
def digits_cm(request):
    mode, weights = request.param
    x_calib = data.load_digits()[0]
    config = tvmq.QuantConfig(per_channel_weights=WEIGHTS[weights], sqnr_samples=0,
                              bias_correction=False, **MODES[mode])
    return tvmq.compile(data.digits_model_path(), config=config, calib=x_calib[:64],
                        progress=False)


def test_digits_reference_equals_oracle(digits_cm):
    _, x_test, _ = data.load_digits()
    # the test split plus inputs beyond the calibrated range (saturation in every layer)
    xs = np.concatenate([x_test[:40], 3 * x_test[40:44] - 1])
    assert_reference_equals_oracle(digits_cm, onnx.load(str(data.digits_model_path())), xs)


def test_digits_covers_most_kinds():
    kinds = {layer.kind for layer in read_layers(onnx.load(str(data.digits_model_path())))}
    assert kinds == {"conv2d", "max_pool2d", "add", "avg_pool2d", "concat", "mean", "reshape",
                     "matmul"}


# -- one small model per group of op kinds --------------------------------------------------------

def _weights(seed: int):
    """w(*shape, scale=0.5): normal float32 weights from a generator seeded with `seed`."""
    rng = np.random.default_rng(seed)

    def w(*shape, scale=0.5):
        return rng.normal(scale=scale, size=shape).astype(np.float32)
    return w


def _model(nodes, inits, input_shape, outputs) -> onnx.ModelProto:
    """A checked opset-17 model with one float input `input` and float `outputs` {name: shape}."""
    graph = helper.make_graph(
        nodes, "semref",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, list(input_shape))],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(s)) for n, s in outputs.items()],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _conv_model():
    """conv (stride 2, bias) + relu, depthwise conv + clip, max pool (asymmetric pad),
    standalone clip."""
    _w = _weights(1)
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1],
                         strides=[2, 2]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], group=4, pads=[1, 1, 1, 1]),
        helper.make_node("Clip", ["c2", "m1", "p1"], ["k2"]),
        helper.make_node("MaxPool", ["k2"], ["mp"], kernel_shape=[2, 2], pads=[1, 1, 0, 0]),
        helper.make_node("Clip", ["mp", "lo", "hi"], ["output"]),
    ]
    inits = {"w1": _w(4, 3, 3, 3), "b1": _w(4, scale=0.2), "w2": _w(4, 1, 3, 3),
             "m1": np.float32(-1.0), "p1": np.float32(1.0), "lo": np.float32(-0.25),
             "hi": np.float32(0.5)}
    return _model(nodes, inits, (1, 3, 6, 6), {"output": (1, 4, 3, 3)}), (1, 3, 6, 6)


def _matmul_model():
    """transpose, reshape, Gemm (transB) + relu, MatMul + bias."""
    _w = _weights(2)
    nodes = [
        helper.make_node("Transpose", ["input"], ["t"], perm=[0, 2, 3, 1]),
        helper.make_node("Reshape", ["t", "shape"], ["flat"]),
        helper.make_node("Gemm", ["flat", "w1", "b1"], ["g"], transB=1),
        helper.make_node("Relu", ["g"], ["r"]),
        helper.make_node("MatMul", ["r", "w2"], ["m"]),
        helper.make_node("Add", ["m", "b2"], ["output"]),
    ]
    inits = {"shape": np.array([1, 24], np.int64), "w1": _w(6, 24), "b1": _w(6, scale=0.2),
             "w2": _w(6, 5), "b2": _w(5, scale=0.2)}
    return _model(nodes, inits, (1, 2, 3, 4), {"output": (1, 5)}), (1, 2, 3, 4)


def _add_pool_model():
    """two adds (plain, + relu), average pools (padded, strided), a four-input concat with
    the float input, global average pool and ReduceMean: two outputs.

    The second add reads the convs, not the first add: two chained adds compile for minutes
    with rounding "tonearest" (time in TVM's TIR lowering; found here, left to the compiler)."""
    _w = _weights(3)
    nodes = [
        helper.make_node("Conv", ["input", "wa"], ["a"], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["input", "wb", "bb"], ["b"]),
        helper.make_node("Add", ["a", "b"], ["s"]),
        helper.make_node("Add", ["b", "a"], ["s2"]),
        helper.make_node("Relu", ["s2"], ["r"]),
        helper.make_node("AveragePool", ["r"], ["p1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                         count_include_pad=1),
        helper.make_node("Concat", ["r", "p1", "s", "input"], ["cat"], axis=1),
        helper.make_node("GlobalAveragePool", ["cat"], ["output"]),
        helper.make_node("AveragePool", ["r"], ["p2"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("ReduceMean", ["p2"], ["pooled"], axes=[2, 3], keepdims=0),
    ]
    inits = {"wa": _w(3, 2, 3, 3), "wb": _w(3, 2, 1, 1, scale=2.0), "bb": _w(3, scale=0.3)}
    outputs = {"output": (1, 11, 1, 1), "pooled": (1, 3)}
    return _model(nodes, inits, (1, 2, 4, 4), outputs), (1, 2, 4, 4)


SMALL = {"conv": _conv_model, "matmul": _matmul_model, "add_pool": _add_pool_model}
ALL_KINDS = {"conv2d", "matmul", "add", "relu", "max_pool2d", "avg_pool2d", "mean", "concat",
             "reshape", "permute_dims"}


def test_small_models_cover_every_annotated_kind():
    kinds = {layer.kind for build in SMALL.values() for layer in read_layers(build()[0])}
    assert kinds == ALL_KINDS


@pytest.fixture(scope="module", params=[(s, m) for s in SMALL for m in MODES],
                ids=lambda p: f"{p[0]}-{p[1]}")
def small_cm(request):
    name, mode = request.param
    model, shape = SMALL[name]()
    calib = np.random.default_rng(5).normal(size=(24, *shape[1:])).astype(np.float32)
    config = tvmq.QuantConfig(sqnr_samples=0, per_channel_weights=mode != "single",
                              bias_correction=False, **MODES[mode])
    return tvmq.compile(model, config=config, calib=calib, progress=False), model, shape


def test_small_model_reference_equals_oracle(small_cm):
    cm, model, shape = small_cm
    xs = np.random.default_rng(6).normal(scale=1.5, size=(12, *shape[1:])).astype(np.float32)
    assert_reference_equals_oracle(cm, model, xs, samples_with_codes=3)
