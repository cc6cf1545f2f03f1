import numpy as np
import pytest
import tvm
from tvm.script import ir as I
from tvm.script import relax as R
from tvmq.passes.annotate_quantizable import AnnotateQuantizable, composite_kind
from tvmq.passes.insert_taps import InsertTaps
from tvmq.targets.host import build

from tvmq import data
from tvmq.frontend import load_model


@pytest.fixture(scope="module")
def annotated():
    return AnnotateQuantizable()(load_model(data.digits_model_path())[0])


def test_digits_model_becomes_named_composites(annotated):
    bindings = annotated["main"].body.blocks[0].bindings
    kinds = [composite_kind(annotated, b.value) for b in bindings]
    assert kinds == ["conv2d", "conv2d", "conv2d", "max_pool2d", "conv2d", "conv2d", "add",
                     "avg_pool2d", "concat", "mean", "reshape", "matmul"]
    assert [b.var.name for b in bindings] == [f"{k}_{i}" for i, k in enumerate(kinds)]
    composites = {str(f.attrs["Composite"]) for _, f in annotated.functions_items()
                  if f.attrs is not None and "Composite" in f.attrs}
    assert "tvmq.conv2d" in composites and "tvmq.add" in composites


def test_epilogues_are_absorbed(annotated):
    """conv + bias + relu, conv + clip (ReLU6), add + relu are each one composite."""
    def ops(name):
        call = next(b.value for b in annotated["main"].body.blocks[0].bindings
                    if b.var.name == name)
        func = annotated[call.op]
        return [b.value.op.name for b in func.body.blocks[0].bindings]

    assert ops("conv2d_0") == ["relax.nn.conv2d", "relax.add", "relax.nn.relu"]
    assert ops("conv2d_2") == ["relax.nn.conv2d", "relax.add", "relax.clip"]
    assert ops("add_6") == ["relax.add", "relax.nn.relu"]


def test_taps_return_named_tensors(annotated, digits):
    tapped = build(InsertTaps(["input", "conv2d_0", "add_6"])(annotated))
    x = digits[1][:1]
    out, x_tap, conv, add = tapped.run(x)
    np.testing.assert_array_equal(x_tap, x)
    assert conv.shape == (1, 16, 8, 8) and conv.min() >= 0   # after ReLU
    assert add.shape == (1, 32, 4, 4) and out.shape == (1, 10)
    np.testing.assert_allclose(out, build(annotated).run(x), rtol=1e-6)


def test_unknown_tap_name(annotated):
    with pytest.raises(ValueError, match="no tensor named"):
        InsertTaps(["nope"])(annotated)


# ---- Before / Expected on small modules ---------------------------------------------------------

RNG = np.random.default_rng(5)
W_CONV = RNG.normal(size=(3, 2, 3, 3)).astype(np.float32)
B_CONV = RNG.normal(size=(1, 3, 1, 1)).astype(np.float32)
W_MM = RNG.normal(size=(2, 3)).astype(np.float32)
B_MM = RNG.normal(size=(3,)).astype(np.float32)


def _names(mod) -> list[str]:
    """Binding names of `main` (structural equality does not compare variable names)."""
    return [b.var.name for block in mod["main"].body.blocks for b in block.bindings]


@I.ir_module
class ConvBefore:
    @R.function
    def main(x: R.Tensor((1, 2, 4, 4), "float32"), w: R.Tensor((2, 3, 3, 3), "float32")):
        with R.dataflow():
            c = R.nn.conv2d(x, R.const(W_CONV), padding=[1, 1])
            b = R.add(c, R.const(B_CONV))
            r = R.nn.relu(b)
            d = R.nn.conv2d(r, w, padding=[1, 1])  # weight is not a constant: stays float
            e = R.nn.conv2d(d, R.const(W_CONV), padding=[1, 1])
            f = R.clip(e, 0, 6)
            s = R.sigmoid(f)
            R.output(s)
        return s


@I.ir_module
class ConvExpected:
    @R.function(private=True)
    def fused_relax_nn_conv2d_relax_add_relax_nn_relu(x: R.Tensor((1, 2, 4, 4), "float32")):
        R.func_attr({"Composite": "tvmq.conv2d", "Primitive": True})
        with R.dataflow():
            c = R.nn.conv2d(x, R.const(W_CONV), padding=[1, 1])
            b = R.add(c, R.const(B_CONV))
            gv = R.nn.relu(b)
            R.output(gv)
        return gv

    @R.function(private=True)
    def fused_relax_nn_conv2d_relax_clip(d: R.Tensor((1, 2, 4, 4), "float32")):
        R.func_attr({"Composite": "tvmq.conv2d", "Primitive": True})
        with R.dataflow():
            e = R.nn.conv2d(d, R.const(W_CONV), padding=[1, 1])
            gv = R.clip(e, 0, 6)
            R.output(gv)
        return gv

    @R.function
    def main(x: R.Tensor((1, 2, 4, 4), "float32"), w: R.Tensor((2, 3, 3, 3), "float32")):
        cls = ConvExpected
        with R.dataflow():
            conv2d_0 = cls.fused_relax_nn_conv2d_relax_add_relax_nn_relu(x)
            conv2d_1 = R.nn.conv2d(conv2d_0, w, padding=[1, 1])
            conv2d_2 = cls.fused_relax_nn_conv2d_relax_clip(conv2d_1)
            sigmoid_3 = R.sigmoid(conv2d_2)
            R.output(sigmoid_3)
        return sigmoid_3


