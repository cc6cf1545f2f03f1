"""target="accel": conv/matmul layers run on the C emulator, bit-exact with the NumPy oracle."""

import dataclasses
import json

import numpy as np
import pytest
from tvmq.targets.accel import AccelConfig, preset
from tvmq.targets.accel.lower import AccelRuntime, LowerToAccel
from tvmq.targets.host import build

import tvmq
from tvmq import data

MODES = [dict(requant="mult_shift", rounding="double"),
         dict(requant="mult_shift", rounding="single"),
         dict(requant="mult_shift", rounding="tonearest"),
         dict(requant="fp32")]


@pytest.mark.parametrize("t_oc", [4, 16, 64])
@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.get("rounding", m["requant"]))
def test_emulated_model_equals_oracle(compile_digits, digits, mode, t_oc):
    cm = compile_digits(**mode)
    hw = dataclasses.replace(preset("npu-mid"), t_oc=t_oc, requant=mode["requant"],
                             rounding=mode.get("rounding"))
    runtime = AccelRuntime(hw)
    lowered = LowerToAccel(runtime)(cm.quant_mod)
    assert len(runtime.counters) == 7 and runtime.host_layers == {}  # 5 conv, avg pool, matmul
    accel, oracle = build(lowered), cm.oracle()
    for x in digits[1][:8]:
        np.testing.assert_array_equal(accel.run(x[None]), oracle.run(x[None]))
    counters = runtime.one_inference(accel, digits[1][:1])
    assert counters["conv2d_4"]["tiles"] == -(-32 // t_oc)
    assert runtime.counters["conv2d_4"]["tiles"] == 0  # cleared after the inference


def test_compile_for_accel_reports_cycles(digits, tmp_path):
    cm = tvmq.compile(data.digits_model_path(), target="accel", accel="npu-small",
                      calib=digits[0][:16], progress=False)
    rep = cm.report()
    convs = [r for r in rep.layers if r.op in ("conv2d", "matmul", "avg_pool2d")]
    assert all(r.cycles > 0 and 0 < r.utilization <= 1 for r in convs)
    assert rep.accel["cycles"] == sum(r.cycles for r in convs)
    assert rep.accel["latency_us"] == pytest.approx(rep.accel["cycles"] / 200.0)
    assert "cycles" in str(rep) and "npu-small" in str(rep)
    np.testing.assert_array_equal(cm.run(digits[1][:4]), np.concatenate(
        [cm.oracle().run(x[None]) for x in digits[1][:4]]))
    out = cm.export(tmp_path / "out")
    saved = json.loads((out / "report.json").read_text())
    assert tvmq.Report.from_dict(saved).accel["cycles"] == rep.accel["cycles"]


def test_layer_the_accelerator_cannot_hold_runs_on_the_host(compile_digits, digits):
    cm = compile_digits()
    # 8x8 PEs but a 1 KiB weight buffer: conv2d_4's 8-channel tile needs 8*32*3*3 = 2304 bytes.
    hw = AccelConfig(t_oc=8, t_ic=8, weight_buffer_bytes=1024)
    runtime = AccelRuntime(hw)
    lowered = LowerToAccel(runtime)(cm.quant_mod)
    assert "conv2d_4" in runtime.host_layers and "conv2d_4" not in runtime.slots
    assert "weight_buffer_bytes=1024 too small" in runtime.host_layers["conv2d_4"]
    assert "2304 bytes" in runtime.host_layers["conv2d_4"]
    assert "conv2d_0" in runtime.slots  # 8 x 1 x 3 x 3 = 72 bytes fits
    accel, oracle = build(lowered), cm.oracle()
    for x in digits[1][:4]:
        np.testing.assert_array_equal(accel.run(x[None]), oracle.run(x[None]))


def test_accel_config_must_match_quant_config(digits):
    hw = AccelConfig(requant="mult_shift", rounding="double")
    with pytest.raises(ValueError, match="make them agree"):
        tvmq.compile(data.digits_model_path(), target="accel", accel=hw,
                     config=tvmq.QuantConfig(requant="fp32"), calib=digits[0][:2],
                     progress=False)


def test_no_c_compiler_is_a_compile_error(digits, tmp_path, monkeypatch):
    monkeypatch.setenv("TVMQ_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CC", "no-such-cc-for-tvmq")
    with pytest.raises(tvmq.CompileError, match="needs a C compiler: \\$CC='no-such-cc-for-tvmq'"):
        tvmq.compile(data.digits_model_path(), target="accel", calib=digits[0][:2],
                     progress=False)
