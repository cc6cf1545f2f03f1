"""lower_for_tvm: LSTMs unrolled and dynamically quantized layers made float compute what ONNX
Runtime computes on the original (float) model, and TVM's importer takes the result."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper
from tvm import relax
from tvm.relax.frontend.onnx import from_onnx

from tvmq import CompileError
from tvmq.onnx_lower import lower_for_tvm
from tvmq.onnx_static import make_static

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import models  # benchmarks/models.py: the zoo's table and fetcher

ort = pytest.importorskip("onnxruntime")
quantization = pytest.importorskip("onnxruntime.quantization")

T, B, IN, H = 5, 2, 3, 4  # steps, batch, input size, hidden size
TOLERANCE = {"rtol": 1e-5, "atol": 1e-6}  # float reassociation only


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _ops(model: onnx.ModelProto) -> set[str]:
    return {node.op_type for node in model.graph.node}


def _lstm_model(direction="forward", initial="none", outputs=("Y", "Y_h", "Y_c"), opset=13,
                inputs_extra=(), inits_extra=(), **attrs) -> onnx.ModelProto:
    """X [T, B, IN] -> LSTM(hidden H); `initial` states are none / zeros / constant / input."""
    rng = np.random.default_rng(7)
    dirs = 2 if direction == "bidirectional" else 1
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.5, (dirs, 4 * H, IN)).astype(np.float32), "W"),
        numpy_helper.from_array(rng.normal(0, 0.5, (dirs, 4 * H, H)).astype(np.float32), "R"),
        numpy_helper.from_array(rng.normal(0, 0.5, (dirs, 8 * H)).astype(np.float32), "B"),
        *inits_extra,
    ]
    graph_inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, [T, B, IN])]
    state = ["", ""]
    if initial in ("zeros", "constant"):
        for k, name in enumerate(("h0", "c0")):
            value = rng.normal(0, 1, (dirs, B, H)) * (initial == "constant")
            inits.append(numpy_helper.from_array(value.astype(np.float32), name))
            state[k] = name
    elif initial == "input":
        state = ["h0", "c0"]
        graph_inputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, [dirs, B, H])
                         for n in state]
    graph_inputs += list(inputs_extra)
    seq_lens, peepholes = attrs.pop("sequence_lens", ""), attrs.pop("P", "")
    node_inputs = ["X", "W", "R", "B", seq_lens, *state, peepholes]
    while not node_inputs[-1]:
        node_inputs.pop()
    node = helper.make_node("LSTM", node_inputs, list(outputs), name="lstm", hidden_size=H,
                            direction=direction, **attrs)
    shapes = ([T, dirs, B, H], [dirs, B, H], [dirs, B, H])
    graph_outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape)
                     for n, shape in zip(outputs, shapes) if n]
    graph = helper.make_graph([node], "lstm", graph_inputs, graph_outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _lstm_feeds(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    shapes = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim]
              for i in model.graph.input}
    return {name: rng.normal(0, 1, shape).astype(np.float32) for name, shape in shapes.items()}


@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("initial", ["none", "zeros", "constant", "input"])
def test_unrolled_lstm_matches_onnxruntime(direction, initial):
    model = _lstm_model(direction, initial)
    lowered = lower_for_tvm(model)
    onnx.checker.check_model(lowered)
    assert "LSTM" not in _ops(lowered)
    feeds = _lstm_feeds(model)
    for got, want in zip(_run(lowered, feeds), _run(model, feeds), strict=True):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, **TOLERANCE)
    from_onnx(lowered)


@pytest.mark.parametrize("outputs", [("Y",), ("", "Y_h"), ("", "", "Y_c"), ("Y", "", "Y_c")])
def test_only_the_outputs_read_are_computed(outputs):
    model = _lstm_model("bidirectional", "constant", outputs=outputs)
    lowered = lower_for_tvm(model)
    feeds = _lstm_feeds(model)
    for got, want in zip(_run(lowered, feeds), _run(model, feeds), strict=True):
        np.testing.assert_allclose(got, want, **TOLERANCE)
    # Y needs a Reshape per direction; the states alone do not.
    assert ("Reshape" in _ops(lowered)) == ("Y" in outputs)


@pytest.mark.parametrize("opset", [12, 18])
def test_split_is_written_for_the_model_opset(opset):
    model = _lstm_model("bidirectional", "input", opset=opset)
    lowered = lower_for_tvm(model)
    onnx.checker.check_model(lowered)
    splits = [n for n in lowered.graph.node if n.op_type == "Split"]
    assert splits and all(any(a.name == "num_outputs" for a in n.attribute) == (opset >= 18)
                          for n in splits)
    feeds = _lstm_feeds(model)
    for got, want in zip(_run(lowered, feeds), _run(model, feeds), strict=True):
        np.testing.assert_allclose(got, want, **TOLERANCE)


def test_full_sequence_lens_and_default_activations_are_accepted():
    lens = numpy_helper.from_array(np.full(B, T, np.int32), "lens")
    model = _lstm_model("reverse", "constant", inits_extra=[lens], sequence_lens="lens",
                        activations=["Sigmoid", "Tanh", "Tanh"])
    feeds = _lstm_feeds(model)
    for got, want in zip(_run(lower_for_tvm(model), feeds), _run(model, feeds), strict=True):
        np.testing.assert_allclose(got, want, **TOLERANCE)


def test_unrolled_lstm_runs_in_tvm():
    model = _lstm_model("bidirectional", "input")
    mod = from_onnx(lower_for_tvm(model))
    vm = relax.VirtualMachine(tvm.compile(mod, target=tvm.target.Target({"kind": "llvm"})),
                              tvm.cpu())
    feeds = _lstm_feeds(model)
    outs = vm["main"](*(tvm.runtime.tensor(feeds[n]) for n in ("X", "h0", "c0")))
    for got, want in zip(outs, _run(model, feeds), strict=True):
        np.testing.assert_allclose(got.numpy(), want, **TOLERANCE)


@pytest.mark.parametrize(
    ("attrs", "named"),
    [
        ({"clip": 3.0}, "clip=3.0"),
        ({"input_forget": 1}, "input_forget=1"),
        ({"layout": 1}, "layout=1"),
        ({"activations": ["Sigmoid", "Relu", "Tanh"]}, "activations="),
        ({"activation_alpha": [1.0]}, "activation_alpha="),
        ({"sequence_lens": "lens"}, "sequence_lens="),
        ({"P": "P"}, "peepholes"),
    ],
)
def test_unsupported_lstm_features_raise(attrs, named):
    extra = [numpy_helper.from_array(np.array([T, T - 1], np.int32), "lens"),
             numpy_helper.from_array(np.ones((1, 3 * H), np.float32), "P")]
    model = _lstm_model(opset=14, inits_extra=extra, **attrs)  # layout is new in opset 14
    with pytest.raises(CompileError, match=rf"LSTM node 'lstm': .*{named}.*; supported: "):
        lower_for_tvm(model)


def test_lstm_without_a_static_input_shape_raises():
    model = _lstm_model()
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "time"
    with pytest.raises(CompileError, match="LSTM node 'lstm': input X 'X' has no static"):
        lower_for_tvm(model)


# --- dynamically quantized models -------------------------------------------------------------


def _conv_matmul_model() -> onnx.ModelProto:
    """Conv(bias) -> Relu -> Reshape -> MatMul -> Add: what quantize_dynamic rewrites."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.3, (4, 3, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.normal(0, 0.3, 4).astype(np.float32), "b"),
        numpy_helper.from_array(np.array([1, 256], np.int64), "flat"),
        numpy_helper.from_array(rng.normal(0, 0.1, (256, 10)).astype(np.float32), "mw"),
        numpy_helper.from_array(rng.normal(0, 0.1, 10).astype(np.float32), "mb"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Reshape", ["r", "flat"], ["f"]),
        helper.make_node("MatMul", ["f", "mw"], ["m"]),
        helper.make_node("Add", ["m", "mb"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "cm", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [1, 3, 8, 8])], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, [1, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def _quantize_dynamic(model: onnx.ModelProto, tmp_path: Path, per_channel: bool,
                      weight_type: str = "QInt8"):
    src, dst = tmp_path / "float.onnx", tmp_path / "dynamic.onnx"
    onnx.save(model, src)
    quantization.quantize_dynamic(src, dst, per_channel=per_channel,
                                  weight_type=getattr(quantization.QuantType, weight_type))
    return onnx.load(dst)


def _with_weights(model: onnx.ModelProto, weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    """`model` with the named initializers replaced."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    for t in model.graph.initializer:
        if t.name in weights:
            t.CopyFrom(numpy_helper.from_array(weights[t.name].astype(np.float32), t.name))
    return model


def _dequantized(dynamic: onnx.ModelProto, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """(q - zp) * scale of quantize_dynamic's `<name>_quantized` / `_zero_point` / `_scale`,
    zero point and scale reshaped to `shape` to broadcast against q."""
    inits = {t.name: numpy_helper.to_array(t) for t in dynamic.graph.initializer}
    q = inits[f"{name}_quantized"].astype(np.float32)
    zp = inits[f"{name}_zero_point"].astype(np.float32).reshape(shape)
    return (q - zp) * inits[f"{name}_scale"].reshape(shape)


@pytest.mark.parametrize("weight_type", ["QInt8", "QUInt8"])  # QUInt8: non-zero zero points
@pytest.mark.parametrize("per_channel", [False, True])
def test_dynamic_conv_and_matmul_become_float(tmp_path, per_channel, weight_type):
    model = _conv_matmul_model()
    dynamic = _quantize_dynamic(model, tmp_path, per_channel, weight_type)
    assert {"ConvInteger", "MatMulInteger"} <= _ops(dynamic)
    lowered = lower_for_tvm(dynamic)
    onnx.checker.check_model(lowered)
    assert _ops(lowered) == {"Reshape", "Conv", "Relu", "MatMul", "Add"}
    # Conv weights per output channel (OIHW rows), MatMul weights per column.
    reference = _with_weights(model, {"w": _dequantized(dynamic, "w", (-1, 1, 1, 1)),
                                      "mw": _dequantized(dynamic, "mw", (1, -1))})
    x = np.random.default_rng(1).normal(0, 1, (1, 3, 8, 8)).astype(np.float32)
    (got,), (want,) = _run(lowered, {"x": x}), _run(reference, {"x": x})
    np.testing.assert_allclose(got, want, **TOLERANCE)
    from_onnx(lowered)


def _int32_bias_conv_model() -> onnx.ModelProto:
    """An older quantize_dynamic's Conv: the bias quantized at run time to int32,
    floor(b / (x_scale * w_scale)), added to the ConvInteger accumulator (ddddocr's model)."""
    rng = np.random.default_rng(2)
    w_q = rng.integers(-127, 128, (4, 3, 3, 3), dtype=np.int8)
    inits = [
        numpy_helper.from_array(w_q, "w_q"),
        numpy_helper.from_array(np.array(0.02, np.float32), "w_scale"),
        numpy_helper.from_array(np.array(3, np.int8), "w_zp"),
        numpy_helper.from_array(rng.normal(0, 1, 4).astype(np.float32), "b"),
        numpy_helper.from_array(np.array([1, 4, 1, 1], np.int64), "bias_shape"),
    ]
    nodes = [
        helper.make_node("DynamicQuantizeLinear", ["x"], ["x_q", "x_scale", "x_zp"]),
        helper.make_node("Mul", ["x_scale", "w_scale"], ["s"]),
        helper.make_node("Div", ["b", "s"], ["b_div"]),
        helper.make_node("Floor", ["b_div"], ["b_floor"]),
        helper.make_node("Cast", ["b_floor"], ["b_int"], to=TensorProto.INT32),
        helper.make_node("Reshape", ["b_int", "bias_shape"], ["b_q"]),
        helper.make_node("ConvInteger", ["x_q", "w_q", "x_zp", "w_zp"], ["acc"],
                         pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Add", ["acc", "b_q"], ["acc_b"]),
        helper.make_node("Cast", ["acc_b"], ["acc_f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["acc_f", "s"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "old", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [1, 3, 8, 8])], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)], ir_version=7)


def test_int32_bias_goes_back_to_the_float_bias():
    model = _int32_bias_conv_model()
    lowered = lower_for_tvm(model)
    (conv,) = lowered.graph.node
    assert conv.op_type == "Conv" and conv.output[0] == "y"
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    weight = (inits["w_q"].astype(np.float32) - 3) * np.float32(0.02)
    reference = helper.make_model(helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1], strides=[2, 2])],
        "ref", list(model.graph.input), list(model.graph.output),
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(inits["b"], "b")]),
        opset_imports=[helper.make_opsetid("", 12)], ir_version=7)
    x = np.random.default_rng(4).normal(0, 1, (1, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(_run(lowered, {"x": x})[0], _run(reference, {"x": x})[0],
                               **TOLERANCE)


def test_integer_matmul_of_two_activations_is_left_alone():
    nodes = [
        helper.make_node("DynamicQuantizeLinear", ["a"], ["a_q", "a_scale", "a_zp"]),
        helper.make_node("DynamicQuantizeLinear", ["b"], ["b_q", "b_scale", "b_zp"]),
        helper.make_node("MatMulInteger", ["a_q", "b_q", "a_zp", "b_zp"], ["acc"]),
        helper.make_node("Mul", ["a_scale", "b_scale"], ["s"]),
        helper.make_node("Cast", ["acc"], ["acc_f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["acc_f", "s"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "aa", [
        helper.make_tensor_value_info("a", TensorProto.FLOAT, [2, 3]),
        helper.make_tensor_value_info("b", TensorProto.FLOAT, [3, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    assert lower_for_tvm(model).graph == model.graph


@pytest.mark.parametrize("per_channel", [False, True])
def test_dynamic_quantize_lstm_becomes_float(tmp_path, per_channel):
    model = _lstm_model("bidirectional", "constant")
    dynamic = _quantize_dynamic(model, tmp_path, per_channel)
    assert "DynamicQuantizeLSTM" in _ops(dynamic)
    lowered = lower_for_tvm(dynamic)
    onnx.checker.check_model(lowered)
    assert all(n.domain == "" for n in lowered.graph.node)
    assert not _ops(lowered) & {"LSTM", "DynamicQuantizeLSTM"}
    # quantize_dynamic stores W_q [dirs, I, 4H] with scales [dirs] or [dirs, 4H] (per gate row).
    weights = {name: _dequantized(dynamic, name, (2, 1, -1)).transpose(0, 2, 1)
               for name in ("W", "R")}
    reference = _with_weights(model, weights)
    feeds = _lstm_feeds(model)
    for got, want in zip(_run(lowered, feeds), _run(reference, feeds), strict=True):
        np.testing.assert_allclose(got, want, **TOLERANCE)
    from_onnx(lowered)


def test_ddddocr_dynamic_model_imports_and_keeps_its_argmax():
    """ddddocr 1.6.1's common_old.onnx (quantize_dynamic: ConvInteger, DynamicQuantizeLSTM,
    MatMulInteger) at [1, 1, 64, 160], shapes fixed by ORT's basic optimizer: the lowered
    float model, built by TVM, picks the same class per step as ORT on the shipped file."""
    try:
        path = models.fetch_model("captcha_ocr")
    except RuntimeError as err:  # no network, or PyPI unreachable
        pytest.skip(f"captcha_ocr cannot be fetched here: {str(err).splitlines()[0]}")
    lowered = lower_for_tvm(make_static(onnx.load(path), "input1", (1, 1, 64, 160)))
    vm = relax.VirtualMachine(tvm.compile(from_onnx(lowered),
                                          target=tvm.target.Target({"kind": "llvm"})), tvm.cpu())
    shipped = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for _ in range(3):
        x = rng.random((1, 1, 64, 160), dtype=np.float32)
        want = shipped.run(None, {"input1": x})[0]
        got = vm["main"](tvm.runtime.tensor(x)).numpy()
        assert (got.argmax(-1) == want.argmax(-1)).all()
