"""The NumPy oracle on float islands (hard-swish, hard-sigmoid, sigmoid, softmax, TOPI clip
PrimFuncs): host == oracle bit for bit, on every binding, for every requant setting."""

import numpy as np
import pytest
from onnx import helper
from tvm import relax, te, topi
from tvmq.targets.host import build

import tvmq
from tests.conftest import assert_taps_equal_oracle, make_onnx
from tvmq.compiler import TAPS_FUNCTION
from tvmq.oracle import Oracle

MODES = [dict(requant="mult_shift", rounding="double"),
         dict(requant="mult_shift", rounding="single"),
         dict(requant="mult_shift", rounding="tonearest"),
         dict(requant="fp32")]
MODE_IDS = [m.get("rounding", m["requant"]) for m in MODES]
# The float islands do not depend on the integer rounding (tests/test_compiler.py covers all four
# modes on the integer graph): one mult/shift mode and fp32 keep the suite fast.
ISLAND_MODES, ISLAND_IDS = [MODES[0], MODES[3]], [MODE_IDS[0], MODE_IDS[3]]


_COMPILED: dict = {}


def _compile(model, calib, mode):
    """tvmq.compile, cached per (model, mode) for the tests of this module."""
    key = (id(model), tuple(sorted(mode.items())))
    if key not in _COMPILED:
        config = tvmq.QuantConfig(sqnr_samples=0, **mode)
        _COMPILED[key] = tvmq.compile(model, config=config, calib=calib, progress=False)
    return _COMPILED[key]


def _assert_every_binding_equal(mod, xs):
    """Every binding of `main`, tapped on the host, equals the oracle's value."""
    names = [b.var.name for blk in mod["main"].body.blocks for b in blk.bindings]
    assert_taps_equal_oracle(mod, names, xs)


def _hard_swish_onnx(x, out, tag):
    """PP-OCR's hard-swish, x * clip(x + 3, 0, 6) / 6, with Clip bounds as inputs (opset 11+)."""
    return [helper.make_node("Add", [x, "three"], [f"{tag}_a"]),
            helper.make_node("Clip", [f"{tag}_a", "zero", "six"], [f"{tag}_c"]),
            helper.make_node("Mul", [x, f"{tag}_c"], [f"{tag}_m"]),
            helper.make_node("Div", [f"{tag}_m", "six"], [out])]


@pytest.fixture(scope="module")
def mobilenet_v3_block():
    """Conv, two PP-OCR hard-swishes of different shapes (the importer names the second Clip's
    PrimFuncs maximum1/minimum1), an SE block with HardSigmoid, an ONNX HardSwish, conv."""
    rng = np.random.default_rng(0)
    w = {"w0": rng.normal(0, 0.5, (8, 3, 3, 3)), "b0": rng.normal(0, 0.5, 8),
         "w1": rng.normal(0, 0.4, (12, 8, 1, 1)), "b1": rng.normal(0, 0.2, 12),
         "w2": rng.normal(0, 0.5, (2, 12, 1, 1)), "b2": rng.normal(0, 0.1, 2),
         "w3": rng.normal(0, 0.5, (12, 2, 1, 1)), "b3": rng.normal(0, 0.1, 12),
         "w4": rng.normal(0, 0.4, (4, 12, 3, 3)), "b4": rng.normal(0, 0.1, 4),
         "three": np.float32(3), "zero": np.float32(0), "six": np.float32(6)}
    nodes = [helper.make_node("Conv", ["input", "w0", "b0"], ["c0"], pads=[1, 1, 1, 1]),
             *_hard_swish_onnx("c0", "h0", "hs0"),
             helper.make_node("Conv", ["h0", "w1", "b1"], ["c1"]),
             *_hard_swish_onnx("c1", "h1", "hs1"),
             helper.make_node("GlobalAveragePool", ["h1"], ["p"]),
             helper.make_node("Conv", ["p", "w2", "b2"], ["s0"]),
             helper.make_node("Relu", ["s0"], ["s1"]),
             helper.make_node("Conv", ["s1", "w3", "b3"], ["s2"]),
             helper.make_node("HardSigmoid", ["s2"], ["s3"], alpha=0.2, beta=0.5),
             helper.make_node("Mul", ["h1", "s3"], ["se"]),
             helper.make_node("HardSwish", ["se"], ["h2"]),
             helper.make_node("Conv", ["h2", "w4", "b4"], ["output"], pads=[1, 1, 1, 1])]
    model = make_onnx(nodes, w, (1, 3, 8, 8), (1, 4, 8, 8))
    return model, rng.normal(0, 1, (12, 3, 8, 8)).astype(np.float32)


@pytest.fixture(scope="module")
def sigmoid_softmax_head():
    """MatMul, Sigmoid, MatMul, Softmax over 100 classes: a float output the oracle must match."""
    rng = np.random.default_rng(1)
    w = {"w0": rng.normal(0, 0.5, (16, 32)), "b0": rng.normal(0, 0.5, 32),
         "w1": rng.normal(0, 1.0, (32, 100)), "b1": rng.normal(0, 0.5, 100)}
    nodes = [helper.make_node("MatMul", ["input", "w0"], ["m0"]),
             helper.make_node("Add", ["m0", "b0"], ["a0"]),
             helper.make_node("Sigmoid", ["a0"], ["g"]),
             helper.make_node("MatMul", ["g", "w1"], ["m1"]),
             helper.make_node("Add", ["m1", "b1"], ["a1"]),
             helper.make_node("Softmax", ["a1"], ["output"], axis=-1)]
    model = make_onnx(nodes, w, (1, 16), (1, 100))
    return model, rng.normal(0, 1, (12, 16)).astype(np.float32)


