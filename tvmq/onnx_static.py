"""Fix an ONNX model's input shape and fold the shape arithmetic that depends on it.

Exporters (Paddle2ONNX, torch.onnx) often compute reshape targets at run time:
`Shape -> Cast -> Slice -> Concat -> Reshape`. TVM's importer needs those targets static. Once the
input shape is fixed, ONNX shape inference knows every tensor's shape, so each `Shape` of a static
tensor, and every node computed only from such shapes and constants, is evaluated with
`onnx.reference` and replaced by a `Constant`; nodes left unused are dropped. Other nodes, the
weights and the opset are unchanged, so the model computes the same function at that shape.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator

from .errors import CompileError

MAX_ROUNDS = 16


def make_static(proto: onnx.ModelProto, input_name: str, shape: tuple[int, ...]) -> onnx.ModelProto:
    """A copy of `proto` with input `input_name` of static `shape` and its shape math folded."""
    proto = onnx.ModelProto.FromString(proto.SerializeToString())
    graph = proto.graph
    (inp,) = [i for i in graph.input if i.name == input_name]
    for dim, size in zip(inp.type.tensor_type.shape.dim, shape):
        dim.Clear()
        dim.dim_value = size
    # Output shapes are inferred from the input: a declared -1 (Paddle2ONNX's "any batch") or a
    # wrong declared size would only conflict with inference.
    for out in graph.output:
        for dim in out.type.tensor_type.shape.dim:
            dim.Clear()
    # A folded reshape target makes the next tensor's shape known, which may unlock another
    # Shape node downstream: repeat inference + folding until nothing changes.
    for _ in range(MAX_ROUNDS):
        try:
            proto = onnx.shape_inference.infer_shapes(proto, strict_mode=True)
        except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError) as err:
            msg = f"ONNX shape inference failed at input shape {shape}: {err}"
            raise CompileError(msg) from err
        if _fold_shape_arithmetic(proto) == 0:
            break
    onnx.checker.check_model(proto)
    return proto


def _fold_shape_arithmetic(proto: onnx.ModelProto) -> int:
    """Replace, in place, `Shape` of static tensors and all computed from it by constants.

    Returns the number of nodes replaced."""
    graph = proto.graph
    opsets = {o.domain: o.version for o in proto.opset_import}
    static = {}
    for info in (*graph.input, *graph.value_info, *graph.output):
        if not info.type.tensor_type.HasField("shape"):
            continue
        dims = info.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") and d.dim_value >= 0 for d in dims):
            static[info.name] = tuple(d.dim_value for d in dims)
    known = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    from_shape: set[str] = set()
    nodes, constant_names = [], set()
    for node in graph.node:
        inputs = [name for name in node.input if name]
        if node.op_type == "Shape" and node.domain == "" and inputs[0] in static:
            values = [_shape_value(node, static[inputs[0]])]
        elif node.op_type == "Constant" and node.attribute[0].name == "value":
            values = [numpy_helper.to_array(node.attribute[0].t)]  # fast path for weights
        elif all(name in known for name in inputs) and not _has_subgraph(node):
            feeds = {name: known[name] for name in inputs}
            values = ReferenceEvaluator(node, opsets=opsets).run(None, feeds)
        else:
            nodes.append(node)
            continue
        known.update(zip(node.output, values))
        if node.op_type != "Shape" and not any(name in from_shape for name in inputs):
            nodes.append(node)  # plain constant arithmetic (weights): left to TVM's FoldConstant
            constant_names.update(node.output)
            continue
        from_shape.update(node.output)
        for name, value in zip(node.output, values):
            tensor = numpy_helper.from_array(np.asarray(value), name)
            nodes.append(onnx.helper.make_node("Constant", [], [name], value=tensor,
                                               name=f"{node.name or name}_folded"))
            constant_names.add(name)
    del graph.node[:]
    graph.node.extend(_without_unused(nodes, constant_names, {o.name for o in graph.output}))
    return len(from_shape)


def _has_subgraph(node: onnx.NodeProto) -> bool:
    graph_types = (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
    return any(a.type in graph_types for a in node.attribute)


def _shape_value(node: onnx.NodeProto, shape: tuple[int, ...]) -> np.ndarray:
    """Output of `Shape` (with its opset-15 `start` / `end` attributes) for `shape`."""
    attrs = {a.name: a.i for a in node.attribute}
    return np.array(shape[attrs.get("start", 0) : attrs.get("end", len(shape))], dtype=np.int64)
def _without_unused(
    nodes: list[onnx.NodeProto], removable: set[str], outputs: set[str]
) -> list[onnx.NodeProto]:
    """`nodes` minus those whose outputs are all `removable` and read by no node or output."""
    kept, needed = [], set(outputs)
    for node in reversed(nodes):
        unused = not any(name in needed for name in node.output)
        if not (unused and all(name in removable for name in node.output)):
            kept.append(node)
            needed.update(node.input)
            needed.update(_subgraph_names(node))
    return kept[::-1]


def _subgraph_names(node: onnx.NodeProto) -> set[str]:
    """Names read by the nodes of `node`'s subgraphs (`If` / `Loop` / `Scan` bodies)."""
    names = set()
    for attr in node.attribute:
        for sub in (attr.g,) if attr.type == onnx.AttributeProto.GRAPH else attr.graphs:
            for inner in sub.node:
                names.update(inner.input)
                names.update(_subgraph_names(inner))
    return names
