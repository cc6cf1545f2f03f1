"""TabulateTails: costly float tails of 8-bit values become one table lookup, fused into the
producing kernel, with the same bits as computing the tail per element."""

import importlib

import numpy as np
import tvm
from tvm import relax, tirx
from tvmq.targets.host import schedules
from tvmq.targets.host.tabulate import TabulateTails

from tests.tir_loops import loop_nests
from tvmq.ir import op_name

host_build = importlib.import_module("tvmq.targets.host.build")
SHAPE = (1, 4, 8, 16)


def _module(tail):
    """main(x int32) = tail(clip(x) as int8): the int8 value a requant would produce."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(SHAPE, "int32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            clipped = relax.op.clip(x, relax.prim_value(-128), relax.prim_value(127))
            s = bb.emit(relax.op.astype(clipped, "int8"))
            out = bb.emit_output(tail(bb, s))
        bb.emit_func_output(out)
    return bb.get()


def _hard_swish_to_next_input(bb, s):
    """PP-OCR's tail: dequantize, x * clip(x + 3, 0, 6) / 6, quantize, cast, subtract zp."""
    f32 = lambda v: relax.const(np.float32(v))  # noqa: E731
    d = bb.emit(relax.op.dequantize(s, f32(0.05), relax.const(3, "int32"), axis=1))
    a = bb.emit(relax.op.add(d, f32(3)))
    c = bb.emit(relax.op.clip(a, relax.prim_value(0.0), relax.prim_value(6.0)))
    v = bb.emit(relax.op.divide(bb.emit(relax.op.multiply(d, c)), f32(6)))
    q = bb.emit(relax.op.quantize(v, f32(0.03), relax.const(-5, "int32"), axis=1,
                                  out_dtype="int8"))
    return bb.emit(relax.op.subtract(bb.emit(relax.op.astype(q, "int16")),
                                     relax.const(np.int16(-5))))


def _silu_float(bb, s):
    """YOLOv8's SiLU before a float op: dequantize, x * sigmoid(x), left in float32. Three
    ops, but the sigmoid is a libm call per element: one float32 table lookup instead."""
    d = bb.emit(relax.op.dequantize(s, relax.const(np.float32(0.05)),
                                    relax.const(3, "int32"), axis=1))
    return bb.emit(relax.op.multiply(d, bb.emit(relax.op.sigmoid(d))))


def _requantize(bb, s):
    """dequantize -> quantize: two cheap ops, cheaper as vector arithmetic than a gather."""
    d = bb.emit(relax.op.dequantize(s, relax.const(np.float32(0.05)),
                                    relax.const(3, "int32"), axis=1))
    return bb.emit(relax.op.quantize(d, relax.const(np.float32(0.07)),
                                     relax.const(1, "int32"), axis=1, out_dtype="int8"))


def _per_channel_scale(bb, s):
    """A per-channel multiply: the value depends on the channel too, not only on `s`."""
    d = bb.emit(relax.op.astype(s, "float32"))
    scale = relax.const(np.linspace(0.5, 2, SHAPE[1], dtype=np.float32).reshape(1, -1, 1, 1))
    e = bb.emit(relax.op.divide(bb.emit(relax.op.multiply(d, scale)), relax.const(
        np.float32(3))))
    return bb.emit(relax.op.astype(bb.emit(relax.op.round(e)), "int16"))


def _ops(mod) -> list[str]:
    main = mod["main"]
    return [b.value.op.name for block in main.body.blocks for b in block.bindings
            if isinstance(b.value, relax.Call) and isinstance(b.value.op, tvm.ir.Op)]


def _every_int8(rng) -> np.ndarray:
    x = rng.permutation(np.resize(np.arange(-140, 140), int(np.prod(SHAPE))))
    return x.reshape(SHAPE).astype(np.int32)  # every int8 value, and some that clip


def test_hard_swish_tail_is_one_fused_lookup_with_the_same_bits():
    mod = _module(_hard_swish_to_next_input)
    tabulated = TabulateTails()(mod)
    bindings = tabulated["main"].body.blocks[0].bindings
    (lookup,) = [b.value for b in bindings if op_name(b.value) == "relax.call_tir"]
    assert "tvmq.lookup" in tabulated[lookup.args[0]].attrs
    assert lookup.args[1].fields[0].same_as(bindings[1].var)  # reads s; the table folds later
    fused = host_build.fuse(mod)
    calls = [b.value for block in fused["main"].body.blocks for b in block.bindings
             if isinstance(b.value, relax.Call)]
    assert len(calls) == 1, "the lookup is fused into the kernel that makes its index"
    table = calls[0].args[1].fields[1]
    assert isinstance(table, tvm.ir.GenericConst) and table.value.shape == (256,)

    x = _every_int8(np.random.default_rng(0))
    want = host_build.HostModule(tvm.compile(mod, target=host_build.host_target())).run(x)
    np.testing.assert_array_equal(host_build.build(mod).run(x), want)
    np.testing.assert_array_equal(host_build.build(mod, use_schedules=False).run(x), want)


def test_a_sigmoid_tail_is_a_float_table_with_the_same_bits():
    mod = _module(_silu_float)
    tabulated = TabulateTails()(mod)
    assert "relax.sigmoid" in _ops(mod) and "relax.sigmoid" not in _ops(tabulated)
    x = _every_int8(np.random.default_rng(1))
    want = host_build.HostModule(tvm.compile(mod, target=host_build.host_target())).run(x)
    got = host_build.build(mod).run(x)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


def test_cheap_or_per_channel_tails_stay_arithmetic():
    for tail in (_requantize, _per_channel_scale):
        mod = _module(tail)
        assert _ops(TabulateTails()(mod)) == _ops(mod), tail.__name__


def test_lookup_runs_scalar_after_a_vectorized_index_stage():
    fused = host_build.fuse(_module(_hard_swish_to_next_input))
    (gv,) = [gv for gv, f in fused.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]
    func = schedules.schedule(fused[gv], schedules.ScheduleParams(vec=16, tile=2, tile_axis=3))
    nests = loop_nests(func)
    vectorized = tirx.ForKind.VECTORIZED
    assert any(kind == vectorized for nest in nests.values() for kind, _ in nest)  # index stage
    assert all(kind != vectorized for kind, _ in nests["lookup"])


