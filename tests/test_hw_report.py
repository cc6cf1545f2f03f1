"""`tvmq hw-report`: requant area per t_oc next to each requant option's accuracy."""

import numpy as np
import pytest
from onnx import helper
from tvmq.targets.accel import area

from tests.conftest import make_onnx
from tvmq.cli import main
from tvmq.hw_report import hw_report


@pytest.fixture(scope="module")
def tiny_classifier():
    """Conv 3x3 (4 -> 8) + ReLU + global average pool + Gemm to 3 classes, and data for it."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["input", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("Gemm", ["f", "fc", "fb"], ["output"], transB=1)]
    model = make_onnx(nodes, {"w": rng.normal(0, 0.3, (8, 4, 3, 3)), "b": rng.normal(0, 0.1, 8),
                              "fc": rng.normal(0, 0.5, (3, 8)), "fb": np.zeros(3)},
                      (1, 4, 6, 6), (1, 3))
    x = rng.normal(0, 1, (24, 4, 6, 6)).astype(np.float32)
    return model, x


def test_rows_join_area_and_accuracy(tiny_classifier):
    model, x = tiny_classifier
    rep = hw_report(model, x[:8], x[8:], t_ocs=(4, 16), t_ic=4, progress=False)
    assert rep.metric == "top-1 agreement with FP32" and rep.float_top1 == 1.0
    assert [r.label for r in rep.results] == [area.kind_label(*k) for k in area.KINDS]
    rows = rep.rows()
    assert [(r["t_oc"], r["requant"]) for r in rows] == [
        (t, area.kind_label(*k)) for t in (4, 16) for k in area.KINDS]
    fp32_4, fp32_16 = (r for r in rows if r["requant"] == "fp32")
    assert fp32_16["requant_um2"] == pytest.approx(4 * fp32_4["requant_um2"])
    assert fp32_4["requant_um2"] == pytest.approx(area.requant_area(4, "fp32", None).total_um2)
    for r in rows:  # the option's accuracy, the same for every t_oc (tiling is exact)
        result = next(res for res in rep.results if res.label == r["requant"])
        assert r["top1"] == result.top1 and 0 <= r["top1"] <= 1
        assert r["delta_top1"] == pytest.approx(r["top1"] - 1.0)
    text = str(rep)
    assert "mult_shift/tonearest" in text and "top-1 agreement with FP32" in text
    assert len(text.splitlines()) == 2 + len(rows) + 2


def test_labels_give_top1_accuracy(tiny_classifier):
    model, x = tiny_classifier
    y = np.zeros(16, np.int64)
    rep = hw_report(model, x[:8], x[8:], y, t_ocs=(8,), t_ic=8, progress=False)
    assert rep.metric == "top-1 accuracy"
    assert 0 <= rep.float_top1 <= 1 and rep.float_top1 != 1.0  # random nets: not all class 0


def test_bad_input_is_refused_before_compiling(tiny_classifier):
    model, x = tiny_classifier
    with pytest.raises(ValueError, match="t_oc"):
        hw_report(model, x[:8], x[8:], t_ocs=(0,), progress=False)
    with pytest.raises(ValueError, match="3 labels for 16 inputs"):
        hw_report(model, x[:8], x[8:], np.zeros(3), progress=False)


def test_cli_hw_report(tiny_classifier, tmp_path, capsys):
    model, x = tiny_classifier
    path = tmp_path / "tiny.onnx"
    path.write_bytes(model.SerializeToString())
    np.savez(tmp_path / "calib.npz", calib=x[:8])
    np.savez(tmp_path / "eval.npz", x=x[8:])
    assert main(["hw-report", str(path), "--calib", str(tmp_path / "calib.npz"), "--eval",
                 str(tmp_path / "eval.npz"), "--t-oc", "4,8", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "tiny.onnx" in out and out.count("fp32") == 2
    assert main(["hw-report", str(path)]) == 2
    assert "needs --calib" in capsys.readouterr().err
    np.savez(tmp_path / "bad.npz", inputs=x[8:])
    assert main(["hw-report", str(path), "--calib", str(tmp_path / "calib.npz"), "--eval",
                 str(tmp_path / "bad.npz")]) == 2
    assert "no array 'x'" in capsys.readouterr().err
