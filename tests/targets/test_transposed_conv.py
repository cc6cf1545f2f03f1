"""TransposedConvAsShuffle: a kernel == stride transposed conv becomes a scheduled 1x1 conv and
a pixel shuffle, bit for bit (sign of zero included) equal to TVM's legalized op."""

import importlib

import numpy as np
import pytest
import tvm
from tvm import relax
from tvmq.targets.host.transposed_conv import TransposedConvAsShuffle, shuffle_kernel

from tvmq.ir import op_name

host_build = importlib.import_module("tvmq.targets.host.build")
RNG = np.random.default_rng(3)


def _module(c_in, c_out, hw, k, stride, pad=0):
    """main(x) = relu(conv2d_transpose(x, W) + b): a DB head's upsampling."""
    x = relax.Var("x", relax.TensorType((1, c_in, *hw), "float32"))
    weight = RNG.normal(size=(c_in, c_out, k, k)).astype(np.float32)
    weight[0, 0] = 0.0  # zero taps and -0.0 products on zero inputs
    bias = RNG.normal(size=(1, c_out, 1, 1)).astype(np.float32)
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.conv2d_transpose(x, relax.const(weight), strides=stride,
                                                     padding=pad))
            y = bb.emit(relax.op.nn.relu(bb.emit(relax.op.add(y, relax.const(bias)))))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    return bb.get()


def _ops(mod):
    return [op_name(b.value) for block in mod["main"].body.blocks for b in block.bindings]


def _input(c_in, hw):
    x = RNG.normal(size=(1, c_in, *hw)).astype(np.float32)
    x[x < 0.3] = 0.0  # a relu'd input: many exact zeros
    return x


@pytest.mark.parametrize("c_in, c_out, hw, k", [(24, 24, (20, 16), 2), (5, 1, (7, 9), 2),
                                                (8, 3, (6, 10), 3)])
def test_kernel_equal_to_stride_is_a_1x1_conv_and_shuffle_with_the_same_bits(c_in, c_out, hw, k):
    mod = _module(c_in, c_out, hw, k, stride=k)
    rewritten = TransposedConvAsShuffle()(mod)
    assert "relax.nn.conv2d_transpose" not in _ops(rewritten)
    assert "relax.nn.conv2d" in _ops(rewritten) and "relax.permute_dims" in _ops(rewritten)
    x = _input(c_in, hw)
    want = host_build.HostModule(tvm.compile(mod, target=host_build.host_target())).run(x)
    got = host_build.build(mod).run(x)  # rewritten, fused and scheduled
    assert got.shape == (1, c_out, hw[0] * k, hw[1] * k)
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


def test_the_host_build_schedules_the_rewritten_conv(tmp_path, monkeypatch):
    monkeypatch.setenv("TVMQ_CACHE_DIR", str(tmp_path))
    model = host_build.build(_module(24, 24, (20, 16), 2, stride=2))
    assert model.schedules["conv2d"] == host_build.KernelSchedule("conv2d", "default")
    assert all(s.schedule == "default" for s in model.schedules.values())  # the shuffle too


@pytest.mark.parametrize("k, stride, pad", [(4, 2, 1), (2, 1, 0), (3, 3, 1)])
def test_other_transposed_convs_are_left_alone(k, stride, pad):
    mod = _module(4, 4, (6, 6), k, stride, pad)
    (call,) = [b.value for b in mod["main"].body.blocks[0].bindings
               if op_name(b.value) == "relax.nn.conv2d_transpose"]
    assert shuffle_kernel(call) is None
    assert "relax.nn.conv2d_transpose" in _ops(TransposedConvAsShuffle()(mod))
