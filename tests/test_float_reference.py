"""tvmq.float_reference: one float op evaluated by TVM's lowering of it alone, cached per
structural signature; and the oracle's NumPy mirrors of float ops agree with it bit for bit."""

import numpy as np
import pytest
import tvm
from tvm import relax
from tvmq.targets.host import build
from tvmq.targets.host.build import host_target

from tvmq.float_reference import FloatReference
from tvmq.oracle import Oracle

SHAPE = (1, 4, 5, 6)


def _module(body):
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(SHAPE, "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(body(x))
        bb.emit_func_output(out)
    return bb.get()


def _inputs(seed: int) -> np.ndarray:
    """Normal values with signed zeros, a tie-prone 0.5 grid and large magnitudes mixed in."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 3, SHAPE).astype(np.float32)
    x.flat[:4] = [0.0, -0.0, 2.5, -6e4]
    x.flat[4::7] = np.round(x.flat[4::7] * 2) / 2
    return x


def _const(shape, seed=5):
    return relax.const(np.random.default_rng(seed).normal(0, 2, shape).astype(np.float32))


MIRRORED = {  # float ops the oracle computes with NumPy
    "add": lambda x: relax.op.add(x, _const((4, 1, 1))),
    "subtract": lambda x: relax.op.subtract(_const((6,)), x),
    "multiply": lambda x: relax.op.multiply(x, _const(SHAPE)),
    "divide": lambda x: relax.op.divide(x, _const((1, 4, 1, 6))),
    "clip": lambda x: relax.op.clip(x, -1.3, 2.7),
    "relu": lambda x: relax.op.nn.relu(x),
    "astype": lambda x: relax.op.astype(relax.op.astype(x, "float16"), "float32"),
    "mean": lambda x: relax.op.mean(x, axis=[1, 3], keepdims=True),
    "avg_pool2d": lambda x: relax.op.nn.avg_pool2d(x, (3, 3), (2, 1), (1, 1, 1, 1)),
    "avg_pool2d_exclude_pad": lambda x: relax.op.nn.avg_pool2d(
        x, (2, 3), (1, 2), (1, 0, 1, 2), count_include_pad=False),
    "max_pool2d": lambda x: relax.op.nn.max_pool2d(x, (3, 2), (1, 2), (1, 1, 0, 1)),
    "concat": lambda x: relax.op.concat([x, relax.op.nn.relu(x)], axis=2),
    "strided_slice": lambda x: relax.op.strided_slice(x, [1, 3], [0, 5], [4, 0], [2, -2]),
    "permute_dims": lambda x: relax.op.permute_dims(x, [0, 2, 3, 1]),
}


@pytest.mark.parametrize("body", MIRRORED.values(), ids=MIRRORED.keys())
def test_numpy_mirrors_equal_tvm(body):
    """The oracle's NumPy mirror equals the host build and the op alone in TVM, bit for bit."""
    mod = _module(body)
    host, oracle = build(mod), Oracle(mod)
    reference = FloatReference(host_target())
    for seed in range(3):
        x = _inputs(seed)
        want = oracle.run(x)
        np.testing.assert_array_equal(host.run(x), want)
        np.testing.assert_array_equal(_alone(reference, mod, x), want)


def _alone(reference, mod, x):
    """The op of `mod`'s output binding run by `reference` on the oracle's values of its
    arguments."""
    _, named = Oracle(mod).run(x, keep=True)
    env = {"x": x, **named}
    call = mod["main"].body.blocks[0].bindings[-1].value
    return reference.run(call, [_value(a, env) for a in call.args], mod)


def _value(expr, env):
    if isinstance(expr, relax.Tuple):
        return tuple(_value(f, env) for f in expr.fields)
    if isinstance(expr, relax.Var):
        return env[expr.name]
    if isinstance(expr, tvm.ir.GenericConst):
        return expr.value.numpy()
    return None  # not a tensor: part of the op


def test_kernels_are_cached_per_signature_not_per_value():
    reference = FloatReference(host_target())
    mod = _module(lambda x: relax.op.tanh(x))
    call = mod["main"].body.blocks[0].bindings[0].value
    a, b = _inputs(0), _inputs(1)
    assert not np.array_equal(reference.run(call, [a]), reference.run(call, [b]))
    assert len(reference) == 1
    other = _module(lambda x: relax.op.tanh(relax.op.permute_dims(x)))
    call = other["main"].body.blocks[0].bindings[1].value  # tanh on the (6, 5, 4, 1) transpose
    reference.run(call, [np.transpose(a)])
    assert len(reference) == 2
