"""Fixing the input shape folds run-time shape arithmetic so TVM can import the model."""

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
    assert "Shape" not in ops and "Cast" not in ops and ops.count("Constant") == 1
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
    with pytest.raises(CompileError, match=r"shape inference failed at input shape \(1, 2, 5, 4\)"):
        load_model(_dynamic_flatten_model(), input_shape=(1, 2, 5, 4))


def test_declared_output_shape_is_not_trusted():
    model = _dynamic_flatten_model()
    model.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 99  # exporter got it wrong
    static = make_static(model, "x", (1, 2, 3, 4))
    dims = [d.dim_value for d in static.graph.output[0].type.tensor_type.shape.dim]
    assert dims == [1, 1]
