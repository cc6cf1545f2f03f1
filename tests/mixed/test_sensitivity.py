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


def _measure(setup, cache_dir=None, bits=(4, 8)):
    annotated, layers, qparams, samples = setup
    return sensitivity.measure(annotated, [x.name for x in layers],
                               [x.inputs[0] for x in layers], qparams, samples, bits,
                               cache_dir=cache_dir, progress=False)


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


def test_output_distance():
    logits = np.array([[2.0, 0.5, -1.0]])
    assert sensitivity.output_distance(logits, logits) == 0.0
    assert sensitivity.output_distance(logits, logits[:, ::-1]) > 0.1
    probs = np.array([[0.7, 0.2, 0.1]])
    near = np.array([[0.69, 0.21, 0.1]])
    kl = float(np.sum(probs * np.log(probs / near)))
    assert sensitivity.output_distance(probs, near) == pytest.approx(kl, rel=1e-6)
    two = np.array([[0.3, 0.7]], np.float32)  # float32 probabilities: rounding never < 0
    assert sensitivity.output_distance(two, two * np.float32(1 + 1e-7)) >= 0.0
    col = np.array([[2.0], [4.0]])
    assert sensitivity.output_distance(col, col + 1) == pytest.approx(1 / 10)


def test_probe_refuses_a_non_mac_layer(digits_setup):
    annotated = digits_setup[0]
    with pytest.raises(ValueError, match="not a conv2d/matmul layer"):
        sensitivity.probe_module(annotated, ["add_7"])