def test_conv_bias_relu_and_conv_clip_become_composites():
    after = AnnotateQuantizable()(ConvBefore)
    tvm.ir.assert_structural_equal(after, ConvExpected)
    assert _names(after) == ["conv2d_0", "conv2d_1", "conv2d_2", "sigmoid_3"]


@I.ir_module
class MatmulBefore:
    @R.function
    def main(x: R.Tensor((1, 2), "float32"), y: R.Tensor((1, 3), "float32")):
        with R.dataflow():
            m = R.matmul(x, R.const(W_MM))
            b = R.add(m, R.const(B_MM))
            c = R.clip(b, -1, 2)
            a = R.add(c, y)
            r = R.nn.relu(a)
            k = R.add(r, R.const(B_MM))  # broadcast add of a constant: not a residual add
            t = R.reshape(k, (3, 1))
            cat = R.concat((k, y), axis=1)
            R.output(cat, t)
        return (cat, t)


@I.ir_module
class MatmulExpected:
    @R.function(private=True)
    def fused_relax_matmul_relax_add_relax_clip(x: R.Tensor((1, 2), "float32")):
        R.func_attr({"Composite": "tvmq.matmul", "Primitive": True})
        with R.dataflow():
            m = R.matmul(x, R.const(W_MM))
            b = R.add(m, R.const(B_MM))
            gv = R.clip(b, -1, 2)
            R.output(gv)
        return gv

    @R.function(private=True)
    def fused_relax_add_relax_nn_relu(lv: R.Tensor((1, 3), "float32"),
                                      y: R.Tensor((1, 3), "float32")):
        R.func_attr({"Composite": "tvmq.add", "Primitive": True})
        with R.dataflow():
            a = R.add(lv, y)
            gv = R.nn.relu(a)
            R.output(gv)
        return gv

    @R.function(private=True)
    def fused_relax_reshape(k: R.Tensor((1, 3), "float32")):
        R.func_attr({"Composite": "tvmq.reshape", "Primitive": True})
        with R.dataflow():
            gv = R.reshape(k, (3, 1))
            R.output(gv)
        return gv

    @R.function(private=True)
    def fused_relax_concat(k: R.Tensor((1, 3), "float32"), y: R.Tensor((1, 3), "float32")):
        R.func_attr({"Composite": "tvmq.concat", "Primitive": True})
        with R.dataflow():
            gv = R.concat((k, y), axis=1)
            R.output(gv)
        return gv

    @R.function
    def main(x: R.Tensor((1, 2), "float32"), y: R.Tensor((1, 3), "float32")):
        cls = MatmulExpected
        with R.dataflow():
            matmul_0 = cls.fused_relax_matmul_relax_add_relax_clip(x)
            add_1 = cls.fused_relax_add_relax_nn_relu(matmul_0, y)
            add_2 = R.add(add_1, R.const(B_MM))
            reshape_3 = cls.fused_relax_reshape(add_2)
            concat_4 = cls.fused_relax_concat(add_2, y)
            R.output(reshape_3, concat_4)
        return (concat_4, reshape_3)


def test_matmul_bias_clip_residual_add_relu_and_pass_throughs():
    after = AnnotateQuantizable()(MatmulBefore)
    tvm.ir.assert_structural_equal(after, MatmulExpected)
    assert _names(after) == ["matmul_0", "add_1", "add_2", "reshape_3", "concat_4"]


@I.ir_module
class NotTakenBefore:
    @R.function
    def main(x: R.Tensor((1, 2, 4, 4), "float32"), i: R.Tensor((1, 3), "int32")):
        with R.dataflow():
            a = R.add(i, i)  # integer add: not a float tensor tvmq quantizes
            g = R.add(x, R.const(np.ones((1, 2, 4, 4), "float32")))  # a constant: not residual
            p = R.nn.avg_pool2d(x, pool_size=[3, 3], padding=[1, 1, 1, 1],
                                count_include_pad=False)  # divisor varies at the border
            c = R.nn.conv2d(x, R.const(W_CONV), data_layout="NCHW", kernel_layout="OIHW",
                            out_layout="NHWC")
            R.output(a, g, p, c)
        return (a, g, p, c)


def test_patterns_it_must_not_take_stay_float():
    after = AnnotateQuantizable()(NotTakenBefore)
    tvm.ir.assert_structural_equal(after, NotTakenBefore)
    assert _names(after) == ["add_0", "add_1", "avg_pool2d_2", "conv2d_3"]
