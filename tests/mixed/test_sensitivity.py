"""Mask-guided sensitivity: the probe build, the output distance, the cache."""

import numpy as np
import pytest
from tvmq.passes.annotate_quantizable import AnnotateQuantizable
from tvmq.targets.host import build

from tvmq import data
from tvmq.calibrate import calibrate
from tvmq.compiler import find_layers
from tvmq.frontend import load_model
from tvmq.mixed import sensitivity
from tvmq.numerics import choose_qparams


@pytest.fixture(scope="module")
def digits_setup(digits):
    float_mod, inp = load_model(data.digits_model_path())
    annotated = AnnotateQuantizable()(float_mod)
    layers = [layer for layer in find_layers(annotated)[0] if layer.kind in ("conv2d", "matmul")]
    names = sorted({n for layer in layers for n in (*layer.inputs, layer.name)})
    calibrated = calibrate(annotated, names, digits[0][:16], inp, hold_back=4, progress=False)
    observers, samples = calibrated.observers, calibrated.inputs

    def qparams(name, bits):
        return choose_qparams(*observers[name].range(), bits=bits)

    return annotated, layers, qparams, samples


def _probe(setup, bits=(4, 8)):
    annotated, layers, qparams, samples = setup
    return sensitivity.Probe(annotated, [x.name for x in layers], [x.inputs[0] for x in layers],
                             qparams, samples, bits)


def _measure(setup, cache_dir=None, bits=(4, 8)):
    return sensitivity.measure(_probe(setup, bits), cache_dir=cache_dir, progress=False)


