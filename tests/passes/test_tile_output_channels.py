"""TileOutputChannels: Before / Expected per tile shape; the tiled module computes exactly the
untiled integers, on host and oracle."""

import numpy as np
import pytest
import tvm
from onnx import helper
from tvm import relax
from tvmq.passes.tile_output_channels import TiledLayer, TileOutputChannels, tile_bounds
from tvmq.targets.host import build

import tvmq
from tests.conftest import make_onnx
from tvmq.ir import RequantChain, bindings_of, const_value, requant_prim_func
from tvmq.oracle import Oracle


def _convs(mod):
    return [b.value for b in mod["main"].body.blocks[0].bindings
            if getattr(getattr(b.value, "op", None), "name", "") == "relax.nn.conv2d"]


def test_tile_bounds():
    assert tile_bounds(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert tile_bounds(8, 8) == [(0, 8)] and tile_bounds(3, 64) == [(0, 3)]


@pytest.mark.parametrize("t_oc,mode", [
    (4, dict(requant="mult_shift", rounding="double")),
    (5, dict(requant="mult_shift", rounding="single")),
    (5, dict(requant="mult_shift", rounding="tonearest")),
    (4, dict(requant="fp32")),
    (16, dict(requant="mult_shift", rounding="double")),
    (64, dict(requant="fp32")),
])
def test_tiled_digits_model_is_bit_exact(compile_digits, digits, t_oc, mode):
    cm = compile_digits(**mode)
    tiled = TileOutputChannels(t_oc)(cm.quant_mod)
    host, oracle = build(tiled), Oracle(tiled)
    for x in digits[1][:6]:
        want = cm.run(x[None])
        np.testing.assert_array_equal(host.run(x[None]), want)
        np.testing.assert_array_equal(oracle.run(x[None]), want)


def test_each_tile_carries_its_weight_slice():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(10, 3, 3, 3))
    model = make_onnx([helper.make_node("Conv", ["input", "w"], ["output"], pads=[1, 1, 1, 1])],
                      {"w": w}, [1, 3, 5, 5], [1, 10, 5, 5])
    cm = tvmq.compile(model, calib=rng.normal(size=(4, 3, 5, 5)).astype(np.float32),
                      progress=False, config=tvmq.QuantConfig(sqnr_samples=0))
    (whole,) = _convs(cm.quant_mod)
    tiles = _convs(TileOutputChannels(4)(cm.quant_mod))
    full = whole.args[1].value.numpy()
    assert [t.args[1].value.numpy().shape[0] for t in tiles] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate([t.args[1].value.numpy() for t in tiles]), full)


def test_depthwise_tiles_slice_input_channels_and_groups():
    rng = np.random.default_rng(1)
    model = make_onnx([helper.make_node("Conv", ["input", "w"], ["output"], group=6,
                                        pads=[1, 1, 1, 1])],
                      {"w": rng.normal(size=(6, 1, 3, 3))}, [1, 6, 4, 4], [1, 6, 4, 4])
    calib = rng.normal(size=(4, 6, 4, 4)).astype(np.float32)
    cm = tvmq.compile(model, calib=calib, progress=False, config=tvmq.QuantConfig(sqnr_samples=0))
    tiled = TileOutputChannels(4)(cm.quant_mod)
    assert [int(c.attrs.groups) for c in _convs(tiled)] == [4, 2]
    np.testing.assert_array_equal(build(tiled).run(calib[:1]), cm.run(calib[:1]))


def _grouped_model():
    """A conv with 2 groups of 4 output channels (input 4 channels, 2 per group)."""
    rng = np.random.default_rng(2)
    model = make_onnx([helper.make_node("Conv", ["input", "w"], ["output"], group=2)],
                      {"w": rng.normal(size=(8, 2, 1, 1))}, [1, 4, 3, 3], [1, 8, 3, 3])
    calib = rng.normal(size=(4, 4, 3, 3)).astype(np.float32)
    cm = tvmq.compile(model, calib=calib, progress=False, config=tvmq.QuantConfig(sqnr_samples=0))
    return cm, calib


def test_tile_splitting_groups_is_one_conv_per_group_piece():
    cm, calib = _grouped_model()
    tiled = TileOutputChannels(3)(cm.quant_mod)  # [0, 3) in group 0; [3, 6) splits; [6, 8)
    convs = _convs(tiled)
    assert [c.args[1].value.numpy().shape[0] for c in convs] == [3, 1, 2, 2]
    assert [int(c.attrs.groups) for c in convs] == [1, 1, 1, 1]
    np.testing.assert_array_equal(build(tiled).run(calib[:1]), cm.run(calib[:1]))
    np.testing.assert_array_equal(Oracle(tiled).run(calib[:2]), cm.run(calib[:2]))


