"""The integer model simulated in float: the module the mixed sensitivity and bias correction
run (tvmq.simulate)."""

import numpy as np
import pytest
import tvm
from onnx import helper
from tvmq.passes.annotate_quantizable import AnnotateQuantizable
from tvmq.passes.insert_taps import InsertTaps
from tvmq.targets.host import build

from tests.conftest import make_onnx
from tvmq import data
from tvmq.frontend import load_model
from tvmq.layers import find_layers
from tvmq.numerics import QParams
from tvmq.oracle import conv2d
from tvmq.simulate import disabled_table, fake_quant_module, fake_quant_weight, site_row


def _conv_relu_matmul():
    """conv (bias) -> relu -> flatten -> matmul: one layer of each kind with an offset."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["input", "w", "b"], ["c"], pads=[1] * 4),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Flatten", ["r"], ["f"]),
             helper.make_node("MatMul", ["f", "m"], ["output"])]
    weights = {"w": rng.normal(0, 0.5, (3, 2, 3, 3)), "b": rng.normal(0, 0.1, 3),
               "m": rng.normal(0, 0.5, (48, 5))}
    return make_onnx(nodes, weights, (1, 2, 4, 4), (1, 5))


def _run(vm, *args):
    """vm["main"] on NumPy arguments (the VM takes runtime tensors)."""
    return vm["main"](*(tvm.runtime.tensor(np.ascontiguousarray(a)) for a in args))


def _annotated(model):
    float_mod, _ = load_model(model)
    annotated = AnnotateQuantizable()(float_mod)
    return annotated, [la for la in find_layers(annotated)[0]
                       if la.kind in ("conv2d", "matmul")]


def test_offsets_add_to_each_product_before_the_bias_and_are_tapped():
    annotated, macs = _annotated(_conv_relu_matmul())
    conv, matmul = (la.name for la in macs)
    sites = {(conv, 0): QParams(np.float32(0.05), 0, -128, 127)}
    mod, channel_sites = fake_quant_module(annotated, sites, [conv, matmul], offsets=True)
    assert channel_sites == []
    offsets = [np.array([0.5, -1.0, 2.0], np.float32).reshape(1, 3, 1, 1),
               np.arange(5, dtype=np.float32).reshape(1, 5)]
    vm = build(InsertTaps([f"{conv}_acc", f"{matmul}_acc"])(mod)).vm
    x = np.random.default_rng(1).normal(size=(1, 2, 4, 4)).astype(np.float32)
    weights = [la.weight.astype(np.float32) for la in macs]
    plain = build(annotated).run(x)
    zeros = [np.zeros_like(o) for o in offsets]
    zero = _run(vm, x, disabled_table(1), *weights, *zeros)
    np.testing.assert_allclose(zero[0].numpy(), plain, rtol=1e-5, atol=1e-6)
    product = conv2d(x.astype(np.float64), weights[0].astype(np.float64), (1, 1), (1, 1, 1, 1),
                     (1, 1), 1)
    np.testing.assert_allclose(zero[1].numpy(), product, rtol=1e-5, atol=1e-5)  # no bias
    for i in range(2):  # one layer's offset at a time: its tap moves by exactly the offset
        only = [o if j == i else z for j, (o, z) in enumerate(zip(offsets, zeros))]
        moved = _run(vm, x, disabled_table(1), *weights, *only)
        np.testing.assert_allclose(moved[1 + i].numpy() - zero[1 + i].numpy(),
                                   np.broadcast_to(offsets[i], zero[1 + i].shape), atol=1e-5)


def test_an_enabled_site_rounds_to_its_grid():
    annotated, macs = _annotated(_conv_relu_matmul())
    conv = macs[0].name
    qp = QParams(np.float32(0.25), 2, -8, 7)
    mod, _ = fake_quant_module(annotated, {(conv, 0): qp}, [la.name for la in macs])
    vm = build(mod).vm
    x = np.random.default_rng(2).normal(size=(1, 2, 4, 4)).astype(np.float32)
    weights = [la.weight.astype(np.float32) for la in macs]
    xq = (np.clip(np.round(x / 0.25) + 2, -8, 7) - 2) * 0.25
    table = np.array([site_row(qp)], np.float32)
    got = _run(vm, x, table, *weights).numpy()
    want = _run(vm, xq, disabled_table(1), *weights).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_fake_quant_weight_is_the_dequantized_integer_weight():
    w = np.random.default_rng(3).normal(size=(4, 3, 3, 3)).astype(np.float32)
    got = fake_quant_weight(w, 4)
    steps = got / (np.abs(w).max(axis=(1, 2, 3), keepdims=True) / 7)
    np.testing.assert_allclose(steps, np.round(steps), atol=1e-4)
    assert np.abs(np.round(steps)).max() <= 7


def test_refuses_a_non_mac_layer():
    float_mod, _ = load_model(data.digits_model_path())
    annotated = AnnotateQuantizable()(float_mod)
    with pytest.raises(ValueError, match="not a conv2d/matmul layer"):
        fake_quant_module(annotated, {}, ["add_7"])