def test_probe_with_every_mask_off_is_the_float_model(digits_setup):
    annotated, layers, _, samples = digits_setup
    probe = build(sensitivity.probe_module(annotated, [x.name for x in layers])).vm
    import tvm

    table = np.zeros((len(layers), 5), np.float32)
    table[:, 1] = 1.0
    ws = [tvm.runtime.tensor(x.weight.astype(np.float32)) for x in layers]
    reference = build(annotated)
    for x in samples:
        got = probe["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(table), *ws).numpy()
        np.testing.assert_allclose(got, reference.run(x), rtol=1e-5, atol=1e-6)


def test_fewer_bits_move_the_output_more(digits_setup):
    s = _measure(digits_setup)
    assert s.weight.shape == s.activation.shape == (len(s.layers), 2)
    assert np.all(s.weight[:, 0] > s.weight[:, 1])
    assert np.all(s.activation[:, 0] > s.activation[:, 1])
    assert np.all(s.weight >= 0) and np.all(s.activation >= 0)
    np.testing.assert_array_equal(s.pair(4, 8), s.weight[:, 0] + s.activation[:, 1])


def test_activation_run_quantizes_only_its_layer(digits_setup):
    """Masking in the activation of one layer equals fake-quantizing that input by hand."""
    annotated, layers, qparams, samples = digits_setup
    import tvm

    from tvmq.numerics import dequantize, quantize

    probe = build(sensitivity.probe_module(annotated, [layers[0].name])).vm
    qp = qparams(layers[0].inputs[0], 4)
    table = np.array([[1.0, float(qp.scale), float(qp.zero_point), qp.qmin, qp.qmax]],
                     np.float32)
    w = tvm.runtime.tensor(layers[0].weight.astype(np.float32))
    x = samples[0]
    got = probe["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(table), w).numpy()
    xq = dequantize(quantize(x, qp), qp).astype(np.float32)
    want = build(annotated).run(xq)  # the first layer reads the model input
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_results_are_cached_on_disk(digits_setup, tmp_path, monkeypatch):
    first = _measure(digits_setup, tmp_path)
    assert len(list(tmp_path.glob("*.npz"))) == 1

    def no_build(mod):
        raise AssertionError("a cached sensitivity must not build the probe")

    monkeypatch.setattr(sensitivity, "build", no_build)
    again = _measure(digits_setup, tmp_path)
    np.testing.assert_array_equal(first.weight, again.weight)
    np.testing.assert_array_equal(first.activation, again.activation)
    with pytest.raises(AssertionError, match="must not build"):
        _measure(digits_setup, tmp_path, bits=(8,))  # another key


def test_output_noise_is_noise_over_signal_power():
    y = [np.array([[3.0, -4.0]]), np.array([[0.0, 0.0]])]
    assert sensitivity.output_noise(y, y) == 0.0
    got = [np.array([[3.0, -3.0]]), np.array([[0.0, 1.0]])]
    assert sensitivity.output_noise(y, got) == pytest.approx(2 / 25)  # (1 + 1) / (9 + 16)


def test_output_noise_of_a_distribution_is_taken_on_its_centered_logits():
    """A softmax output is compared as log p - mean(log p): the logits up to their shift."""
    logits = np.array([[9.0, 0.0, -3.0], [1.0, 0.5, -0.5]])
    noisy = logits + np.array([[0.0, 1.0, -1.0], [0.1, 0.0, 0.0]])

    def softmax(x):
        e = np.exp(x - x.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    def centered(x):
        return x - x.mean(-1, keepdims=True)

    want = np.sum((centered(noisy) - centered(logits)) ** 2) / np.sum(centered(logits) ** 2)
    got = sensitivity.output_noise([softmax(logits)], [softmax(noisy)])
    assert got == pytest.approx(want, rel=1e-9)
    assert got > 0.01  # the confident row's logit noise counts although p barely moves


def _kl(reference, approx):
    """The first version's score: mean KL(p || q) of distributions along the last axis."""
    p, q = np.asarray(reference, np.float64), np.asarray(approx, np.float64)
    return float(np.mean(np.sum(p * (np.log(p + 1e-12) - np.log(q + 1e-12)), axis=-1)))


def _blank_dominated_model():
    """Two matmuls side by side, their logits stacked and softmaxed: matmul_0 (heavy-tailed
    weights, coarse at 4 bits) feeds a row whose first class wins by ~20 (a CTC blank),
    matmul_1 (small weights) a near-uniform row."""
    from onnx import helper

    from tests.conftest import make_onnx

    rng = np.random.default_rng(0)
    classes = 12
    w0 = (0.3 * rng.standard_t(2, size=(16, classes))).astype(np.float32)
    w1 = (0.2 * rng.normal(size=(16, classes))).astype(np.float32)
    blank = np.zeros(classes, np.float32)
    blank[0] = 25.0
    nodes = [helper.make_node("MatMul", ["input", "w0"], ["m0"]),
             helper.make_node("Add", ["m0", "blank"], ["l0"]),
             helper.make_node("MatMul", ["input", "w1"], ["l1"]),
             helper.make_node("Concat", ["l0", "l1"], ["logits"], axis=0),
             helper.make_node("Softmax", ["logits"], ["output"], axis=-1)]
    return make_onnx(nodes, {"w0": w0, "w1": w1, "blank": blank}, (1, 16), (2, classes))


def test_noise_ranks_a_layer_high_that_kl_on_a_dominating_class_ranks_low():
    model = _blank_dominated_model()
    annotated = AnnotateQuantizable()(load_model(model)[0])
    layers = [x for x in find_layers(annotated)[0] if x.kind == "matmul"]
    x = np.random.default_rng(1).normal(size=(8, 1, 16)).astype(np.float32)
    setup = (annotated, layers, lambda name, bits: choose_qparams(-4.0, 4.0, bits=bits), list(x))
    probe = _probe(setup, bits=(4,))
    s = sensitivity.measure(probe, progress=False)
    reference = probe.run({})
    kl = [np.mean([_kl(r[0], o[0]) for r, o in zip(reference, probe.run({x.name: (4, None)}))])
          for x in layers]
    assert kl[0] < kl[1]  # the blank-dominated row hides matmul_0's weight noise
    assert s.weight[0, 0] > 10 * s.weight[1, 0]  # its logits move much more


def test_probe_refuses_a_non_mac_layer(digits_setup):
    annotated = digits_setup[0]
    with pytest.raises(ValueError, match="not a conv2d/matmul layer"):
        sensitivity.probe_module(annotated, ["add_7"])
