"""KeepFloat: user patterns and ops whose quantization buys no integer work stay float."""

import numpy as np
import pytest
from conftest import make_onnx
from onnx import helper
from tvmq.passes.annotate_quantizable import AnnotateQuantizable
from tvmq.passes.keep_float import FLOAT_CONSUMERS, FLOAT_INPUTS, USER, KeepFloat

import tvmq
from tvmq.frontend import import_model
from tvmq.layers import find_layers

RNG = np.random.default_rng(0)
C = 4


def _annotated(model):
    mod, _, _ = import_model(model, None)
    return AnnotateQuantizable()(mod)


def _layer_norm_model():
    """conv -> layer norm over channels (mean, x - mean, squared, mean, + eps, sqrt,
    divide) -> hard-swish made of float ops with a clip inside -> conv."""
    w = RNG.normal(size=(C, C, 1, 1)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["input", "w1"], ["c1"]),
        helper.make_node("ReduceMean", ["c1"], ["mu"], axes=[1], keepdims=1),
        helper.make_node("Sub", ["c1", "mu"], ["d"]),
        helper.make_node("Mul", ["d", "d"], ["d2"]),
        helper.make_node("ReduceMean", ["d2"], ["var"], axes=[1], keepdims=1),
        helper.make_node("Add", ["var", "eps"], ["ve"]),
        helper.make_node("Sqrt", ["ve"], ["sd"]),
        helper.make_node("Div", ["d", "sd"], ["ln"]),
        helper.make_node("Add", ["ln", "three"], ["p3"]),
        helper.make_node("Clip", ["p3", "zero", "six"], ["r6"]),
        helper.make_node("Mul", ["ln", "r6"], ["hs"]),
        helper.make_node("Conv", ["hs", "w2"], ["output"]),
    ]
    inits = {"w1": w, "w2": w[::-1].copy(), "three": np.float32(3), "zero": np.float32(0),
             "six": np.float32(6), "eps": np.float32(1e-5)}
    return make_onnx(nodes, inits, (1, C, 6, 6), (1, C, 6, 6))


def _reasons(annotated, patterns=()):
    keep = KeepFloat(patterns)
    return keep(annotated), keep.reasons


def test_ops_between_float_ops_stay_float_and_say_why():
    marked, reasons = _reasons(_annotated(_layer_norm_model()))
    # the channel mean reads the conv but only a float subtract reads it; the variance mean
    # reads the float square; the clip inside hard-swish reads a float add
    assert [(name.rsplit("_", 1)[0], why) for name, why in reasons.items()] == [
        ("mean", FLOAT_CONSUMERS), ("mean", FLOAT_INPUTS), ("relu", FLOAT_INPUTS)]
    layers, float_ops = find_layers(marked)
    assert [layer.kind for layer in layers] == ["conv2d", "conv2d"]
    assert sum(f"({kind}: {why})" in op for op in float_ops
               for kind, why in (("relu", FLOAT_INPUTS), ("mean", FLOAT_CONSUMERS),
                                 ("mean", FLOAT_INPUTS))) == 3


def test_a_graph_without_float_ops_keeps_every_layer(digits):
    annotated = _annotated(tvmq.data.digits_model_path())
    _, reasons = _reasons(annotated)
    assert reasons == {}


def test_user_patterns_and_the_fixed_point(digits):
    annotated = _annotated(tvmq.data.digits_model_path())
    _, reasons = _reasons(annotated, ["conv2d_2", "add_*"])
    assert reasons["conv2d_2"] == USER and reasons["add_6"] == USER
    # conv2d_2 -> max_pool2d_3: its only input is now float; the concat after the add and the
    # mean/reshape after it follow one by one
    assert reasons["max_pool2d_3"] == FLOAT_INPUTS
    assert {"avg_pool2d_7", "concat_8", "mean_9", "reshape_10"} <= set(reasons)
    assert reasons.keys() >= {"conv2d_2", "add_6"}
    assert "conv2d_5" not in reasons and "matmul_11" not in reasons


@pytest.mark.parametrize("scheme", ["int8", "lbfp8", "mixed"])
def test_compile_keeps_named_layers_float_bit_exact(digits, scheme):
    x_calib, x_test, y_test = digits
    cfg = tvmq.QuantConfig(scheme=scheme, keep_float=["conv2d_2"], sqnr_samples=4)
    cm = tvmq.compile(tvmq.data.digits_model_path(), config=cfg, calib=x_calib[:32],
                      progress=False)
    report = cm.report()
    assert "conv2d_2 (conv2d: keep_float)" in report.float_ops
    assert "conv2d_2" not in [row.name for row in report.layers]
    assert "conv2d_2_q" not in cm.quant_mod.script()
    assert cm.verify(x_test, n=2).ok
    assert (cm.run(x_test).argmax(1) == y_test).mean() > 0.95


def test_keep_float_config_checks():
    assert tvmq.QuantConfig(keep_float="conv2d_1").keep_float == ("conv2d_1",)
    cfg = tvmq.QuantConfig(keep_float=["a", "b_*"])
    assert tvmq.QuantConfig(**cfg.to_dict()) == cfg and hash(cfg) == hash(tvmq.QuantConfig(
        keep_float=("a", "b_*")))
    with pytest.raises(ValueError, match="keep_float"):
        tvmq.QuantConfig(keep_float=[3])
    with pytest.raises(ValueError, match="keep_float"):
        tvmq.QuantConfig(keep_float=[""])
