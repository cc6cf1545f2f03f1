"""scheme="mixed": int4/int8 per layer, bit-exact with the oracle on the host and the accelerator;
the program's choice under a budget; ties; errors."""

import numpy as np
import pytest

import tvmq
from tests.conftest import assert_taps_equal_oracle, make_onnx
from tests.passes.test_realize_quantization import CASES
from tvmq import data
from tvmq.compiler import find_layers
from tvmq.errors import CompileError
from tvmq.mixed import assign, cost

RNG = np.random.default_rng(5)
ALL_W4A4 = "all_w4a4"


def _mixed(layer_bits=None, **kw):
    return tvmq.QuantConfig(scheme="mixed", layer_bits=layer_bits, sqnr_samples=0, **kw)


def _mac_names(cm):
    return [r.name for r in cm.report().layers if r.op in ("conv2d", "matmul")]


@pytest.mark.parametrize("case", ["conv_stride2_asym_pad", "grouped_conv_relu",
                                  "gemm_no_bias_clip", "concat3_pools_transpose"])
def test_int4_layers_are_bit_exact_and_within_int4(case):
    nodes, inits, in_shape, out_shape = CASES[case]
    model = make_onnx(nodes, inits, in_shape, out_shape)
    calib = RNG.normal(size=(16, *in_shape[1:])).astype(np.float32)
    probe = tvmq.compile(model, config=_mixed({}), calib=calib, progress=False)
    bits = {name: (4, 4) for name in _mac_names(probe)}
    cm = tvmq.compile(model, config=_mixed(bits), calib=calib, progress=False)
    names = [f"{r.name}_q" for r in cm.report().layers]
    assert_taps_equal_oracle(cm.quant_mod, names, calib[:3])
    macs = [r for r in cm.report().layers if r.op in ("conv2d", "matmul")]
    assert [(r.w_bits, r.a_bits) for r in macs] == [(4, 4)] * len(macs)
    for layer in find_layers(cm.float_mod)[0]:  # every conv/matmul input is int4 (in int8)
        if layer.kind in ("conv2d", "matmul"):
            assert cm.act_qparams[layer.inputs[0]].bits == 4, layer.name
    _, taps = cm.oracle().run(calib[:1], keep=True)
    for name, value in taps.items():
        if name.endswith("_q") and name.removesuffix("_q") in cm.act_qparams:
            qp = cm.act_qparams[name.removesuffix("_q")]
            assert value.min() >= qp.qmin and value.max() <= qp.qmax, name


def test_int4_input_is_clipped_to_its_range():
    """A 4-bit model input holds values in [-8, 7] even outside the calibrated range."""
    nodes, inits, in_shape, out_shape = CASES["conv_stride2_asym_pad"]
    model = make_onnx(nodes, inits, in_shape, out_shape)
    calib = RNG.normal(size=(8, *in_shape[1:])).astype(np.float32)
    cm = tvmq.compile(model, config=_mixed({"conv2d_0": (8, 4)}), calib=calib, progress=False)
    x = 10 * calib[:1]
    _, taps = cm.oracle().run(x, keep=True)
    q = taps["input_q"]
    assert q.dtype == np.int8 and q.min() >= -8 and q.max() <= 7
    np.testing.assert_array_equal(cm.run(x), cm.oracle().run(x))


def test_layers_reading_one_tensor_are_tied():
    nodes, inits, in_shape, out_shape = CASES["add_relu_of_two_convs"]
    model = make_onnx(nodes, inits, in_shape, out_shape)
    calib = RNG.normal(size=(8, *in_shape[1:])).astype(np.float32)
    with pytest.raises(CompileError, match="read one activation quantizer"):
        tvmq.compile(model, config=_mixed({"conv2d_0": (8, 4), "conv2d_1": (8, 8)}),
                     calib=calib, progress=False)
    cm = tvmq.compile(model, config=_mixed({"conv2d_0": (8, 4), "conv2d_1": (4, 4)}),
                      calib=calib, progress=False)
    assert cm.act_qparams["input"].bits == 4
    np.testing.assert_array_equal(cm.run(calib[:1]), cm.oracle().run(calib[:1]))


def test_unknown_layer_bits_name_is_refused(digits):
    with pytest.raises(CompileError, match=r"not conv2d/matmul layers.*conv2d_0"):
        tvmq.compile(data.digits_model_path(), config=_mixed({"conv9": (4, 4)}),
                     calib=digits[0][:8], progress=False)


def test_fewer_sqnr_samples_than_sensitivity_samples(digits):
    config = tvmq.QuantConfig(scheme="mixed", layer_bits={"conv2d_0": (4, 8)}, sqnr_samples=2,
                              sensitivity_samples=4)
    cm = tvmq.compile(data.digits_model_path(), config=config, calib=digits[0][:8],
                      progress=False)
    assert np.isfinite(cm.report().output_sqnr_db)


