import math

import tvm
from tvm import relax, topi
from tvm.script import ir as I
from tvm.script import relax as R
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

    def expected(bb, x):
        a = bb.emit(relax.op.clip(x, 0.0, 6.0))
        y = bb.emit(relax.op.reshape(a, (2, 2)))
        return bb.emit(relax.op.clip(y, 0.0, 6.0))

    mod = _module(before)
    assert {gv.name_hint for gv in mod.functions} >= {"maximum1", "minimum1"}
    tvm.ir.assert_structural_equal(SimplifyClip()(mod), _module(expected))


@I.ir_module
class ClipOfClip:
    @R.function
    def main(x: R.Tensor((1, 4), "float32")):
        with R.dataflow():
            a = R.clip(x, 0, 6)
            b = R.clip(a, -1, 4)
            R.output(b)
        return b


@I.ir_module
class OneClip:
    @R.function
    def main(x: R.Tensor((1, 4), "float32")):
        with R.dataflow():
            b = R.clip(x, 0.0, 4.0)  # merged bounds are float
            R.output(b)
        return b


def test_clip_of_clip_is_one_clip_of_the_tighter_bounds():
    tvm.ir.assert_structural_equal(SimplifyClip()(ClipOfClip), OneClip)


def test_a_lone_clip_is_unchanged():
    tvm.ir.assert_structural_equal(SimplifyClip()(OneClip), OneClip)