def test_only_the_named_layers_are_tiled(compile_digits):
    cm = compile_digits()
    tiled = TileOutputChannels(4, layers={"conv2d_1"})(cm.quant_mod)
    widths = {c.args[1].value.numpy().shape[0] for c in _convs(tiled)}
    whole = {c.args[1].value.numpy().shape[0] for c in _convs(cm.quant_mod)}
    assert len(_convs(tiled)) == len(_convs(cm.quant_mod)) - 1 + 16 // 4  # conv2d_1: 16 -> 4x4
    assert widths == whole | {4}


def _layers(mod):
    """{name: binding value} of the `<name>_q` bindings of main."""
    return {b.var.name.removesuffix("_q"): b.value for block in mod["main"].body.blocks
            for b in block.bindings if b.var.name.endswith("_q")}


@pytest.mark.parametrize("t_oc", [3, 5, 64])
def test_tiled_layer_reads_back_the_untiled_chain(compile_digits, t_oc):
    cm = compile_digits(requant="mult_shift", rounding="double")
    tiled = TileOutputChannels(t_oc)(cm.quant_mod)
    before, after = bindings_of(cm.quant_mod["main"]), bindings_of(tiled["main"])
    read = 0
    for name, value in _layers(tiled).items():
        untiled = _layers(cm.quant_mod)[name]
        layer = TiledLayer.read(value, after, tiled)
        chain = RequantChain(untiled, before, cm.quant_mod) if RequantChain.is_requant(
            untiled, cm.quant_mod) else None
        if chain is None or not chain.valid:
            assert layer is None, name
            continue
        read += 1
        np.testing.assert_array_equal(layer.weight, chain.weight)
        np.testing.assert_array_equal(layer.bias, chain.bias)
        for got, want in zip(layer.params, chain.params, strict=True):
            np.testing.assert_array_equal(got, const_value(want))
        is_conv = layer.op == "relax.nn.conv2d"
        assert layer.groups == (int(chain.op.attrs.groups) if is_conv else 1)
        assert layer.bounds == tile_bounds(layer.weight.shape[0 if is_conv else 1], t_oc)
    assert read == 7  # 5 convs, the avg pool as a depthwise conv, the matmul


def test_tiled_layer_reads_back_group_pieces():
    cm, _ = _grouped_model()
    tiled = TileOutputChannels(3)(cm.quant_mod)
    (value,) = [v for name, v in _layers(tiled).items() if name.startswith("conv2d")]
    layer = TiledLayer.read(value, bindings_of(tiled["main"]), tiled)
    (conv,) = _convs(cm.quant_mod)
    np.testing.assert_array_equal(layer.weight, conv.args[1].value.numpy())
    assert layer.groups == 2 and layer.bounds == [(0, 3), (3, 6), (6, 8)]


@pytest.mark.parametrize("t_oc", [0, -4, 2.5, "8"])
def test_bad_tile_size(t_oc):
    with pytest.raises(ValueError, match="t_oc"):
        TileOutputChannels(t_oc)


# ---- Before / Expected on realized chains ------------------------------------------------------
# A realized layer: op(x, Wq) [+ bq] -> call_tir(requant kernel); Expected lists each tile's
# weight, bias and requant-parameter slices and its kernel (tvmq.ir.requant_prim_func).

RQ_ARGS = dict(kind="mult_shift", rounding="double", zero_point=-3, qmin=-128, qmax=127,
               out_dtype="int8")


def _int8(*shape, seed=0):
    return np.random.default_rng(seed).integers(-127, 128, shape).astype(np.int8)


def _params(channels, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.integers(2**30, 2**31 - 1, channels).astype(np.int32),
            rng.integers(-12, -1, channels).astype(np.int32))


def _requant(bb, acc, params, axis, name):
    """call_tir(requant kernel over acc's shape) with `params`; per tensor if axis is None."""
    shape = tuple(int(d) for d in acc.ty.shape)
    prim = requant_prim_func(shape, params[0].size, axis, **RQ_ARGS)
    gv = bb.add_func(prim, name)
    return relax.call_tir(gv, [acc, *(relax.const(p) for p in params)],
                          relax.TensorType(shape, "int8"))


