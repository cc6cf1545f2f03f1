"""Rewrite the ONNX ops TVM 0.27's importer lacks into standard ops it imports.

Run on a model whose shapes are static (after ONNX Runtime's basic optimizer fixed the input
shape), before `tvm.relax.frontend.onnx.from_onnx`:

- A dynamically quantized Conv / MatMul, as `onnxruntime.quantization.quantize_dynamic` writes it,
  `DynamicQuantizeLinear(x) -> ConvInteger / MatMulInteger(x_q, w_q) [+ int32 bias] -> Cast ->
  Mul(x_scale * w_scale)`, becomes the float `Conv(x, w [, b])` / `MatMul(x, w)` with the
  dequantized weight `w = (w_q - w_zp) * w_scale` (per tensor or per output channel). The int32
  bias of older exports, `floor(b / (x_scale * w_scale))`, goes back to its float `b`.
- `com.microsoft` `DynamicQuantizeLSTM` becomes an `LSTM` with dequantized `W` and `R`.
- `LSTM` is unrolled over its static sequence length into MatMul, Add, Mul, Sigmoid, Tanh,
  Split, Reshape and Concat.

The result is the float model the dynamic one was made from, up to weight rounding; tvmq then
quantizes it statically. Patterns that do not match are left alone: TVM's importer then names the
op it cannot take.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .errors import CompileError

LSTM_DEFAULT_ACTIVATIONS = ("Sigmoid", "Tanh", "Tanh")
LSTM_SUPPORTED = (
    "default activations (Sigmoid, Tanh, Tanh), no clip, input_forget=0, layout=0, "
    "no peepholes (P), sequence_lens absent or all equal to the sequence length"
)


def lower_for_tvm(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `proto` with dynamically quantized layers made float and LSTMs unrolled.

    Parameters
    ----------
    proto : onnx.ModelProto
        A model whose tensor shapes are static (every LSTM input `X` must have a known shape).

    Returns
    -------
    onnx.ModelProto
        The same function written in ops TVM's ONNX importer takes; nodes that become unused
        and their initializers are dropped.

    Raises
    ------
    CompileError
        An LSTM uses a feature the unrolling does not support (the message names the node and
        the attribute), or its input shape is not static.

    Examples
    --------
    >>> proto = lower_for_tvm(onnx.load("common.onnx"))      # doctest: +SKIP
    >>> mod = tvm.relax.frontend.onnx.from_onnx(proto)       # doctest: +SKIP
    """
    proto = onnx.ModelProto.FromString(proto.SerializeToString())
    shapes = _static_shapes(proto)
    graph = _Graph(proto.graph)
    for index, node in enumerate(proto.graph.node):
        if node.domain in ("", "ai.onnx") and node.op_type in ("ConvInteger", "MatMulInteger"):
            _dequantize_integer_layer(graph, index)
        elif node.domain == "com.microsoft" and node.op_type == "DynamicQuantizeLSTM":
            _dequantize_lstm(graph, index)
    graph.commit()
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 1)
    for index, node in enumerate(proto.graph.node):
        if node.domain in ("", "ai.onnx") and node.op_type == "LSTM":
            graph.replace(index, _unroll_lstm(graph, node, shapes, opset))
    graph.commit()
    graph.drop_unused()
    return proto


def _static_shapes(proto: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    """Every tensor whose shape ONNX shape inference knows in full, by name."""
    inferred = onnx.shape_inference.infer_shapes(proto)
    graph = inferred.graph
    shapes = {}
    for info in (*graph.input, *graph.value_info, *graph.output):
        dims = info.type.tensor_type.shape.dim
        if info.type.tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in dims):
            shapes[info.name] = tuple(d.dim_value for d in dims)
    return shapes


