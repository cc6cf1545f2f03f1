"""Bias correction on the integer model's own inputs, layer after layer
(tvmq.boosters.bias_correction)."""

import numpy as np
import pytest
from onnx import helper
from tvmq.passes.annotate_quantizable import AnnotateQuantizable, Composite
from tvmq.targets.host import build

import tvmq
from tests.conftest import make_onnx
from tvmq.boosters.bias_correction import BiasCorrection, correct_biases, nearest_weights
from tvmq.frontend import import_model
from tvmq.ir import RequantChain, bindings_of
from tvmq.layers import find_layers
from tvmq.numerics import QParams, dequantize, quantize
from tvmq.numerics.weights import quantize_bias, quantize_weight
from tvmq.oracle import conv2d
from tvmq.realize import input_qparams

SHAPE = (1, 4, 7, 7)
PAD = (1, 1, 1, 1)


def _annotated(model):
    mod, _, _ = import_model(model, None)
    annotated = AnnotateQuantizable()(mod)
    return annotated, find_layers(annotated)[0]


def _chain_model(rng, gain=None):
    """conv 3x3 (bias) -> relu -> conv 3x3 (bias) -> conv 1x1 (the head): two corrected layers.
    `gain` scales the first conv's output channels (per-tensor weights round the small ones
    coarsely)."""
    w1 = rng.normal(0.05, 0.5, (6, 4, 3, 3)) * (1 if gain is None else gain[:, None, None, None])
    weights = {"w1": w1, "b1": rng.normal(0, 0.1, 6), "w2": rng.normal(0.05, 0.5, (5, 6, 3, 3)),
               "b2": rng.normal(0, 0.1, 5), "w3": _exact_int8(rng, (3, 5, 1, 1))}
    nodes = [helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], pads=[1] * 4),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1] * 4),
             helper.make_node("Conv", ["c2", "w3"], ["output"])]
    return make_onnx(nodes, weights, SHAPE, (1, 3, 7, 7))


def _exact_int8(rng, shape):
    """Weights on the per-tensor int8 grid (step 1/127, one entry 1): the head adds no weight
    error, so the output's mean error is what the layers above leave."""
    w = rng.integers(-127, 128, shape) / 127
    w.flat[0] = 1.0
    return w


def _fq(x, qp):
    return dequantize(quantize(x, qp), qp)


def _bias(annotated, name):
    call = next(b.value for block in annotated["main"].body.blocks for b in block.bindings
                if b.var.name == name)
    return Composite(annotated[call.op]).bias().reshape(-1).astype(np.float64)


