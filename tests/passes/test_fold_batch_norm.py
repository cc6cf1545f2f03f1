import numpy as np
import tvm
from tvm import relax
from tvmq.passes.fold_batch_norm import FoldBatchNorm

RNG = np.random.default_rng(0)
W = RNG.normal(size=(3, 2, 3, 3)).astype(np.float32)
B = RNG.normal(size=(1, 3, 1, 1)).astype(np.float32)
MEAN = RNG.normal(size=(1, 3, 1, 1)).astype(np.float32)
STD = RNG.uniform(0.5, 2, size=(1, 3, 1, 1)).astype(np.float32)
GAMMA = RNG.normal(size=(1, 3, 1, 1)).astype(np.float32)


def _module(ops):
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 2, 5, 5), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = x
            for op, arg in ops:
                y = bb.emit(op(y, arg))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    return bb.get()


def _conv(w):
    return lambda y, _: relax.op.nn.conv2d(y, relax.const(w), padding=[1, 1])


def test_decomposed_batch_norm_folds_into_conv():
    before = _module([(_conv(W), None), (relax.op.add, relax.const(B)),
                      (relax.op.subtract, relax.const(MEAN)), (relax.op.divide, relax.const(STD)),
                      (relax.op.multiply, relax.const(GAMMA))])
    s = (GAMMA / STD).astype(np.float64).reshape(-1)
    w = (W.astype(np.float64) * s.reshape(-1, 1, 1, 1)).astype(np.float32)
    b = (((B - MEAN).astype(np.float64).reshape(-1)) * s).astype(np.float32).reshape(1, 3, 1, 1)
    after = FoldBatchNorm()(before)
    w_after, b_after = _consts(after)
    np.testing.assert_allclose(w_after, w, rtol=1e-6)
    np.testing.assert_allclose(b_after, b, rtol=1e-6, atol=1e-6)
    # the structure is conv2d + bias add (built with the pass's own constants)
    expected = _module([(_conv(w_after), None), (relax.op.add, relax.const(b_after))])
    tvm.ir.assert_structural_equal(after, expected)


def _consts(mod):
    out = []

    @relax.expr_functor.visitor
    class _V(relax.PyExprVisitor):
        def visit_generic_const_(self, c):
            out.append(c.value.numpy())

    _V().visit_expr(mod["main"])
    return out


def test_non_per_channel_constant_is_not_folded():
    full = RNG.normal(size=(1, 3, 5, 5)).astype(np.float32)
    before = _module([(_conv(W), None), (relax.op.multiply, relax.const(full))])
    tvm.ir.assert_structural_equal(FoldBatchNorm()(before), before)


def test_conv_with_two_uses_is_not_folded():
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 2, 5, 5), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            c = bb.emit(relax.op.nn.conv2d(x, relax.const(W), padding=[1, 1]))
            m = bb.emit(relax.op.multiply(c, relax.const(GAMMA)))
            out = bb.emit_output(relax.op.add(m, c))
        bb.emit_func_output(out)
    before = bb.get()
    tvm.ir.assert_structural_equal(FoldBatchNorm()(before), before)