class _Graph:
    """A GraphProto with name lookups, new names, initializers and batched node replacement.

    `replace` and `remove` are recorded against node positions and applied by `commit`, so the
    lookups stay valid while a pass walks the nodes."""

    def __init__(self, graph: onnx.GraphProto):
        self.graph = graph
        self._names = {name for node in graph.node for name in (*node.input, *node.output)}
        self._names.update(t.name for t in graph.initializer)
        self._names.update(i.name for i in (*graph.input, *graph.output))
        self._consts: dict[str, np.ndarray] = {}
        self._replacements: dict[int, list[onnx.NodeProto]] = {}
        self._index()

    def _index(self) -> None:
        self.producer = {out: node for node in self.graph.node for out in node.output if out}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in self.graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.outputs = {o.name for o in self.graph.output}
        self._initializers = {t.name: t for t in self.graph.initializer}

    def constant(self, name: str) -> np.ndarray | None:
        """The value of an initializer or `Constant` output `name`, else None."""
        if name in self._consts:
            return self._consts[name]
        if name in self._initializers:
            value = numpy_helper.to_array(self._initializers[name])
        elif name in self.producer and self.producer[name].op_type == "Constant":
            attrs = {a.name: a for a in self.producer[name].attribute}
            if "value" not in attrs:
                return None
            value = numpy_helper.to_array(attrs["value"].t)
        else:
            return None
        self._consts[name] = value
        return value

    def only_consumer(self, name: str) -> onnx.NodeProto | None:
        """The single node reading `name`, if no other node or graph output does."""
        readers = self.consumers.get(name, [])
        return readers[0] if len(readers) == 1 and name not in self.outputs else None

    def fresh(self, base: str) -> str:
        """A tensor name not yet used in the graph, `base` if free."""
        name, k = base, 1
        while name in self._names:
            name, k = f"{base}_{k}", k + 1
        self._names.add(name)
        return name

    def add_initializer(self, base: str, value: np.ndarray) -> str:
        """Add `value` as a new initializer; returns its name."""
        name = self.fresh(base)
        self.graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def replace(self, index: int, nodes: list[onnx.NodeProto]) -> None:
        """At the next `commit`, put `nodes` where node `index` is."""
        self._replacements[index] = nodes

    def remove(self, node: onnx.NodeProto) -> None:
        """At the next `commit`, drop `node`."""
        (index,) = [i for i, n in enumerate(self.graph.node) if n is node]
        self._replacements[index] = []

    def commit(self) -> None:
        nodes = []
        for index, node in enumerate(self.graph.node):
            nodes.extend(self._replacements.get(index, [node]))
        self._replacements.clear()
        del self.graph.node[:]
        self.graph.node.extend(nodes)
        self._index()

    def drop_unused(self) -> None:
        """Drop nodes none of whose outputs is read, then unread initializers and value_info."""
        needed = set(self.outputs)
        kept = []
        for node in reversed(self.graph.node):
            if any(out in needed for out in node.output) or _has_subgraph(node):
                kept.append(node)
                needed.update(node.input)
                needed.update(_subgraph_names(node))
        del self.graph.node[:]
        self.graph.node.extend(kept[::-1])
        initializers = [t for t in self.graph.initializer if t.name in needed]
        del self.graph.initializer[:]
        self.graph.initializer.extend(initializers)
        produced = {out for node in self.graph.node for out in node.output}
        infos = [v for v in self.graph.value_info if v.name in produced]
        del self.graph.value_info[:]
        self.graph.value_info.extend(infos)
        self._index()


