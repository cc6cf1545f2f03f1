"""The session's well-formedness instrument (tests/conftest.py): it sees tvmq's passes, also inside
tvmq.compile, and it fails a test whose pass returns a malformed Relax module."""

import numpy as np
import pytest
import tvm
from onnx import helper
from tvm import relax
from tvm.script import ir as I
from tvm.script import relax as R
from tvmq.passes.annotate_quantizable import AnnotateQuantizable
from tvmq.passes.simplify_clip import SimplifyClip

import tvmq
from tests.conftest import make_onnx


@I.ir_module
class Double:
    @R.function
    def main(x: R.Tensor((2,), "float32")):
        with R.dataflow():
            y = R.add(x, x)
            R.output(y)
        return y


@tvm.transform.module_pass(opt_level=0, name="ReturnUndefinedVar")
class ReturnUndefinedVar:
    """Malformed on purpose: `main` returns a variable nothing defines."""

    def transform_module(self, mod, ctx):
        main = mod["main"]
        free = relax.Var("free", relax.TensorType((2,), "float32"))
        body = relax.SeqExpr(main.body.blocks, free)
        return tvm.IRModule({"main": relax.Function(main.params, body, main.ret_ty)})


def test_a_malformed_pass_fails_the_test():
    with pytest.raises(AssertionError, match=r"pass ReturnUndefinedVar .*not well formed"):
        ReturnUndefinedVar()(Double)


def test_a_malformed_pass_inside_a_sequential_fails_too():
    seq = tvm.transform.Sequential([SimplifyClip(), ReturnUndefinedVar()])
    with pytest.raises(AssertionError, match="ReturnUndefinedVar"):
        seq(Double)


def test_tvmq_module_passes_are_checked(well_formed_passes):
    start = len(well_formed_passes.checked)
    SimplifyClip()(Double)
    AnnotateQuantizable()(Double)
    checked = well_formed_passes.checked[start:]
    assert "tvmq.SimplifyClip" in checked and "tvmq.AnnotateQuantizable" in checked


def test_passes_inside_tvmq_compile_are_checked(well_formed_passes):
    rng = np.random.default_rng(0)
    model = make_onnx([helper.make_node("MatMul", ["input", "w"], ["output"])],
                      {"w": rng.normal(size=(3, 2))}, [1, 3], [1, 2])
    start = len(well_formed_passes.checked)
    tvmq.compile(model, calib=rng.normal(size=(4, 3)).astype(np.float32), progress=False,
                 config=tvmq.QuantConfig(sqnr_samples=0))
    checked = set(well_formed_passes.checked[start:])
    # tvmq's own passes, the host target's, and TVM's build pipeline
    assert {"tvmq.FoldBatchNorm", "tvmq.SimplifyClip", "tvmq.AnnotateQuantizable",
            "tvmq.InsertTaps", "tvmq.RealizeQuantization", "tvmq.HostLowering", "LegalizeOps",
            "FuseOps", "VMShapeLower"} <= checked
