"""Fixing the input shape folds run-time shape arithmetic (ONNX Runtime's basic optimizer) so TVM
can import the model; what TVM still cannot import is one CompileError naming the node and op."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from tvmq.targets.host import build

from tvmq import CompileError
from tvmq.frontend import load_model
from tvmq.onnx_static import make_static


def _dynamic_flatten_model() -> onnx.ModelProto:
    """Paddle2ONNX style: batch dim -1, and Reshape(x, Concat(Slice(Cast(Shape(x))), [-1]))."""
    w = numpy_helper.from_array(np.arange(24, dtype=np.float32).reshape(24, 1) / 24, "w")
    consts = {"starts": [0], "ends": [1], "minus1": [-1]}
    inits = [w] + [numpy_helper.from_array(np.array(v, np.int64), k) for k, v in consts.items()]
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("Shape", ["r"], ["s"]),
        helper.make_node("Cast", ["s"], ["s32"], to=TensorProto.INT32),
        helper.make_node("Cast", ["s32"], ["s64"], to=TensorProto.INT64),
        helper.make_node("Slice", ["s64", "starts", "ends"], ["batch"]),
        helper.make_node("Concat", ["batch", "minus1"], ["target"], axis=0),
        helper.make_node("Reshape", ["r", "target"], ["flat"]),
        helper.make_node("MatMul", ["flat", "w"], ["y"]),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, 2, "h", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [-1, 1])
    graph = helper.make_graph(nodes, "dyn", [x], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    onnx.checker.check_model(model)
    return model


def test_shape_chain_becomes_constant():
    static = make_static(_dynamic_flatten_model(), "x", (1, 2, 3, 4))
    ops = [n.op_type for n in static.graph.node]
    assert ops == ["Relu", "Reshape", "MatMul"]
    dims = [d.dim_value for d in static.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 2, 3, 4]


def test_dynamic_model_imports_and_matches_onnxruntime():
    ort = pytest.importorskip("onnxruntime")
    model = _dynamic_flatten_model()
    mod, _ = load_model(model, input_shape=(1, 2, 3, 4))
    x = np.random.default_rng(0).normal(size=(1, 2, 3, 4)).astype(np.float32)
    want = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_allclose(build(mod).run(x), want, rtol=1e-5)


def test_negative_dim_value_counts_as_symbolic():
    with pytest.raises(CompileError, match="input_shape"):
        load_model(_dynamic_flatten_model())  # batch -1 becomes 1, but "h" needs input_shape


def test_shape_the_model_cannot_take_is_a_clear_error():
    with pytest.raises(CompileError, match=r"cannot run at input shape \(1, 2, 5, 4\)"):
        load_model(_dynamic_flatten_model(), input_shape=(1, 2, 5, 4))


def test_declared_output_shape_is_not_trusted():
    model = _dynamic_flatten_model()
    model.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 99  # exporter got it wrong
    static = make_static(model, "x", (1, 2, 3, 4))
    dims = [d.dim_value for d in static.graph.output[0].type.tensor_type.shape.dim]
    assert dims == [1, 1]


def _model(nodes, inits, opset=13, shape=(1, 2, 4, 4), out_rank=4) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", *shape[1:]])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [f"d{i}" for i in range(out_rank)])
    graph = helper.make_graph(nodes, "g", [x], [y], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _int64(name, values):
    return numpy_helper.from_array(np.array(values, np.int64), name)


def _matches_onnxruntime(model, shape=(1, 2, 4, 4)):
    ort = pytest.importorskip("onnxruntime")
    mod, _ = load_model(model, input_shape=shape)
    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    want = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_allclose(build(mod).run(x), want, rtol=1e-6)


def test_opset12_unsqueeze_of_a_shape():
    """Opset 12 Unsqueeze (axes an attribute) of the batch size, as ORT's quantizer writes it."""
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n"], ["n1"], axes=[0]),
        helper.make_node("Concat", ["n1", "minus1"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["y"]),
    ]
    inits = [numpy_helper.from_array(np.array(0, np.int64), "zero"), _int64("minus1", [-1])]
    _matches_onnxruntime(_model(nodes, inits, opset=12, out_rank=2))


def test_pads_computed_at_run_time():
    """Pad's pads from the input's shape: TVM's importer alone stops at "Dynamic pads"."""
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Slice", ["s", "two", "three"], ["h"]),
        helper.make_node("Div", ["h", "four"], ["q"]),
        helper.make_node("Concat", ["zeros", "q", "q", "zeros", "q", "q"], ["pads"], axis=0),
        helper.make_node("Pad", ["x", "pads"], ["y"]),
    ]
    inits = [_int64("two", [2]), _int64("three", [3]), _int64("four", [4]),
             _int64("zeros", [0, 0])]
    _matches_onnxruntime(_model(nodes, inits))


def test_op_without_converter_names_its_first_node():
    model = _model([helper.make_node("Det", ["x"], ["y"], name="det_0")], [], out_rank=2)
    with pytest.raises(CompileError, match=r"no converter for Det: first at node 'det_0' \(op Det"):
        load_model(model, input_shape=(1, 2, 4, 4))


def test_converter_failure_names_the_node(monkeypatch):
    """A converter raising deep inside TVM becomes one CompileError naming the node it was at."""
    from tvm.relax.frontend.onnx import onnx_frontend

    def fail(*args, **kwargs):
        raise ValueError("Dynamic pads are not supported yet.")

    monkeypatch.setattr(onnx_frontend.Relu, "_impl_v13", classmethod(fail))
    model = _model([helper.make_node("Relu", ["x"], ["y"], name="relu_7")], [], opset=14)
    with pytest.raises(CompileError, match=r"node 'relu_7' \(op Relu\): Dynamic pads are not "):
        load_model(model, input_shape=(1, 2, 4, 4))