def test_each_layer_is_corrected_on_its_inputs_as_the_corrected_integer_model_holds_them():
    rng = np.random.default_rng(0)
    annotated, layers = _annotated(_chain_model(rng))
    c1, c2, head = (la for la in layers if la.kind == "conv2d")
    grid1 = QParams(np.float32(0.2), -5, -128, 127)  # coarse: large mean errors
    grid2 = QParams(np.float32(0.3), -128, -128, 127)
    sites = {(c1.name, 0): grid1, (c2.name, 0): grid2}
    xs = [rng.uniform(-1, 2, SHAPE).astype(np.float32) for _ in range(4)]
    q = {la.name: la.weight + rng.normal(0, 0.02, la.weight.shape).astype(np.float32)
         for la in (c1, c2, head)}
    result = correct_biases(annotated, layers, sites, xs, q)
    got = result.biases
    assert sorted(got) == sorted([c1.name, c2.name])  # the head keeps its bias
    assert 0 < result.noise_after < result.noise_before and result.kept

    def conv(x, w, b=0.0):
        return conv2d(x.astype(np.float64), w.astype(np.float64), (1, 1), PAD, (1, 1), 1) + \
            np.reshape(b, (1, -1, 1, 1))

    b1, b2 = _bias(annotated, c1.name), _bias(annotated, c2.name)
    y1 = [conv(x, c1.weight, b1) for x in xs]
    y1_int = [conv(_fq(x, grid1), q[c1.name], b1) for x in xs]
    want1 = b1 - (np.mean(y1_int, axis=(0, 1, 3, 4)) - np.mean(y1, axis=(0, 1, 3, 4)))
    y1_int = [conv(_fq(x, grid1), q[c1.name], want1) for x in xs]  # corrected
    y2 = [conv(np.maximum(y, 0), c2.weight) for y in y1]
    y2_int = [conv(_fq(np.maximum(y, 0), grid2), q[c2.name]) for y in y1_int]
    want2 = b2 - (np.mean(y2_int, axis=(0, 1, 3, 4)) - np.mean(y2, axis=(0, 1, 3, 4)))
    np.testing.assert_allclose(got[c1.name], want1, atol=1e-4)
    np.testing.assert_allclose(got[c2.name], want2, atol=2e-3)
    # the second layer's correction is not its weight error's mean on float inputs (the first
    # version), nor taken on the uncorrected first layer
    float_form = b2 - np.mean([conv(np.maximum(y, 0), q[c2.name] - c2.weight) for y in y1],
                              axis=(0, 1, 3, 4))
    uncorrected = [conv(_fq(np.maximum(conv(_fq(x, grid1), q[c1.name], b1), 0), grid2),
                        q[c2.name]) for x in xs]
    stale = b2 - (np.mean(uncorrected, axis=(0, 1, 3, 4)) - np.mean(y2, axis=(0, 1, 3, 4)))
    for other in (float_form, stale):
        assert np.abs(got[c2.name] - other).max() > 20 * 2e-3


@pytest.mark.parametrize("per_channel, bits", [(True, 8), (False, 8), (True, 4)])
def test_nearest_weights_are_the_weights_realize_quantizes(per_channel, bits):
    rng = np.random.default_rng(2)
    _, layers = _annotated(_chain_model(rng))
    got = nearest_weights(layers, per_channel, {layers[0].name: bits})[layers[0].name]
    q, qp = quantize_weight(layers[0].weight, axis=0, per_channel=per_channel, bits=bits)
    np.testing.assert_array_equal(got, dequantize(q, qp))
    assert len(np.unique(np.round(got / qp.scale.reshape(-1, 1, 1, 1)))) <= 2 ** bits - 1


def test_compile_cancels_the_mean_error_and_stays_exact(monkeypatch):
    """Per-tensor weights of a conv whose channels span 100x: the small channels round coarsely
    with a mean error that reaches the output; corrected, the output's mean error falls."""
    rng = np.random.default_rng(4)
    gain = np.array([1, 0.01, 0.02, 1, 0.05, 0.03])
    model = _chain_model(rng, gain)
    calib = rng.uniform(0, 1, (24, *SHAPE[1:])).astype(np.float32)
    annotated, _ = _annotated(model)
    reference = build(annotated)
    float_out = np.concatenate([reference.run(x[None]) for x in calib])
    corrections = []
    monkeypatch.setattr("tvmq.compiler.correct_biases",
                        lambda *args: corrections.append(correct_biases(*args)) or corrections[-1])
    mean_error = {}
    for on in (False, True):
        cfg = tvmq.QuantConfig(per_channel_weights=False, bias_correction=on, sqnr_samples=0)
        cm = tvmq.compile(model, config=cfg, calib=calib, progress=False)
        assert cm.verify(calib, n=4).ok
        assert cm.report().config["bias_correction"] is on
        if on:
            summary = cm.report().bias_correction
            assert summary["kept"] and summary["layers"] == 2
            _assert_realized_biases(cm, corrections[-1].biases)
            assert "bias correction: 2 layer(s)" in str(cm.report())
        got = np.concatenate([cm.run(x[None]) for x in calib])
        mean_error[on] = np.abs((got - float_out).mean(axis=(0, 2, 3)))
    assert mean_error[True].max() < 0.2 * mean_error[False].max(), mean_error


