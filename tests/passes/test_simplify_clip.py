import math

import tvm
from tvm import relax, topi
from tvmq.passes.simplify_clip import SimplifyClip


def _module(body):
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 4), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(body(bb, x))
        bb.emit_func_output(out)
    return bb.get()


def test_importer_clip_becomes_one_clip():
    def before(bb, x):  # what relax.frontend.onnx emits for Clip(x, 0, 6)
        lo = bb.emit_te(topi.maximum, x, relax.const(0.0, "float32"))
        return bb.emit_te(topi.minimum, lo, relax.const(6.0, "float32"))

    def expected(bb, x):
        return bb.emit(relax.op.clip(x, 0.0, 6.0))

    after = SimplifyClip()(_module(before))
    tvm.ir.assert_structural_equal(after, _module(expected))


def test_one_sided_clip():
    def before(bb, x):
        return bb.emit_te(topi.maximum, x, relax.const(-1.0, "float32"))

    def expected(bb, x):
        return bb.emit(relax.op.clip(x, -1.0, math.inf))

    after = SimplifyClip()(_module(before))
    tvm.ir.assert_structural_equal(after, _module(expected))


def test_tensor_bound_is_left_alone():
    def before(bb, x):
        return bb.emit_te(topi.maximum, x, x)

    mod = _module(before)
    tvm.ir.assert_structural_equal(SimplifyClip()(mod), mod)


def test_clips_of_other_shapes_too():
    """The BlockBuilder names the PrimFunc of each new shape maximum1, minimum1, ..."""
    def before(bb, x):
        a = bb.emit_te(topi.minimum, bb.emit_te(topi.maximum, x, relax.const(0.0, "float32")),
                       relax.const(6.0, "float32"))
        y = bb.emit(relax.op.reshape(a, (2, 2)))
        b = bb.emit_te(topi.maximum, y, relax.const(0.0, "float32"))
        return bb.emit_te(topi.minimum, b, relax.const(6.0, "float32"))

    mod = _module(before)
    assert {gv.name_hint for gv in mod.functions} >= {"maximum1", "minimum1"}
    after = SimplifyClip()(mod)
    assert set(after.functions) == {after.get_global_var("main")}
    assert after.script().count("R.clip") == 2