def _module(x_shape, body):
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(x_shape, "int8"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(body(bb, x))
        bb.emit_func_output(out)
    return bb.get()


W10 = _int8(10, 3, 3, 3)
B10 = np.random.default_rng(1).integers(-999, 999, (1, 10, 1, 1)).astype(np.int32)
P10 = _params(10)


def _conv(x, w, groups=1):
    return relax.op.nn.conv2d(x, relax.const(w), padding=[1, 1], groups=groups,
                              out_dtype="int32")


def _conv_layer(bb, x):
    acc = bb.emit(_conv(x, W10))
    acc = bb.emit(relax.op.add(acc, relax.const(B10)))
    return _requant(bb, acc, P10, 1, "tvmq_requant_double")


def test_conv_with_bias_in_tiles_of_4_and_a_ragged_last_tile():
    def tiled(bb, x):
        tiles = [(0, 4, "tvmq_requant_double1"), (4, 8, "tvmq_requant_double1"),
                 (8, 10, "tvmq_requant_double2")]
        accs = []
        for c0, c1, _ in tiles:  # every tile's accumulator, then every tile's requant
            acc = bb.emit(_conv(x, W10[c0:c1]))
            accs.append(bb.emit(relax.op.add(acc, relax.const(B10[:, c0:c1]))))
        outs = [bb.emit(_requant(bb, acc, [p[c0:c1] for p in P10], 1, name))
                for acc, (c0, c1, name) in zip(accs, tiles)]
        return relax.op.concat(outs, axis=1)

    before = _module((1, 3, 5, 5), _conv_layer)
    tvm.ir.assert_structural_equal(TileOutputChannels(4)(before), _module((1, 3, 5, 5), tiled))


def test_layer_narrower_than_the_tile_is_one_tile():
    """One tile is the layer itself: the same chain and kernel."""
    before = _module((1, 3, 5, 5), _conv_layer)
    tvm.ir.assert_structural_equal(TileOutputChannels(16)(before), before)


W8 = _int8(6, 8, seed=2)
P1 = (np.array([1_500_000_000], np.int32), np.array([-7], np.int32))


def test_matmul_in_exact_tiles_with_a_per_tensor_requant():
    """Two 4-column tiles; per-tensor parameters travel whole with every tile."""
    def layer(bb, x):
        acc = bb.emit(relax.op.matmul(x, relax.const(W8), out_dtype="int32"))
        return _requant(bb, acc, P1, None, "tvmq_requant_double")

    def tiled(bb, x):
        accs = [bb.emit(relax.op.matmul(x, relax.const(W8[:, c0:c0 + 4]), out_dtype="int32"))
                for c0 in (0, 4)]
        outs = [bb.emit(_requant(bb, acc, P1, None, "tvmq_requant_double1")) for acc in accs]
        return relax.op.concat(outs, axis=1)

    before = _module((2, 6), layer)
    tvm.ir.assert_structural_equal(TileOutputChannels(4)(before), _module((2, 6), tiled))


W_DW = _int8(6, 1, 3, 3, seed=3)
P6 = _params(6, seed=3)


def test_depthwise_tiles_slice_the_input_channels_of_their_groups():
    def layer(bb, x):
        acc = bb.emit(_conv(x, W_DW, groups=6))
        return _requant(bb, acc, P6, 1, "tvmq_requant_double")

    def tiled(bb, x):
        tiles = [(0, 4, "tvmq_requant_double1"), (4, 6, "tvmq_requant_double2")]
        accs = []
        for c0, c1, _ in tiles:
            xs = bb.emit(relax.op.strided_slice(x, axes=[1], begin=[c0], end=[c1]))
            accs.append(bb.emit(_conv(xs, W_DW[c0:c1], groups=c1 - c0)))
        outs = [bb.emit(_requant(bb, acc, [p[c0:c1] for p in P6], 1, name))
                for acc, (c0, c1, name) in zip(accs, tiles)]
        return relax.op.concat(outs, axis=1)

    before = _module((1, 6, 4, 4), layer)
    tvm.ir.assert_structural_equal(TileOutputChannels(4)(before), _module((1, 6, 4, 4), tiled))


def test_float_ops_and_non_chain_requants_are_left_alone():
    """A requant whose accumulator is not an int8 conv/matmul with a constant weight."""
    def layer(bb, x):
        acc = bb.emit(relax.op.astype(x, "int32"))
        return _requant(bb, acc, P1, None, "tvmq_requant_double")

    before = _module((2, 6), layer)
    tvm.ir.assert_structural_equal(TileOutputChannels(2)(before), before)
