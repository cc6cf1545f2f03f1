"""Integer conv2d on channel pairs with AVX2 `vpmaddwd` (16 multiply-adds per instruction).

A quantized conv reads int16 activations (zero point already subtracted, |x| <= 255) and int8
weights into an int32 accumulator. `vpmaddwd` multiplies 16 int16 pairs and adds adjacent
products into 8 int32 lanes, exactly (|x * w| <= 255 * 128, two of them fit in int32). The
schedule feeds it:

    input stage   pad_temp[n, c, h, w]  ->  pairs[n, c // 2, h, 2 * w + c % 2]   (int16)
    conv          for c2, ry, rx: for tile rows f: for 8-column groups x0:
                      acc[f, y, x0:x0+8] += pmaddwd(pairs[n, c2, y+ry, 2*(x0+rx) : +16],
                                                    broadcast(w[f, 2*c2+1] << 16 | w[f, 2*c2]))

so output columns stay the vector lanes of the output tile (schedules.py) and the input channel
pair is the reduction inside one instruction. It applies to regular (groups = 1) convs with
stride 1 along the width, an even number of input channels and a tile width that is a multiple
of 8.

With the lanes on output channels instead (`channel lanes`), one pair of input values is
broadcast and the weights are the vector:

    weights       w_lanes[f // 8, c // 2, ry, rx, f % 8] = w[f, c + 1] << 16 | w[f, c]   (int32)
    conv          for c2, ry, rx: for tile columns x: for 8-channel groups f0:
                      acc[f0, y, x, 0:8] += pmaddwd(broadcast(pairs[n, c2, y', 2 x' : +2]),
                                                    w_lanes[f0, c2, ry, rx, 0:8])

with the accumulator (and every stage of the epilogue) stored as 8-channel groups,
[n, f // 8, h, w, f % 8]. It needs no condition on the width or the stride (any output width,
stride 2), only an even number of input channels and output channels in groups of 8. A 2-D
matmul x[rows, k] @ w[k, n] runs the same way on pairs of k (adjacent in x's rows: no input
packing) with 8 output columns as the lanes, its weight packed as w_lanes[n // 8, k // 2, n % 8].

A weight that is a constant at every call is packed once at build time (`pack_weight`,
packed_weights.py) and the kernel takes the packed buffer as its parameter; otherwise a stage
at the top of the kernel packs it at every call.

TVM 0.27's `tensorize` crashes (it deep-copies the intrinsic through JSON, which segfaults in
this wheel), so the vector statement is written into the blockized 8 x 2 block by a TVMScript
round trip of the scheduled function: same loops, same buffers, one statement replaced.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Collection

import numpy as np
import tvm
from tvm import s_tir
from tvm.script import from_source

LANES = 8  # int32 lanes of one vpmaddwd (AVX2, 256 bit)
PACK_LANES = 32  # int16 lanes of the pair packing's vectors (two AVX2 registers)
MARK = "tvmq_pair_dot"  # block annotation: emit() rewrites this block's body
ON_COLUMNS, ON_CHANNELS, ON_MATMUL = 1, 2, 3  # MARK's value: the lanes are a conv's output
                                              # columns / channels, a matmul's columns


def target_has_avx2(target: tvm.target.Target | None = None) -> bool:
    """Whether `target` (default: the current one, else this machine's CPU) has AVX2."""
    target = target or tvm.target.Target.current(allow_none=True) or _system_cpu()
    key = str(target)
    if key not in _AVX2:
        _AVX2[key] = target.kind.name == "llvm" and bool(
            tvm.target.codegen.target_has_features("avx2", target))
    return _AVX2[key]


_AVX2: dict[str, bool] = {}


@functools.cache
def _system_cpu() -> tvm.target.Target:
    return tvm.target.Target({"kind": "llvm", "mcpu": tvm.target.codegen.llvm_get_system_cpu()})


def applies(sch, conv) -> bool:
    """Whether the conv block can run on channel pairs: int16 (or int8) x int8 -> int32,
    groups = 1, stride 1 along the width, an even number of input channels."""
    data = _pair_conv_input(sch, conv)
    return data is not None and re.fullmatch(r"v_xx \+ v_rx", str(data.region[-1].min)) is not None


def applies_on_channels(sch, conv) -> bool:
    """Whether the conv block can run on channel pairs with output channels as the lanes:
    int16 (or int8) x int8 -> int32, groups = 1, an even number of input channels, output
    channels a multiple of 8 (any stride and width)."""
    data = _pair_conv_input(sch, conv)
    return data is not None and int(_operands(sch.get(conv))[1].source.shape[0]) % LANES == 0


def _pair_conv_input(sch, conv):
    """The input region of a regular conv block (int16 or int8 input from one producer stage,
    int8 weight, an even number of input channels), else None. An int8 input is widened to
    int16 as it is read."""
    block = sch.get(conv)
    if not block.name_hint.startswith("conv2d_nchw") or block.init is None:
        return None
    data, weight = _operands(block)
    if (data is None or str(data.source.dtype) not in ("int8", "int16")
            or str(weight.source.dtype) != "int8"):
        return None
    if int(weight.source.shape[1]) % 2 or len(sch.get_producers(conv)) != 1:
        return None
    return data


def applies_to_matmul(sch, matmul) -> bool:
    """Whether a matmul block x[rows, k] @ w[k, columns] (int16 or int8 x, int8 w, int32
    accumulator) can run on pairs of k with 8 output columns as the lanes: k even, columns a
    multiple of 8."""
    block = sch.get(matmul)
    if not block.name_hint.startswith(("matmul", "T_matmul")) or block.init is None:
        return False
    data, weight = _matmul_operands(block, check_axes=True)
    if data is None or str(data.source.dtype) not in ("int8", "int16"):
        return False
    k, columns = (int(d) for d in weight.source.shape)
    return str(weight.source.dtype) == "int8" and k % 2 == 0 and columns % LANES == 0


def split_matmul_reduction(sch, matmul, inner_loops) -> s_tir.SBlockRV:
    """Matmul lanes: inside one output tile (`inner_loops`: rows, columns, k) order (k // 2,
    rows, column groups, 8 columns, k % 2), decompose the init and blockize the 8 x 2 update,
    marked for `emit`. Returns the update block."""
    rows, columns, k = inner_loops
    k_o, k_i = sch.split(k, factors=[None, 2])
    group, lane = sch.split(columns, factors=[None, LANES])
    sch.reorder(k_o, rows, group, lane, k_i)
    return _mark_update(sch, matmul, k_o, (rows, group), lane, ON_MATMUL)


def lanes_layout(n, c, h, w):
    """A stage's layout when output channels are the lanes: [n, c // 8, h, w, c % 8]."""
    return n, c // LANES, h, w, c % LANES


def pack_input(sch, conv, parallel: int) -> None:
    """Store the conv's input stage as channel pairs (the stage stays at the root, its pairs
    interleaved along the width, vectorized)."""
    (stage,) = sch.get_producers(conv)
    sch.transform_layout(stage, ("write", 0), lambda n, c, h, w: (n, c // 2, h, 2 * w + c % 2))
    for block in padding_stages(sch, stage):
        n, c, h, w = sch.get_loops(block)
        c_o, c_i = sch.split(c, factors=[None, 2])
        sch.reorder(n, c_o, h, w, c_i)
        row = sch.fuse(w, c_i)  # vectors of PACK_LANES: one of the whole row took LLVM 1.4 s
        extent = int(sch.get(row).extent)
        lanes = max(d for d in range(1, PACK_LANES + 1) if extent % d == 0)
        sch.vectorize(sch.split(row, factors=[None, lanes])[1])
        outer = [lp for lp in (n, c_o, h) if int(sch.get(lp).extent) > 1][:parallel]
        if outer:
            sch.parallel(sch.fuse(*outer) if len(outer) > 1 else outer[0])


def padding_stages(sch, block) -> list:
    """[zero fill, interior copy] of a padding stage (decompose_padding: the copy has no
    border test, which compiled to scalar branches), or [block] when it is not one."""
    try:
        return [sch.decompose_padding(block, sch.get_loops(block)[0]), block]
    except s_tir.ScheduleError:
        return [block]


def split_reduction(sch, conv, inner_loops) -> s_tir.SBlockRV:
    """Inside one output tile (`inner_loops`: tile rows..., columns, rc, ry, rx): order
    (rc // 2, ry, rx, rows, column groups, 8 columns, rc % 2), decompose the init and blockize
    the 8 x 2 update, marked for `emit`. Returns the update block."""
    spatial, (rc, ry, rx) = inner_loops[:-3], inner_loops[-3:]
    rc_o, rc_i = sch.split(rc, factors=[None, 2])
    col_o, col_i = sch.split(spatial[-1], factors=[None, LANES])
    rows = [lp for lp in spatial[:-1] if int(sch.get(lp).extent) > 1]
    sch.reorder(rc_o, ry, rx, *rows, col_o, col_i, rc_i)
    return _mark_update(sch, conv, rc_o, (*rows, col_o), col_i, ON_COLUMNS)


def split_channel_reduction(sch, conv, inner_loops) -> s_tir.SBlockRV:
    """Channel lanes: inside one output tile (`inner_loops`: n, channels, row, columns, rc,
    ry, rx) order (rc // 2, ry, rx, columns, channel groups, 8 channels, rc % 2), decompose
    the init and blockize the 8 x 2 update, marked for `emit`. Returns the update block."""
    n, channels, row, columns, rc, ry, rx = inner_loops
    rc_o, rc_i = sch.split(rc, factors=[None, 2])
    group, lane = sch.split(channels, factors=[None, LANES])
    sch.reorder(rc_o, ry, rx, n, row, columns, group, lane, rc_i)
    return _mark_update(sch, conv, rc_o, (columns, group), lane, ON_CHANNELS)


def _mark_update(sch, block, first_reduce, unrolled, lane, lanes: int) -> s_tir.SBlockRV:
    """Decompose `block`'s init before `first_reduce` (vectorized), unroll `unrolled`,
    blockize the update from `lane` down and mark it for `emit` with `lanes` (ON_COLUMNS,
    ON_CHANNELS or ON_MATMUL). Returns the update block."""
    init = sch.decompose_reduction(block, first_reduce)
    sch.vectorize(sch.get_loops(init)[-1])
    for lp in unrolled:
        sch.unroll(lp)
    update = sch.blockize(lane)
    sch.annotate(update, MARK, lanes)
    return update


def emit(sch, constants: Collection[str] = ()) -> tvm.tirx.PrimFunc:
    """The scheduled function with every marked block's body replaced by its vpmaddwd
    statement, and a stage at the top that packs each weight pair into one int32 (the
    operand). A weight parameter named in `constants` (a constant at every call) is not packed
    in the function: the parameter becomes the packed int32 buffer (`packed_params`), which
    the caller computes once with `pack_weight`. A TVMScript round trip: every other loop,
    buffer and block unchanged."""
    lines = sch.mod["main"].script().split("\n")
    out, weights, i = [], {}, 0
    while i < len(lines):
        line = lines[i]
        out.append(line)
        i += 1
        name = re.search(r'T\.sblock\("([^"]+)"\)', line)
        if name is None or not _marked(sch, name.group(1)):
            continue
        indent = len(line) - len(line.lstrip()) + 4
        while i < len(lines) and _indent(lines[i]) >= indent:
            if _indent(lines[i]) == indent and _is_binding(lines[i]):  # reads/writes: inferred
                out.append(lines[i])
            i += 1
        block = sch.get(sch.get_sblock(name.group(1)))
        lanes = int(block.annotations[MARK])
        layout, statement = _EMITTERS[lanes]
        weight = (_matmul_operands if lanes == ON_MATMUL else _operands)(block)[1].source
        weights[weight.name] = (weight, layout)
        out.append(" " * indent + statement(block))
    signature = next(k for k, text in enumerate(out) if text.strip().startswith("def main("))
    root = signature
    while not out[root + 1].strip().startswith(("T.func_attr", "# with T.sblock(\"root\")")):
        root += 1
    stages = []
    for w, layout in weights.values():
        declared = _declaration(out[signature], w)
        if w.name in constants and declared is not None:
            shape = packed_shape(tuple(int(d) for d in w.shape), layout)
            out[signature] = out[signature].replace(
                declared, f'{_packed_name(w.name, layout)}: T.Buffer(({_dims(shape)}), "int32")')
        else:
            stages += _packing_stage(w, layout)
    out[root + 2:root + 2] = stages
    mod = from_source("\n".join(out))
    return mod["main"] if isinstance(mod, tvm.IRModule) else mod


# packed weights: [f, c2, ry, rx] | [f // 8, c2, ry, rx, f % 8] | a matmul's [n // 8, k2, n % 8]
PAIRS_LAYOUT, LANES_LAYOUT, MATMUL_LAYOUT = "pairs", "lanes", "mlanes"


def packed_shape(shape: tuple[int, ...], layout: str) -> tuple[int, ...]:
    """The int32 packed weight's shape for an (F, C, kh, kw) conv weight or a (K, N) matmul
    weight (int8)."""
    if layout == MATMUL_LAYOUT:
        k, n = shape
        return (n // LANES, k // 2, LANES)
    f, c, kh, kw = shape
    return (f, c // 2, kh, kw) if layout == PAIRS_LAYOUT else (f // LANES, c // 2, kh, kw, LANES)


def pack_weight(weight: np.ndarray, layout: str) -> np.ndarray:
    """The operand the kernel reads, from an (F, C, kh, kw) int8 conv weight:
    pairs[f, c2, ry, rx] = w[f, 2 c2 + 1, ry, rx] << 16 | uint16(w[f, 2 c2, ry, rx]) (int32),
    in the layout `emit` declared: PAIRS_LAYOUT as is, LANES_LAYOUT with 8 output channels
    innermost, [f // 8, c2, ry, rx, f % 8]; from a (K, N) matmul weight (MATMUL_LAYOUT), the
    same with f = n and c = k: [n // 8, k2, n % 8]. The same value as the in-function stage."""
    if layout == MATMUL_LAYOUT:
        return pack_weight(weight.T[:, :, None, None], LANES_LAYOUT)[:, :, 0, 0, :]
    low = weight[:, 0::2].astype(np.int16).view(np.uint16).astype(np.int32)
    pairs = (weight[:, 1::2].astype(np.int32) << 16) | low
    if layout == PAIRS_LAYOUT:
        return np.ascontiguousarray(pairs)
    f = weight.shape[0]
    return np.ascontiguousarray(pairs.reshape(f // LANES, LANES, *pairs.shape[1:])
                                .transpose(0, 2, 3, 4, 1))


def packed_params(before: tvm.tirx.PrimFunc, after: tvm.tirx.PrimFunc) -> dict[int, str]:
    """Parameter index -> layout of each weight `emit` turned into a packed parameter."""
    out = {}
    for i, (old, new) in enumerate(zip(before.params, after.params)):
        for layout in (PAIRS_LAYOUT, LANES_LAYOUT, MATMUL_LAYOUT):
            if new.name == _packed_name(old.name, layout):
                out[i] = layout
    return out


# ----------------------------------------------------------------------------- helpers


def _packed_name(name: str, layout: str) -> str:
    return f"{name}_{layout}"


def _dims(shape) -> str:
    return ", ".join(f"T.int64({int(d)})" for d in shape)


def _declaration(signature: str, weight) -> str | None:
    """The text declaring the int8 parameter `weight` in a printed signature (shapes print as
    T.int64(n) or as plain n), or None."""
    for dims in (_dims(weight.shape), ", ".join(str(int(d)) for d in weight.shape)):
        text = f'{weight.name}: T.Buffer(({dims}), "int8")'
        if text in signature:
            return text
    return None


def _operands(block):
    """(data region, weight region) of a conv block: the two reads besides the accumulator."""
    acc = block.writes[0].source
    reads = [r for r in block.reads if not r.source.same_as(acc)]
    if len(reads) != 2 or len(reads[1].source.shape) != 4:
        return None, None
    return reads[0], reads[1]


def _matmul_operands(block, check_axes: bool = False):
    """(data region, weight region) of a matmul block x[row, k] * w[k, column], else
    (None, None); `check_axes`: also that both read k at the block's reduce variable."""
    acc = block.writes[0].source
    reads = [r for r in block.reads if not r.source.same_as(acc)]
    if len(reads) != 2 or len(acc.shape) != 2 or any(len(r.source.shape) != 2 for r in reads):
        return None, None
    data, weight = reads
    reduce = [v.var for v in block.iter_vars if int(v.iter_type) != 0]
    if check_axes and (len(reduce) != 1 or not (data.region[1].min.same_as(reduce[0])
                                                and weight.region[0].min.same_as(reduce[0]))):
        return None, None
    return data, weight


def _marked(sch, name: str) -> bool:
    try:
        return MARK in sch.get(sch.get_sblock(name)).annotations
    except s_tir.ScheduleError:
        return False


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip()) if line.strip() else 1 << 30


def _is_binding(line: str) -> bool:
    """A block's own lines to keep: iterator bindings and annotations."""
    text = line.strip()
    return text.startswith("T.sblock_attr") or re.match(
        r"v_\w+(, v_\w+)* = T\.axis", text) is not None


def _pairs_name(weight) -> str:
    return _packed_name(weight.name, PAIRS_LAYOUT)


def _packing_stage(weight, layout: str) -> list[str]:
    """TVMScript lines: the in-kernel packing of `weight` into `layout` (packed_shape), each
    int32 = w[.., 2 c2 + 1, ..] << 16 | uint16(w[.., 2 c2, ..]) over the input-channel (conv)
    or k (matmul) pair, the value `pack_weight` computes: the vpmaddwd weight operand."""
    shape = packed_shape(tuple(int(d) for d in weight.shape), layout)
    axes = "fcyxl"[:len(shape)] if layout != MATMUL_LAYOUT else "fcl"
    channel = f"f * T.int64({LANES}) + l"

    def source(odd: str) -> str:  # the int8 weight element of the pair's even/odd half
        pair = f"c * T.int64(2){odd}"
        index = {PAIRS_LAYOUT: ["f", pair, "y", "x"], LANES_LAYOUT: [channel, pair, "y", "x"],
                 MATMUL_LAYOUT: [pair, channel]}[layout]
        return f"{weight.name}[{', '.join(index)}]"

    low = f'T.Cast("int32", T.Cast("uint16", T.Cast("int16", {source("")})))'
    high = f'T.shift_left(T.Cast("int32", {source(" + T.int64(1)")}), 16)'
    packed = _packed_name(weight.name, layout)
    loops = ", ".join(f"{a}0" for a in axes)
    return [
        f'    {packed} = T.sblock_alloc_buffer(({_dims(shape)}), "int32")',
        f"    for {loops} in T.grid({_dims(shape)}):",
        f'        with T.sblock("{packed}"):',
        f'            {", ".join(axes)} = T.axis.remap("{"S" * len(axes)}", [{loops}])',
        f"            {packed}[{', '.join(axes)}] = T.bitwise_or({low}, {high})",
    ]


def _accumulate(target: str, data: str, weights: str) -> str:
    """target += vpmaddwd(data, weights) (int16x16 operands, int32x8 result)."""
    return (f'{target} = {target} + T.call_llvm_pure_intrin("int32x{LANES}", '
            f'"llvm.x86.avx2.pmadd.wd", {data}, {weights})')


def _statement(block) -> str:
    """acc[..., x0:x0+8] += pmaddwd(pairs[..., 2*x0' : +16], broadcast(w_pairs[f, c2, ...]))."""
    data, weight = _operands(block)
    acc = block.writes[0]

    def vector(region, lanes):
        idx = [str(r.min) for r in region.region]
        idx[-1] = f"T.Ramp({idx[-1]}, T.int64(1), {lanes})"
        return f"{region.source.name}[{', '.join(idx)}]"

    idx = [str(r.min) for r in weight.region]
    idx[1] = f"({idx[1]}) // T.int64(2)"
    pair = (f'T.reinterpret("int16x16", T.Broadcast({_pairs_name(weight.source)}'
            f'[{", ".join(idx)}], {LANES}))')
    return _accumulate(vector(acc, LANES), _int16(vector(data, 2 * LANES), data, 2 * LANES),
                       pair)


def _int16(load: str, data, lanes: int) -> str:
    """A vector load of `data`'s buffer as int16 lanes (an int8 input widened)."""
    return load if str(data.source.dtype) == "int16" else f'T.Cast("int16x{lanes}", {load})'


def _lanes_name(weight) -> str:
    return _packed_name(weight.name, LANES_LAYOUT)


def _channel_statement(block) -> str:
    """acc[n, f0, y, x, 0:8] += pmaddwd(broadcast(pairs[n, c2, y', 2 x' : +2] as int32),
    w_lanes[f0, c2, ry, rx, 0:8])."""
    data, weight = _operands(block)
    acc = block.writes[0]
    idx = [str(r.min) for r in acc.region]
    idx[-1] = f"T.Ramp({idx[-1]}, T.int64(1), {LANES})"
    target = f"{acc.source.name}[{', '.join(idx)}]"
    idx = [str(r.min) for r in data.region]
    idx[-1] = f"T.Ramp({idx[-1]}, T.int64(1), 2)"
    load = f"{data.source.name}[{', '.join(idx)}]"
    pair = f'T.reinterpret("int32", {_int16(load, data, 2)})'
    value = f'T.reinterpret("int16x{2 * LANES}", T.Broadcast({pair}, {LANES}))'
    f0, c0, ry, rx = (str(r.min) for r in weight.region)
    lanes = (f'T.reinterpret("int16x{2 * LANES}", {_lanes_name(weight.source)}[({f0}) // '
             f'T.int64({LANES}), ({c0}) // T.int64(2), {ry}, {rx}, T.Ramp(T.int64(0), '
             f'T.int64(1), {LANES})])')
    return _accumulate(target, value, lanes)


def _matmul_statement(block) -> str:
    """acc[r, n0:n0+8] += pmaddwd(broadcast(x[r, k : k+2] as int16 pair), lanes[n0 // 8,
    k // 2, 0:8])."""
    data, weight = _matmul_operands(block)
    acc = block.writes[0]
    row, column = (str(r.min) for r in acc.region)
    target = f"{acc.source.name}[{row}, T.Ramp({column}, T.int64(1), {LANES})]"
    x_row, k0 = (str(r.min) for r in data.region)
    pair = _int16(f"{data.source.name}[{x_row}, T.Ramp({k0}, T.int64(1), 2)]", data, 2)
    value = (f'T.reinterpret("int16x{2 * LANES}", T.Broadcast(T.reinterpret("int32", {pair}), '
             f'{LANES}))')
    k_w, n0 = (str(r.min) for r in weight.region)
    lanes = (f'T.reinterpret("int16x{2 * LANES}", '
             f'{_packed_name(weight.source.name, MATMUL_LAYOUT)}[({n0}) // T.int64({LANES}), '
             f'({k_w}) // T.int64(2), T.Ramp(T.int64(0), T.int64(1), {LANES})])')
    return _accumulate(target, value, lanes)


# MARK value -> (packed weight layout, statement)
_EMITTERS = {
    ON_COLUMNS: (PAIRS_LAYOUT, _statement),
    ON_CHANNELS: (LANES_LAYOUT, _channel_statement),
    ON_MATMUL: (MATMUL_LAYOUT, _matmul_statement),
}
