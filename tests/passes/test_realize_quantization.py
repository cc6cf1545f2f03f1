"""RealizeQuantization: Before / Expected integer graphs per composite kind; then, per op kind
through tvmq.compile, host == oracle bit for bit and close to float."""

import numpy as np
import pytest
import tvm
from onnx import helper
from tvm import relax
from tvm.script import ir as I
from tvm.script import relax as R
from tvmq.passes.realize_quantization import RealizeQuantization
from tvmq.targets.host import build

import tvmq
from tests.conftest import make_onnx
from tvmq.frontend import load_model
from tvmq.ir import INT32_MAX, INT32_MIN, requant_prim_func
from tvmq.numerics import QParams, Requant, quantize
from tvmq.numerics.weights import quantize_bias, quantize_weight

RNG = np.random.default_rng(3)


def _w(*shape):
    return RNG.normal(scale=0.5, size=shape)


def _conv(name, x, out, w, **attrs):
    return helper.make_node("Conv", [x, w], [out], name=name, **attrs)


CASES = {
    "conv_stride2_asym_pad": (
        [_conv("c", "input", "output", "w", strides=[2, 2], pads=[0, 1, 1, 0])],
        {"w": _w(4, 3, 3, 3)}, [1, 3, 7, 6], [1, 4, 3, 3]),
    "grouped_conv_relu": (
        [_conv("c", "input", "h", "w", group=2, pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["h"], ["output"])],
        {"w": _w(4, 2, 3, 3)}, [1, 4, 5, 5], [1, 4, 5, 5]),
    "gemm_no_bias_clip": (
        [helper.make_node("Gemm", ["input", "w"], ["h"], transB=1),
         helper.make_node("Clip", ["h", "lo", "hi"], ["output"])],
        {"w": _w(5, 6), "lo": np.array(-0.5), "hi": np.array(1.0)}, [1, 6], [1, 5]),
    "add_relu_of_two_convs": (
        [_conv("a", "input", "a", "wa", pads=[1, 1, 1, 1]),
         _conv("b", "input", "b", "wb", pads=[1, 1, 1, 1]),
         helper.make_node("Add", ["a", "b"], ["s"]), helper.make_node("Relu", ["s"], ["output"])],
        {"wa": _w(3, 2, 3, 3), "wb": _w(3, 2, 3, 3) * 3}, [1, 2, 4, 4], [1, 3, 4, 4]),
    "concat3_pools_transpose": (
        [helper.make_node("MaxPool", ["input"], ["m"], kernel_shape=[3, 3], pads=[1, 1, 0, 0]),
         helper.make_node("AveragePool", ["input"], ["a"], kernel_shape=[2, 2]),
         _conv("c", "input", "c", "w", kernel_shape=[2, 2]),
         helper.make_node("Concat", ["m", "a", "c"], ["cat"], axis=1),
         helper.make_node("Transpose", ["cat"], ["output"], perm=[0, 2, 3, 1])],
        {"w": _w(2, 3, 2, 2)}, [1, 3, 5, 5], [1, 4, 4, 8]),
    "clip_on_input_then_global_pool": (
        [helper.make_node("Clip", ["input", "lo", "hi"], ["c"]),
         helper.make_node("GlobalAveragePool", ["c"], ["g"]),
         helper.make_node("Flatten", ["g"], ["output"])],
        {"lo": np.array(-1.0), "hi": np.array(1.0)}, [1, 3, 4, 4], [1, 3]),
}
CONFIGS = [tvmq.QuantConfig(sqnr_samples=0),
           tvmq.QuantConfig(requant="fp32", sqnr_samples=0),
           tvmq.QuantConfig(rounding="single", per_channel_weights=False,
                            symmetric_activations=True, sqnr_samples=0)]


