"""The oracle covers every op a realized graph can hold: small ONNX models with the float islands
real models have (Pad, GELU's Erf, both layer norms, Softmax, Resize, Split, Slice, Transpose,
Tanh, HardSwish, Concat, ConvTranspose) compiled INT8, LBFP8 and mixed on the host are
bit-exact with the oracle (`cm.verify`), on the output and on every binding of `main`."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from tvm import relax

import tvmq
from tests.conftest import assert_taps_equal_oracle

SCHEMES = ["int8", "lbfp8", "mixed"]


def _model(nodes, inits: dict[str, np.ndarray], input_shape, output_shape) -> onnx.ModelProto:
    """A checked opset-17 model; initializers keep their dtype (int64 pads, axes, sizes)."""
    graph = helper.make_graph(
        nodes, "coverage",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, list(input_shape))],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, list(output_shape))],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _conv(rng, name, x, out, c_in, c_out, k=3, inits=None, **attrs):
    """A conv node with random weights and bias added to `inits` (padding keeps the size)."""
    inits[f"{name}_w"] = rng.normal(0, 0.4, (c_out, c_in, k, k)).astype(np.float32)
    inits[f"{name}_b"] = rng.normal(0, 0.2, c_out).astype(np.float32)
    attrs.setdefault("pads", [k // 2] * 4)
    return helper.make_node("Conv", [x, f"{name}_w", f"{name}_b"], [out], **attrs)


def _matmul(rng, name, x, out, k, n, inits):
    inits[f"{name}_w"] = rng.normal(0, 0.4, (k, n)).astype(np.float32)
    inits[f"{name}_b"] = rng.normal(0, 0.2, n).astype(np.float32)
    return [helper.make_node("MatMul", [x, f"{name}_w"], [f"{name}_m"]),
            helper.make_node("Add", [f"{name}_m", f"{name}_b"], [out])]


def _f32(v) -> np.ndarray:
    return np.asarray(v, np.float32)


def _pad_gelu(rng):
    """Conv, Pad (constant 0.5, then reflect), GELU as exporters write it
    (0.5 x (1 + erf(x / sqrt 2))), conv."""
    inits = {"pads_c": np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64), "half": _f32(0.5),
             "pads_r": np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "value": _f32(0.5),
             "sqrt2": _f32(np.sqrt(2)), "one": _f32(1)}
    nodes = [_conv(rng, "c0", "input", "a", 3, 6, inits=inits),
             helper.make_node("Pad", ["a", "pads_c", "value"], ["p0"], mode="constant"),
             helper.make_node("Pad", ["p0", "pads_r"], ["p1"], mode="reflect"),
             helper.make_node("Div", ["p1", "sqrt2"], ["g0"]),
             helper.make_node("Erf", ["g0"], ["g1"]),
             helper.make_node("Add", ["g1", "one"], ["g2"]),
             helper.make_node("Mul", ["p1", "g2"], ["g3"]),
             helper.make_node("Mul", ["g3", "half"], ["g4"]),
             _conv(rng, "c1", "g4", "output", 6, 4, inits=inits)]
    return _model(nodes, inits, (1, 3, 6, 8), (1, 4, 11, 13))


def _layer_norms(rng):
    """MatMul, LayerNormalization, the ReduceMean / Sub / Pow / Sqrt / Div layer norm as
    exporters write it (PP-OCRv4's), MatMul."""
    inits = {"gamma": rng.normal(1, 0.1, 16).astype(np.float32),
             "beta": rng.normal(0, 0.1, 16).astype(np.float32),
             "two": _f32(2), "eps": _f32(1e-5)}
    nodes = [*_matmul(rng, "m0", "input", "a", 12, 16, inits),
             helper.make_node("LayerNormalization", ["a", "gamma", "beta"], ["n0"], axis=-1,
                              epsilon=1e-5),
             helper.make_node("ReduceMean", ["n0"], ["mu"], axes=[-1]),
             helper.make_node("Sub", ["n0", "mu"], ["d"]),
             helper.make_node("Pow", ["d", "two"], ["d2"]),
             helper.make_node("ReduceMean", ["d2"], ["var"], axes=[-1]),
             helper.make_node("Add", ["var", "eps"], ["ve"]),
             helper.make_node("Sqrt", ["ve"], ["sd"]),
             helper.make_node("Div", ["d", "sd"], ["z"]),
             helper.make_node("Mul", ["z", "gamma"], ["zg"]),
             helper.make_node("Add", ["zg", "beta"], ["n1"]),
             *_matmul(rng, "m1", "n1", "output", 16, 8, inits)]
    return _model(nodes, inits, (1, 5, 12), (1, 5, 8))


def _softmax_tanh_hardswish(rng):
    """MatMul, Softmax, MatMul, Tanh, MatMul, HardSwish, MatMul."""
    inits: dict = {}
    nodes = [*_matmul(rng, "m0", "input", "a", 10, 24, inits),
             helper.make_node("Softmax", ["a"], ["s"], axis=-1),
             *_matmul(rng, "m1", "s", "b", 24, 16, inits),
             helper.make_node("Tanh", ["b"], ["t"]),
             *_matmul(rng, "m2", "t", "c", 16, 16, inits),
             helper.make_node("HardSwish", ["c"], ["h"]),
             *_matmul(rng, "m3", "h", "output", 16, 6, inits)]
    return _model(nodes, inits, (1, 4, 10), (1, 4, 6))


def _resize(rng):
    """Conv, Resize nearest x2 (asymmetric, floor), conv, Resize linear x2 (half pixel), conv."""
    inits = {"scales": _f32([1, 1, 2, 2]), "roi": _f32([])}
    nodes = [_conv(rng, "c0", "input", "a", 3, 4, inits=inits),
             helper.make_node("Resize", ["a", "roi", "scales"], ["r0"], mode="nearest",
                              coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
             _conv(rng, "c1", "r0", "b", 4, 4, inits=inits),
             helper.make_node("Resize", ["b", "roi", "scales"], ["r1"], mode="linear",
                              coordinate_transformation_mode="half_pixel"),
             _conv(rng, "c2", "r1", "output", 4, 2, inits=inits)]
    return _model(nodes, inits, (1, 3, 4, 5), (1, 2, 16, 20))


def _split_slice_transpose(rng):
    """Conv, Split in two along channels, a strided Slice of one half, Concat with the other
    half's Transpose-back-and-forth, conv."""
    inits = {"split": np.array([2, 4], np.int64), "starts": np.array([0, 1], np.int64),
             "ends": np.array([2, 6], np.int64), "axes": np.array([1, 3], np.int64),
             "steps": np.array([1, 1], np.int64)}
    nodes = [_conv(rng, "c0", "input", "a", 3, 6, inits=inits),
             helper.make_node("Split", ["a", "split"], ["s0", "s1"], axis=1),
             helper.make_node("Slice", ["s0", "starts", "ends", "axes", "steps"], ["sl"]),
             helper.make_node("Transpose", ["s1"], ["t0"], perm=[0, 1, 3, 2]),
             helper.make_node("Tanh", ["t0"], ["t1"]),
             helper.make_node("Transpose", ["t1"], ["t2"], perm=[0, 1, 3, 2]),
             helper.make_node("Slice", ["t2", "starts", "ends", "axes", "steps"], ["t3"]),
             helper.make_node("Concat", ["sl", "t3"], ["cat"], axis=1),
             _conv(rng, "c1", "cat", "output", 4, 3, inits=inits)]
    return _model(nodes, inits, (1, 3, 6, 7), (1, 3, 6, 5))


def _conv_transpose(rng):
    """Conv, ConvTranspose (stride 2, stays float), conv."""
    inits = {"ct_w": rng.normal(0, 0.4, (4, 3, 2, 2)).astype(np.float32),
             "ct_b": rng.normal(0, 0.2, 3).astype(np.float32)}
    nodes = [_conv(rng, "c0", "input", "a", 3, 4, inits=inits),
             helper.make_node("ConvTranspose", ["a", "ct_w", "ct_b"], ["u"], strides=[2, 2]),
             _conv(rng, "c1", "u", "output", 3, 2, inits=inits)]
    return _model(nodes, inits, (1, 3, 4, 5), (1, 2, 8, 10))


def _add_self(rng):
    """Conv, x + x (YOLOv8's head: a quantized add whose composite has one parameter), conv."""
    inits: dict = {}
    nodes = [_conv(rng, "c0", "input", "a", 3, 4, inits=inits),
             helper.make_node("Add", ["a", "a"], ["b"]),
             _conv(rng, "c1", "b", "output", 4, 2, inits=inits)]
    return _model(nodes, inits, (1, 3, 4, 5), (1, 2, 4, 5))


MODELS = {"pad_gelu": _pad_gelu, "layer_norms": _layer_norms,
          "softmax_tanh_hardswish": _softmax_tanh_hardswish, "resize": _resize,
          "split_slice_transpose": _split_slice_transpose, "conv_transpose": _conv_transpose,
          "add_self": _add_self}


CASES = [pytest.param(build, scheme, id=f"{name}-{scheme}")
         for name, build in MODELS.items() for scheme in SCHEMES]


@pytest.mark.parametrize("build, scheme", CASES)
def test_float_islands_are_bit_exact_with_the_oracle(build, scheme):
    rng = np.random.default_rng(7)
    model = build(rng)
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    xs = rng.normal(0, 1, (10, *shape[1:])).astype(np.float32)
    cm = tvmq.compile(model, config=tvmq.QuantConfig(scheme=scheme, sqnr_samples=0),
                      calib=xs[:6], progress=False)
    result = cm.verify(xs[6:], n=4)
    assert result.ok, f"\n{result}"
    # A float op's last-bit error rarely survives the next quantize: compare every tensor
    # binding of `main` (float islands included) on the host, tapped, with the oracle's.
    mod = cm.quant_mod
    names = [b.var.name for block in mod["main"].body.blocks for b in block.bindings
             if isinstance(b.var.ty, relax.TensorType)]
    assert_taps_equal_oracle(mod, names, xs[6:8])
