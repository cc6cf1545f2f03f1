"""Models with several outputs, end to end: host, accel and mcu targets, oracle, report, export.

The model is a small classifier with its feature map as a second output:
input -> conv + relu = "feat" -> flatten -> matmul + bias = "logits", outputs [logits, feat].
Every backend is compared with the NumPy oracle bit for bit, output by output.
"""

import json
import shutil
import subprocess

import numpy as np
import onnx
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper
from tvm import relax
from tvmq.targets.mcu import build_host, build_m4, run_host, run_qemu
from tvmq.targets.mcu.codegen import HOST_CFLAGS
from tvmq.targets.mcu.reference import run_program

import tvmq
from tests.conftest import needs_cc, needs_m4
from tvmq.cli import main
from tvmq.report import Report

RNG = np.random.default_rng(0)
SHAPES = {"input": [1, 2, 6, 6], "feat": [1, 4, 6, 6], "logits": [1, 3], "prob": [1, 4, 6, 6],
          "feat_again": [1, 4, 6, 6], "input_again": [1, 2, 6, 6]}
WEIGHTS = {"w1": RNG.normal(size=(4, 2, 3, 3)) * 0.4, "b1": RNG.normal(size=4) * 0.1,
           "w2": RNG.normal(size=(144, 3)) * 0.1, "b2": RNG.normal(size=3) * 0.1}
CALIB = RNG.normal(size=(8, 2, 6, 6)).astype(np.float32)


def classifier(outputs=("logits", "feat")) -> onnx.ModelProto:
    """The two-output model; `outputs` picks the graph outputs and their order. Extra names:
    "prob" = Sigmoid(feat) (a float output), "feat_again" = Identity(feat), "input_again" =
    Identity(input)."""
    nodes = [helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["feat"]),
             helper.make_node("Flatten", ["feat"], ["flat"], axis=1),
             helper.make_node("MatMul", ["flat", "w2"], ["mm"]),
             helper.make_node("Add", ["mm", "b2"], ["logits"]),
             helper.make_node("Sigmoid", ["feat"], ["prob"]),
             helper.make_node("Identity", ["feat"], ["feat_again"]),
             helper.make_node("Identity", ["input"], ["input_again"])]
    graph = helper.make_graph(
        nodes, "classifier",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, SHAPES["input"])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, SHAPES[n]) for n in outputs],
        [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in WEIGHTS.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def compile_classifier(target="host", outputs=("logits", "feat"), observer="minmax", **kwargs):
    return tvmq.compile(classifier(outputs), target=target, calib=CALIB, progress=False,
                        config=tvmq.QuantConfig(observer=observer, sqnr_samples=4), **kwargs)


def assert_outputs_equal(got, want, names=("logits", "feat")):
    assert isinstance(got, tuple) and isinstance(want, tuple) and len(got) == len(want)
    for name, g, w in zip(names, got, want):
        assert g.dtype == w.dtype, name
        np.testing.assert_array_equal(g, w, err_msg=name)


@pytest.fixture(scope="module")
def host_model():
    return compile_classifier()


def test_run_returns_a_tuple_in_onnx_order_equal_to_the_oracle(host_model):
    assert [(o.name, o.shape) for o in host_model.outputs] == [("logits", (1, 3)),
                                                               ("feat", (1, 4, 6, 6))]
    oracle = host_model.oracle()
    for x in CALIB[:3]:
        got = host_model.run(x[None])
        assert [y.shape for y in got] == [(1, 3), (1, 4, 6, 6)]
        assert_outputs_equal(got, oracle.run(x[None]))


def test_a_stacked_batch_concatenates_each_output(host_model):
    logits, feat = host_model.run(CALIB[:3])
    assert logits.shape == (3, 3) and feat.shape == (3, 4, 6, 6)
    for i, x in enumerate(CALIB[:3]):
        assert_outputs_equal((logits[i:i + 1], feat[i:i + 1]), host_model.run(x[None]))


def test_output_order_follows_the_onnx_graph():
    cm = compile_classifier(outputs=("feat", "logits"))
    feat, logits = cm.run(CALIB[:1])
    assert feat.shape == (1, 4, 6, 6) and logits.shape == (1, 3)
    assert list(cm.report().outputs_sqnr_db) == ["feat", "logits"]


def test_report_has_each_outputs_sqnr(host_model):
    report = host_model.report()
    per_output = report.outputs_sqnr_db
    assert list(per_output) == ["logits", "feat"]
    assert all(np.isfinite(db) and db > 20 for db in per_output.values())
    assert report.output_sqnr_db == min(per_output.values())
    text = str(report)
    assert "(the worst of 2 outputs)" in text
    assert f"output logits: {per_output['logits']:.1f} dB" in text
    assert f"output feat: {per_output['feat']:.1f} dB" in text
    again = Report.from_dict(json.loads(report.to_json()))
    assert again.outputs_sqnr_db == per_output
    old = {k: v for k, v in report.to_dict().items() if k != "outputs_sqnr_db"}
    assert Report.from_dict(old).outputs_sqnr_db is None  # a report.json from before


def test_outputs_keep_their_observed_range():
    """A clipping observer applies to internal tensors only: every output gets the qparams of
    its observed min/max, the ones observer "minmax" gives."""
    calib = CALIB.copy()
    calib[0] *= 8  # an outlier the percentile observer clips
    kwargs = {"calib": calib, "progress": False}
    clipped = tvmq.compile(classifier(), config=tvmq.QuantConfig(observer="percentile"), **kwargs)
    full = tvmq.compile(classifier(), config=tvmq.QuantConfig(observer="minmax"), **kwargs)

    def scale_zp(cm, name):
        qp = cm.act_qparams[name]
        return float(qp.scale), int(qp.zero_point)

    assert scale_zp(clipped, "reshape_1") != scale_zp(full, "reshape_1")  # internal: clipped
    for name in ("matmul_2", "conv2d_0"):  # the layers computing logits and feat
        assert scale_zp(clipped, name) == scale_zp(full, name), name


def test_export_records_the_outputs_and_model_so_runs_them(host_model, tmp_path):
    out = host_model.export(tmp_path / "two")
    meta = json.loads((out / "config.json").read_text())
    assert meta["outputs"] == [{"name": "logits", "shape": [1, 3]},
                               {"name": "feat", "shape": [1, 4, 6, 6]}]
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(out / "model.so")), tvm.cpu())
    for x in CALIB[:2]:
        got = vm["main"](tvm.runtime.tensor(x[None]))
        assert_outputs_equal(tuple(y.numpy() for y in got), host_model.run(x[None]))


