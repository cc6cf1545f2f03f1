"""tvmq.train on a tiny conv + dense classifier: the fake-quantized forward equals its NumPy
reference bit for bit, gradients match finite differences (FP32) and the straight-through rule
(fake-quantized), quantized gradients equal the golden quantizer, and the trained model exports
to ONNX that onnxruntime and tvmq.compile run."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import tvm
from tvm import relax
from tvmq.passes.fake_quantize import FakeQuantize, fake_requant
from tvmq.passes.quantize_gradients import quantize_gradient_site

import tvmq
from tvmq.numerics import QParams, Requant, choose_qparams, dequantize, quantize, requantize
from tvmq.numerics.gradq import GradQuant
from tvmq.numerics.weights import quantize_weight
from tvmq.train import QuantTrainer, TrainConfig, lift_weights
from tvmq.train.export import to_onnx

BATCH, CLASSES = 4, 4
RNG = np.random.default_rng(0)
W1 = (RNG.normal(size=(3, 1, 3, 3)) * 0.5).astype(np.float32)
B1 = (RNG.normal(size=(1, 3, 1, 1)) * 0.1).astype(np.float32)
W2 = (RNG.normal(size=(75, CLASSES)) * 0.2).astype(np.float32)
B2 = (RNG.normal(size=(CLASSES,)) * 0.1).astype(np.float32)
X = RNG.uniform(-1, 1, size=(BATCH, 1, 5, 5)).astype(np.float32)
Y = np.array([0, 1, 2, 3], np.int64)


def tiny_model(batch: int = BATCH) -> tvm.IRModule:
    """conv 3x3 (1->3, pad 1) + bias -> relu -> reshape -> dense (75->4) + bias."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((batch, 1, 5, 5), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            h = bb.emit(relax.op.nn.conv2d(x, relax.const(W1), padding=[1, 1]))
            h = bb.emit(relax.op.nn.relu(relax.op.add(h, relax.const(B1))))
            h = bb.emit(relax.op.reshape(h, (batch, 75)))
            out = bb.emit_output(relax.op.add(relax.op.matmul(h, relax.const(W2)),
                                              relax.const(B2)))
        bb.emit_func_output(out)
    return bb.get()


def _conv_np(x, w):
    """NCHW conv, stride 1, pad 1, float64 (exact on integer values)."""
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (3, 3), axis=(2, 3))
    return np.einsum("nchwij,ocij->nohw", win, w)


def _activation_codes(x):
    """Per-tensor symmetric narrow-range int8 codes of an activation: (dequantized, codes,
    scale) with scale = max|x| / 127 (golden choose_qparams / quantize / dequantize)."""
    qp = choose_qparams(x.min(), x.max(), symmetric=True, narrow_range=True)
    q = quantize(x, qp)
    return dequantize(q, qp), q.astype(np.int64), qp.scale


def _weight_codes(w, axis):
    """Per-output-channel int8 codes of a weight (golden quantize_weight) and their scales."""
    q, qp = quantize_weight(w, axis=axis, per_channel=True)
    return q.astype(np.int64), qp.scale


def _requantized(acc, sx, sw, kind, axis):
    """A layer's output from its exact integer accumulator: s_y = max|acc * s_x * s_w[c]| /
    127 (symmetric narrow range), y = requantize(acc, sx * sw / sy) with mult_shift (double
    rounding) or fp32, dequantized to float32."""
    shape = [1] * acc.ndim
    shape[axis] = -1
    in_scale = np.float64(sx) * sw.astype(np.float64)
    amax = np.max(np.abs(acc) * in_scale.reshape(shape))
    out = choose_qparams(-amax, amax, symmetric=True, narrow_range=True)
    rq = Requant.from_scale(in_scale / np.float64(out.scale), kind,
                            "double" if kind == "mult_shift" else None)
    y = requantize(acc, rq, zero_point=0, qmin=-127, qmax=127, axis=axis)
    return dequantize(y, QParams(out.scale, 0, -127, 127))


def _forward_np(x, params, kind):
    """The fake-quantized forward from the golden tvmq.numerics functions, as FakeQuantize's
    docstring defines it: conv and dense on int8 codes, requantized; bias and relu in float."""
    _, xi, sx = _activation_codes(x)
    wi, sw = _weight_codes(params["conv0_weight"], 0)
    h = _requantized(_conv_np(xi, wi).astype(np.int64), sx, sw, kind, 1)
    h = np.maximum(h + params["conv0_bias"], np.float32(0)).reshape(len(x), 75)
    _, hi, sh = _activation_codes(h)
    wi, sw = _weight_codes(params["dense0_weight"], 1)
    out = _requantized(hi @ wi, sh, sw, kind, 1)
    return out + params["dense0_bias"]