@pytest.mark.parametrize("config", CONFIGS, ids=["double", "fp32", "single-pertensor-sym"])
@pytest.mark.parametrize("case", list(CASES))
def test_op_is_integer_and_bit_exact(case, config):
    nodes, inits, in_shape, out_shape = CASES[case]
    model = make_onnx(nodes, inits, in_shape, out_shape)
    # its own generator: the data must not depend on which tests ran first on this worker
    calib = np.random.default_rng(3).normal(size=(16, *in_shape[1:])).astype(np.float32)
    cm = tvmq.compile(model, config=config, calib=calib, progress=False)
    assert cm.report().float_ops == []
    float_host = build(load_model(model)[0])
    oracle = cm.oracle()
    for x in calib[:4]:
        got = cm.run(x[None])
        np.testing.assert_array_equal(got, oracle.run(x[None]))
        ref = float_host.run(x[None])
        err = np.sum((ref - got) ** 2) / max(np.sum(ref**2), 1e-12)
        assert err < 0.01, f"{case}: relative error {err:.3g}"


def test_unquantizable_op_stays_float_and_is_reported():
    model = make_onnx(
        [_conv("a", "input", "a", "wa", pads=[1, 1, 1, 1]),
         helper.make_node("Sigmoid", ["a"], ["s"]),
         _conv("b", "s", "output", "wb", pads=[1, 1, 1, 1])],
        {"wa": _w(3, 2, 3, 3), "wb": _w(2, 3, 3, 3)}, [1, 2, 4, 4], [1, 2, 4, 4])
    calib = RNG.normal(size=(16, 2, 4, 4)).astype(np.float32)
    cm = tvmq.compile(model, calib=calib, progress=False)
    assert [name.split(" ")[1] for name in cm.report().float_ops] == ["(sigmoid)"]
    assert [row.op for row in cm.report().layers] == ["conv2d", "conv2d"]
    ref, got = build(load_model(model)[0]).run(calib[:1]), cm.run(calib[:1])
    assert np.sum((ref - got) ** 2) / np.sum(ref**2) < 0.01


# ---- Before / Expected: the integer graph each composite becomes ---------------------------------
# Expected is written from the module docstring's forms, with weights, biases, requant multipliers
# and clamps computed here by tvmq.numerics, and the kernels from tvmq.ir.requant_prim_func.

W_CONV = RNG.normal(size=(3, 2, 3, 3)).astype(np.float32)
B_CONV = RNG.normal(size=(1, 3, 1, 1)).astype(np.float32)
W_MM = RNG.normal(size=(4, 3)).astype(np.float32)
X_QP = QParams(np.float32(0.05), np.int32(3), -128, 127)        # asymmetric input
X_SYM = QParams(np.float32(0.04), np.int32(0), -127, 127)       # symmetric input: no centering
Y_QP = QParams(np.float32(0.1), np.int32(-5), -128, 127)
B_QP = QParams(np.float32(0.07), np.int32(-2), -128, 127)


def _names(mod) -> list[str]:
    """Binding names of `main` (structural equality does not compare variable names)."""
    return [b.var.name for block in mod["main"].body.blocks for b in block.bindings]


def _const(value, dtype=None):
    return relax.const(value, dtype)


def _quantize(bb, x, qp, name=""):
    return bb.emit(relax.op.quantize(x, _const(qp.scale), _const(qp.zero_point), axis=-1,
                                     out_dtype="int8"), name)


def _requant(bb, acc, real, axis, kind, rounding, zero_point, qmin, qmax, out_dtype="int8"):
    """call_tir of the requant kernel with params from Requant.from_scale (golden numerics)."""
    shape = tuple(int(d) for d in acc.ty.shape)
    real = np.atleast_1d(np.asarray(real, np.float64))
    rq = Requant.from_scale(real, kind, rounding)
    params = ([_const(rq.scale.astype(np.float32))] if kind == "fp32" else
              [_const(rq.multiplier.astype(np.int32)), _const(rq.shift.astype(np.int32))])
    prim = requant_prim_func(shape, real.size, axis, kind, rounding, zero_point, qmin, qmax,
                             out_dtype)
    gv = bb.add_func(prim, f"tvmq_requant_{rounding or 'fp32'}")
    return relax.call_tir(gv, [acc, *params], relax.TensorType(shape, out_dtype))


