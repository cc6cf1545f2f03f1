import numpy as np
import pytest
import tvm
from onnx import helper, numpy_helper
from tvmq.passes.annotate_quantizable import AnnotateQuantizable
from tvmq.passes.realize_quantization import RealizeQuantization

import tvmq
from tests.conftest import make_onnx
from tvmq import QuantConfig
from tvmq.boosters.adaround import learn_rounding
from tvmq.frontend import import_model
from tvmq.ir import const_value, op_name
from tvmq.numerics import choose_qparams, dequantize, quantize
from tvmq.numerics.weights import quantize_weight


def _layer_problem(k=48, n=16, rows=1200, seed=0):
    """Correlated non-negative inputs (as after a ReLU) of a (k, n) layer, and their int8 view."""
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(k, k)) / np.sqrt(k)
    x = np.maximum(rng.normal(size=(2 * rows, k)) @ mix + 0.3 * rng.normal(size=(2 * rows, k)),
                   0).astype(np.float32)
    qp = choose_qparams(x.min(), x.max())
    w = (0.1 * rng.normal(size=(k, n))).astype(np.float32)
    return x, dequantize(quantize(x, qp), qp), w


@pytest.mark.parametrize("bits", [4, 8])
def test_learned_rounding_beats_nearest_on_held_out_rows(bits):
    x, x_q, w = _layer_problem()
    nearest, wqp = quantize_weight(w, axis=1, bits=bits)
    fit, held_out = slice(0, 1200), slice(1200, None)
    learned = learn_rounding(x[None, fit], x_q[None, fit], w[None], wqp.scale, wqp.qmin,
                             wqp.qmax)[0]

    def mse(wq):
        return np.mean((x_q[held_out] @ (wq * wqp.scale) - x[held_out] @ w) ** 2)
    assert mse(learned) < 0.95 * mse(nearest)
    w_over_s = w / wqp.scale
    down = np.clip(np.floor(w_over_s), wqp.qmin, wqp.qmax)
    up = np.clip(np.ceil(w_over_s), wqp.qmin, wqp.qmax)
    assert np.all((learned == down) | (learned == up))
    assert wqp.qmin <= learned.min() and learned.max() <= wqp.qmax
    assert 0 < np.mean(learned != nearest) < 0.5


def _depthwise_model():
    """conv 3x3 (4 -> 8) + ReLU, depthwise 3x3 (8 groups) + ReLU, Gemm (8*6*6 -> 5)."""
    rng = np.random.default_rng(1)
    inits = {"w0": 0.3 * rng.normal(size=(8, 4, 3, 3)), "b0": 0.1 * rng.normal(size=8),
             "w1": 0.5 * rng.normal(size=(8, 1, 3, 3)), "b1": 0.1 * rng.normal(size=8),
             "w2": 0.1 * rng.normal(size=(288, 5))}
    nodes = [helper.make_node("Conv", ["input", "w0", "b0"], ["c0"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c0"], ["r0"]),
             helper.make_node("Conv", ["r0", "w1", "b1"], ["c1"], group=8),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Flatten", ["r1"], ["f"]),
             helper.make_node("MatMul", ["f", "w2"], ["output"])]
    return make_onnx(nodes, inits, (1, 4, 8, 8), (1, 5))


def _int_weights(mod) -> list[np.ndarray]:
    """The constant weights of the integer conv2d / matmul calls of `main`, in order."""
    found = []
    for block in mod["main"].body.blocks:
        for b in block.bindings:
            if op_name(b.value) in ("relax.nn.conv2d", "relax.matmul") and \
                    isinstance(b.value.args[1], tvm.ir.GenericConst):
                found.append(const_value(b.value.args[1]))
    return found


@pytest.mark.parametrize("weight_bits", [8, 4])
def test_adaround_compiles_bit_exact_with_floor_or_ceil_weights(weight_bits):
    rng = np.random.default_rng(2)
    calib = rng.normal(size=(24, 4, 8, 8)).astype(np.float32)
    model = _depthwise_model()
    compiled = {r: tvmq.compile(model, calib=calib, progress=False,
                                config=QuantConfig(weight_rounding=r, weight_bits=weight_bits))
                for r in ("nearest", "adaround")}
    cm = compiled["adaround"]
    assert cm.verify(calib[:3], n=3).ok
    assert cm.report().config["weight_rounding"] == "adaround"
    learned, nearest = (_int_weights(compiled[r].quant_mod) for r in ("adaround", "nearest"))
    floats = _float_weights(model)
    assert len(learned) == len(nearest) == len(floats) == 3
    qmax = 2 ** (weight_bits - 1) - 1
    for wq, wn, w, axis in zip(learned, nearest, floats, (0, 0, 1)):
        np.testing.assert_array_equal(wn, quantize_weight(w, axis=axis, bits=weight_bits)[0])
        assert wq.shape == w.shape and wq.dtype == np.int8
        assert -qmax <= wq.min() and wq.max() <= qmax
        assert np.all(np.abs(wq.astype(np.int32) - wn) <= 1)  # floor or ceil of W / s
    assert any(not np.array_equal(a, b) for a, b in zip(learned, nearest))


def _float_weights(model) -> list[np.ndarray]:
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return [inits["w0"], inits["w1"], inits["w2"]]


def test_w4a8_digits_is_bit_exact_with_4_bit_weights(compile_digits, digits):
    cm = compile_digits(weight_bits=4)
    assert cm.verify(digits[1][:4], n=4).ok
    weights = _int_weights(cm.quant_mod)
    assert weights and all(-7 <= w.min() and w.max() <= 7 for w in weights)
    assert {r.w_bits for r in cm.report().layers if r.weight_scale is not None} == {4}
    x_test, y_test = digits[1], digits[2]
    accuracy = (cm.run(x_test).argmax(1) == y_test).mean()
    assert accuracy > 0.9


def test_adaround_digits_is_bit_exact(compile_digits, digits):
    cm = compile_digits(weight_rounding="adaround")
    assert cm.verify(digits[1][:4], n=4).ok
    assert cm.config.label == "int8 mult_shift/double minmax adaround"


def test_realize_takes_given_weights_and_checks_them():
    x = np.zeros((1, 4), np.float32)
    model = make_onnx([helper.make_node("MatMul", ["input", "w"], ["output"])],
                      {"w": np.ones((4, 3)) * 0.5}, x.shape, (1, 3))
    annotated = AnnotateQuantizable()(import_model(model, None)[0])
    name = annotated["main"].body.blocks[0].bindings[0].var.name
    act = {n: choose_qparams(-1.0, 1.0) for n in ("input", name)}
    _, wqp = quantize_weight(np.ones((4, 3), np.float32) * 0.5, axis=1)
    given = np.arange(12, dtype=np.int64).reshape(4, 3) - 6
    mod = RealizeQuantization(act, weights={name: (given, wqp)})(annotated)
    np.testing.assert_array_equal(_int_weights(mod)[0], given)
    with pytest.raises(ValueError, match=r"weights\['matmul_0'\] holds values in \[-200, 5\]"):
        RealizeQuantization(act, weights={name: (given - 194 * (given == -6), wqp)})
    with pytest.raises(ValueError, match=r"needs symmetric 4-bit"):
        RealizeQuantization(act, weight_bits={name: 4}, weights={name: (given, wqp)})
    with pytest.raises(ValueError, match=r"has shape \(3, 4\), the layer's weight \(4, 3\)"):
        RealizeQuantization(act, weights={name: (given.reshape(3, 4), wqp)})(annotated)
