"""FoldBatchNorm: Before / Expected modules; Expected constants are folded here in float64, one
op at a time (each fold returns a float32 module, so each step rounds to float32)."""

import numpy as np
import tvm
from tvm.script import ir as I
from tvm.script import relax as R
from tvmq.passes.fold_batch_norm import FoldBatchNorm

RNG = np.random.default_rng(0)
W = RNG.normal(size=(3, 2, 3, 3)).astype(np.float32)
B = RNG.normal(size=(1, 3, 1, 1)).astype(np.float32)
MEAN = RNG.normal(size=(1, 3, 1, 1)).astype(np.float32)
STD = RNG.uniform(0.5, 2, size=(1, 3, 1, 1)).astype(np.float32)
GAMMA = RNG.normal(size=(1, 3, 1, 1)).astype(np.float32)
FULL = RNG.normal(size=(1, 3, 5, 5)).astype(np.float32)


def _f32(a) -> np.ndarray:
    return np.asarray(a, np.float64).astype(np.float32)


def _conv_bn_folded() -> tuple[np.ndarray, np.ndarray]:
    """conv + B - MEAN / STD * GAMMA folded: (W', b'), the scale on O of OIHW."""
    s, g = STD.astype(np.float64).reshape(-1), GAMMA.astype(np.float64).reshape(-1)
    b = _f32(B.astype(np.float64).reshape(-1) - MEAN.astype(np.float64).reshape(-1))
    w, b = _f32(W * (1.0 / s).reshape(-1, 1, 1, 1)), _f32(b * (1.0 / s))
    w, b = _f32(w.astype(np.float64) * g.reshape(-1, 1, 1, 1)), _f32(b.astype(np.float64) * g)
    return w, b.reshape(1, 3, 1, 1)


W_BN, B_BN = _conv_bn_folded()


@I.ir_module
class ConvBatchNorm:
    @R.function
    def main(x: R.Tensor((1, 2, 5, 5), "float32")):
        with R.dataflow():
            c = R.nn.conv2d(x, R.const(W), padding=[1, 1])
            b = R.add(c, R.const(B))
            m = R.subtract(b, R.const(MEAN))
            d = R.divide(m, R.const(STD))
            y = R.multiply(d, R.const(GAMMA))
            R.output(y)
        return y


@I.ir_module
class ConvFolded:
    @R.function
    def main(x: R.Tensor((1, 2, 5, 5), "float32")):
        with R.dataflow():
            c = R.nn.conv2d(x, R.const(W_BN), padding=[1, 1])
            y = R.add(c, R.const(B_BN))
            R.output(y)
        return y


def test_decomposed_batch_norm_folds_into_conv():
    tvm.ir.assert_structural_equal(FoldBatchNorm()(ConvBatchNorm), ConvFolded)


W_MM = RNG.normal(size=(4, 3)).astype(np.float32)
SCALE = RNG.normal(size=(3,)).astype(np.float32)
SHIFT = RNG.normal(size=(1, 3)).astype(np.float32)
W_MM_FOLDED = _f32(W_MM.astype(np.float64) * SCALE.astype(np.float64).reshape(1, -1))
B_MM_FOLDED = _f32(np.zeros(3) + SHIFT.astype(np.float64).reshape(-1))


@I.ir_module
class MatmulAffine:
    @R.function
    def main(x: R.Tensor((2, 4), "float32")):
        with R.dataflow():
            m = R.matmul(x, R.const(W_MM))
            s = R.multiply(m, R.const(SCALE))
            y = R.add(s, R.const(SHIFT))
            R.output(y)
        return y


@I.ir_module
class MatmulFolded:
    @R.function
    def main(x: R.Tensor((2, 4), "float32")):
        with R.dataflow():
            m = R.matmul(x, R.const(W_MM_FOLDED))
            y = R.add(m, R.const(B_MM_FOLDED))
            R.output(y)
        return y


def test_per_column_scale_and_shift_fold_into_matmul():
    """(K, N) weight: the scale multiplies columns; the shift becomes an (N,) bias."""
    tvm.ir.assert_structural_equal(FoldBatchNorm()(MatmulAffine), MatmulFolded)


@I.ir_module
class NothingToFold:
    @R.function
    def main(x: R.Tensor((1, 2, 5, 5), "float32")):
        with R.dataflow():
            c = R.nn.conv2d(x, R.const(W), padding=[1, 1])
            r = R.nn.relu(c)
            y = R.multiply(r, R.const(GAMMA))  # after a relu: not linear in the conv
            R.output(y)
        return y


def test_no_op_when_nothing_follows_the_linear_op_directly():
    tvm.ir.assert_structural_equal(FoldBatchNorm()(NothingToFold), NothingToFold)


@I.ir_module
class NotPerChannel:
    @R.function
    def main(x: R.Tensor((1, 2, 5, 5), "float32")):
        with R.dataflow():
            c = R.nn.conv2d(x, R.const(W), padding=[1, 1])
            y = R.multiply(c, R.const(FULL))
            R.output(y)
        return y


def test_non_per_channel_constant_is_not_folded():
    tvm.ir.assert_structural_equal(FoldBatchNorm()(NotPerChannel), NotPerChannel)


@I.ir_module
class ZeroScale:
    @R.function
    def main(x: R.Tensor((1, 2, 5, 5), "float32")):
        with R.dataflow():
            c = R.nn.conv2d(x, R.const(W), padding=[1, 1])
            y = R.multiply(c, R.const(np.array([1, 0, 2], np.float32).reshape(1, 3, 1, 1)))
            R.output(y)
        return y


def test_scale_with_a_zero_is_not_folded():
    tvm.ir.assert_structural_equal(FoldBatchNorm()(ZeroScale), ZeroScale)


@I.ir_module
class ConvTwoUses:
    @R.function
    def main(x: R.Tensor((1, 2, 5, 5), "float32")):
        with R.dataflow():
            c = R.nn.conv2d(x, R.const(W), padding=[1, 1])
            m = R.multiply(c, R.const(GAMMA))
            y = R.add(m, c)
            R.output(y)
        return y


def test_conv_with_two_uses_is_not_folded():
    tvm.ir.assert_structural_equal(FoldBatchNorm()(ConvTwoUses), ConvTwoUses)