def _dequantize(qp, y):
    return relax.op.dequantize(y, _const(qp.scale), _const(qp.zero_point), axis=-1)


@I.ir_module
class ConvBefore:
    @R.function(private=True)
    def fused_relax_nn_conv2d_relax_add_relax_nn_relu(x: R.Tensor((1, 2, 4, 4), "float32")):
        R.func_attr({"Composite": "tvmq.conv2d", "Primitive": True})
        with R.dataflow():
            c = R.nn.conv2d(x, R.const(W_CONV), strides=[1, 2], padding=[1, 1])
            b = R.add(c, R.const(B_CONV))
            gv = R.nn.relu(b)
            R.output(gv)
        return gv

    @R.function
    def main(x: R.Tensor((1, 2, 4, 4), "float32")):
        cls = ConvBefore
        with R.dataflow():
            conv2d_0 = cls.fused_relax_nn_conv2d_relax_add_relax_nn_relu(x)
            R.output(conv2d_0)
        return conv2d_0


def _conv_expected():
    """x - zx in int16; int32 conv + bias; per-channel double-rounding requant to [zy, 127]."""
    wq, wqp = quantize_weight(W_CONV, axis=0, per_channel=True, bits=8)
    bq = quantize_bias(B_CONV.reshape(-1), float(X_QP.scale), wqp.scale)
    real = float(X_QP.scale) * wqp.scale.astype(np.float64) / float(Y_QP.scale)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 2, 4, 4), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            xq = _quantize(bb, x, X_QP, "x_q")
            xc = bb.emit(relax.op.astype(xq, "int16"))
            xc = bb.emit(relax.op.subtract(xc, _const(3, "int16")))
            acc = bb.emit(relax.op.nn.conv2d(xc, _const(wq), strides=[1, 2], padding=[1, 1],
                                             out_dtype="int32"))
            acc = bb.emit(relax.op.add(acc, _const(bq.reshape(1, 3, 1, 1))))
            y = bb.emit(_requant(bb, acc, real, 1, "mult_shift", "double", -5, -5, 127),
                        "conv2d_0_q")  # relu: q >= zero point
            out = bb.emit_output(_dequantize(Y_QP, y), "conv2d_0")
        bb.emit_func_output(out)
    return bb.get()


def test_conv_bias_relu_becomes_int_conv_and_per_channel_requant():
    after = RealizeQuantization({"x": X_QP, "conv2d_0": Y_QP})(ConvBefore)
    assert np.all(quantize_weight(W_CONV, axis=0, per_channel=True)[1].scale > 0)
    tvm.ir.assert_structural_equal(after, _conv_expected())
    assert _names(after)[0] == "x_q" and _names(after)[-2:] == ["conv2d_0_q", "conv2d_0"]


@I.ir_module
class MatmulBefore:
    @R.function(private=True)
    def fused_relax_matmul_relax_clip(x: R.Tensor((2, 4), "float32")):
        R.func_attr({"Composite": "tvmq.matmul", "Primitive": True})
        with R.dataflow():
            m = R.matmul(x, R.const(W_MM))
            gv = R.clip(m, -0.5, 1.0)
            R.output(gv)
        return gv

    @R.function
    def main(x: R.Tensor((2, 4), "float32")):
        cls = MatmulBefore
        with R.dataflow():
            matmul_0 = cls.fused_relax_matmul_relax_clip(x)
            R.output(matmul_0)
        return matmul_0