def test_cli_compiles_and_prints_each_output(tmp_path, capsys):
    onnx.save(classifier(), tmp_path / "two.onnx")
    np.savez(tmp_path / "c.npz", calib=CALIB)
    assert main(["compile", str(tmp_path / "two.onnx"), "--calib", str(tmp_path / "c.npz"),
                 "--out", str(tmp_path / "build"), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "output logits:" in text and "output feat:" in text
    assert (tmp_path / "build" / "model.so").is_file()


def test_accel_target_equals_the_oracle():
    cm = compile_classifier("accel")
    assert cm.report().accel["cycles"] > 0 and not cm.report().accel["host_layers"]
    oracle = cm.oracle()
    for x in CALIB[:3]:
        assert_outputs_equal(cm.run(x[None]), oracle.run(x[None]))


@needs_cc
def test_mcu_c_on_the_host_equals_the_host_build_output_by_output(tmp_path):
    cm = compile_classifier("mcu")
    program = cm.mcu.program
    assert program.outputs == [("output0_q", "output0"), ("output1_q", "output1")]
    project = cm.export(tmp_path / "two", samples=CALIB[:2])
    header = (project / "model.h").read_text()
    assert "int tvmq_model_run(const int8_t* in, int8_t* out0, int8_t* out1);" in header
    assert "int tvmq_dequantize_output1(const int8_t* in, float* out);" in header
    assert '#define TVMQ_OUTPUT0_SIZE 3  /* output 0 "logits"' in header
    build_host(project)
    got = run_host(project, CALIB)
    assert len(got) == len(CALIB)
    oracle = cm.oracle()
    for x, (q, y) in zip(CALIB, got):
        values = run_program(program, x[None])
        want = cm.run(x[None])
        assert len(q) == len(y) == 2
        for i, (q_name, _) in enumerate(program.outputs):
            np.testing.assert_array_equal(q[i], values[q_name].reshape(-1))
            np.testing.assert_array_equal(y[i], want[i].reshape(-1))
            np.testing.assert_array_equal(y[i], oracle.run(x[None])[i].reshape(-1))


FLOAT_API_MAIN = r"""
#include <stdio.h>
#include "model.h"
#include "test_input.h"
int main(void) {
  static float out0[TVMQ_OUTPUT0_SIZE], out1[TVMQ_OUTPUT1_SIZE];
  if (tvmq_model_run_float(tvmq_test_input[0], out0, out1) != 0) return 1;
  fwrite(out0, sizeof(float), TVMQ_OUTPUT0_SIZE, stdout);
  fwrite(out1, sizeof(float), TVMQ_OUTPUT1_SIZE, stdout);
  return 0;
}
"""


@needs_cc
def test_mcu_float_api_fills_every_output(tmp_path):
    cm = compile_classifier("mcu")
    project = cm.export(tmp_path / "two", samples=CALIB[:1])
    (project / "float_api.c").write_text(FLOAT_API_MAIN)
    cc = shutil.which("cc") or shutil.which("gcc")
    sources = ["float_api.c", "model.c", "kernels.c", "tvmq_shim.c"]
    subprocess.run([cc, *HOST_CFLAGS, "-Wno-unused-function", "-Wno-unused-const-variable",
                    "-o", "float_api", *sources, "-lm"], cwd=project, check=True)
    raw = subprocess.run(["./float_api"], cwd=project, capture_output=True, check=True).stdout
    logits, feat = cm.run(CALIB[:1])
    np.testing.assert_array_equal(np.frombuffer(raw, np.float32),
                                  np.concatenate([logits.reshape(-1), feat.reshape(-1)]))


@needs_cc
@needs_m4
def test_mcu_cortex_m4_prints_the_same_bytes_for_each_output(tmp_path):
    cm = compile_classifier("mcu")
    project = cm.export(tmp_path / "two", samples=CALIB[:2])
    build_host(project)
    host = run_host(project, CALIB[:2])
    build_m4(project)
    m4, _ = run_qemu(project)
    assert len(m4) == 2
    for (qa, ya), (qb, yb) in zip(m4, host):
        assert len(qa) == len(ya) == 2
        for i in range(2):
            np.testing.assert_array_equal(qa[i], qb[i])
            np.testing.assert_array_equal(ya[i].view(np.uint32), yb[i].view(np.uint32))


# ---------------------------------------------------------------- unusual outputs


def test_the_same_tensor_twice_gives_two_equal_outputs():
    names = ("logits", "feat", "feat_again")
    cm = compile_classifier(outputs=names)
    _, feat, again = cm.run(CALIB[:2])
    np.testing.assert_array_equal(feat, again)
    assert_outputs_equal(cm.run(CALIB[:1]), cm.oracle().run(CALIB[:1]), names)


@needs_cc
def test_the_same_tensor_twice_on_mcu_writes_both_buffers(tmp_path):
    cm = compile_classifier("mcu", outputs=("logits", "feat", "feat_again"))
    project = cm.export(tmp_path / "dup", samples=CALIB[:1])
    build_host(project)
    for x, (_, y) in zip(CALIB[:3], run_host(project, CALIB[:3])):
        want = cm.run(x[None])
        np.testing.assert_array_equal(want[1], want[2])
        for got, w in zip(y, want):
            np.testing.assert_array_equal(got, w.reshape(-1))


def test_the_model_input_as_an_output_is_returned_as_is_on_host_and_refused_on_mcu():
    cm = compile_classifier(outputs=("logits", "input_again"))
    _, x = cm.run(CALIB[:2])
    np.testing.assert_array_equal(x, CALIB[:2])
    assert cm.report().outputs_sqnr_db["input_again"] == float("inf")
    with pytest.raises(tvmq.CompileError, match=r"output 1 \(input\) is the model's input or a"):
        compile_classifier("mcu", outputs=("logits", "input_again"))


def test_a_float_output_runs_on_host_and_on_mcu_with_float_allowed(tmp_path):
    names = ("logits", "prob")
    cm = compile_classifier(outputs=names)
    assert_outputs_equal(cm.run(CALIB[:1]), cm.oracle().run(CALIB[:1]), names)
    with pytest.raises(tvmq.CompileError, match="allow_float=True"):
        compile_classifier("mcu", outputs=names)
    cm = compile_classifier("mcu", outputs=names, mcu=tvmq.McuConfig(allow_float=True))
    values = run_program(cm.mcu.program, CALIB[:1])
    for (_, f), want in zip(cm.mcu.program.outputs, cm.run(CALIB[:1])):
        np.testing.assert_array_equal(values[f], want)
