"""Mask-guided sensitivity: the probe build, the output distance, the cache."""

import numpy as np
import pytest
from tvmq.passes.annotate_quantizable import AnnotateQuantizable
from tvmq.targets.host import build

import tvmq
from tvmq import data
from tvmq.calibrate import calibrate
from tvmq.compiler import find_layers
from tvmq.config import QuantConfig
from tvmq.frontend import load_model
from tvmq.layers import tensor_names
from tvmq.mixed import sensitivity
from tvmq.mixed.assign import quantizer_roots
from tvmq.realize import int8_qparams, rounding_sites
from tvmq.report import sqnr_db
from tvmq.simulate import output_noise


def _setup(model, samples, hold_back=0):
    """(annotated, its layers, sites(bits), samples) as the compiler gives them to the probe:
    calibrated tensors, realize's grids (tvmq.realize.rounding_sites)."""
    float_mod, inp = load_model(model)
    annotated = AnnotateQuantizable()(float_mod)
    layers = find_layers(annotated)[0]
    calibrated = calibrate(annotated, tensor_names(layers), samples, inp, hold_back=hold_back,
                           progress=False)

    def sites(bits):
        qparams, channel = int8_qparams(annotated, calibrated.observers, QuantConfig(), inp,
                                        lambda name: bits, calibrated.channel_ranges)
        return rounding_sites(layers, qparams, channel)

    return annotated, layers, sites, calibrated.inputs or list(samples)


@pytest.fixture(scope="module")
def digits_setup(digits):
    return _setup(data.digits_model_path(), digits[0][:16], hold_back=4)


def _probe(setup, bits=(4, 8)):
    annotated, layers, sites, samples = setup
    macs = [x for x in layers if x.kind in ("conv2d", "matmul")]
    return sensitivity.Probe(annotated, macs, {b: sites(b) for b in {*bits, 8}},
                             quantizer_roots(layers), samples, bits)


def _measure(setup, cache_dir=None, bits=(4, 8)):
    return sensitivity.measure(_probe(setup, bits), cache_dir=cache_dir, progress=False)


def test_probe_with_every_mask_off_is_the_float_model(digits_setup):
    annotated, _, _, samples = digits_setup
    probe = _probe(digits_setup)
    reference = build(annotated)
    for x, got in zip(samples, probe.run(None)):
        np.testing.assert_allclose(got[0], reference.run(x), rtol=1e-5, atol=1e-6)


def test_probe_at_int8_simulates_the_integer_model(digits):
    """With every site at its 8-bit grid the probe is close to the compiled INT8 model:
    much closer than the float model is (on samples calibration did not see)."""
    calib, x = digits[0][:8], digits[0][8:24]
    cm = tvmq.compile(data.digits_model_path(),  # the probe keeps the model's biases
                      config=QuantConfig(sqnr_samples=0, bias_correction=False), calib=calib,
                      progress=False)
    sites = rounding_sites(cm.layers, cm.act_qparams)
    macs = [layer for layer in cm.layers if layer.kind in ("conv2d", "matmul")]
    probe = sensitivity.Probe(cm.float_mod, macs, {8: sites}, quantizer_roots(cm.layers),
                              list(x[:, None]), (8,))
    compiled = np.concatenate([cm.run(s[None]) for s in x])
    simulated = np.concatenate([out[0] for out in probe.run({})])
    floats = np.concatenate([out[0] for out in probe.run(None)])
    assert sqnr_db(compiled, simulated) > sqnr_db(compiled, floats) + 6.0


def _shared_input_model():
    """x read by a conv and by the add after it: one quantizer, two readers."""
    from onnx import helper

    from tests.conftest import make_onnx

    w = np.random.default_rng(0).normal(size=(2, 2, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["input", "w"], ["y"], pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["y", "input"], ["output"])]
    return make_onnx(nodes, {"w": w}, (1, 2, 6, 6), (1, 2, 6, 6))


def test_a_narrow_input_rounds_every_reader_of_its_quantizer():
    x = np.random.default_rng(1).normal(size=(4, 1, 2, 6, 6)).astype(np.float32)
    setup = _setup(_shared_input_model(), list(x))
    probe = _probe(setup)
    conv = probe.layers[0]
    table = probe.table({conv: (8, 4)})
    narrow = {site for site, row in zip(probe.site_list, table) if row[4] == 7}
    assert narrow == {(conv, 0), ("add_1", 1)}, narrow  # the add reads x at 4 bits too
    assert np.all(probe.table({})[:, 4] == 127)


def test_fewer_bits_add_noise_to_int8(digits_setup):
    s = _measure(digits_setup)
    assert s.weight.shape == s.activation.shape == (len(s.layers), 2)
    assert np.all(s.weight[:, 0] > 0) and np.all(s.weight[:, 1] == 0)  # bits (4, 8)
    assert np.all(s.activation[:, 0] > 0) and np.all(s.activation[:, 1] == 0)
    assert s.int8 > 0
    np.testing.assert_array_equal(s.pair(4, 8), s.weight[:, 0] + s.activation[:, 1])


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
    assert output_noise(y, y) == 0.0
    got = [np.array([[3.0, -3.0]]), np.array([[0.0, 1.0]])]
    assert output_noise(y, got) == pytest.approx(2 / 25)  # (1 + 1) / (9 + 16)


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
    got = output_noise([softmax(logits)], [softmax(noisy)])
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
    x = np.random.default_rng(1).normal(size=(8, 1, 16)).astype(np.float32)
    probe = _probe(_setup(_blank_dominated_model(), list(x)), bits=(4, 8))
    s = sensitivity.measure(probe, progress=False)
    reference = probe.run(None)
    kl = [np.mean([_kl(r[0], o[0]) for r, o in zip(reference, probe.run({name: (4, 8)}))])
          for name in probe.layers]
    assert kl[0] < kl[1]  # the blank-dominated row hides matmul_0's weight noise
    assert s.weight[0, 0] > 10 * s.weight[1, 0]  # its logits move much more

