"""tvmq.compile end to end on the bundled model: host == NumPy oracle bit for bit, export."""

import json

import numpy as np
import pytest

import tvmq
from tests.conftest import assert_taps_equal_oracle
from tvmq import data

MODES = [dict(requant="mult_shift", rounding="double"),
         dict(requant="mult_shift", rounding="single"),
         dict(requant="mult_shift", rounding="tonearest"),
         dict(requant="fp32")]


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.get("rounding", m["requant"]))
def test_host_equals_oracle_bit_for_bit(compile_digits, digits, mode):
    """Every integer tensor of the realized graph, and the output, are equal on host and oracle."""
    cm = compile_digits(**mode)
    names = [b.var.name for b in cm.quant_mod["main"].body.blocks[0].bindings
             if b.var.name.endswith("_q")]
    assert len(names) >= 10
    assert_taps_equal_oracle(cm.quant_mod, names, digits[1][:24])


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.get("rounding", m["requant"]))
def test_int8_accuracy_close_to_float(compile_digits, digits, mode):
    _, x_test, y_test = digits
    acc = (compile_digits(**mode).run(x_test).argmax(1) == y_test).mean()
    assert acc >= 0.98 - 0.005  # FP32 scores 98.33% on this split


def test_double_rounding_differs_from_single(compile_digits, digits):
    """gemmlowp's double rounding changes int8 values on real data (single vs tonearest differ
    only on exact negative ties: see tests/numerics)."""
    def int_tensors(rounding):
        oracle = compile_digits(requant="mult_shift", rounding=rounding).oracle()
        named = [oracle.run(x[None], keep=True)[1] for x in digits[1][:8]]
        return [v for n in named for k, v in sorted(n.items()) if k.endswith("_q")]

    double, single = int_tensors("double"), int_tensors("single")
    assert sum(int(np.sum(a != b)) for a, b in zip(double, single)) > 0


def test_report_lists_every_layer_with_sqnr(compile_digits):
    rep = compile_digits(requant="mult_shift", rounding="double").report()
    ops = [row.op for row in rep.layers]
    assert ops.count("conv2d") == 5
    assert {"add", "concat", "avg_pool2d", "mean", "matmul"} <= set(ops)
    assert all(row.sqnr_db is not None and row.sqnr_db > 20 for row in rep.layers)
    assert rep.float_ops == [] and rep.output_sqnr_db > 25
    text = str(rep)
    assert all(row.name in text for row in rep.layers)


def test_run_rejects_wrong_shape(compile_digits):
    with pytest.raises(ValueError, match="does not match the model input"):
        compile_digits(requant="fp32").run(np.zeros((1, 1, 7, 8), np.float32))


def test_export_writes_folder_atomically(compile_digits, tmp_path):
    cm = compile_digits(requant="fp32")
    out = cm.export(tmp_path / "digits")
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json", "model.relax", "model.so", "report.json", "report.txt",
        "tvmq-manifest.json"]
    assert json.loads((out / "config.json").read_text())["config"]["requant"] == "fp32"
    assert [p.name for p in tmp_path.iterdir()] == ["digits"]  # no temp folder left behind
    rep = tvmq.Report.from_dict(json.loads((out / "report.json").read_text()))
    assert [r.name for r in rep.layers] == [r.name for r in cm.report().layers]


def test_failed_compile_writes_nothing(tmp_path, digits):
    from tvmq.cli import main

    bad_calib = tmp_path / "calib.npz"
    np.savez(bad_calib, x=np.zeros((4, 1, 7, 7), np.float32))
    rc = main(["compile", str(data.digits_model_path()), "--calib", str(bad_calib),
               "--out", str(tmp_path / "out"), "--quiet"])
    assert rc == 2 and not (tmp_path / "out").exists()


def test_unknown_target_and_config_type(digits):
    with pytest.raises(ValueError, match="target='gpu'"):
        tvmq.compile(data.digits_model_path(), target="gpu", calib=digits[0][:2])
    with pytest.raises(TypeError, match="QuantConfig"):
        tvmq.compile(data.digits_model_path(), config={"requant": "fp32"}, calib=digits[0][:2])
