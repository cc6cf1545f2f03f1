"""target="accel" with an LBFP scheme: conv/matmul layers run in the emulator's LBFP MAC mode,
bit-exact with the NumPy oracle (the golden tvmq.numerics.lbfp functions)."""

import dataclasses

import numpy as np
import pytest
from onnx import helper
from tvmq.targets.accel import preset
from tvmq.targets.accel.lower import AccelRuntime, LowerToAccel
from tvmq.targets.host import build

import tvmq
from tests.conftest import assert_taps_equal_oracle, make_onnx


@pytest.mark.parametrize("t_oc", [4, 64])
@pytest.mark.parametrize("scheme", ["lbfp8", "lbfp4"])
def test_lbfp_layers_on_the_emulator_equal_oracle(compile_digits, digits, scheme, t_oc):
    cm = compile_digits(scheme=scheme)
    runtime = AccelRuntime(dataclasses.replace(preset("npu-mid"), t_oc=t_oc))
    lowered = LowerToAccel(runtime)(cm.quant_mod)
    assert sorted(runtime.slots) == ["conv2d_0", "conv2d_1", "conv2d_2", "conv2d_4",
                                     "conv2d_5", "matmul_11"]
    assert runtime.host_layers == {}
    calls = [b.value.args[0].name_hint for b in lowered["main"].body.blocks[0].bindings
             if b.var.name.endswith("_q") and not b.var.name.startswith(("input", "max", "re"))]
    assert all(name.startswith("accel_") for name in calls) and len(calls) == 6
    names = [b.var.name for b in lowered["main"].body.blocks[0].bindings
             if b.var.name.endswith("_q")]
    assert_taps_equal_oracle(lowered, names, digits[1][:4], oracle_mod=cm.quant_mod)
    counters = runtime.one_inference(build(lowered), digits[1][:1])
    assert counters["conv2d_4"]["tiles"] == -(-32 // t_oc)
    assert counters["conv2d_4"]["macs"] == 32 * 32 * 9 * 16


def test_compile_lbfp_for_accel_reports_cycles(digits):
    x_calib, x_test, _ = digits
    cm = tvmq.compile(tvmq.data.digits_model_path(), target="accel",
                      config=tvmq.QuantConfig(scheme="lbfp8", sqnr_samples=0),
                      calib=x_calib[:32], progress=False)
    rep = cm.report()
    assert rep.accel["cycles"] == sum(row.cycles for row in rep.layers) > 0
    assert "accelerator npu-small" in str(rep)
    oracle = cm.oracle()
    for x in x_test[:4]:
        np.testing.assert_array_equal(cm.run(x[None]), oracle.run(x[None]))


def test_matmul_with_many_rows_stays_on_the_host_with_a_reason():
    model = make_onnx([helper.make_node("MatMul", ["input", "w"], ["output"])],
                      {"w": np.random.default_rng(0).normal(size=(8, 4))}, [1, 3, 8], [1, 3, 4])
    calib = np.random.default_rng(1).normal(size=(4, 3, 8)).astype(np.float32)
    cm = tvmq.compile(model, target="accel", config=tvmq.QuantConfig(scheme="lbfp8"),
                      calib=calib, progress=False)
    assert "3 rows" in cm.accel.host_layers["matmul_0"]
    np.testing.assert_array_equal(cm.run(calib[:1]), cm.oracle().run(calib[:1]))