def _float_loss64(params, x=X, y=Y):
    """Cross-entropy of the float model in float64."""
    p = {k: v.astype(np.float64) for k, v in params.items()}
    h = np.maximum(_conv_np(x.astype(np.float64), p["conv0_weight"]) + p["conv0_bias"], 0)
    logits = h.reshape(len(x), 75) @ p["dense0_weight"] + p["dense0_bias"]
    logits = logits - logits.max(1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    return -logp[np.arange(len(y)), y].mean()


@pytest.fixture(scope="module")
def fp32_trainer():
    return QuantTrainer(tiny_model(), (1, 5, 5), TrainConfig(fake_quant=False, batch_size=BATCH))


def test_lift_weights_names_and_values():
    mod, params = lift_weights(tiny_model())
    assert list(params) == ["conv0_weight", "conv0_bias", "dense0_weight", "dense0_bias"]
    np.testing.assert_array_equal(params["dense0_weight"], W2)
    assert [p.name for p in mod["main"].params[1:]] == list(params)


@pytest.mark.parametrize("kind", ["mult_shift", "fp32"])
def test_fake_quantized_forward_equals_golden(kind):
    cfg = TrainConfig(requant=kind, batch_size=BATCH)
    tr = QuantTrainer(tiny_model(), (1, 5, 5), cfg)
    np.testing.assert_array_equal(tr.predict(X), _forward_np(X, tr.params(), kind))


def test_requant_kinds_differ_somewhere():
    """mult_shift and fp32 requant are two different arithmetics (else the benchmark is moot)."""
    rng = np.random.default_rng(1)
    acc = rng.integers(-30000, 30000, size=(64, 8, 4, 4)).astype(np.float64)
    sx, sw = np.float32(0.013), rng.uniform(0.001, 0.01, 8).astype(np.float32)
    a, b = (fake_requant(acc, sx, sw, k, 8, 1) for k in ("mult_shift", "fp32"))
    assert np.any(a != b) and np.mean(a != b) < 0.05


def test_fp32_gradients_match_finite_differences(fp32_trainer):
    params = fp32_trainer.params()
    loss, grads = fp32_trainer.gradients(X, Y)
    assert loss == pytest.approx(_float_loss64(params), rel=1e-5)
    rng = np.random.default_rng(2)
    for name in params:
        for idx in [tuple(rng.integers(0, s) for s in params[name].shape) for _ in range(3)]:
            eps = 1e-4
            hi = {k: v.astype(np.float64).copy() for k, v in params.items()}
            lo = {k: v.astype(np.float64).copy() for k, v in params.items()}
            hi[name][idx] += eps
            lo[name][idx] -= eps
            fd = (_float_loss64(hi) - _float_loss64(lo)) / (2 * eps)
            assert grads[name][idx] == pytest.approx(fd, rel=1e-3, abs=1e-5), (name, idx)


def test_straight_through_gradient_of_the_dense_weight():
    """d loss / d W2 = xq^T (softmax - onehot) / N, with xq the fake-quantized dense input."""
    tr = QuantTrainer(tiny_model(), (1, 5, 5), TrainConfig(batch_size=BATCH))
    p = tr.params()
    _, grads = tr.gradients(X, Y)
    logits = _forward_np(X, p, "mult_shift").astype(np.float64)
    prob = np.exp(logits - logits.max(1, keepdims=True))
    prob /= prob.sum(1, keepdims=True)
    prob[np.arange(BATCH), Y] -= 1
    _, xi, sx = _activation_codes(X)
    wi, sw = _weight_codes(p["conv0_weight"], 0)
    h = _requantized(_conv_np(xi, wi).astype(np.int64), sx, sw, "mult_shift", 1)
    hq, _, _ = _activation_codes(np.maximum(h + p["conv0_bias"], 0).reshape(BATCH, 75))
    np.testing.assert_allclose(grads["dense0_weight"], hq.T.astype(np.float64) @ prob / BATCH,
                               rtol=1e-4, atol=1e-7)


def _site_specs(tr):
    """Quantized site name -> its spec, read from the built training module."""
    specs = {}
    for block in tr.train_mod["backbone_loss_adjoint"].body.blocks:
        for b in block.bindings:
            v = b.value
            if (isinstance(v, relax.Call) and v.op.name == "relax.call_dps_packed"
                    and v.args[0].global_symbol == "tvmq.quantize_gradient"):
                specs[b.var.name] = json.loads(v.args[1].fields[2].value)
    return specs


@pytest.mark.parametrize("q", [GradQuant(8, "rtz", "zscore"),
                               GradQuant(4, "stochastic", "max", axis=0),
                               GradQuant(6, "nearest", "none")])
def test_quantized_weight_gradients_equal_golden(fp32_trainer, q):
    cfg = TrainConfig(fake_quant=False, batch_size=BATCH, weight_grads=q, seed=7)
    tr = QuantTrainer(tiny_model(), (1, 5, 5), cfg)
    tr.reset(7, init="model")
    tr.step = 5
    _, grads_q = tr.gradients(X, Y)
    _, grads = fp32_trainer.gradients(X, Y)
    specs = _site_specs(tr)
    assert sorted(specs) == sorted(f"{n}_adjoint_out_q" for n in grads)
    for name, g in grads.items():
        expected = quantize_gradient_site(g, (7, 5), specs[f"{name}_adjoint_out_q"])
        np.testing.assert_array_equal(grads_q[name], expected, err_msg=name)
        assert not np.array_equal(grads_q[name], g), name


def test_activation_gradients_are_quantized_where_found():
    q = GradQuant(8, "rtz", "zscore")
    cfg = TrainConfig(batch_size=BATCH, activation_grads=q)
    default = QuantTrainer(tiny_model(), (1, 5, 5), cfg)
    assert sorted(_site_specs(default)) == ["fq0_y_adjoint_q"]  # the logits gradient stays FP32
    cfg = TrainConfig(batch_size=BATCH, activation_grads=q, quantize_logits_grad=True)
    tr = QuantTrainer(tiny_model(), (1, 5, 5), cfg)
    assert sorted(_site_specs(tr)) == ["fq0_y_adjoint_q", "fq1_y_adjoint_q"]
    _, grads_q = tr.gradients(X, Y)
    _, grads = QuantTrainer(tiny_model(), (1, 5, 5), TrainConfig(batch_size=BATCH)).gradients(X, Y)
    # the last layer's weight gradient sees a quantized dL/dy: same sign pattern, not equal
    assert not np.array_equal(grads_q["dense0_weight"], grads["dense0_weight"])
    np.testing.assert_allclose(grads_q["dense0_weight"], grads["dense0_weight"], atol=0.05)


def test_fit_lowers_the_loss_and_export_runs_in_ort_and_tvmq(tmp_path):
    rng = np.random.default_rng(3)
    centers = rng.normal(size=(CLASSES, 1, 5, 5)).astype(np.float32)
    y = rng.integers(0, CLASSES, 64)
    x = (centers[y] + 0.3 * rng.normal(size=(64, 1, 5, 5))).astype(np.float32)
    q = GradQuant(8, "rtz", "zscore")
    tr = QuantTrainer(tiny_model(8), (1, 5, 5), TrainConfig(batch_size=8, lr=0.02,
                                                            activation_grads=q, weight_grads=q))
    history = tr.fit(x, y, epochs=6, x_val=x, y_val=y, progress=False)
    assert len(history.loss) == 6 * 8 and history.epoch_loss[-1] < 0.5 * history.epoch_loss[0]
    assert history.val_accuracy[-1] >= 0.9
    path = tmp_path / "trained.onnx"
    tr.export_onnx(path)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    float_logits = sess.run(None, {"x": x})[0]
    plain = QuantTrainer(path, (1, 5, 5), TrainConfig(fake_quant=False, batch_size=8))
    np.testing.assert_allclose(float_logits, plain.predict(x), rtol=1e-5, atol=1e-5)
    cm = tvmq.compile(str(path), target="host", calib=x[:16], input_shape=(1, 1, 5, 5),
                      progress=False)
    int8 = np.concatenate([cm.run(x[i:i + 1]) for i in range(len(x))])
    assert np.mean(int8.argmax(1) == y) >= 0.9


def test_export_rejects_unsupported_ops():
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((2, 3), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.sigmoid(x))
        bb.emit_func_output(out)
    with pytest.raises(ValueError, match=r"does not support relax\.sigmoid"):
        to_onnx(bb.get(), {})


def test_fake_quantize_touches_only_parameter_weights():
    """A matmul of two activations stays float; bad settings are refused."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((2, 3), "float32"))
    w = relax.Var("w", relax.TensorType((3, 3), "float32"))
    with bb.function("main", [x, w]):
        with bb.dataflow():
            h = bb.emit(relax.op.matmul(x, relax.op.permute_dims(x)))  # (2, 2), no weight
            out = bb.emit_output(relax.op.matmul(relax.op.matmul(h, x), w))
        bb.emit_func_output(out)
    calls = [b.value.op.name for block in FakeQuantize()(bb.get())["main"].body.blocks
             for b in block.bindings if isinstance(b.value, relax.Call)]
    assert calls.count("relax.matmul") == 4  # two activation matmuls + y and acc of the layer
    assert calls.count("relax.call_dps_packed") == 3  # fake_quant x, fake_quant w, requant
    with pytest.raises(ValueError, match="requant"):
        FakeQuantize(requant="int")
    with pytest.raises(ValueError, match="bits"):
        FakeQuantize(bits=9)


def test_config_and_model_errors():
    with pytest.raises(ValueError, match="requant"):
        TrainConfig(requant="int")
    with pytest.raises(ValueError, match="weight_grads"):
        TrainConfig(weight_grads="rtz")
    with pytest.raises(ValueError, match="lr"):
        TrainConfig(lr=0)
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match=r"has shape \(2, 1, 5, 5\), training needs \(4"):
        QuantTrainer(tiny_model(batch=2), (1, 5, 5), TrainConfig(batch_size=BATCH))
