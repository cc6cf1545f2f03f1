"""FakeQuantize: Before / Expected for a conv2d and a matmul with parameter weights, the layers
it must leave alone, and its argument checks."""

import json

import numpy as np
import pytest
import tvm
from tvm import relax
from tvm.script import ir as I
from tvm.script import relax as R
from tvmq.passes.fake_quantize import FakeQuantize

W_CONST = np.ones((4, 3), np.float32)
X_SPEC = json.dumps({"bits": 8, "axis": None})    # activations: per tensor
CONV_W_SPEC = json.dumps({"bits": 8, "axis": 0})  # OIHW weights: per output channel
MM_W_SPEC = json.dumps({"bits": 8, "axis": 1})    # (K, N) weights: per column
CONV_OUT = json.dumps({"kind": "mult_shift", "bits": 8, "axis": 1})
MM_OUT = json.dumps({"kind": "fp32", "bits": 8, "axis": -1})


@I.ir_module
class ConvBefore:
    @R.function
    def main(x: R.Tensor((1, 2, 4, 4), "float32"), w: R.Tensor((3, 2, 3, 3), "float32")):
        with R.dataflow():
            y = R.nn.conv2d(x, w, padding=[1, 1])
            R.output(y)
        return y


@I.ir_module
class ConvExpected:
    @R.function
    def main(x: R.Tensor((1, 2, 4, 4), "float32"), w: R.Tensor((3, 2, 3, 3), "float32")):
        with R.dataflow():
            x_fq = R.call_dps_packed(
                "tvmq.fake_quant", (x, R.str(X_SPEC)),
                out_ty=[R.Tensor((1, 2, 4, 4), "float32"), R.Tensor((1, 2, 4, 4), "float32"),
                        R.Tensor((), "float32")])
            x_q = x_fq[0]
            x_int = x_fq[1]
            x_scale = x_fq[2]
            w_fq = R.call_dps_packed(
                "tvmq.fake_quant", (w, R.str(CONV_W_SPEC)),
                out_ty=[R.Tensor((3, 2, 3, 3), "float32"), R.Tensor((3, 2, 3, 3), "float32"),
                        R.Tensor((3,), "float32")])
            w_q = w_fq[0]
            w_int = w_fq[1]
            w_scale = w_fq[2]
            x_zero = R.subtract(x, R.grad.no_grad(x))   # ste(x, x_q): forward x_q, gradient 1
            x_ste = R.add(R.grad.no_grad(x_q), x_zero)
            w_zero = R.subtract(w, R.grad.no_grad(w))
            w_ste = R.add(R.grad.no_grad(w_q), w_zero)
            y = R.nn.conv2d(x_ste, w_ste, padding=[1, 1])
            acc = R.nn.conv2d(R.astype(x_int, "float64"), R.astype(w_int, "float64"),
                              padding=[1, 1], out_dtype="float64")
            out_q = R.call_dps_packed("tvmq.fake_quant_requant",
                                      (acc, x_scale, w_scale, R.str(CONV_OUT)),
                                      out_ty=R.Tensor((1, 3, 4, 4), "float32"))
            y_zero = R.subtract(y, R.grad.no_grad(y))   # ste(y, out_q)
            out = R.add(R.grad.no_grad(out_q), y_zero)
            layer = out                                 # the layer's own binding
            R.output(layer)
        return layer


def test_conv_gets_fake_quantized_operands_and_a_simulated_requant():
    tvm.ir.assert_structural_equal(FakeQuantize()(ConvBefore), ConvExpected)


@I.ir_module
class MatmulBefore:
    @R.function
    def main(x: R.Tensor((2, 4), "float32"), w: R.Tensor((4, 3), "float32")):
        with R.dataflow():
            y = R.matmul(x, w)
            z = R.matmul(y, R.const(np.ones((3, 2), np.float32)))  # constant weight: left alone
            R.output(z)
        return z


