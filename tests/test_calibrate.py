"""Calibration data validation: every bad input gets one clear CompileError."""

import numpy as np
import pytest
from onnx import helper

import tvmq
from tests.conftest import make_onnx
from tvmq import CompileError, data


def _compile(calib, model=None):
    return tvmq.compile(model or data.digits_model_path(), calib=calib, progress=False,
                        config=tvmq.QuantConfig(sqnr_samples=0))


@pytest.mark.parametrize("calib,match", [
    (np.zeros((4, 1, 8, 7), np.float32), "has shape"),
    (np.zeros((4, 1, 8, 8), np.int32), "dtype int32"),
    (np.zeros((0, 1, 8, 8), np.float32), "empty"),
    ([], "empty"),
    (None, "no calibration data"),
    (np.full((2, 1, 8, 8), np.nan, np.float32), "NaN or Inf"),
])
def test_bad_calibration_data(calib, match):
    with pytest.raises(CompileError, match=match):
        _compile(calib)


def test_npz_keys(tmp_path, digits):
    good = tmp_path / "good.npz"
    np.savez(good, x_calib=digits[0][:4], other=np.zeros(3))
    assert _compile(good).report().layers
    bad = tmp_path / "bad.npz"
    np.savez(bad, a=digits[0][:4], b=digits[0][:4])
    with pytest.raises(CompileError, match="name the calibration array"):
        _compile(bad)
    with pytest.raises(CompileError, match="not found"):
        _compile(tmp_path / "missing.npz")


def test_constant_tensor_gets_nonzero_scale():
    """A layer whose output is always 0 (zero weights) must not produce scale 0."""
    model = make_onnx(
        [helper.make_node("MatMul", ["input", "w"], ["h"]),
         helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("MatMul", ["r", "w2"], ["output"])],
        {"w": np.zeros((4, 3)), "w2": np.ones((3, 2))}, [1, 4], [1, 2])
    x = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
    with pytest.warns(tvmq.CalibrationWarning, match=r"2 tensor\(s\) took a single value"):
        cm = _compile(x, model)
    assert all(float(np.min(qp.scale)) > 0 for qp in cm.act_qparams.values())
    np.testing.assert_array_equal(cm.run(x), np.zeros((8, 2), np.float32))
    np.testing.assert_array_equal(cm.run(x[:1]), cm.oracle().run(x[:1]))