@pytest.mark.parametrize("mode", ISLAND_MODES, ids=ISLAND_IDS)
def test_hard_swish_and_hard_sigmoid(mobilenet_v3_block, mode):
    """Float hard-swish / hard-sigmoid islands between dequantize and quantize are exact: the
    output and every layer's integer output (the compiled `main_taps`) equal the oracle's."""
    model, xs = mobilenet_v3_block
    cm = _compile(model, xs[:8], mode)
    np.testing.assert_array_equal(cm.run(xs[8:]), np.concatenate(
        [cm.oracle().run(x[None]) for x in xs[8:]]))
    names = [f"{row.name}_q" for row in cm.report().layers]
    oracle = cm.oracle()
    for x in xs[8:]:
        out, *taps = cm.host.run(x[None], TAPS_FUNCTION)
        want, named = oracle.run(x[None], keep=True)
        np.testing.assert_array_equal(out, want)
        for name, got in zip(names, taps, strict=True):
            assert got.dtype == named[name].dtype, name
            np.testing.assert_array_equal(got, named[name], err_msg=name)


def test_every_binding_of_the_float_islands(mobilenet_v3_block):
    """Float bindings too (add, multiply, divide around the quantized clips)."""
    model, xs = mobilenet_v3_block
    _assert_every_binding_equal(_compile(model, xs[:8], MODES[0]).quant_mod, xs[8:])


@pytest.mark.parametrize("mode", ISLAND_MODES, ids=ISLAND_IDS)
def test_sigmoid_and_softmax(sigmoid_softmax_head, mode):
    """expf in float32 (via one float64 rounding) and softmax's in-order sum match TVM's llvm."""
    model, xs = sigmoid_softmax_head
    cm = _compile(model, xs[:8], mode)
    assert cm.report().float_ops[-1].endswith("(nn.softmax)")
    _assert_every_binding_equal(cm.quant_mod, xs[8:])


def _float_module(body, shape=(1, 4, 5, 6)):
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(shape, "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(body(bb, x))
        bb.emit_func_output(out)
    return bb.get()


def test_topi_maximum_minimum_call_tir():
    """The importer's Clip lowering: TOPI maximum/minimum against scalars, broadcast constants,
    an immediate and a second tensor, each a call_tir the oracle evaluates with NumPy."""
    rng = np.random.default_rng(2)

    def body(bb, x):
        y = bb.emit_te(topi.maximum, x, relax.const(-0.5, "float32"))
        y = bb.emit_te(topi.minimum, y, relax.const(rng.normal(size=(1, 4, 1, 1)), "float32"))
        y = bb.emit_te(topi.maximum, y, relax.const(rng.normal(size=(6,)), "float32"))
        y = bb.emit_te(topi.minimum, y, 0.75)
        return bb.emit_te(topi.maximum, relax.const(np.float32(-0.25)), y)

    mod = _float_module(body)
    calls = [b.value for b in mod["main"].body.blocks[0].bindings]
    assert [c.op.name for c in calls if isinstance(c, relax.Call)] == ["relax.call_tir"] * 5
    host = build(mod)
    for _ in range(4):
        x = rng.normal(size=(1, 4, 5, 6)).astype(np.float32)
        np.testing.assert_array_equal(host.run(x), Oracle(mod).run(x))


FLOAT_BODIES = {
    "topi.add": lambda bb, x: bb.emit_te(topi.add, x, x),
    "topi.exp": lambda bb, x: bb.emit_te(topi.exp, x),
    "transposed_max": lambda bb, x: bb.emit_te(  # a maximum, but transposed: not a broadcast
        lambda t: te.compute((1, 4, 6, 5), lambda n, c, i, j: te.max(t[n, c, j, i], 0.0),
                             name="maximum"), x),
    "gelu": lambda bb, x: bb.emit(relax.op.nn.gelu(x)),
}


@pytest.mark.parametrize("body", FLOAT_BODIES.values(), ids=FLOAT_BODIES.keys())
def test_other_float_ops_and_prim_funcs_run_on_the_float_reference(body):
    """Float call_tirs that are not TOPI broadcast max/min, and float ops without a NumPy
    mirror, are TVM's lowering of the op alone: equal to the host build."""
    mod = _float_module(body)
    x = np.random.default_rng(3).normal(0, 2, (1, 4, 5, 6)).astype(np.float32)
    np.testing.assert_array_equal(build(mod).run(x), Oracle(mod).run(x))


def _int8_module(body):
    return _float_module(lambda bb, x: body(bb, bb.emit(relax.op.astype(x, "int8"))))


@pytest.mark.parametrize("body, name", [
    (lambda bb, q: bb.emit_te(topi.add, q, q), "call_tir to add on int8"),
    (lambda bb, q: bb.emit(relax.op.nn.pad(q, [0, 0, 0, 0, 1, 1, 1, 1])), "relax.nn.pad on int8"),
    (lambda bb, q: bb.emit(relax.op.maximum(q, q)), "relax.maximum on int8"),
], ids=["topi.add", "pad", "maximum"])
def test_integer_ops_without_golden_numpy_raise(body, name):
    """Integer arithmetic is never delegated to TVM: an integer op the golden numerics do not
    define is refused, naming the op and its dtypes."""
    with pytest.raises(NotImplementedError, match=name):
        Oracle(_int8_module(body)).run(np.zeros((1, 4, 5, 6), np.float32))
