"""Host schedules and tuner: every schedule is bit-exact (odd shapes, stride 2, padding,
depthwise, matmul), the tuning cache round-trips, benchmark() reports sane numbers."""

import dataclasses
import functools
import importlib
import logging
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tvm
import tvm_ffi
from onnx import helper
from tvm import te
from tvmq.targets.host import packed_weights, pair_dot, schedules, threads
from tvmq.targets.host.schedules import ScheduleParams
from tvmq.targets.host.tune import TuningCache, random_args, tasks_of, tune_model

import tvmq
from tests.conftest import assert_taps_equal_oracle, make_onnx
from tests.tir_loops import loop_nests
from tvmq.cli import main

host_build = importlib.import_module("tvmq.targets.host.build")
RNG = np.random.default_rng(7)


def _conv_model(c_in, c_out, hw, k=3, stride=1, pad=1, group=1):
    h, w = hw
    oh, ow = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
    conv = helper.make_node("Conv", ["input", "w", "b"], ["c"], strides=[stride, stride],
                            pads=[pad] * 4, group=group)
    relu = helper.make_node("Relu", ["c"], ["output"])
    init = {"w": RNG.normal(size=(c_out, c_in // group, k, k)), "b": RNG.normal(size=c_out)}
    return make_onnx([conv, relu], init, [1, c_in, h, w], [1, c_out, oh, ow])


def _conv_hard_swish_model(c_in, c_out, hw):
    """conv -> HardSwish: the float tail after the requant becomes a table lookup."""
    conv = helper.make_node("Conv", ["input", "w", "b"], ["c"], pads=[1] * 4)
    hard_swish = helper.make_node("HardSwish", ["c"], ["output"])
    init = {"w": RNG.normal(size=(c_out, c_in, 3, 3)), "b": RNG.normal(size=c_out)}
    return make_onnx([conv, hard_swish], init, [1, c_in, *hw], [1, c_out, *hw], opset=17)


def _squeeze_excite_model(c, hw):
    """conv -> HardSwish -> squeeze-excite (pool, 1x1 convs, HardSigmoid) -> Mul: the kernel
    that scales every channel by its excite value computes that value at its root."""
    mid = c // 2
    nodes = [helper.make_node("Conv", ["input", "w", "b"], ["c"], pads=[1] * 4),
             helper.make_node("HardSwish", ["c"], ["h"]),
             helper.make_node("GlobalAveragePool", ["h"], ["p"]),
             helper.make_node("Conv", ["p", "w1", "b1"], ["s1"]),
             helper.make_node("Relu", ["s1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["s2"]),
             helper.make_node("HardSigmoid", ["s2"], ["e"], alpha=0.2, beta=0.5),
             helper.make_node("Mul", ["h", "e"], ["output"])]
    init = {"w": RNG.normal(size=(c, c, 3, 3)), "b": RNG.normal(size=c),
            "w1": RNG.normal(size=(mid, c, 1, 1)), "b1": RNG.normal(size=mid),
            "w2": RNG.normal(size=(c, mid, 1, 1)), "b2": RNG.normal(size=c)}
    return make_onnx(nodes, init, [1, c, *hw], [1, c, *hw], opset=17)


def _pool_model(c, hw):
    """conv -> ReLU -> global average pool -> 1x1 conv: the pool reads and feeds integer
    layers, so it is an integer sum over the map (after a float op it would stay float)."""
    nodes = [helper.make_node("Conv", ["input", "w", "b"], ["c"], pads=[1] * 4),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["p"]),
             helper.make_node("Conv", ["p", "w1", "b1"], ["output"])]
    init = {"w": RNG.normal(size=(c, c, 3, 3)), "b": RNG.normal(size=c),
            "w1": RNG.normal(size=(c, c, 1, 1)), "b1": RNG.normal(size=c)}
    return make_onnx(nodes, init, [1, c, *hw], [1, c, 1, 1], opset=17)


def _matmul_model(k, n):
    init = {"w": RNG.normal(size=(k, n)), "b": RNG.normal(size=n)}
    return make_onnx([helper.make_node("Gemm", ["input", "w", "b"], ["output"])], init, [1, k],
                     [1, n])


def _rows_matmul_model(rows, k, n):
    """MatMul + Add on (1, rows, k), like PP-OCR's recognizer head."""
    nodes = [helper.make_node("MatMul", ["input", "w"], ["m"]),
             helper.make_node("Add", ["m", "b"], ["output"])]
    init = {"w": RNG.normal(size=(k, n)), "b": RNG.normal(size=n)}
    return make_onnx(nodes, init, [1, rows, k], [1, rows, n])


def _softmax_model(shape, axis):
    """conv (4-D) or MatMul (3-D) -> Softmax over `axis`: a float softmax after an integer
    layer."""
    if len(shape) == 4:
        c = shape[1]
        first = helper.make_node("Conv", ["input", "w", "b"], ["m"], pads=[1] * 4)
        init = {"w": RNG.normal(size=(c, c, 3, 3)), "b": RNG.normal(size=c)}
        out = list(shape)
    else:
        first = helper.make_node("MatMul", ["input", "w"], ["m"])
        init = {"w": RNG.normal(size=(shape[-1], 232))}
        out = [*shape[:-1], 232]
    softmax = helper.make_node("Softmax", ["m"], ["output"], axis=axis)
    return make_onnx([first, softmax], init, list(shape), out, opset=17)


MODELS = {
    # output width 7 and 5 channels: nothing divides the 16-lane vector or the 4-row tile
    "conv3x3_odd": (lambda: _conv_model(3, 5, (6, 7)), (3, 6, 7)),
    "conv3x3_stride2": (lambda: _conv_model(4, 8, (9, 11), stride=2), (4, 9, 11)),
    "conv1x1_12ch": (lambda: _conv_model(6, 12, (5, 6), k=1, pad=0), (6, 5, 6)),
    # even channels, width 16: the vpmaddwd channel-pair schedule (pair_dot.py)
    "conv3x3_pairs": (lambda: _conv_model(6, 10, (5, 16)), (6, 5, 16)),
    "depthwise": (lambda: _conv_model(6, 6, (7, 10), group=6), (6, 7, 10)),
    # 5x5 taps, a 2-column border, 2 channels x 8 columns per tile
    "depthwise_5x5": (lambda: _conv_model(4, 4, (6, 24), k=5, pad=2, group=4), (4, 6, 24)),
    # channel pairs with a table lookup in the epilogue (tabulate.py)
    "conv3x3_hard_swish": (lambda: _conv_hard_swish_model(4, 6, (5, 16)), (4, 5, 16)),
    # output channels as the lanes (stride 2, output width 10: no columns in 8s)
    "conv3x3_channels": (lambda: _conv_model(6, 16, (9, 20), stride=2), (6, 9, 20)),
    # channel lanes with a table lookup in the epilogue, 8 channels
    "conv3x3_channels_hard_swish": (lambda: _conv_hard_swish_model(4, 8, (5, 12)), (4, 5, 12)),
    # the excite scale (a 1x1 conv on pooled channels) broadcast into a 4x16 map
    "squeeze_excite": (lambda: _squeeze_excite_model(8, (4, 16)), (8, 4, 16)),
    "pool": (lambda: _pool_model(8, (4, 16)), (8, 4, 16)),
    "matmul_13": (lambda: _matmul_model(20, 13), (20,)),
    # 37 columns (prime): padded to 48 before fusion (pad_columns.py), then sliced
    "matmul_rows_37": (lambda: _rows_matmul_model(6, 24, 37), (6, 24)),
    # a 512 x 544 weight (a recognizer's vocabulary head): streamed row by row
    "matmul_stream": (lambda: _rows_matmul_model(5, 512, 544), (5, 512)),
    # softmax over channels of a 16 x 24 x 24 map and over 232 classes of 40 rows: stage by
    # stage, parallel (`_schedule_roots`)
    "softmax_channels": (lambda: _softmax_model((1, 16, 24, 24), 1), (16, 24, 24)),
    "softmax_classes": (lambda: _softmax_model((1, 40, 256), -1), (40, 256)),
}


@functools.cache
def _compiled(name):
    """The model compiled, from weights and calibration data seeded by its name: the same in
    any test order (a shared generator gave each model other data in each xdist worker, and
    with them other zero points: an int8 conv input where the test expected int16)."""
    global RNG
    RNG = np.random.default_rng(zlib.crc32(name.encode()))
    make, shape = MODELS[name]
    calib = RNG.normal(size=(16, *shape)).astype(np.float32)
    cm = tvmq.compile(make(), calib=calib, config=tvmq.QuantConfig(sqnr_samples=0),
                      progress=False)
    return name, cm, calib


@pytest.fixture(params=sorted(MODELS))
def compiled(request):
    return _compiled(request.param)


def test_scheduled_model_equals_oracle(compiled):
    name, cm, calib = compiled
    oracle = cm.oracle()
    for x in calib[:4]:
        np.testing.assert_array_equal(cm.run(x[None]), oracle.run(x[None]), err_msg=name)
    assert_taps_equal_oracle(cm.quant_mod, [], calib[:2])


def test_every_candidate_schedule_is_bit_exact(compiled):
    name, cm, _ = compiled
    target = host_build.host_target()
    tasks = tasks_of(host_build.fuse(cm.quant_mod))
    mac = [t for t in tasks if t.info.kind in ("conv2d", "depthwise", "matmul")]
    assert mac, f"{name}: no conv/matmul kernel found in {[t.info for t in tasks]}"
    checked = 0
    for task in mac:
        candidates = schedules.candidate_params(task.info)
        default = schedules.default_params(task.info)
        assert candidates or task.info.out_shape[-1] < 4
        pairs = [p for p in candidates if p.pairs]
        lanes = [p for p in candidates if p.channels]
        picks = candidates[:: max(1, len(candidates) // 6)] + pairs[:: max(1, len(pairs) // 4)]
        picks += lanes[:: max(1, len(lanes) // 4)]
        picks += [default] if default else []
        args = random_args(task.func, seed=3)
        want = _run(task.func, target, args)
        for params in picks:
            scheduled = schedules.schedule(task.func, params)
            assert _vectorized_loops(scheduled), (name, params)
            np.testing.assert_array_equal(_run(scheduled, target, args), want,
                                          err_msg=f"{name} {params}")
            checked += 1
    assert checked >= 1


def _full_range_args(func, seed: int) -> list:
    """Random arguments with the conv's activations at +-255 and weights at -128/127 (the
    extremes of a zero-point-subtracted int8 and an int8 weight)."""
    args = random_args(func, seed=seed)
    rng = np.random.default_rng(seed)
    for i, arg in enumerate(args[:2]):  # the int16 input and the int8 weight
        value = arg.numpy()
        lo, hi = (-255, 255) if value.dtype == np.int16 else (-128, 127)
        args[i] = tvm.runtime.tensor(rng.choice([lo, hi, 0, 1], size=value.shape).astype(
            value.dtype))
    return args


def test_pair_dot_conv_is_bit_exact_on_full_range_inputs():
    """vpmaddwd on channel pairs (lanes = output columns) against TVM's loops."""
    _, cm, _ = _compiled("conv3x3_pairs")
    target = host_build.host_target()
    (task,) = [t for t in tasks_of(host_build.fuse(cm.quant_mod)) if t.info.kind == "conv2d"]
    assert task.info.pairs and schedules.default_params(task.info).pairs
    args = _full_range_args(task.func, seed=5)
    want = _run(task.func, target, args)
    for params in [p for p in schedules.candidate_params(task.info) if p.pairs]:
        scheduled = schedules.schedule(task.func, params)
        assert "pmadd.wd" in scheduled.script(), params
        np.testing.assert_array_equal(_run(scheduled, target, args), want, err_msg=str(params))


@pytest.mark.parametrize("name", ["conv3x3_channels", "conv3x3_channels_hard_swish"])
def test_channel_lanes_conv_is_bit_exact_on_full_range_inputs(name):
    """vpmaddwd on channel pairs with output channels as the lanes (stride 2 and a width of 10,
    a lookup epilogue) against TVM's loops, for every tile the tuner may try; it is the
    default for such convs."""
    _, cm, _ = _compiled(name)
    target = host_build.host_target()
    (task,) = [t for t in tasks_of(host_build.fuse(cm.quant_mod)) if t.info.kind == "conv2d"]
    assert task.info.channels and schedules.default_params(task.info).channels
    args = _full_range_args(task.func, seed=6)
    want = _run(task.func, target, args)
    lanes = [p for p in schedules.candidate_params(task.info) if p.channels]
    assert {p.tile for p in lanes} >= {8} and len({p.vec for p in lanes}) >= 3
    for params in lanes:
        scheduled = schedules.schedule(task.func, params)
        assert "pmadd.wd" in scheduled.script(), params
        assert 8 in _vectorized_loops(scheduled), params
        np.testing.assert_array_equal(_run(scheduled, target, args), want, err_msg=str(params))


@pytest.mark.parametrize("name", ["softmax_channels", "softmax_classes"])
def test_softmax_runs_stage_by_stage_with_the_same_float_results(name):
    """A softmax too large for one thread gets the stage-by-stage schedule by default; every
    candidate gives TVM's float32 results bit for bit (each sum in its order), and it is
    parallel."""
    _, cm, _ = _compiled(name)
    target = host_build.host_target()
    (task,) = [t for t in tasks_of(host_build.fuse(cm.quant_mod)) if "softmax" in t.name]
    default = schedules.default_params(task.info)
    if threads.physical_cores() > 1:
        assert default is not None and default.roots and default.parallel
    args = random_args(task.func, seed=4)
    want = _run(task.func, target, args)
    candidates = schedules.candidate_params(task.info)
    assert len(candidates) >= 3 or threads.physical_cores() < 2
    for params in candidates:
        scheduled = schedules.schedule(task.func, params)
        if params.parallel:
            assert tvm.tirx.ForKind.PARALLEL in {
                kind for nest in loop_nests(scheduled).values() for kind, _ in nest}, params
        got = _run(scheduled, target, args)
        np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32),
                                      err_msg=str(params))


def test_pair_dot_needs_even_channels_and_unit_stride():
    for name in ("conv3x3_odd", "conv3x3_stride2", "depthwise"):
        _, cm, _ = _compiled(name)
        for task in tasks_of(host_build.fuse(cm.quant_mod)):
            assert not task.info.pairs, (name, task.info)


@pytest.mark.parametrize("name", ["conv3x3_pairs", "conv3x3_channels"])
def test_a_constant_weight_is_packed_once_at_build_time(name):
    """A channel-pair kernel whose weight is a constant takes it packed (pair_dot.pack_weight)
    as its parameter: equal to the kernel that packs it per call, for every such candidate;
    in a build, every call passes the packed constant."""
    _, cm, _ = _compiled(name)
    target = host_build.host_target()
    fused = host_build.fuse(cm.quant_mod)
    (task,) = [t for t in tasks_of(fused) if t.info.kind == "conv2d"]
    constants = packed_weights.constant_params(fused)[task.name]
    weight = task.func.params[1].name
    assert weight in constants
    args = _full_range_args(task.func, seed=9)
    want = _run(task.func, target, args)
    for params in [p for p in schedules.candidate_params(task.info) if p.pairs or p.channels]:
        packed = schedules.schedule(task.func, params, constants)
        ((index, layout),) = pair_dot.packed_params(task.func, packed).items()
        assert index == 1 and layout == (pair_dot.LANES_LAYOUT if params.channels
                                         else pair_dot.PAIRS_LAYOUT)
        packed_args = list(args)
        packed_args[1] = tvm.runtime.tensor(pair_dot.pack_weight(args[1].numpy(), layout))
        np.testing.assert_array_equal(_run(packed, target, packed_args), want,
                                      err_msg=str(params))
    with target:
        scheduled = host_build.schedule_host()(fused)
    kernel = scheduled[task.name]
    assert str(kernel.params[1].ty.dtype) == "int32"
    calls = [line for line in scheduled.script(show_meta=False).split("\n")
             if f"R.call_tir({task.name}," in line or f"R.call_tir(cls.{task.name}," in line]
    assert calls and all("metadata" in line for line in calls)


def _te_matmul(rows, k, columns, x_dtype):
    x = te.placeholder((rows, k), x_dtype, name="x")
    w = te.placeholder((k, columns), "int8", name="w")
    r = te.reduce_axis((0, k), name="k")
    acc = te.compute((rows, columns), lambda i, j: te.sum(
        x[i, r].astype("int32") * w[r, j].astype("int32"), axis=r), name="matmul")
    out = te.compute((rows, columns), lambda i, j: acc[i, j] + j, name="T_add")  # an epilogue
    return te.create_prim_func([x, w, out])


@pytest.mark.parametrize("x_dtype", ["int8", "int16"])
def test_matmul_lanes_are_bit_exact_with_the_weight_packed_in_or_out(x_dtype):
    """A matmul on pairs of k with 8 output columns as the lanes (an int8 input is widened
    per pair, an int16 one read as is): every candidate equals TVM's loops on full-range
    values, packing the weight per call or taking it packed (pair_dot.pack_weight)."""
    func = _te_matmul(10, 24, 48, x_dtype)
    info = schedules.describe(func)
    assert info.kind == "matmul" and info.channels
    default = schedules.default_params(info)
    assert default.channels and (default.vec, default.tile) == (5, 16)
    target = host_build.host_target()
    rng = np.random.default_rng(11)
    lo = -255 if x_dtype == "int16" else -128
    x = rng.choice([lo, -lo - (x_dtype == "int8"), 0, 1], size=(10, 24)).astype(x_dtype)
    w = rng.choice([-128, 127, 0, 1], size=(24, 48)).astype(np.int8)
    args = [tvm.runtime.tensor(a) for a in (x, w, np.zeros((10, 48), np.int32))]
    want = _run(func, target, args)
    assert (want == x.astype(np.int64) @ w.astype(np.int64) + np.arange(48)).all()
    lanes = [p for p in schedules.candidate_params(info) if p.channels]
    assert {p.vec for p in lanes} == {1, 2, 5, 10} and {p.tile for p in lanes} == {8, 16}
    for params in lanes:
        np.testing.assert_array_equal(_run(schedules.schedule(func, params), target, args), want,
                                      err_msg=str(params))
        packed = schedules.schedule(func, params, {"w"})
        assert pair_dot.packed_params(func, packed) == {1: pair_dot.MATMUL_LAYOUT}
        packed_args = [args[0], tvm.runtime.tensor(pair_dot.pack_weight(w, "mlanes")), args[2]]
        np.testing.assert_array_equal(_run(packed, target, packed_args), want,
                                      err_msg=f"packed {params}")


def _te_conv(x_dtype, c_in=4, c_out=16, hw=(6, 10), stride=2):
    """pad_temp (a copy) -> 3x3 conv2d_nchw without padding -> + bias: a conv whose input
    is `x_dtype` (int8 where the input's zero point is 0 and nothing is subtracted)."""
    x = te.placeholder((1, c_in, *hw), x_dtype, name="x")
    w = te.placeholder((c_out, c_in, 3, 3), "int8", name="w")
    staged = te.compute(x.shape, lambda *i: x(*i), name="pad_temp")
    oh, ow = (hw[0] - 3) // stride + 1, (hw[1] - 3) // stride + 1
    rc, ry, rx = (te.reduce_axis((0, n), name=v) for n, v in ((c_in, "rc"), (3, "ry"),
                                                               (3, "rx")))
    acc = te.compute((1, c_out, oh, ow), lambda n, f, y, xx: te.sum(
        staged[n, rc, y * stride + ry, xx * stride + rx].astype("int32")
        * w[f, rc, ry, rx].astype("int32"), axis=[rc, ry, rx]), name="conv2d_nchw")
    out = te.compute(acc.shape, lambda n, f, y, xx: acc[n, f, y, xx] + f, name="T_add")
    return te.create_prim_func([x, w, out])


@pytest.mark.parametrize("x_dtype", ["int8", "int16"])
def test_channel_lanes_take_int8_and_int16_inputs(x_dtype):
    """Channel lanes on a conv whose input is int8 (widened per pair) or int16, full-range
    values, every candidate, with the weight packed in the kernel or by NumPy."""
    func = _te_conv(x_dtype)
    info = schedules.describe(func)
    assert info.channels
    target = host_build.host_target()
    args = _full_range_args(func, seed=12)
    want = _run(func, target, args)
    for params in [p for p in schedules.candidate_params(info) if p.channels][::3]:
        np.testing.assert_array_equal(_run(schedules.schedule(func, params), target, args),
                                      want, err_msg=str(params))
        packed = schedules.schedule(func, params, {"w"})
        packed_args = [args[0], tvm.runtime.tensor(pair_dot.pack_weight(
            args[1].numpy(), pair_dot.LANES_LAYOUT)), args[2]]
        np.testing.assert_array_equal(_run(packed, target, packed_args), want,
                                      err_msg=f"packed {params}")


def test_channel_lanes_need_even_input_channels_and_output_channels_in_eights():
    for name in ("conv3x3_odd", "conv1x1_12ch", "conv3x3_pairs", "depthwise"):  # 3 in, 12, 10
        _, cm, _ = _compiled(name)
        for task in tasks_of(host_build.fuse(cm.quant_mod)):
            assert not task.info.channels, (name, task.info)
    _, cm, _ = _compiled("conv3x3_stride2")  # 4 -> 8 channels, stride 2
    (task,) = [t for t in tasks_of(host_build.fuse(cm.quant_mod)) if t.info.kind == "conv2d"]
    assert task.info.channels


VECTORIZED = tvm.tirx.ForKind.VECTORIZED


def _vectorized_loops(func) -> set[int]:
    """Extents of the vectorized loops of `func`."""
    return {n for nest in loop_nests(func).values() for kind, n in nest if kind == VECTORIZED}


def _run(func, target, args):
    ex = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}),
                     target=target)
    out = [tvm.runtime.tensor(a.numpy()) for a in args]
    out[-1] = tvm.runtime.tensor(np.zeros_like(args[-1].numpy()))
    ex["main"](*out)
    return out[-1].numpy()


def test_default_schedule_applies_to_convs_matmuls_and_elementwise():
    conv = schedules.FuncInfo("conv2d", (1, 8, 6, 7))
    assert schedules.default_params(conv) == schedules.ScheduleParams(7, 4, 3, 0)
    assert schedules.default_params(schedules.FuncInfo("depthwise", (1, 8, 6, 7))) is None
    depthwise = schedules.FuncInfo("depthwise", (1, 8, 6, 7), macs=schedules.PARALLEL_MACS)
    if threads.physical_cores() > 1:  # depthwise is scheduled only to go parallel
        assert schedules.default_params(depthwise) == schedules.ScheduleParams(7, 2, 3, 1)
    assert schedules.default_params(schedules.FuncInfo("conv2d", (1, 8, 1, 1))) is None
    assert schedules.default_params(schedules.FuncInfo("other", (1, 8, 6, 7))) is None
    elementwise = schedules.FuncInfo("elementwise", (1, 8, 6, 10))
    assert schedules.default_params(elementwise) == schedules.ScheduleParams(10)
    assert schedules.default_params(schedules.FuncInfo("elementwise", (1, 8, 6, 5))) is None
    assert all(8 % p.tile == 0 or p.tile_axis != 3 for p in schedules.candidate_params(conv))


def test_squeeze_excite_scale_is_computed_once_and_the_broadcast_vectorized():
    """The kernel that multiplies each channel by its excite value: the excite conv and its
    requant (8 values) stay at the root, the 8x4x16 product is vectorized, and the result
    equals TVM's loops."""
    _, cm, _ = _compiled("squeeze_excite")
    target = host_build.host_target()
    (task,) = [t for t in tasks_of(host_build.fuse(cm.quant_mod))
               if "conv2d" in t.name and t.info.kind == "elementwise"]
    params = schedules.default_params(task.info)
    assert params == schedules.ScheduleParams(16)
    scheduled = schedules.schedule(task.func, params)
    assert _vectorized_loops(scheduled)
    assert all(kind != VECTORIZED for kind, _ in loop_nests(scheduled)["conv2d_nchw"]), \
        "the excite conv is not at the root"
    args = random_args(task.func, seed=5)
    np.testing.assert_array_equal(_run(scheduled, target, args), _run(task.func, target, args))


def test_pooling_sum_is_parallel_over_channels_and_exact():
    """An integer global pool (a sum over the map): every candidate equals TVM's loops; with
    threads, the channel loop is the parallel one."""
    _, cm, _ = _compiled("pool")
    target = host_build.host_target()
    (task,) = [t for t in tasks_of(host_build.fuse(cm.quant_mod)) if t.info.kind == "pooling"]
    assert task.info.out_shape == (1, 8, 1, 1)
    assert schedules.default_params(task.info) == schedules.ScheduleParams(1)  # 512 inputs
    args = random_args(task.func, seed=2)
    want = _run(task.func, target, args)
    for params in schedules.candidate_params(task.info):
        scheduled = schedules.schedule(task.func, params)
        np.testing.assert_array_equal(_run(scheduled, target, args), want, err_msg=str(params))
    nests = loop_nests(schedules.schedule(task.func, schedules.ScheduleParams(1, parallel=1)))
    assert (tvm.tirx.ForKind.PARALLEL, 8) in {loop for nest in nests.values() for loop in nest}
    big = schedules.FuncInfo("pooling", (1, 200, 1, 1), macs=schedules.PARALLEL_POOLING)
    assert schedules.default_params(big).parallel == int(threads.physical_cores() > 1)


def test_padding_is_a_fill_and_a_copy_and_tile_rows_are_not_one_vector():
    """The border test of a padding stage would compile to scalar branches: decompose_padding
    makes it a zero fill and an interior copy. The epilogue of a 2-channel x 8-column tile
    vectorizes its 8 columns; one 16-lane vector over both channels would be a scatter."""
    _, cm, _ = _compiled("depthwise_5x5")
    (task,) = [t for t in tasks_of(host_build.fuse(cm.quant_mod)) if t.info.kind == "depthwise"]
    scheduled = schedules.schedule(task.func, schedules.ScheduleParams(8, 2, 3, 1))
    nests = loop_nests(scheduled)
    assert "pad_temp_pad_const" in nests
    assert 8 in _vectorized_loops(scheduled) and 16 not in _vectorized_loops(scheduled)


def test_host_run_stages_inputs_and_copies_outputs():
    """run() reuses one aligned input array per shape: outputs must not alias it or each
    other, any input layout works, and threads calling at once get their own answers."""
    _, cm, calib = _compiled("conv1x1_12ch")
    x = calib[:3].astype(np.float32)
    first = cm.host.run(x[:1])
    second = cm.host.run(x[1:2])
    assert not np.array_equal(first, second)
    np.testing.assert_array_equal(cm.host.run(x[:1]), first)
    np.testing.assert_array_equal(cm.host.run(np.asfortranarray(x[:1])), first)
    want = [cm.host.run(x[i:i + 1]) for i in range(3)]
    with ThreadPoolExecutor(3) as pool:
        got = list(pool.map(lambda i: cm.host.run(x[i:i + 1]), [0, 1, 2] * 4))
    for i, out in enumerate(got):
        np.testing.assert_array_equal(out, want[i % 3])


def test_default_schedule_goes_parallel_on_big_kernels():
    big = schedules.FuncInfo("conv2d", (1, 64, 8, 16), macs=schedules.PARALLEL_MACS)
    small = schedules.FuncInfo("conv2d", (1, 64, 8, 16), macs=schedules.PARALLEL_MACS - 1)
    assert schedules.default_params(big).parallel == int(threads.physical_cores() > 1)
    assert schedules.default_params(small).parallel == 0


def test_thread_pool_uses_physical_cores():
    """TVM halves the CPU count on x86 (assumed hyper-threads); tvmq counts cores."""
    smt = "".join(f"processor: {i}\nphysical id: 0\ncore id: {i // 2}\n" for i in range(4))
    assert threads.count_cores(smt, 4) == 2
    two_sockets = "".join(f"physical id: {i}\ncore id: 0\n" for i in range(2))
    assert threads.count_cores(two_sockets, 2) == 2
    assert threads.count_cores(two_sockets, 1) == 1   # affinity mask allows one CPU
    assert threads.count_cores("", 3) == 3            # no core ids: the usable CPUs
    n = threads.use_physical_cores()
    assert tvm_ffi.get_global_func("runtime.NumThreads")() == n >= 1


def test_host_target_keeps_float_mul_add_unfused():
    """With FMA, LLVM would fuse a * b + c into one rounding and differ from NumPy."""
    n = 4096
    a, b, c = (te.placeholder((n,), "float32", name=s) for s in "abc")
    d = te.compute((n,), lambda i: a[i] * b[i] + c[i], name="d")
    func = te.create_prim_func([a, b, c, d])
    values = [RNG.normal(size=n).astype(np.float32) for _ in range(3)]
    args = [tvm.runtime.tensor(v) for v in values] + [tvm.runtime.tensor(np.zeros(n, "float32"))]
    got = _run(func, host_build.host_target(), args)
    np.testing.assert_array_equal(got, values[0] * values[1] + values[2])


def test_tuner_stores_winners_and_builds_use_them(tmp_path):
    _, cm, calib = _compiled("conv3x3_stride2")
    cache = TuningCache(tmp_path / "tuning.json")
    result = tune_model(cm.quant_mod, budget_seconds=3, cache=cache, progress=False)
    assert (tmp_path / "tuning.json").is_file()
    reloaded = TuningCache(tmp_path / "tuning.json")
    target = host_build.host_target()
    for task in result.tasks:
        assert task.best_ms <= task.default_ms
        assert reloaded.lookup(task.func, target) == task.best
    assert "tuning time" in result.table() and "conv2d" in result.table()
    tuned = host_build.build(cm.quant_mod, cache=reloaded)
    for x in calib[:3]:
        np.testing.assert_array_equal(tuned.run(x[None]), cm.oracle().run(x[None]))


NOT_APPLICABLE = ScheduleParams(vec=4, pairs=True)  # channel pairs: convs only


def test_a_tuned_schedule_that_no_longer_applies_is_a_warning(tmp_path, caplog):
    _, cm, calib = _compiled("matmul_13")
    target = host_build.host_target()
    cache = TuningCache(tmp_path / "tuning.json")
    (matmul,) = [t for t in tasks_of(host_build.fuse(cm.quant_mod)) if t.info.kind == "matmul"]
    cache.store(matmul.func, target, NOT_APPLICABLE)
    with caplog.at_level(logging.DEBUG, logger="tvmq.targets.host"):
        model = host_build.build(cm.quant_mod, cache=cache)
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.name == "tvmq.targets.host.build"
    assert matmul.name in warning.message and "no longer applies" in warning.message
    assert "pairs: not a conv" in warning.message and "\n" not in warning.message
    np.testing.assert_array_equal(model.run(calib[:1]), cm.oracle().run(calib[:1]))


def test_a_default_schedule_that_does_not_apply_is_debug(tmp_path, caplog, monkeypatch):
    _, cm, calib = _compiled("matmul_13")
    monkeypatch.setattr(schedules, "default_params", lambda info: NOT_APPLICABLE)
    with caplog.at_level(logging.DEBUG, logger="tvmq.targets.host"):
        model = host_build.build(cm.quant_mod, cache=TuningCache(tmp_path / "empty.json"))
    assert caplog.records and all(r.levelno == logging.DEBUG for r in caplog.records)
    assert all("does not apply" in r.message for r in caplog.records)
    np.testing.assert_array_equal(model.run(calib[:1]), cm.oracle().run(calib[:1]))


def test_benchmark_reports_model_and_kernels():
    _, cm, _ = _compiled("conv3x3_odd")
    bench = cm.benchmark(runs=5, warmup=1)
    assert bench.ms > 0 and bench.runs == 5
    assert any(k.name.startswith("fused_") and k.calls >= 1 for k in bench.kernels)
    assert "whole model" in bench.table()
    with pytest.raises(ValueError, match="model input shape"):
        cm.benchmark(np.zeros((1, 2)))


def test_benchmark_marks_the_kernels_left_on_tvm_loops(tmp_path, monkeypatch):
    """Each kernel carries its kind and how the build scheduled it; the table sums the time
    of the kernels on TVM's loops."""
    monkeypatch.setenv("TVMQ_CACHE_DIR", str(tmp_path))  # no tuned entry
    _, cm, calib = _compiled("conv3x3_odd")
    kernels = {k.name: k for k in cm.benchmark(runs=3, warmup=1).kernels}
    (conv,) = [k for name, k in kernels.items() if name.startswith("fused_conv2d")]
    assert (conv.kind, conv.schedule) == ("conv2d", "default")
    assert all(k.schedule == "" for name, k in kernels.items() if name.startswith("vm."))
    assert {n for n in kernels if not n.startswith("vm.")} <= set(cm.host.schedules)

    monkeypatch.setattr(schedules, "default_params", lambda info: None)
    cm.host = host_build.build(cm.quant_mod)
    bench = cm.benchmark(runs=3, warmup=1)
    fused = [k for k in bench.kernels if k.name.startswith("fused_")]
    assert fused and all(k.schedule == host_build.LOOPS for k in fused)
    assert bench.loops_share == pytest.approx(
        sum(k.ms for k in fused) / sum(k.ms for k in bench.kernels))
    assert f"on TVM's loops ({len(fused)} kernels)" in bench.table()
    np.testing.assert_array_equal(cm.run(calib[:1]), cm.oracle().run(calib[:1]))


def test_cli_tune(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TVMQ_CACHE_DIR", str(tmp_path / "cache"))
    model = tmp_path / "conv.onnx"
    model.write_bytes(_conv_model(3, 5, (6, 7)).SerializeToString())
    calib = tmp_path / "calib.npz"
    np.savez(calib, calib=RNG.normal(size=(8, 3, 6, 7)).astype(np.float32))
    assert main(["tune", str(model), "--calib", str(calib), "--budget", "2", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "sum of kernels" in out and "ms before tuning ->" in out
    assert (tmp_path / "cache" / "host_tuning.json").is_file()
    assert main(["tune", str(model), "--calib", str(calib), "--budget", "0", "--quiet"]) == 2


def test_matmul_columns_without_vector_divisor_are_padded():
    from tvmq.targets.host.pad_columns import needs_padding, padded
    assert [n for n in (13, 16, 20, 37, 40, 6625, 6640, 8210) if needs_padding(n)] == [
        20, 37, 6625, 8210]
    assert (padded(37), padded(6625)) == (48, 6640)
    _, cm, calib = _compiled("matmul_rows_37")
    tasks = tasks_of(host_build.fuse(cm.quant_mod))
    matmuls = [t.info for t in tasks if t.info.kind == "matmul"]
    # ORT's basic optimizer (import) makes the (1, 6, 24) matmul + bias a Gemm on (6, 24)
    assert [info.out_shape for info in matmuls] == [(6, 48)]
    default = schedules.default_params(matmuls[0])  # 16 padded columns a tile, pairs of k
    assert default.channels and default.tile == 16
    np.testing.assert_array_equal(cm.run(calib[:1]), cm.oracle().run(calib[:1]))


def test_a_large_matmul_streams_its_weight_rows():
    """From STREAM_WEIGHT weight elements a matmul's default schedule reads the weight row by
    row, in blocks of 16 columns of all rows (columns in two parallel chunks when threads are
    used); every streaming candidate, per row or in blocks, is bit-exact."""
    _, cm, calib = _compiled("matmul_stream")
    (task,) = [t for t in tasks_of(host_build.fuse(cm.quant_mod)) if t.info.kind == "matmul"]
    assert schedules.default_params(task.info).channels  # pairs of k win where they apply
    info = dataclasses.replace(task.info, channels=False)
    params = schedules.default_params(info)
    assert params.stream and (params.vec, params.tile) == (8, schedules.STREAM_BLOCK)
    assert params.parallel == (2 if threads.physical_cores() > 1 else 1)
    streams = [p for p in schedules.candidate_params(info) if p.stream]
    assert {1, 16} <= {p.tile for p in streams}
    target = host_build.host_target()
    args = random_args(task.func, seed=8)
    want = _run(task.func, target, args)
    for p in [params, *streams[::max(1, len(streams) // 6)]]:
        got = _run(schedules.schedule(task.func, p), target, args)
        np.testing.assert_array_equal(got, want, err_msg=str(p))
    small = schedules.FuncInfo("matmul", (5, 544), macs=5 * 544 * 64)
    row_tiled = schedules.FuncInfo("matmul", (4, 544), macs=4 * 544 * 512)
    assert not schedules.default_params(small).stream
    assert not schedules.default_params(row_tiled).stream  # 4 rows share each weight load
    np.testing.assert_array_equal(cm.run(calib[:2]), cm.oracle().run(calib[:2]))