def _has_subgraph(node: onnx.NodeProto) -> bool:
    graph_types = (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
    return any(a.type in graph_types for a in node.attribute)


def _subgraph_names(node: onnx.NodeProto) -> set[str]:
    """Names read by the nodes of `node`'s subgraphs (`If` / `Loop` / `Scan` bodies)."""
    names = set()
    for attr in node.attribute:
        for sub in (attr.g,) if attr.type == onnx.AttributeProto.GRAPH else attr.graphs:
            for inner in sub.node:
                names.update(inner.input)
                names.update(_subgraph_names(inner))
    return names


def _input(node: onnx.NodeProto, k: int) -> str:
    """Input `k` of `node`, '' when absent (ONNX optional inputs)."""
    return node.input[k] if k < len(node.input) else ""


# --- dynamically quantized Conv / MatMul ----------------------------------------------------


def _dequantize_integer_layer(graph: _Graph, index: int) -> None:
    """ConvInteger / MatMulInteger at `index` and its dequantizing tail -> float Conv / MatMul.

    Matched, with x_q, x_scale, x_zp the three outputs of one `DynamicQuantizeLinear(x)` and
    w_q, w_zp, w_scale initializers:
        acc = ConvInteger(x_q, w_q, x_zp, w_zp)      (or MatMulInteger)
        [acc = Add(acc, Reshape(Cast(Floor(Div(b, s)))))    int32 bias, b an initializer]
        y = Mul(Cast(acc, float), s)                 s = Mul(x_scale, w_scale)
    becomes y = Conv(x, (w_q - w_zp) * w_scale [, b]) (or MatMul). Anything else is left alone."""
    node = graph.graph.node[index]
    quantizer = graph.producer.get(node.input[0])
    if quantizer is None or quantizer.op_type != "DynamicQuantizeLinear":
        return
    x, (x_q, x_scale, x_zp) = quantizer.input[0], quantizer.output
    w_q = graph.constant(node.input[1])
    w_zp_name = _input(node, 3)
    w_zp = graph.constant(w_zp_name) if w_zp_name else np.zeros((), np.int8)
    if node.input[0] != x_q or _input(node, 2) != x_zp or w_q is None or w_zp is None:
        return
    tail = _dequantizing_tail(graph, node.output[0], x_scale)
    if tail is None:
        return
    w_scale, bias_add, bias, cast, mul = tail
    is_conv = node.op_type == "ConvInteger"
    axis = 0 if is_conv else w_q.ndim - 1  # output channels: OIHW rows, [K, N] columns
    weight = _dequantize(w_q, w_zp, w_scale, axis)
    if weight is None or (bias is not None and (not is_conv or bias.shape != (w_q.shape[0],))):
        return
    stem = mul.output[0]
    inputs = [x, graph.add_initializer(f"{stem}_weight", weight)]
    if bias is not None:
        inputs.append(graph.add_initializer(f"{stem}_bias", bias.astype(np.float32)))
    name = node.name or stem
    if is_conv:
        new = helper.make_node("Conv", inputs, [stem], name=name)
        new.attribute.extend(node.attribute)
    else:
        new = helper.make_node("MatMul", inputs, [stem], name=name)
    graph.replace(index, [new])
    for done in (bias_add, cast, mul):
        if done is not None:
            graph.remove(done)


def _dequantizing_tail(graph: _Graph, acc: str, x_scale: str):
    """The `[Add(int bias)] -> Cast(float) -> Mul(x_scale * w_scale)` after accumulator `acc`.

    Returns (w_scale, bias Add node or None, float bias or None, Cast node, Mul node), or None
    when the nodes differ from that pattern."""
    bias_add, bias = None, None
    nxt = graph.only_consumer(acc)
    if nxt is not None and nxt.op_type == "Add":
        bias_add = nxt
        int_bias = nxt.input[1] if nxt.input[0] == acc else nxt.input[0]
        bias, bias_scale = _float_bias(graph, int_bias)
        if bias is None:
            return None
        nxt = graph.only_consumer(bias_add.output[0])
    cast = nxt
    if cast is None or cast.op_type != "Cast" or _attr(cast, "to") != onnx.TensorProto.FLOAT:
        return None
    mul = graph.only_consumer(cast.output[0])
    if mul is None or mul.op_type != "Mul":
        return None
    scale = mul.input[1] if mul.input[0] == cast.output[0] else mul.input[0]
    if bias_add is not None and scale != bias_scale:
        return None
    scale_mul = graph.producer.get(scale)
    if scale_mul is None or scale_mul.op_type != "Mul" or x_scale not in scale_mul.input:
        return None
    w_scale = graph.constant(scale_mul.input[1] if scale_mul.input[0] == x_scale
                             else scale_mul.input[0])
    if w_scale is None:
        return None
    return w_scale, bias_add, bias, cast, mul


def _float_bias(graph: _Graph, int_bias: str):
    """(b, s) for `int_bias = Reshape(Cast(Floor(Div(b, s))), shape)` with b an initializer."""
    chain = []
    name = int_bias
    for op in ("Reshape", "Cast", "Floor", "Div"):
        node = graph.producer.get(name)
        if node is None or node.op_type != op:
            return None, None
        chain.append(node)
        name = node.input[0]
    div = chain[-1]
    return graph.constant(div.input[0]), div.input[1]


def _dequantize(w_q: np.ndarray, w_zp: np.ndarray, w_scale: np.ndarray, axis: int):
    """(w_q - w_zp) * w_scale in float32, scale and zero point per tensor or along `axis`."""
    channels = w_q.shape[axis]
    shape = [1] * w_q.ndim
    shape[axis] = -1
    params = []
    for p in (w_zp, w_scale):
        if p.size == 1:
            params.append(p.reshape(()))
        elif p.size == channels:
            params.append(p.reshape(shape))
        else:
            return None
    zp, scale = params
    return ((w_q.astype(np.float32) - zp.astype(np.float32)) * scale.astype(np.float32)).astype(
        np.float32
    )


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


# --- DynamicQuantizeLSTM -> LSTM ---------------------------------------------------------------


def _dequantize_lstm(graph: _Graph, index: int) -> None:
    """com.microsoft DynamicQuantizeLSTM -> LSTM with float W [dirs, 4H, I] and R [dirs, 4H, H].

    Its inputs are X, W_q [dirs, I, 4H], R_q [dirs, H, 4H], B, sequence_lens, initial_h,
    initial_c, P, W_scale, W_zero_point, R_scale, R_zero_point; scales and zero points are
    [dirs] (per direction) or [dirs, 4H] (per gate row). W = transpose((W_q - W_zp) * W_scale)."""
    node = graph.graph.node[index]
    weights = []
    for q, scale, zp in ((1, 8, 9), (2, 10, 11)):
        values = [graph.constant(_input(node, k)) if _input(node, k) else None
                  for k in (q, scale, zp)]
        if any(v is None for v in values):
            return
        w_q, w_scale, w_zp = values
        dirs = w_q.shape[0]
        w_scale = w_scale.reshape(dirs, 1, -1)
        w_zp = w_zp.reshape(dirs, 1, -1)
        w = (w_q.astype(np.float32) - w_zp.astype(np.float32)) * w_scale.astype(np.float32)
        weights.append(np.ascontiguousarray(w.transpose(0, 2, 1)))
    stem = node.name or node.output[0]
    w_name = graph.add_initializer(f"{stem}_W", weights[0])
    r_name = graph.add_initializer(f"{stem}_R", weights[1])
    inputs = [node.input[0], w_name, r_name, *(_input(node, k) for k in range(3, 8))]
    while inputs and not inputs[-1]:
        inputs.pop()
    lstm = helper.make_node("LSTM", inputs, list(node.output), name=node.name)
    lstm.attribute.extend(node.attribute)
    graph.replace(index, [lstm])


# --- LSTM unrolling ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _LstmSpec:
    """What the unrolling needs of one LSTM node, checked against what it supports."""

    name: str
    directions: tuple[str, ...]  # ("forward",), ("reverse",) or both
    hidden: int
    steps: int
    batch: int


def _lstm_spec(graph: _Graph, node: onnx.NodeProto, shapes) -> _LstmSpec:
    """Validate `node`'s attributes and optional inputs; raises CompileError for the rest."""
    name = node.name or node.output[0]

    def refuse(what: str) -> CompileError:
        return CompileError(f"LSTM node '{name}': {what} is not supported; supported: "
                            f"{LSTM_SUPPORTED}")

    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    direction = attrs.pop("direction", b"forward").decode()
    if direction not in ("forward", "reverse", "bidirectional"):
        raise refuse(f"direction={direction!r}")
    directions = ("forward", "reverse") if direction == "bidirectional" else (direction,)
    activations = [a.decode() for a in attrs.pop("activations", [])]
    if activations and activations != list(LSTM_DEFAULT_ACTIVATIONS) * len(directions):
        raise refuse(f"activations={activations}")
    for key, default in (("input_forget", 0), ("layout", 0)):
        if attrs.get(key, default) != default:
            raise refuse(f"attribute {key}={attrs[key]}")
        attrs.pop(key, None)
    hidden = attrs.pop("hidden_size", None)
    if attrs:
        key = next(iter(attrs))
        raise refuse(f"attribute {key}={attrs[key]}")
    x = node.input[0]
    if x not in shapes or len(shapes[x]) != 3:
        raise CompileError(f"LSTM node '{name}': input X '{x}' has no static 3-D shape; fix the "
                           "model's input shape first (tvmq.onnx_static or ORT's basic optimizer)")
    steps, batch, _ = shapes[x]
    peepholes = _input(node, 7)
    if peepholes:
        value = graph.constant(peepholes)
        if value is None or value.any():
            raise refuse("input P (peepholes)")
    lengths = _input(node, 4)
    if lengths:
        value = graph.constant(lengths)
        if value is None or (value != steps).any():
            raise refuse(f"input sequence_lens={value if value is not None else lengths!r}")
    for k, what in ((1, "W"), (2, "R")):
        if graph.constant(node.input[k]) is None:
            raise CompileError(f"LSTM node '{name}': input {what} '{node.input[k]}' is not an "
                               "initializer; the unrolling needs constant weights")
    r = graph.constant(node.input[2])
    hidden = hidden if hidden is not None else r.shape[-1]
    return _LstmSpec(name, directions, hidden, steps, batch)


class _Emitter:
    """Appends nodes named after their output, `<prefix>/<op>`; each call returns that name."""

    def __init__(self, graph: _Graph, prefix: str, opset: int):
        self.graph, self.prefix, self.opset, self.nodes = graph, prefix, opset, []

    def __call__(self, op: str, *inputs: str, out: str | None = None, **attrs) -> str:
        out = out or self.graph.fresh(f"{self.prefix}/{op}")
        self.nodes.append(helper.make_node(op, list(inputs), [out], name=out, **attrs))
        return out

    def split(self, tensor: str, parts: int, axis: int) -> list[str]:
        """`tensor` cut into `parts` equal pieces along `axis` (the axis is kept)."""
        if parts == 1:
            return [tensor]
        outs = [self.graph.fresh(f"{self.prefix}/Split") for _ in range(parts)]
        attrs = {"num_outputs": parts} if self.opset >= 18 else {}  # required from opset 18
        self.nodes.append(helper.make_node("Split", [tensor], outs, name=outs[0], axis=axis,
                                           **attrs))
        return outs

    def const(self, value: np.ndarray, base: str) -> str:
        return self.graph.add_initializer(f"{self.prefix}/{base}", value)


def _unroll_lstm(graph: _Graph, node: onnx.NodeProto, shapes, opset: int) -> list[onnx.NodeProto]:
    """Nodes computing `node`'s used outputs Y [T, dirs, B, H], Y_h and Y_c [dirs, B, H].

    Per direction d, with gates in ONNX order i, o, f, c:
        XW = X · W[d]ᵀ + Wb[d] + Rb[d]                     one MatMul over all T steps
        g = XW[t] + H · R[d]ᵀ,   i, o, f = sigmoid(g_i, g_o, g_f),   c̃ = tanh(g_c)
        C = f ⊙ C + i ⊙ c̃,   H = o ⊙ tanh(C)
    for t = 0..T-1 (forward) or T-1..0 (reverse); Y[t, d] is H after step t. States are kept
    [1, B, H]; an absent or all-zero initial state drops its terms from the first step."""
    spec = _lstm_spec(graph, node, shapes)
    w, r = graph.constant(node.input[1]), graph.constant(node.input[2])
    bias = graph.constant(_input(node, 3)) if _input(node, 3) else None
    if _input(node, 3) and bias is None:
        raise CompileError(f"LSTM node '{spec.name}': input B '{node.input[3]}' is not an "
                           "initializer; the unrolling needs constant biases")
    emit = _Emitter(graph, spec.name, opset)
    dirs, steps, B, H = len(spec.directions), spec.steps, spec.batch, spec.hidden
    y_out, h_out, c_out = (
        out if out and (graph.consumers.get(out) or out in graph.outputs) else ""
        for out in (*node.output, "", "", "")[:3]
    )
    initial_h = _initial_states(graph, emit, _input(node, 5), dirs)
    initial_c = _initial_states(graph, emit, _input(node, 6), dirs)
    ys, hs, cs = [], [], []
    for d, direction in enumerate(spec.directions):
        emit.prefix = f"{spec.name}/{direction}"
        xw = emit("MatMul", node.input[0], emit.const(w[d].T.copy(), "Wt"))
        if bias is not None and bias[d].any():
            xw = emit("Add", xw, emit.const(bias[d, : 4 * H] + bias[d, 4 * H :], "bias"))
        xw_steps = emit.split(xw, steps, axis=0)  # T x [1, B, 4H]
        recurrent = emit.const(r[d].T.copy(), "Rt")
        h, c, y = initial_h[d], initial_c[d], [""] * steps
        for t in range(steps) if direction == "forward" else reversed(range(steps)):
            gates = xw_steps[t]
            if h is not None:
                gates = emit("Add", gates, emit("MatMul", h, recurrent))
            i, o, f, g = emit.split(gates, 4, axis=2)
            i, o, f, g = emit("Sigmoid", i), emit("Sigmoid", o), emit("Sigmoid", f), emit("Tanh", g)
            c = emit("Mul", i, g) if c is None else emit("Add", emit("Mul", f, c),
                                                         emit("Mul", i, g))
            h = y[t] = emit("Mul", o, emit("Tanh", c))
        if y_out:
            y_shape = emit.const(np.array([steps, 1, B, H], np.int64), "y_shape")
            ys.append(emit("Reshape", emit("Concat", *y, axis=0) if steps > 1 else y[0], y_shape))
        hs.append(h)
        cs.append(c)
    emit.prefix = spec.name
    for out, parts, axis in ((y_out, ys, 1), (h_out, hs, 0), (c_out, cs, 0)):
        if out:
            emit("Concat", *parts, axis=axis, out=out)
    return emit.nodes


def _initial_states(graph: _Graph, emit: _Emitter, name: str, dirs: int) -> list[str | None]:
    """Each direction's [1, B, H] slice of initial_h / initial_c; None if absent or all zero."""
    value = graph.constant(name) if name else None
    if not name or (value is not None and not value.any()):
        return [None] * dirs
    if value is None:
        return emit.split(name, dirs, axis=0)
    return [emit.const(value[d : d + 1], "initial") for d in range(dirs)]
