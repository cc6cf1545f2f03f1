"""Frontend: import + normalization matches onnxruntime; bad models give one clear CompileError."""

import numpy as np
import onnx
import pytest
from onnx import helper
from tvmq.targets.host import build

from tests.conftest import make_onnx
from tvmq import CompileError, data
from tvmq.frontend import load_model


def _count_ops(mod, name):
    return sum(1 for b in mod["main"].body.blocks[0].bindings
               if hasattr(b.value, "op") and getattr(b.value.op, "name", "") == name)


def test_digits_model_matches_onnxruntime_after_folding(digits):
    ort = pytest.importorskip("onnxruntime")
    mod, inp = load_model(data.digits_model_path())
    assert inp.shape == (1, 1, 8, 8) and inp.name == "input"
    assert _count_ops(mod, "relax.nn.batch_norm") == 0   # folded into the convs
    assert _count_ops(mod, "relax.clip") == 1            # ReLU6 back as one clip
    sess = ort.InferenceSession(str(data.digits_model_path()))
    host = build(mod)
    for x in digits[1][:20]:
        want = sess.run(None, {"input": x[None]})[0]
        np.testing.assert_allclose(host.run(x[None]), want, rtol=1e-4, atol=1e-4)


def test_missing_file():
    with pytest.raises(CompileError, match="model file not found"):
        load_model("/nonexistent/model.onnx")


def test_malformed_file(tmp_path):
    path = tmp_path / "bad.onnx"
    path.write_bytes(b"this is not a protobuf")
    with pytest.raises(CompileError, match="not a valid ONNX model"):
        load_model(path)


def test_op_tvm_cannot_import_is_named():
    node = helper.make_node("Det", ["input"], ["output"])
    model = make_onnx([node], {}, [2, 2], [])
    with pytest.raises(CompileError, match="Det"):
        load_model(model)


def test_nan_weight_is_named():
    w = np.ones((2, 2), np.float32)
    w[0, 1] = np.nan
    model = make_onnx([helper.make_node("MatMul", ["input", "w"], ["output"])], {"w": w},
                      [1, 2], [1, 2])
    with pytest.raises(CompileError, match=r"'w'.*NaN"):
        load_model(model)


def test_symbolic_dims_need_input_shape():
    model = make_onnx([helper.make_node("Relu", ["input"], ["output"])], {},
                      ["N", 3, "H", "W"], ["N", 3, "H", "W"])
    with pytest.raises(CompileError, match="input_shape"):
        load_model(model)
    _, inp = load_model(model, input_shape=(1, 3, 4, 5))
    assert inp.shape == (1, 3, 4, 5)
    with pytest.raises(CompileError, match="does not match"):
        load_model(model, input_shape=(1, 4, 4, 5))


def test_symbolic_batch_becomes_one():
    model = make_onnx([helper.make_node("Relu", ["input"], ["output"])], {}, ["N", 3], ["N", 3])
    assert load_model(model)[1].shape == (1, 3)


def test_two_inputs_rejected():
    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["c"])], "g",
        [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [1]) for n in "ab"],
        [helper.make_tensor_value_info("c", onnx.TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(CompileError, match="exactly one input"):
        load_model(model)


def test_relax_module_input_compiles_bit_exact():
    import tvm
    from tvm import relax

    import tvmq

    rng = np.random.default_rng(0)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 2, 6, 6), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            w = relax.const(rng.normal(size=(4, 2, 3, 3)).astype(np.float32))
            y = bb.emit(relax.op.nn.relu(relax.op.nn.conv2d(x, w, padding=[1, 1])))
            out = bb.emit_output(relax.op.nn.max_pool2d(y, pool_size=[2, 2], strides=[2, 2]))
        bb.emit_func_output(out)
    mod = bb.get()
    assert isinstance(mod, tvm.IRModule)
    calib = rng.normal(size=(8, 2, 6, 6)).astype(np.float32)
    cm = tvmq.compile(mod, calib=calib, progress=False)
    assert [r.op for r in cm.report().layers] == ["conv2d", "max_pool2d"]
    np.testing.assert_array_equal(cm.run(calib[:1]), cm.oracle().run(calib[:1]))


def test_relax_module_without_static_input_is_rejected():
    from tvm import relax

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 2), "int32"))
    with bb.function("main", [x]):
        bb.emit_func_output(x)
    with pytest.raises(CompileError, match="float32"):
        load_model(bb.get())
