"""LowerToAccel on TileOutputChannels' tiles: one tile loop per layer, the layer's cycle count."""

import numpy as np
import tvm
from onnx import helper
from tvm import relax
from tvmq.targets.accel import AccelConfig
from tvmq.targets.accel.lower import AccelRuntime, LowerToAccel
from tvmq.targets.host import build

import tvmq
from tests.conftest import make_onnx


def _grouped_conv():
    """1x1 conv, C=4 -> O=8 in 2 groups (2 input, 4 output channels each), 3x3 input."""
    rng = np.random.default_rng(7)
    model = make_onnx([helper.make_node("Conv", ["input", "w"], ["output"], group=2)],
                      {"w": rng.normal(size=(8, 2, 1, 1))}, [1, 4, 3, 3], [1, 8, 3, 3])
    calib = rng.normal(size=(4, 4, 3, 3)).astype(np.float32)
    cm = tvmq.compile(model, calib=calib, progress=False, config=tvmq.QuantConfig(sqnr_samples=0))
    return cm, calib


def _ops(mod) -> list[str]:
    names = []
    for block in mod["main"].body.blocks:
        for b in block.bindings:
            v = b.value
            if isinstance(v, relax.Call) and isinstance(v.op, tvm.ir.Op):
                names.append(v.op.name)
    return names


def test_tiles_that_split_groups_run_as_the_layers_tile_loop():
    cm, calib = _grouped_conv()
    hw = AccelConfig(t_oc=3, t_ic=2, dma_bytes_per_cycle=4)
    runtime = AccelRuntime(hw)
    lowered = LowerToAccel(runtime)(cm.quant_mod)
    assert runtime.host_layers == {} and "relax.nn.conv2d" not in _ops(lowered)
    assert _ops(lowered).count("relax.call_tir") == 1  # the tiles went back into one call
    accel = build(lowered)
    np.testing.assert_array_equal(accel.run(calib[:1]), cm.oracle().run(calib[:1]))
    (counters,) = runtime.one_inference(accel, calib[:1]).values()
    # Hand count (accel.c's cycle model): 9 positions, Cg = 2, resident input. Tiles [0, 3),
    # [3, 6), [6, 8) read input channels [0, 2), [0, 4), [2, 4); a later tile pays only for
    # channels no earlier tile loaded: 18, 18, 0 activation bytes; weights 6, 6, 4; outputs
    # 27, 27, 18. DMA 51, 51, 22 bytes = 13, 13, 6 cycles; compute 9 each; requant 9 each.
    assert counters == dict(cycles=22 + 22 + 18, compute_cycles=27, dma_cycles=32,
                            requant_cycles=27, macs=9 * 8 * 2, dma_bytes=124, tiles=3)


def test_layer_the_emulator_refuses_is_one_chain_on_the_host():
    cm, calib = _grouped_conv()
    # A 4-byte weight buffer cannot hold a tile of 4 output channels x 2 input channels.
    hw = AccelConfig(t_oc=4, t_ic=1, weight_buffer_bytes=4)
    runtime = AccelRuntime(hw)
    lowered = LowerToAccel(runtime)(cm.quant_mod)
    (reason,) = runtime.host_layers.values()
    assert "weight_buffer_bytes=4 too small" in reason
    assert _ops(lowered).count("relax.nn.conv2d") == 1  # not its 2 tiles
    np.testing.assert_array_equal(build(lowered).run(calib[:1]), cm.oracle().run(calib[:1]))


def test_layer_left_on_the_host_by_its_shape_is_not_tiled():
    rng = np.random.default_rng(8)
    model = make_onnx([helper.make_node("MatMul", ["input", "w"], ["output"])],
                      {"w": rng.normal(size=(6, 20))}, [1, 4, 6], [1, 4, 20])
    calib = rng.normal(size=(4, 4, 6)).astype(np.float32)
    cm = tvmq.compile(model, calib=calib, progress=False, config=tvmq.QuantConfig(sqnr_samples=0))
    runtime = AccelRuntime(AccelConfig(t_oc=4, t_ic=4))
    lowered = LowerToAccel(runtime)(cm.quant_mod)
    assert list(runtime.host_layers.values()) == [
        "matmul with 4 rows: the accelerator reads one (1, K) row"]
    assert _ops(lowered).count("relax.matmul") == 1 and "relax.concat" not in _ops(lowered)
    np.testing.assert_array_equal(build(lowered).run(calib[:1]), cm.oracle().run(calib[:1]))