def _matmul_expected():
    """Symmetric narrow-range input, clipped to [-127, 127] and read without centering; one
    weight scale, repeated per column; fp32 requant
    clamped to [q(-0.5), q(1.0)]."""
    wq, wqp = quantize_weight(W_MM, axis=1, per_channel=False, bits=8)
    real = float(X_SYM.scale) * np.full(3, float(wqp.scale), np.float64) / float(Y_QP.scale)
    qlo, qhi = (int(quantize(np.float32(v), Y_QP)) for v in (-0.5, 1.0))
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((2, 4), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            xq = _quantize(bb, x, X_SYM)
            xq = bb.emit(relax.op.clip(xq, -127, 127), "x_q")  # narrow range: -128 excluded
            acc = bb.emit(relax.op.matmul(xq, _const(wq), out_dtype="int32"))
            y = bb.emit(_requant(bb, acc, real, 1, "fp32", None, -5, qlo, qhi), "matmul_0_q")
            out = bb.emit_output(_dequantize(Y_QP, y), "matmul_0")
        bb.emit_func_output(out)
    return bb.get()


def test_matmul_clip_with_fp32_requant_and_per_tensor_weights():
    after = RealizeQuantization({"x": X_SYM, "matmul_0": Y_QP}, requant="fp32",
                                per_channel_weights=False)(MatmulBefore)
    tvm.ir.assert_structural_equal(after, _matmul_expected())


@I.ir_module
class AddBefore:
    @R.function(private=True)
    def fused_relax_add_relax_nn_relu(a: R.Tensor((1, 6), "float32"),
                                      b: R.Tensor((1, 6), "float32")):
        R.func_attr({"Composite": "tvmq.add", "Primitive": True})
        with R.dataflow():
            s = R.add(a, b)
            gv = R.nn.relu(s)
            R.output(gv)
        return gv

    @R.function
    def main(a: R.Tensor((1, 6), "float32"), b: R.Tensor((1, 6), "float32")):
        cls = AddBefore
        with R.dataflow():
            add_0 = cls.fused_relax_add_relax_nn_relu(a, b)
            R.output(add_0)
        return add_0


def _add_expected():
    """TFLite's add: each input (a - za) << 20 requantized by s/2m to int32; the sum by
    2m / (2^20 sy); m = max(sa, sb); single rounding; relu in the output clamp."""
    twice_max = 2.0 * max(float(X_QP.scale), float(B_QP.scale))
    bb = relax.BlockBuilder()
    a = relax.Var("a", relax.TensorType((1, 6), "float32"))
    b = relax.Var("b", relax.TensorType((1, 6), "float32"))
    with bb.function("main", [a, b]):
        with bb.dataflow():
            inputs = [(_quantize(bb, a, X_QP, "a_q"), X_QP), (_quantize(bb, b, B_QP, "b_q"), B_QP)]
            terms = []
            for xq, qp in inputs:
                xc = bb.emit(relax.op.astype(xq, "int32"))
                xc = bb.emit(relax.op.subtract(xc, _const(int(qp.zero_point), "int32")))
                xc = bb.emit(relax.op.left_shift(xc, _const(20, "int32")))
                terms.append(bb.emit(_requant(bb, xc, float(qp.scale) / twice_max, None,
                                              "mult_shift", "single", 0, INT32_MIN, INT32_MAX,
                                              "int32")))
            acc = bb.emit(relax.op.add(*terms))
            y = bb.emit(_requant(bb, acc, twice_max / (2**20 * float(Y_QP.scale)), None,
                                 "mult_shift", "single", -5, -5, 127), "add_0_q")
            out = bb.emit_output(_dequantize(Y_QP, y), "add_0")
        bb.emit_func_output(out)
    return bb.get()


def test_residual_add_requantizes_both_inputs_then_the_sum():
    after = RealizeQuantization({"a": X_QP, "b": B_QP, "add_0": Y_QP},
                                rounding="single")(AddBefore)
    tvm.ir.assert_structural_equal(after, _add_expected())
    kernels = sorted(gv.name_hint for gv, f in after.functions_items()
                     if isinstance(f, tvm.tirx.PrimFunc))
    assert kernels == ["tvmq_requant_single", "tvmq_requant_single1"]  # inputs share one


@I.ir_module
class ReluPoolConcatBefore:
    @R.function(private=True)
    def fused_relax_clip(x: R.Tensor((1, 2, 4, 4), "float32")):
        R.func_attr({"Composite": "tvmq.relu", "Primitive": True})
        with R.dataflow():
            gv = R.clip(x, 0, 6)
            R.output(gv)
        return gv

    @R.function(private=True)
    def fused_relax_nn_max_pool2d(r: R.Tensor((1, 2, 4, 4), "float32")):
        R.func_attr({"Composite": "tvmq.max_pool2d", "Primitive": True})
        with R.dataflow():
            gv = R.nn.max_pool2d(r, pool_size=[2, 2], strides=[2, 2])
            R.output(gv)
        return gv

    @R.function(private=True)
    def fused_relax_concat(p: R.Tensor((1, 2, 2, 2), "float32"),
                           y: R.Tensor((1, 3, 2, 2), "float32")):
        R.func_attr({"Composite": "tvmq.concat", "Primitive": True})
        with R.dataflow():
            gv = R.concat((p, y), axis=1)
            R.output(gv)
        return gv

    @R.function
    def main(x: R.Tensor((1, 2, 4, 4), "float32"), y: R.Tensor((1, 3, 2, 2), "float32")):
        cls = ReluPoolConcatBefore
        with R.dataflow():
            relu_0 = cls.fused_relax_clip(x)
            max_pool2d_1 = cls.fused_relax_nn_max_pool2d(relu_0)
            concat_2 = cls.fused_relax_concat(max_pool2d_1, y)
            R.output(concat_2)
        return concat_2


def _relu_pool_concat_expected():
    """ReLU6 is an int8 clip to [zx, q(6)]; max pool runs on int8 with the input's qparams;
    concat passes the input already at its output qparams and requantizes the other one."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 2, 4, 4), "float32"))
    y = relax.Var("y", relax.TensorType((1, 3, 2, 2), "float32"))
    with bb.function("main", [x, y]):
        with bb.dataflow():
            xq = _quantize(bb, x, X_QP, "x_q")
            relu = bb.emit(relax.op.clip(xq, 3, int(quantize(np.float32(6.0), X_QP))),
                           "relu_0_q")
            pool = bb.emit(relax.op.nn.max_pool2d(relu, pool_size=[2, 2], strides=[2, 2]),
                           "max_pool2d_1_q")
            yq = _quantize(bb, y, B_QP, "y_q")
            yc = bb.emit(relax.op.astype(yq, "int32"))
            yc = bb.emit(relax.op.subtract(yc, _const(-2, "int32")))
            y_as_x = bb.emit(_requant(bb, yc, float(B_QP.scale) / float(X_QP.scale), None,
                                      "mult_shift", "double", 3, -128, 127))
            cat = bb.emit(relax.op.concat([pool, y_as_x], axis=1), "concat_2_q")
            out = bb.emit_output(_dequantize(X_QP, cat), "concat_2")
        bb.emit_func_output(out)
    return bb.get()


def test_relu_pool_and_concat_stay_int8():
    after = RealizeQuantization({"x": X_QP, "y": B_QP, "concat_2": X_QP})(ReluPoolConcatBefore)
    tvm.ir.assert_structural_equal(after, _relu_pool_concat_expected())
    assert "relu_0_q" in _names(after) and "max_pool2d_1_q" in _names(after)


def test_missing_input_qparams_name_the_tensor():
    with pytest.raises(ValueError, match="no calibrated qparams for tensor 'x'"):
        RealizeQuantization({"conv2d_0": Y_QP})(ConvBefore)


def test_missing_output_qparams_name_the_tensor():
    with pytest.raises(ValueError, match="no calibrated qparams for tensor 'conv2d_0'"):
        RealizeQuantization({"x": X_QP})(ConvBefore)
