"""TileOutputChannels: tiled module computes exactly the untiled integers, on host and oracle."""

import numpy as np
import pytest
from onnx import helper
from tvmq.passes.tile_output_channels import TileOutputChannels, tile_bounds
from tvmq.targets.host import build

import tvmq
from tests.conftest import make_onnx
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


def test_tile_splitting_a_group_is_refused():
    rng = np.random.default_rng(2)
    model = make_onnx([helper.make_node("Conv", ["input", "w"], ["output"], group=2)],
                      {"w": rng.normal(size=(8, 2, 1, 1))}, [1, 4, 3, 3], [1, 8, 3, 3])
    cm = tvmq.compile(model, calib=rng.normal(size=(2, 4, 3, 3)).astype(np.float32),
                      progress=False, config=tvmq.QuantConfig(sqnr_samples=0))
    with pytest.raises(ValueError, match="would split groups"):
        TileOutputChannels(3)(cm.quant_mod)


@pytest.mark.parametrize("t_oc", [0, -4, 2.5, "8"])
def test_bad_tile_size(t_oc):
    with pytest.raises(ValueError, match="t_oc"):
        TileOutputChannels(t_oc)
