import numpy as np
import pytest
from onnx import helper
from tvmq.passes.annotate_quantizable import AnnotateQuantizable, Composite

import tvmq
from tests.conftest import make_onnx
from tvmq import data
from tvmq.boosters.activations import float_values
from tvmq.boosters.bias_correction import bias_corrections, correct_biases, nearest_weights
from tvmq.frontend import import_model
from tvmq.ir import RequantChain, bindings_of
from tvmq.layers import find_layers
from tvmq.numerics import dequantize
from tvmq.numerics.weights import quantize_bias, quantize_weight
from tvmq.oracle import conv2d

SHAPE = (1, 4, 7, 7)


def _annotated(model):
    mod, inp, _ = import_model(model, None)
    annotated = AnnotateQuantizable()(mod)
    return annotated, find_layers(annotated)[0], inp


def _conv_model(rng, bias=True, **attrs):
    w = {"w": rng.normal(0, 0.5, (6, 4 // attrs.get("group", 1), 3, 3))}
    inputs = ["input", "w"]
    if bias:
        w["b"] = rng.normal(0, 0.5, 6)
        inputs.append("b")
    node = helper.make_node("Conv", inputs, ["output"], **attrs)
    stride, dilation = attrs.get("strides", [1])[0], attrs.get("dilations", [1])[0]
    pads = attrs.get("pads", [0] * 4)
    shape = (1, 6, *(_out(7, pads[i::2], stride, dilation) for i in (0, 1)))
    return make_onnx([node], w, SHAPE, shape)


def _out(size, pads, stride, dilation):
    return (size + sum(pads) - dilation * 2 - 1) // stride + 1


CONVS = [dict(pads=[1] * 4), dict(pads=[0] * 4), dict(pads=[2, 0, 1, 1], strides=[2, 2]),
         dict(pads=[2] * 4, dilations=[2, 2]), dict(pads=[1] * 4, group=2)]


@pytest.mark.parametrize("attrs", CONVS, ids=["pad1", "pad0", "asym_stride2", "dilated",
                                              "grouped"])
def test_conv_correction_is_the_mean_of_the_convs_error(attrs):
    rng = np.random.default_rng(0)
    annotated, (layer,), inp = _annotated(_conv_model(rng, **attrs))
    xs = [rng.uniform(0, 1, SHAPE).astype(np.float32) for _ in range(3)]
    q = layer.weight + rng.normal(0, 0.01, layer.weight.shape).astype(np.float32)
    got = bias_corrections(annotated, [layer], {inp.name: xs}, {layer.name: q})[layer.name]
    pads = attrs.get("pads")
    padding = (pads[0], pads[1], pads[2], pads[3])
    stride, dil = attrs.get("strides", [1, 1]), attrs.get("dilations", [1, 1])
    errors = [conv2d(x.astype(np.float64), (q - layer.weight).astype(np.float64), stride,
                     padding, dil, attrs.get("group", 1)) for x in xs]
    bias = _bias(annotated)
    want = bias - np.mean(errors, axis=(0, 1, 3, 4))
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def _bias(annotated):
    call = annotated["main"].body.blocks[0].bindings[0].value
    return Composite(annotated[call.op]).bias().reshape(-1).astype(np.float64)


def test_matmul_correction_is_the_mean_row_times_the_error_and_adds_a_missing_bias():
    rng = np.random.default_rng(1)
    model = make_onnx([helper.make_node("MatMul", ["input", "w"], ["output"])],
                      {"w": rng.normal(size=(6, 5))}, (1, 4, 6), (1, 4, 5))
    annotated, (layer,), inp = _annotated(model)
    xs = [rng.normal(1, 1, (1, 4, 6)).astype(np.float32) for _ in range(3)]
    q = layer.weight + rng.normal(0, 0.01, layer.weight.shape).astype(np.float32)
    got = bias_corrections(annotated, [layer], {inp.name: xs}, {layer.name: q})[layer.name]
    want = -np.mean([x[0].astype(np.float64) @ (q - layer.weight) for x in xs], axis=(0, 1))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("per_channel, bits", [(True, 8), (False, 8), (True, 4)])
def test_nearest_weights_are_the_weights_realize_quantizes(per_channel, bits):
    rng = np.random.default_rng(2)
    _, layers, _ = _annotated(_conv_model(rng, pads=[1] * 4))
    got = nearest_weights(layers, per_channel, {layers[0].name: bits})[layers[0].name]
    q, qp = quantize_weight(layers[0].weight, axis=0, per_channel=per_channel, bits=bits)
    np.testing.assert_array_equal(got, dequantize(q, qp))
    assert len(np.unique(np.round(got / qp.scale.reshape(-1, 1, 1, 1)))) <= 2 ** bits - 1


def _gain_model(bias):
    """A padded conv whose output channels span 100x in weight range: per-tensor int8 weights
    round the small ones coarsely, with a mean error on positive inputs."""
    rng = np.random.default_rng(3)
    gain = np.array([1, 0.01, 0.02, 1, 0.05, 0.03])[:, None, None, None]
    w = {"w": rng.normal(0.02, 0.5, (6, 4, 3, 3)) * gain}
    inputs = ["input", "w"]
    if bias:
        w["b"], inputs = rng.normal(0, 0.01, 6), ["input", "w", "b"]
    return make_onnx([helper.make_node("Conv", inputs, ["output"], pads=[1] * 4)], w, SHAPE,
                     (1, 6, 7, 7))


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
def test_compile_realizes_the_corrected_bias_exactly_and_cancels_the_mean_error(bias):
    rng = np.random.default_rng(4)
    calib = rng.uniform(0, 1, (24, *SHAPE[1:])).astype(np.float32)
    model = _gain_model(bias)
    annotated, (layer,), inp = _annotated(model)
    float_out = np.concatenate(float_values(annotated, [layer.name],
                                            [x[None] for x in calib])[layer.name])
    mean_error = {}
    for on in (False, True):
        cfg = tvmq.QuantConfig(per_channel_weights=False, bias_correction=on, sqnr_samples=0)
        cm = tvmq.compile(model, config=cfg, calib=calib, progress=False)
        assert cm.verify(calib, n=4).ok
        got = np.concatenate([cm.run(x[None]) for x in calib])
        mean_error[on] = np.abs((got - float_out).mean(axis=(0, 2, 3)))
        if on:
            main = cm.quant_mod["main"]
            bindings = bindings_of(main)
            requant = next(v for k, v in bindings.items() if k.name == f"{layer.name}_q")
            chain = RequantChain(requant, bindings, cm.quant_mod)
            q, qp = quantize_weight(layer.weight, axis=0, per_channel=False)
            np.testing.assert_array_equal(chain.weight, q)
            want = bias_corrections(annotated, [layer], {inp.name: [x[None] for x in calib]},
                                    {layer.name: dequantize(q, qp)})[layer.name]
            sx = float(cm.act_qparams[inp.name].scale)
            bq = quantize_bias(want, sx, np.broadcast_to(qp.scale, (6,)))
            np.testing.assert_array_equal(chain.bias.reshape(-1), bq)
    assert (mean_error[True] < 0.2 * mean_error[False]).all(), mean_error


def test_correct_biases_reads_the_layers_float_inputs(digits):
    x_calib = digits[0][:4]
    mod, _, _ = import_model(data.digits_model_path(), None)
    annotated = AnnotateQuantizable()(mod)
    layers = find_layers(annotated)[0]
    weights = nearest_weights(layers)
    samples = [x[None] for x in x_calib]
    got = correct_biases(annotated, layers, samples, weights)
    linear = [la for la in layers if la.kind in ("conv2d", "matmul")]
    assert sorted(got) == sorted(la.name for la in linear)
    names = list(dict.fromkeys(la.inputs[0] for la in linear))
    want = bias_corrections(annotated, linear, float_values(annotated, names, samples), weights)
    for name in got:
        np.testing.assert_array_equal(got[name], want[name])