@pytest.fixture(scope="module")
def digits_mixed(digits):
    """The bundled model at a 75% cycle budget, on the host and on the accelerator."""
    config = tvmq.QuantConfig(scheme="mixed", latency_budget=0.75, sqnr_samples=4,
                              sensitivity_samples=4)
    x = digits[0][:32]
    host = tvmq.compile(data.digits_model_path(), config=config, calib=x, progress=False)
    accel = tvmq.compile(data.digits_model_path(), target="accel", config=config, calib=x,
                         progress=False)
    int8 = tvmq.compile(data.digits_model_path(), target="accel",
                        config=tvmq.QuantConfig(sqnr_samples=0), calib=x, progress=False)
    return host, accel, int8


def test_budget_is_met_and_both_targets_are_bit_exact(digits_mixed, digits):
    host, accel, int8 = digits_mixed
    mixed = host.report().mixed
    assert mixed["predicted_cycles"] <= 0.75 * mixed["uniform_int8_cycles"] * (1 + 1e-9)
    assert any(r.w_bits == 4 or r.a_bits == 4 for r in host.report().layers)
    rounds = mixed["rounds"]  # the program's choice was measured, and one round accepted
    assert sum(r["accepted"] for r in rounds) == 1 and all(r["measured"] > 0 for r in rounds)
    sim = mixed["simulated_sqnr_db"]  # the probe's INT8 and plan, against float
    assert 20.0 < sim["plan"] < sim["int8"], sim
    assert f"INT8 {sim['int8']:.1f} dB, this plan {sim['plan']:.1f} dB" in str(host.report())
    # the same plan on both targets, and the uniform INT8 cost is the INT8 model's cycles
    assert accel.report().mixed["choice"] == mixed["choice"]
    x = digits[1][:4]
    for xi in x:
        want = host.oracle().run(xi[None])
        np.testing.assert_array_equal(host.run(xi[None]), want)
        np.testing.assert_array_equal(accel.run(xi[None]), want)
    assert accel.report().accel["cycles"] < int8.report().accel["cycles"]
    assert "w4" in str(host.report()) or "a4" in str(host.report())


def test_measured_cycles_match_the_cost_table(digits_mixed):
    """Each compiled conv2d/matmul layer's emulator cycles are the cost function's measurement
    at its widths; the program's table (8-bit outputs) is an upper bound of the total."""
    _, accel, _ = digits_mixed
    plan = accel.plan
    rows = {r.name: r for r in accel.report().layers}
    total = 0
    for layer in find_layers(accel.float_mod)[0]:
        if layer.kind not in ("conv2d", "matmul"):
            continue
        w, a = plan.choice[layer.name]
        shape = assign.layer_shape(accel.float_mod, layer)
        want = cost.measure_cycles(accel.accel.hw, shape, w, a, plan.bits_of(layer.name))
        assert rows[layer.name].cycles == want["cycles"], layer.name
        assert accel.accel.operand_bits[layer.name] == (w, a, plan.bits_of(layer.name))
        total += want["cycles"]
    assert total <= plan.predicted_cycles


def test_infeasible_budget_names_the_smallest(digits):
    config = tvmq.QuantConfig(scheme="mixed", latency_budget=0.05, sqnr_samples=0,
                              sensitivity_samples=2)
    with pytest.raises(CompileError, match=r"latency_budget=0.05 cannot be met: the smallest "
                                           r"feasible is 0\.\d+ of uniform INT8"):
        tvmq.compile(data.digits_model_path(), config=config, calib=digits[0][:8],
                     progress=False)


def test_realize_takes_int2_weights_and_activations(digits):
    """INT2 is a realize-level width (the accelerator has 4/8-bit MACs only): 2-bit weights and
    inputs in int8 containers stay bit-exact with the oracle."""
    from tvmq.passes.annotate_quantizable import AnnotateQuantizable
    from tvmq.passes.realize_quantization import RealizeQuantization

    from tvmq.calibrate import calibrate
    from tvmq.frontend import load_model
    from tvmq.numerics import choose_qparams

    annotated = AnnotateQuantizable()(load_model(data.digits_model_path())[0])
    layers = find_layers(annotated)[0]
    names = sorted({n for layer in layers for n in (*layer.inputs, layer.name)})
    calibrated = calibrate(annotated, names, digits[0][:16],
                           load_model(data.digits_model_path())[1], hold_back=2, progress=False)
    observers, samples = calibrated.observers, calibrated.inputs
    two_bit = {layers[1].inputs[0]}  # conv2d_1 reads conv2d_0's output at 2 bits
    qparams = {n: choose_qparams(*obs.range(), bits=2 if n in two_bit else 8)
               for n, obs in observers.items()}
    mod = RealizeQuantization(qparams, weight_bits={layers[1].name: 2})(annotated)
    assert_taps_equal_oracle(mod, [f"{layers[1].name}_q", f"{layers[0].name}_q"],
                             [s[0] for s in samples])
    _, taps = tvmq.oracle.Oracle(mod).run(samples[0], keep=True)
    assert set(np.unique(taps[f"{layers[0].name}_q"])) <= {-2, -1, 0, 1}
    with pytest.raises(ValueError, match=r"outside 2\.\.8"):
        RealizeQuantization(qparams, weight_bits={layers[1].name: 16})