def _assert_realized_biases(cm, biases):
    """Each corrected layer's int32 bias is quantize_bias of its corrected float bias."""
    bindings = bindings_of(cm.quant_mod["main"])
    qparams = input_qparams(cm.layers, cm.act_qparams)
    for layer in cm.layers:
        if layer.name not in biases:
            continue
        requant = next(v for k, v in bindings.items() if k.name == f"{layer.name}_q")
        chain = RequantChain(requant, bindings, cm.quant_mod)
        _, wq = quantize_weight(layer.weight, axis=0, per_channel=False)
        want = quantize_bias(biases[layer.name], float(qparams[layer.name].scale),
                             np.broadcast_to(wq.scale, biases[layer.name].shape))
        np.testing.assert_array_equal(chain.bias.reshape(-1), want, err_msg=layer.name)


def test_a_model_of_heads_only_is_left_as_it_is():
    rng = np.random.default_rng(5)
    node = helper.make_node("Conv", ["input", "w", "b"], ["output"], pads=[1] * 4)
    model = make_onnx([node], {"w": rng.normal(size=(6, 4, 3, 3)), "b": rng.normal(size=6)},
                      SHAPE, (1, 6, 7, 7))
    annotated, layers = _annotated(model)
    sites = {(layers[0].name, 0): QParams(np.float32(0.1), 0, -128, 127)}
    xs = [rng.normal(size=SHAPE).astype(np.float32)]
    result = correct_biases(annotated, layers, sites, xs, nearest_weights(layers))
    assert result.biases == {} and not result.kept
    cm = tvmq.compile(model, calib=rng.normal(size=(4, *SHAPE[1:])).astype(np.float32),
                      progress=False)
    assert "bias correction: no layer to correct" in str(cm.report())


def test_a_layer_an_output_reads_through_other_ops_is_a_head_even_if_a_layer_reads_it_too():
    """conv0 -> conv1 -> conv2, output = concat(conv1, conv2) (a detector's class convs reach
    the output through a concat and a split, and its box convs too): conv1 and conv2 are
    heads, conv0 is corrected."""
    rng = np.random.default_rng(6)
    nodes = [helper.make_node("Conv", ["input", "w0", "b0"], ["c0"], pads=[1] * 4),
             helper.make_node("Conv", ["c0", "w1", "b1"], ["c1"]),
             helper.make_node("Conv", ["c1", "w2", "b2"], ["c2"]),
             helper.make_node("Concat", ["c1", "c2"], ["output"], axis=1)]
    weights = {"w0": rng.normal(size=(5, 4, 3, 3)), "b0": rng.normal(size=5),
               "w1": rng.normal(size=(3, 5, 1, 1)), "b1": rng.normal(size=3),
               "w2": rng.normal(size=(2, 3, 1, 1)), "b2": rng.normal(size=2)}
    annotated, layers = _annotated(make_onnx(nodes, weights, SHAPE, (1, 5, 7, 7)))
    sites = {(layers[0].name, 0): QParams(np.float32(0.1), 0, -128, 127)}
    xs = [rng.normal(size=SHAPE).astype(np.float32)]
    got = correct_biases(annotated, layers, sites, xs, nearest_weights(layers)).biases
    assert list(got) == [layers[0].name]


def test_a_correction_that_does_not_lower_the_output_noise_is_dropped(monkeypatch):
    rng = np.random.default_rng(7)
    model = _chain_model(rng)
    calib = rng.uniform(0, 1, (8, *SHAPE[1:])).astype(np.float32)
    plain = tvmq.compile(model, config=tvmq.QuantConfig(bias_correction=False), calib=calib,
                         progress=False)
    _, layers = _annotated(model)
    worse = BiasCorrection({layers[0].name: np.full(6, 100.0, np.float32)}, 0.1, 0.2)
    monkeypatch.setattr("tvmq.compiler.correct_biases", lambda *args: worse)
    cm = tvmq.compile(model, config=tvmq.QuantConfig(), calib=calib, progress=False)
    for x in calib[:3]:
        np.testing.assert_array_equal(cm.run(x[None]), plain.run(x[None]))
    assert cm.report().bias_correction["kept"] is False
    assert "dropped (it did not raise the SQNR" in str(cm.report())
