"""Write a trained float `main(x, *params)` as ONNX (opset 17), for `tvmq.compile`.

Covers the ops tvmq's normalized float graphs hold (conv2d, matmul, pooling, mean, reshape,
permute_dims, concat, relu, clip, elementwise add/subtract/multiply/divide); any other op raises
ValueError naming it. The batch dimension becomes the symbolic ``N`` and reshapes copy it (ONNX
``0``), so the file runs at any batch size.
"""

from __future__ import annotations

import numpy as np
import onnx
import tvm
from onnx import TensorProto, helper, numpy_helper
from tvm import relax

from ..ir import op_name, shape_of

OPSET = 17
_ELEMWISE = {"relax.add": "Add", "relax.subtract": "Sub", "relax.multiply": "Mul",
             "relax.divide": "Div", "relax.nn.relu": "Relu"}


def to_onnx(mod: tvm.IRModule, params: dict[str, np.ndarray], input_name: str = "input",
            output_name: str = "logits") -> onnx.ModelProto:
    """The ONNX model of `mod["main"]` with `params` as initializers."""
    func = mod["main"]
    x, *weights = func.params
    missing = [w.name for w in weights if w.name not in params]
    if missing:
        raise ValueError(f"no values for parameters {missing}")
    writer = _Writer(batch=shape_of(x)[0])
    writer.name(x, input_name)
    for w in weights:
        writer.name(w, w.name)
        writer.initializers.append(numpy_helper.from_array(
            np.asarray(params[w.name], np.float32), w.name))
    for block in func.body.blocks:
        for binding in block.bindings:
            writer.bind(binding.var, binding.value)
    result = func.body.body
    writer.nodes.append(helper.make_node("Identity", [writer.ref(result)], [output_name]))
    in_shape = ["N", *shape_of(x)[1:]]
    out_shape = ["N", *shape_of(result)[1:]]
    graph = helper.make_graph(
        writer.nodes, "tvmq_trained",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, out_shape)],
        writer.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="tvmq.train")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


class _Writer:
    def __init__(self, batch: int):
        self.batch, self.nodes, self.initializers = batch, [], []
        self.names: list[tuple[relax.Var, str]] = []

    def name(self, var: relax.Var, name: str) -> str:
        """Give `var` an ONNX name, made unique with a suffix if taken."""
        taken = {n for _, n in self.names}
        unique, i = name, 1
        while unique in taken:
            unique, i = f"{name}_{i}", i + 1
        self.names.append((var, unique))
        return unique

    def ref(self, expr) -> str:
        """The ONNX name of a Relax variable or constant."""
        if isinstance(expr, tvm.ir.GenericConst):
            return self.const(expr.value.numpy())
        for var, name in self.names:
            if var.same_as(expr):
                return name
        raise ValueError(f"export_onnx: unsupported operand {type(expr).__name__}")

    def const(self, value: np.ndarray) -> str:
        name = f"const{len(self.initializers)}"
        self.initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def bind(self, var, value) -> None:
        out = self.name(var, var.name)
        if isinstance(value, relax.Var):
            self.nodes.append(helper.make_node("Identity", [self.ref(value)], [out]))
            return
        op = op_name(value)
        if op in _ELEMWISE:
            self.nodes.append(helper.make_node(_ELEMWISE[op], [self.ref(a) for a in value.args],
                                               [out]))
            return
        emit = _EMITTERS.get(op)
        if emit is None:
            supported = sorted([*_ELEMWISE, *_EMITTERS])
            raise ValueError(f"export_onnx does not support {op or type(value).__name__} "
                             f"(binding {out!r}); supported ops: {supported}")
        emit(self, value, out)


def _conv2d(w: _Writer, call, out):
    a = call.attrs
    _check_nchw(call, a.data_layout, a.kernel_layout)
    w.nodes.append(helper.make_node(
        "Conv", [w.ref(call.args[0]), w.ref(call.args[1])], [out],
        strides=[int(s) for s in a.strides], pads=[int(p) for p in a.padding],
        dilations=[int(d) for d in a.dilation], group=int(a.groups)))


def _pool(kind):
    def emit(w: _Writer, call, out):
        a = call.attrs
        _check_nchw(call, a.layout)
        extra = {"count_include_pad": int(a.count_include_pad)} if kind == "AveragePool" else {}
        if [int(d) for d in a.dilation] != [1, 1]:
            raise ValueError(f"export_onnx: dilated pooling is not supported ({out!r})")
        w.nodes.append(helper.make_node(
            kind, [w.ref(call.args[0])], [out], kernel_shape=[int(k) for k in a.pool_size],
            strides=[int(s) for s in a.strides], pads=[int(p) for p in a.padding],
            ceil_mode=int(a.ceil_mode), **extra))
    return emit


def _mean(w: _Writer, call, out):
    a = call.attrs
    axes = [int(i) for i in a.axis]
    w.nodes.append(helper.make_node("ReduceMean", [w.ref(call.args[0])], [out], axes=axes,
                                    keepdims=int(a.keepdims)))


def _reshape(w: _Writer, call, out):
    shape = [int(d) for d in call.args[1].values]
    if shape and shape[0] == w.batch:
        shape[0] = 0  # copy the batch dimension
    w.nodes.append(helper.make_node("Reshape", [w.ref(call.args[0]),
                                                w.const(np.array(shape, np.int64))], [out]))


def _matmul(w: _Writer, call, out):
    w.nodes.append(helper.make_node("MatMul", [w.ref(a) for a in call.args], [out]))


def _permute_dims(w: _Writer, call, out):
    axes = call.attrs.axes
    perm = ([int(i) for i in axes] if axes is not None
            else list(reversed(range(len(shape_of(call.args[0]))))))
    w.nodes.append(helper.make_node("Transpose", [w.ref(call.args[0])], [out], perm=perm))


def _concat(w: _Writer, call, out):
    w.nodes.append(helper.make_node("Concat", [w.ref(f) for f in call.args[0].fields], [out],
                                    axis=int(call.attrs.axis)))


def _clip(w: _Writer, call, out):
    dtype = np.float32
    lo, hi = (w.const(np.array(float(b.value), dtype)) for b in call.args[1:])
    w.nodes.append(helper.make_node("Clip", [w.ref(call.args[0]), lo, hi], [out]))


def _check_nchw(call, *layouts):
    if any(str(layout) not in ("NCHW", "OIHW") for layout in layouts):
        raise ValueError(f"export_onnx supports NCHW / OIHW layouts only, got {layouts} in "
                         f"{op_name(call)}")


_EMITTERS = {
    "relax.nn.conv2d": _conv2d,
    "relax.nn.max_pool2d": _pool("MaxPool"),
    "relax.nn.avg_pool2d": _pool("AveragePool"),
    "relax.mean": _mean,
    "relax.reshape": _reshape,
    "relax.matmul": _matmul,
    "relax.permute_dims": _permute_dims,
    "relax.concat": _concat,
    "relax.clip": _clip,
}