@I.ir_module
class MatmulExpected:
    @R.function
    def main(x: R.Tensor((2, 4), "float32"), w: R.Tensor((4, 3), "float32")):
        with R.dataflow():
            x_fq = R.call_dps_packed(
                "tvmq.fake_quant", (x, R.str(X_SPEC)),
                out_ty=[R.Tensor((2, 4), "float32"), R.Tensor((2, 4), "float32"),
                        R.Tensor((), "float32")])
            x_q = x_fq[0]
            x_int = x_fq[1]
            x_scale = x_fq[2]
            w_fq = R.call_dps_packed(
                "tvmq.fake_quant", (w, R.str(MM_W_SPEC)),
                out_ty=[R.Tensor((4, 3), "float32"), R.Tensor((4, 3), "float32"),
                        R.Tensor((3,), "float32")])
            w_q = w_fq[0]
            w_int = w_fq[1]
            w_scale = w_fq[2]
            x_zero = R.subtract(x, R.grad.no_grad(x))
            x_ste = R.add(R.grad.no_grad(x_q), x_zero)
            w_zero = R.subtract(w, R.grad.no_grad(w))
            w_ste = R.add(R.grad.no_grad(w_q), w_zero)
            y = R.matmul(x_ste, w_ste)
            acc = R.matmul(R.astype(x_int, "float64"), R.astype(w_int, "float64"),
                           out_dtype="float64")
            out_q = R.call_dps_packed("tvmq.fake_quant_requant",
                                      (acc, x_scale, w_scale, R.str(MM_OUT)),
                                      out_ty=R.Tensor((2, 3), "float32"))
            y_zero = R.subtract(y, R.grad.no_grad(y))
            out = R.add(R.grad.no_grad(out_q), y_zero)
            layer = out
            z = R.matmul(layer, R.const(np.ones((3, 2), np.float32)))
            R.output(z)
        return z


def test_matmul_with_fp32_requant_and_a_constant_weight_left_alone():
    tvm.ir.assert_structural_equal(FakeQuantize(requant="fp32")(MatmulBefore), MatmulExpected)


@I.ir_module
class NothingToDo:
    @R.function
    def main(x: R.Tensor((4, 4), "float32"), v: R.Tensor((4,), "float32")):
        with R.dataflow():
            a = R.matmul(x, R.const(W_CONST))   # constant weight
            b = R.matmul(x, v)                  # 1-D weight: not a layer
            c = R.matmul(x, x)                  # weight is the model input, not a parameter
            R.output(a, b, c)
        return (a, b, c)


def test_layers_without_a_parameter_weight_are_left_alone():
    tvm.ir.assert_structural_equal(FakeQuantize()(NothingToDo), NothingToDo)


@I.ir_module
class TransposedWeight:
    @R.function
    def main(x: R.Tensor((2, 4), "float32"), w: R.Tensor((3, 4), "float32")):
        with R.dataflow():
            wt = R.permute_dims(w)
            y = R.matmul(x, wt)
            R.output(y)
        return y


def test_weight_through_permute_dims_is_fake_quantized():
    """The transposed weight (the variable bound to permute_dims) is fake-quantized per output
    channel (its last axis), like a weight parameter read directly."""
    after = FakeQuantize()(TransposedWeight)
    bound = {b.var.name: b.value for block in after["main"].body.blocks for b in block.bindings}
    packed = [(v.args[0].global_symbol, v.args[1].fields) for v in bound.values()
              if isinstance(v, relax.Call) and v.op.name == "relax.call_dps_packed"]
    quantized = {args[0].name: json.loads(args[1].value) for sym, args in packed
                 if sym == "tvmq.fake_quant"}
    assert quantized == {"x": {"bits": 8, "axis": None}, "wt": {"bits": 8, "axis": 1}}
    assert [sym for sym, _ in packed].count("tvmq.fake_quant_requant") == 1


@pytest.mark.parametrize("kwargs,match", [(dict(requant="single"), "requant"),
                                          (dict(bits=1), "bits"), (dict(bits=9), "bits")])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FakeQuantize(**kwargs)
