"""tvmq's CPU schedules for the fused PrimFuncs of a quantized model.

After TVM's default fusion a quantized layer is one PrimFunc: an optional padding stage, one
reduction (conv2d, depthwise conv2d, matmul, pooling sum) and an elementwise epilogue (bias,
requant, the next layer's zero-point subtract, float glue ops). One schedule covers them all:

    for <outer spatial loops>            parallel over (rows x output-channel tiles)
      for w_o                            one output tile: `tile` rows x `vec` columns
        reduction:  for r..: for tile rows (unrolled): for vec columns (vectorized)
        epilogue:   each stage on the tile, vectorized over the columns

The vector axis is the innermost output axis (a conv's output width, a matmul's output
features), which is contiguous in the output, in the conv input (stride 1) and in a (K, N)
matmul weight, so no weight repacking is needed. The register tile is a second output axis
(`tile_axis`): a conv's output channels share the input vector (one load, `tile` multiply-adds).
With `pairs`, a regular conv's reduction runs on input-channel pairs with vpmaddwd instead
(pair_dot.py: its input stage is stored as interleaved pairs, its weights packed into int32
pairs, once at build time where they are constants: packed_weights.py).
With `channels` (the default for a regular conv with even input channels and output channels
in 8s) the vector lanes are 8 output channels instead of columns: the tile is output channels
x columns, its stages stored in 8-channel groups, so neither the width nor the stride limits
the vector (`_schedule_channels`); a 2-D matmul likewise takes pairs of k with 8 output
columns as the lanes (`_schedule_matmul_lanes`). A softmax or layer norm runs stage by stage,
each stage parallel (`roots`, `_schedule_roots`).
A large 2-D matmul (a recognizer's vocabulary head) instead streams its weight rows
(`stream`): per block of columns, `for k: for rows: acc[row, cols] += x[row, k] * W[k, cols]`,
so W is read contiguously and once, rather than one cache line per k for every tile of rows.
`ScheduleParams` are the knobs the tuner searches; `default_params` picks them from the shape.
Every schedule only reorders the same integer arithmetic, so results stay bit-exact; a function
the schedule does not understand keeps TVM's default loops.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection
from dataclasses import dataclass

import tvm
from tvm import s_tir

from . import pair_dot, threads
from .tabulate import LOOKUP_BLOCK

VECTOR_LANES = 16  # default columns per tile: int32 lanes of two AVX2 registers
PARALLEL_MACS = 1 << 16  # default: threads from this many multiply-adds (measured crossover)
PARALLEL_POOLING = 1 << 14  # default: a pooling sum's threads from this many inputs (measured)
MIN_ELEMENTWISE_VEC = 8  # narrower vectors measured slower than TVM's loops on copies
ROOT_VECTOR_LANES = 32  # widest vector of a stage at the root (padding)
PARALLEL_ROOTS = 1 << 13  # default: stage-by-stage threads from this many output elements
STREAM_WEIGHT = 1 << 18  # default: matmuls streaming from this many weight elements (~L2 size)
STREAM_BLOCK = 16  # default columns per block of a streaming matmul (all rows per block)
CHANNEL_TILE = 16  # default output channels per tile with channel lanes (two AVX2 registers)
CHANNEL_COLUMNS = (5, 4, 6, 7, 8, 3, 2, 1)  # default columns per channel-lane tile: the first
                                            # dividing the width (16 x 5 measured best)


@dataclass(frozen=True)
class ScheduleParams:
    """Knobs of the host schedule for one PrimFunc.

    vec:       columns per output tile (vectorized); divides the innermost output extent.
    tile:      rows per output tile along `tile_axis` (unrolled); divides that extent.
    tile_axis: the tiled output axis counted from the end: 2 = the rows (H) of an NCHW conv
               output or of a matmul, 3 = a conv's output channels.
    parallel:  how many outer loops (of extent > 1) are fused into one parallel loop; 0 = none.
    pairs:     a conv multiplies input-channel pairs with vpmaddwd (pair_dot.py); vec is then
               a multiple of 8.
    stream:    a matmul streams its weight rows (`_schedule_stream`): per block of `tile`
               columns (all rows; `tile` 1: per output row), the reduction runs outside the
               rows and columns, so each weight row is read contiguously; `parallel` then
               splits the columns into that many chunks, one per thread (tile_axis unused).
    roots:     every stage on its own at the root (`_schedule_roots`): its outer loops
               parallel (`parallel` > 0), its innermost data-parallel loop vectorized by `vec`
               where vec divides it (vec 1: not vectorized); the arithmetic order unchanged
               (a softmax, layer norm, a mean, a slice).
    channels:  a conv on input-channel pairs with output channels as the vector lanes
               (`_schedule_channels`, pair_dot.py): `tile` output channels (a multiple of 8)
               x `vec` output columns per tile, columns unrolled (tile_axis unused); a 2-D
               matmul on pairs of k with output columns as the lanes
               (`_schedule_matmul_lanes`): `vec` rows x `tile` columns per tile.
    """

    vec: int
    tile: int = 1
    tile_axis: int = 2
    parallel: int = 0
    pairs: bool = False
    stream: bool = False
    channels: bool = False
    roots: bool = False

    def to_dict(self) -> dict:
        return {"vec": self.vec, "tile": self.tile, "tile_axis": self.tile_axis,
                "parallel": self.parallel, "pairs": self.pairs, "stream": self.stream,
                "channels": self.channels, "roots": self.roots}


@dataclass(frozen=True)
class FuncInfo:
    """What the schedule needs to know about a PrimFunc: its output extents and its reduction
    kind (for the defaults, the candidates and the tuner's table)."""

    kind: str  # conv2d | depthwise | matmul | pooling | reduce | elementwise | other
    out_shape: tuple[int, ...]
    pairs: bool = False  # a conv that pair_dot applies to (on a CPU with AVX2)
    macs: int = 0        # multiply-adds of the reduction (output elements x reduce extents);
                         # elementwise: output elements x stages
    channels: bool = False  # a conv or 2-D matmul pair_dot applies to with output channels
                            # (columns) as the lanes (on a CPU with AVX2)


def describe(func: tvm.tirx.PrimFunc) -> FuncInfo:
    """Classify `func` by its reduction block and give its output shape."""
    sch = _schedule(func)
    try:
        root = sch.get_sblock("root")
    except s_tir.ScheduleError:  # hand-written TIR without blocks (the accelerator's tile loops)
        return FuncInfo("other", ())
    outputs = sch.get_output_blocks(root)
    out_shape = ()
    if len(outputs) == 1:
        out_shape = tuple(int(d) for d in sch.get(outputs[0]).writes[0].source.shape)
    kind, pairs, channels, macs = "elementwise", False, False, 0
    for block in sch.get_child_blocks(root):
        name = sch.get(block).name_hint
        if sch.get(block).init is None or _is_side(sch, block, out_shape):
            continue
        if tuple(int(d) for d in sch.get(block).writes[0].source.shape) != out_shape:
            kind = "other"
            break
        macs = math.prod(out_shape) * math.prod(int(v.dom.extent)
                                                for v in _reduce_vars(sch, block))
        if name.startswith(("conv2d", "group_conv2d")):
            depthwise = name.startswith("group") and _is_depthwise(sch, block)
            kind = "depthwise" if depthwise else "conv2d"
            pairs = pair_dot.applies(sch, block)
            channels = pair_dot.applies_on_channels(sch, block)
        elif name.startswith("matmul") or name.startswith("T_matmul"):
            kind = "matmul"
            channels = len(out_shape) == 2 and pair_dot.applies_to_matmul(sch, block)
        elif len(outputs) == 1 and _same(sch, block, outputs[0]):
            kind = "pooling"  # the sum is the output: a global pooling
        else:
            kind = "reduce"
        break
    if len(outputs) != 1:
        kind = "other"
    if kind == "elementwise":
        stages = [b for b in sch.get_child_blocks(root) if not _is_side(sch, b, out_shape)]
        macs = math.prod(out_shape) * len(stages)
    avx2 = kind in ("conv2d", "matmul") and pair_dot.target_has_avx2()
    return FuncInfo(kind, out_shape, pairs and avx2 and kind == "conv2d", macs, channels and avx2)


def default_params(info: FuncInfo) -> ScheduleParams | None:
    """The untuned schedule, only where it measured faster than TVM's loops: regular conv2d
    and matmul with at least 4 output columns (vector width the largest divisor of the
    columns up to 16 lanes, 4 output channels or matmul rows per tile; a conv whose columns
    divide by 8 runs on channel pairs, pair_dot.py); the outer loop parallel from
    PARALLEL_MACS multiply-adds on a multi-core CPU (below, a thread launch costs more than it
    saves). A depthwise conv gets the schedule only when it goes parallel (2 channels per
    tile): single-threaded it measured no faster than TVM's loops. An elementwise function
    (its side stages at the root, see `_is_side`) is vectorized over its columns when at
    least MIN_ELEMENTWISE_VEC divide them; a pooling sum goes parallel over its outputs from
    PARALLEL_POOLING inputs; a 2-D matmul with at least STREAM_WEIGHT weight elements and no
    row tile streams its weight rows (`_streams`, `_schedule_stream`: one column chunk per
    thread). A regular conv with even input channels and output channels in 8s takes channel
    lanes (16 channels x 5 columns per tile where they divide; `_schedule_channels`). A large
    softmax, layer norm or unvectorizable elementwise function runs stage by stage, each
    parallel (`_on_roots`). Everything else keeps TVM's loops until the tuner finds better
    (None)."""
    if info.kind == "pooling":
        return ScheduleParams(1, parallel=int(info.macs >= PARALLEL_POOLING
                                              and threads.physical_cores() > 1))
    parallel = int(info.macs >= PARALLEL_MACS and threads.physical_cores() > 1)
    if info.channels:  # a conv: channels x columns; a matmul: columns x rows
        lanes, unrolled = ((info.out_shape[1], info.out_shape[-1]) if info.kind == "conv2d"
                           else (info.out_shape[1], info.out_shape[0]))
        return ScheduleParams(vec=next(v for v in CHANNEL_COLUMNS if unrolled % v == 0),
                              tile=CHANNEL_TILE if lanes % CHANNEL_TILE == 0
                              else pair_dot.LANES, parallel=parallel, channels=True)
    if _on_roots(info):
        return ScheduleParams(vec=_root_vec(info.out_shape[-1]), parallel=1, roots=True)
    if len(info.out_shape) < 2 or info.out_shape[-1] < 4:
        return None
    vec = _largest_divisor(info.out_shape[-1], VECTOR_LANES)
    if info.kind == "elementwise":
        return ScheduleParams(vec=vec, parallel=parallel) if vec >= MIN_ELEMENTWISE_VEC else None
    if info.kind not in ("conv2d", "depthwise", "matmul"):
        return None
    if info.kind == "depthwise":
        if not parallel:
            return None
        return ScheduleParams(vec=vec, tile=_largest_divisor(info.out_shape[1], 2), tile_axis=3,
                              parallel=1)
    if _streams(info):
        chunks = 1 + parallel
        chunk = info.out_shape[-1] // chunks
        if chunk % STREAM_BLOCK == 0:  # blocks of all rows: ddddocr's head 10.8 -> 8.2 ms
            return ScheduleParams(vec=pair_dot.LANES, tile=STREAM_BLOCK, parallel=chunks,
                                  stream=True)
        return ScheduleParams(vec=_largest_divisor(chunk, VECTOR_LANES), parallel=chunks,
                              stream=True)
    axis = 3 if len(info.out_shape) == 4 else 2
    tile = _largest_divisor(info.out_shape[-axis], 4)
    pair_vecs = _pair_vecs(info)
    if pair_vecs:
        return ScheduleParams(vec=max(v for v in pair_vecs if v <= VECTOR_LANES), tile=tile,
                              tile_axis=axis, parallel=parallel, pairs=True)
    return ScheduleParams(vec=vec, tile=tile, tile_axis=axis, parallel=parallel)


def _on_roots(info: FuncInfo) -> bool:
    """Default to the stage-by-stage schedule (`_schedule_roots`): a function with one output
    of at least PARALLEL_ROOTS elements on a multi-core CPU that the tile schedule does not
    take: a reduction into a smaller shape (a softmax, a layer norm), a reduction that is not
    a conv, matmul or pooling sum, or an elementwise function whose columns do not vectorize.
    (PP-OCRv5's softmax over 40 x 18385 classes: 1.9 -> 1.0 ms.)"""
    if not info.out_shape or math.prod(info.out_shape) < PARALLEL_ROOTS:
        return False
    if threads.physical_cores() < 2:
        return False
    if info.kind == "elementwise":
        return _largest_divisor(info.out_shape[-1], VECTOR_LANES) < MIN_ELEMENTWISE_VEC
    return info.kind in ("other", "reduce")


def _root_vec(extent: int) -> int:
    """The widest of 16, 8 or 4 lanes that divides `extent`, else 1 (not vectorized)."""
    return next((v for v in (16, 8, 4) if extent % v == 0), 1)


def _streams(info: FuncInfo) -> bool:
    """Default to the streaming matmul schedule: a 2-D matmul output whose weight has at least
    STREAM_WEIGHT elements (a recognizer's vocabulary head), whose rows leave the tile
    schedule no row tile (no divisor from 2 to 4: each weight vector would be loaded once per
    row, down a column) and whose columns split into two chunks of whole vectors. (With a row
    tile the tile schedule measured faster: PP-OCRv5's 40 x 120 x 18400 head 2.8 ms against
    4.5 ms streamed; without, ddddocr's 25 x 1024 x 8210 head 24 ms against 13 ms.)"""
    if info.kind != "matmul" or len(info.out_shape) != 2:
        return False
    rows, columns = info.out_shape
    return (info.macs // max(rows, 1) >= STREAM_WEIGHT and _largest_divisor(rows, 4) == 1
            and columns % 2 == 0
            and _largest_divisor(columns // 2, VECTOR_LANES) >= MIN_ELEMENTWISE_VEC)


def candidate_params(info: FuncInfo) -> list[ScheduleParams]:
    """Every schedule the tuner may try for `info`: vector width (a divisor of the innermost
    output extent, 4 to 32) x tile rows (1, 2, 4, 8 dividing the axis) x tile axis x parallel
    depth (0, 1 or 2 outer loops); for a pair_dot conv, the same with vpmaddwd on widths that
    are multiples of 8."""
    if info.kind == "pooling":
        return [ScheduleParams(1, parallel=parallel) for parallel in (0, 1)]
    if _on_roots(info):
        return [ScheduleParams(vec, parallel=parallel, roots=True) for vec in (1, 4, 8, 16)
                if info.out_shape[-1] % vec == 0 for parallel in (0, 1, 2)]
    if not info.out_shape or info.kind == "other" or (info.out_shape[-1] < 4
                                                      and not info.channels):
        return []
    rank = len(info.out_shape)
    last = info.out_shape[-1]
    vecs = [d for d in _divisors_upto(last, 32) if d >= 4]
    out = {ScheduleParams(vec, 1, 2, parallel) for vec in vecs for parallel in (0, 1, 2)}
    for axis in range(2, rank + 1):
        for tile in (2, 4, 8):
            if info.out_shape[-axis] % tile == 0:
                out |= {ScheduleParams(vec, tile, axis, parallel)
                        for vec in vecs for parallel in (0, 1, 2)}
    out |= {ScheduleParams(vec, tile, 3, parallel, pairs=True) for vec in _pair_vecs(info)
            for tile in (1, 2, 4, 8) if info.out_shape[1] % tile == 0 for parallel in (0, 1, 2)}
    if info.channels:  # vec: a conv's columns or a matmul's rows; tile: the lanes' axis
        unrolled = last if info.kind == "conv2d" else info.out_shape[0]
        out |= {ScheduleParams(vec, tile, parallel=parallel, channels=True)
                for vec in _divisors_upto(unrolled, 10) for tile in (8, 16, 32)
                if info.out_shape[1] % tile == 0 for parallel in (0, 1, 2)}
    if info.kind == "matmul" and rank == 2:
        out |= {ScheduleParams(vec, block, parallel=chunks, stream=True) for chunks in (1, 2)
                for vec in _divisors_upto(last // chunks, 32) if vec >= 4 and last % chunks == 0
                for block in (1, 16, 64) if block == 1 or ((last // chunks) % block == 0
                and block % vec == 0)}
    return sorted(out, key=lambda p: (p.stream, p.channels, p.pairs, p.tile_axis, p.vec,
                                      p.tile, p.parallel))


def schedule(func: tvm.tirx.PrimFunc, params: ScheduleParams,
             constants: Collection[str] = ()) -> tvm.tirx.PrimFunc:
    """`func` with the output-tile schedule applied (raises s_tir.ScheduleError if it does not
    apply; the build's `schedule_host` pass then keeps TVM's loops). A channel-pair conv whose
    weight parameter is named in `constants` takes that weight packed by the caller
    (pair_dot.emit, pair_dot.pack_weight)."""
    sch = _schedule(func)
    root = sch.get_sblock("root")
    if params.roots:
        return _schedule_roots(sch, root, params)
    (out,) = sch.get_output_blocks(root)
    if sch.get(out).init is not None:
        return _schedule_pooling(sch, root, out, params)
    out_shape = tuple(int(d) for d in sch.get(out).writes[0].source.shape)
    if params.stream:
        return _schedule_stream(sch, root, out_shape, params)
    if params.channels and len(out_shape) == 2:
        return _schedule_matmul_lanes(sch, root, out_shape, params, constants)
    if params.channels:
        return _schedule_channels(sch, root, out_shape, params, constants)
    conv = _pair_conv(sch, root) if params.pairs else None
    # a copy-only pad is inlined; padding with a border stays (its test would sit in the
    # conv's inner loop); a pair_dot conv's input stage stays (it is stored as pairs); so do
    # side stages smaller than the output
    def at_root(block) -> bool:
        return _is_padding(sch, block) or _is_side(sch, block, out_shape) or (
            conv is not None and _same(sch, block, sch.get_producers(conv)[0]))

    inline_single_reads(sch, root, keep=lambda b: at_root(b) or _near_lookup(sch, b))
    (out,) = sch.get_output_blocks(root)
    loops = sch.get_loops(out)
    rank = len(loops)
    if rank < 1:
        raise s_tir.ScheduleError("output block has no loops")
    # Output tile: split the innermost axis by vec and the tile axis by tile.
    _, w_i = sch.split(loops[-1], factors=[None, params.vec])
    loops = sch.get_loops(out)
    tiled = params.tile > 1 and params.tile_axis <= rank
    if tiled:
        _, t_i = sch.split(loops[rank - params.tile_axis], factors=[None, params.tile])
        loops = sch.get_loops(out)
        # loops: [..., t_o, t_i, ..., w_o, w_i] -> [..., t_o, ..., w_o, t_i, w_i]
        outer = [lp for lp in loops if not _same(sch, lp, t_i) and not _same(sch, lp, w_i)]
        sch.reorder(*outer, t_i, w_i)
        loops = sch.get_loops(out)
    tile_loop = loops[-3] if tiled else loops[-2]   # w_o: everything in the tile hangs here
    for block in reversed(intermediates(sch, root)):
        if at_root(block):
            continue
        sch.compute_at(block, tile_loop, preserve_unit_loops=True)
    _parallel_outer(sch, sch.get_loops(out), tile_loop, params.parallel)
    if conv is not None:
        pair_dot.pack_input(sch, conv, params.parallel)
    for block in intermediates(sch, root):
        if _is_padding(sch, block) and conv is None:
            _schedule_padding(sch, block, params.parallel)
    reductions = []
    for block in sch.get_child_blocks(tile_loop):
        if conv is not None and _same(sch, block, conv):
            pair_dot.split_reduction(sch, block, sch.get_loops(block)[_depth(sch, block,
                                                                             tile_loop):])
        elif _vectorize_tile(sch, block, tile_loop):
            reductions.append(block)
    for block in reductions:  # last: parallel and vectorize need complete blocks
        loops = sch.get_loops(block)
        sch.decompose_reduction(block, loops[_depth(sch, block, tile_loop)])  # 1st reduce loop
    return pair_dot.emit(sch, constants) if conv is not None else sch.mod["main"]


# ----------------------------------------------------------------------------- helpers


def _schedule(func: tvm.tirx.PrimFunc) -> s_tir.Schedule:
    sch = s_tir.Schedule(tvm.IRModule({"main": func}))
    sch.work_on("main")
    return sch


def intermediates(sch, root):
    """The child blocks of `root` that do not write a function output."""
    outs = {sch.get(b).name_hint for b in sch.get_output_blocks(root)}
    return [b for b in sch.get_child_blocks(root) if sch.get(b).name_hint not in outs]


def inline_single_reads(sch, root, keep=lambda block: False) -> None:
    """Inline every intermediate stage that each consumer element reads once, except those
    `keep(block)` says to keep; stages read several times (a requant's first stage) and
    reductions stay. Shared with the microcontroller target's schedule."""
    changed = True
    while changed:
        changed = False
        for block in intermediates(sch, root):
            if sch.get(block).init is not None or keep(block):
                continue
            written = sch.get(block).writes[0].source.name
            if any(_reads(sch.get(c), written) > 1 for c in sch.get_consumers(block)):
                continue
            try:
                sch.compute_inline(block)
            except s_tir.ScheduleError:
                continue
            changed = True
            break


def _pair_conv(sch, root):
    """The conv block of a function scheduled with `pairs` (raises if pair_dot does not apply)."""
    convs = [b for b in sch.get_child_blocks(root) if sch.get(b).init is not None]
    if len(convs) != 1 or not pair_dot.applies(sch, convs[0]):
        raise s_tir.ScheduleError("pairs: not a conv on int16 channel pairs with stride 1")
    if not pair_dot.target_has_avx2():
        raise s_tir.ScheduleError("pairs: the target has no AVX2")
    return convs[0]


def _near_lookup(sch, block) -> bool:
    """A lookup or a stage feeding one: both stay stages of their own (not inlined)."""
    return _is_lookup(sch, block) or any(_is_lookup(sch, c) for c in sch.get_consumers(block))


def _is_lookup(sch, block) -> bool:
    """A table lookup (tabulate.py): its 8-bit index stage is kept and the lookup runs as a
    scalar loop (a vectorized gather compiles to lane extracts and inserts, slower)."""
    return LOOKUP_BLOCK in sch.get(block).annotations


def _is_side(sch, block, out_shape: tuple) -> bool:
    """A stage that reads and writes fewer elements than the output has, such as a
    squeeze-excite block's per-channel scale (a 1x1 conv on the pooled channels) broadcast
    into the output: it runs once at the root, not once per output tile. (A softmax's max and
    sum read the whole input: they are not side stages.)"""
    size = math.prod(out_shape)
    regions = [*sch.get(block).reads, *sch.get(block).writes]
    return bool(out_shape) and all(math.prod(int(d) for d in r.source.shape) < size
                                   for r in regions)


def _is_padding(sch, block) -> bool:
    return sch.get(block).name_hint.startswith("pad") and "if_then_else" in str(sch.get(block).body)


def _is_depthwise(sch, block) -> bool:
    """A conv whose reduction over input channels (its first reduce variable) has extent 1."""
    reduce = _reduce_vars(sch, block)
    return bool(reduce) and int(reduce[0].dom.extent) == 1


def _reduce_vars(sch, block) -> list:
    return [v for v in sch.get(block).iter_vars if int(v.iter_type) != 0]  # 0: data parallel


def _reads(block, buffer_name: str) -> int:
    """How many loads of `buffer_name` a block's body has (TIR has no Python visitor here)."""
    return len(re.findall(rf"\b{re.escape(buffer_name)}\[", str(block.body)))


def _vectorize_tile(sch, block, tile_loop) -> bool:
    """Inside one output tile: a reduction runs its reduce loops outside the tile rows and
    columns (rows unrolled, columns vectorized); an elementwise stage vectorizes its columns.
    Returns whether `block` is a reduction (to be decomposed last)."""
    inner = sch.get_loops(block)[_depth(sch, block, tile_loop):]
    if sch.get(block).init is None:  # columns vectorized, rows unrolled (not fused: the
        if inner and not _is_lookup(sch, block):  # rows x columns are not contiguous)
            sch.vectorize(inner[-1])
            for row in inner[:-1]:
                if _extent(sch, row) > 1:
                    sch.unroll(row)
        return False
    n_reduce = len(_reduce_vars(sch, block))
    spatial, reduce = inner[:len(inner) - n_reduce], inner[len(inner) - n_reduce:]
    col = spatial[-1] if spatial else None
    rows = [lp for lp in spatial[:-1] if _extent(sch, lp) > 1]
    if col is not None and reduce:
        sch.reorder(*reduce, *rows, col)
    if col is not None:
        sch.vectorize(col)
    for row in rows:
        sch.unroll(row)
    return True


def _depth(sch, block, loop) -> int:
    """Index of the first loop of `block` below `loop`."""
    loops = sch.get_loops(block)
    return next(i for i, lp in enumerate(loops) if _same(sch, lp, loop)) + 1


def _same(sch, a, b) -> bool:
    return sch.get(a).same_as(sch.get(b))


def _extent(sch, loop) -> int:
    return int(sch.get(loop).extent)


def _parallel_outer(sch, loops, tile_loop, depth: int) -> None:
    outer = []
    for lp in loops:
        if _same(sch, lp, tile_loop):
            break
        outer.append(lp)
    outer = [lp for lp in outer if _extent(sch, lp) > 1][:depth]
    if not outer:
        return
    sch.parallel(sch.fuse(*outer) if len(outer) > 1 else outer[0])


def _schedule_pooling(sch, root, out, params: ScheduleParams) -> tvm.tirx.PrimFunc:
    """A function whose output is its reduction (a global pooling sum): the outer output loops
    parallel, the stages before the sum computed per output element, the sum in its order."""
    inline_single_reads(sch, root, keep=lambda b: _near_lookup(sch, b))
    loops = sch.get_loops(out)
    spatial = len(sch.get(out).writes[0].region)
    for block in reversed(intermediates(sch, root)):
        sch.compute_at(block, loops[spatial - 1], preserve_unit_loops=True)
    _parallel_outer(sch, loops, loops[spatial], params.parallel)
    return sch.mod["main"]


def _schedule_stream(sch, root, out_shape: tuple, params: ScheduleParams) -> tvm.tirx.PrimFunc:
    """A matmul whose weight (K, N) is read row by row: the output's columns split into
    `parallel` chunks (a parallel loop), then every stage computed per output row on the
    chunk (`tile` 1) or on blocks of `tile` columns of all rows, the reduction with k outside
    the rows and columns (vectorized by vec): acc[r, n] += x[r, k] * W[k, n] reads W's row k
    contiguously, once per output row (`tile` 1) or once in all (blocks, whose accumulators,
    rows x tile, stay in the L1 cache). The tile schedule instead reads a column tile of W
    down all K rows, one cache line per row, again for every tile of rows."""
    matmuls = [b for b in sch.get_child_blocks(root) if sch.get(b).init is not None
               and not _is_side(sch, b, out_shape)]
    if len(matmuls) != 1 or len(out_shape) != 2 or len(_reduce_vars(sch, matmuls[0])) != 1:
        raise s_tir.ScheduleError("stream: not a matmul with a 2-D output")
    chunks = max(params.parallel, 1)
    block_columns = max(params.tile, params.vec)
    if out_shape[1] % (chunks * block_columns) or block_columns % params.vec:
        raise s_tir.ScheduleError(f"stream: {chunks} chunks of {block_columns} columns in "
                                  f"vectors of {params.vec} do not divide {out_shape[1]} "
                                  "columns")
    inline_single_reads(sch, root, keep=lambda b: _is_side(sch, b, out_shape)
                        or _near_lookup(sch, b))
    (out,) = sch.get_output_blocks(root)
    row, col = sch.get_loops(out)
    chunk, col = sch.split(col, factors=[chunks, None])
    if params.tile > 1:
        unit, col = sch.split(col, factors=[None, block_columns])
        sch.reorder(chunk, unit, row, col)
    else:
        sch.reorder(chunk, row, col)
        unit = row
    for block in reversed(intermediates(sch, root)):
        if not _is_side(sch, block, out_shape):
            sch.compute_at(block, unit, preserve_unit_loops=True)
    if chunks > 1:
        sch.parallel(chunk)
    for block in sch.get_child_blocks(unit):
        inner = sch.get_loops(block)[_depth(sch, block, unit):]
        if sch.get(block).init is not None:  # [rows, columns, k]
            rows, col, k = inner[-3:]
            col_o, col_i = sch.split(col, factors=[None, params.vec])
            sch.reorder(k, rows, col_o, col_i)
            sch.vectorize(col_i)
            init = sch.decompose_reduction(block, k)
            sch.vectorize(sch.split(sch.get_loops(init)[-1], factors=[None, params.vec])[1])
        elif inner and not _is_lookup(sch, block):
            sch.vectorize(sch.split(inner[-1], factors=[None, params.vec])[1])
    return sch.mod["main"]


def _schedule_roots(sch, root, params: ScheduleParams) -> tvm.tirx.PrimFunc:
    """Every stage on its own at the root, each element computed in the same order: its outer
    data-parallel loops fused and parallel (up to `params.parallel` of them), its innermost
    data-parallel loop vectorized by `params.vec` (when vec > 1 divides it). A reduction
    whose reduced loops are not innermost (a softmax over channels) has them moved outside
    its innermost data-parallel loop, which then vectorizes; each output element still sums
    in the same order, so float results do not change."""
    for block in sch.get_child_blocks(root):
        loops = sch.get_loops(block)
        kinds = [int(v.iter_type) for v in sch.get(block).iter_vars]
        if len(kinds) != len(loops) or not loops:
            raise s_tir.ScheduleError(f"roots: {sch.get(block).name_hint} is not one loop per "
                                      "axis")
        spatial = [lp for lp, kind in zip(loops, kinds) if kind == 0]
        reduce = [lp for lp, kind in zip(loops, kinds) if kind != 0]
        # the innermost loop when data-parallel (a sum along the innermost axis stays as it
        # is: moving it out would read the rows in strides)
        inner = loops[-1] if kinds[-1] == 0 else None
        outer = [lp for lp in spatial if inner is None or not _same(sch, lp, inner)]
        if reduce:
            sch.reorder(*outer, *reduce, *([inner] if inner is not None else []))
            if inner is not None:
                init = sch.decompose_reduction(block, reduce[0])
                _vectorize_by(sch, sch.get_loops(init)[-1], params.vec)
        if inner is not None:
            _vectorize_by(sch, inner, params.vec)
        outer = [lp for lp in outer if _extent(sch, lp) > 1][:params.parallel]
        if outer:
            sch.parallel(sch.fuse(*outer) if len(outer) > 1 else outer[0])
    return sch.mod["main"]


def _vectorize_by(sch, loop, vec: int) -> None:
    if vec > 1 and _extent(sch, loop) % vec == 0:
        sch.vectorize(sch.split(loop, factors=[None, vec])[1] if _extent(sch, loop) > vec
                      else loop)


def _schedule_matmul_lanes(sch, root, out_shape: tuple, params: ScheduleParams,
                           constants: Collection[str] = ()) -> tvm.tirx.PrimFunc:
    """A 2-D matmul on pairs of k with 8 output columns as the vector lanes (pair_dot.py): the
    output tile is `vec` rows x `tile` columns, column tiles outermost (each tile's packed
    weight columns are read from memory once and reused by every row tile); inside a tile
    the rows and column groups are unrolled, and the epilogue runs on 8-column vectors."""
    matmuls = [b for b in sch.get_child_blocks(root) if sch.get(b).init is not None
               and not _is_side(sch, b, out_shape)]
    if len(matmuls) != 1 or not pair_dot.applies_to_matmul(sch, matmuls[0]):
        raise s_tir.ScheduleError("channels: not a matmul on pairs of k with columns in 8s")
    if not pair_dot.target_has_avx2():
        raise s_tir.ScheduleError("channels: the target has no AVX2")
    rows, columns = out_shape
    if params.tile % pair_dot.LANES or columns % params.tile or rows % params.vec:
        raise s_tir.ScheduleError(f"channels: a tile of {params.vec} rows x {params.tile} "
                                  f"columns does not divide {out_shape}")
    (matmul,) = matmuls
    inline_single_reads(sch, root, keep=lambda b: _is_side(sch, b, out_shape)
                        or _near_lookup(sch, b))
    (out,) = sch.get_output_blocks(root)
    row, column = sch.get_loops(out)
    row_o, row_i = sch.split(row, factors=[None, params.vec])
    column_o, column_i = sch.split(column, factors=[None, params.tile])
    sch.reorder(column_o, row_o, row_i, column_i)
    for block in reversed(intermediates(sch, root)):
        if not _is_side(sch, block, out_shape):
            sch.compute_at(block, row_o, preserve_unit_loops=True)
    _parallel_outer(sch, sch.get_loops(out), row_o, params.parallel)
    for block in sch.get_child_blocks(row_o):
        inner = sch.get_loops(block)[_depth(sch, block, row_o):]
        if _same(sch, block, matmul):
            pair_dot.split_matmul_reduction(sch, block, inner)
        elif not _is_lookup(sch, block):  # [rows, columns]: 8 columns a vector
            group, lane = sch.split(inner[-1], factors=[None, pair_dot.LANES])
            sch.vectorize(lane)
            for lp in (*inner[:-1], group):
                sch.unroll(lp)
    return pair_dot.emit(sch, constants)


def _schedule_channels(sch, root, out_shape: tuple, params: ScheduleParams,
                       constants: Collection[str] = ()) -> tvm.tirx.PrimFunc:
    """A conv with output channels as the vector lanes (pair_dot.py, channel lanes): the output
    tile is `tile` channels x `vec` columns of one row; inside it the conv accumulates 8
    channels per vector (columns and channel groups unrolled) and every epilogue stage runs
    vectorized over 8 channels. The tile's stages are stored as 8-channel groups
    (pair_dot.lanes_layout), so a vector is contiguous; the output, NCHW, is written with
    8-lane strided stores."""
    convs = [b for b in sch.get_child_blocks(root) if sch.get(b).init is not None
             and not _is_side(sch, b, out_shape)]
    if len(convs) != 1 or len(out_shape) != 4 or not pair_dot.applies_on_channels(sch, convs[0]):
        raise s_tir.ScheduleError("channels: not a conv on int16 channel pairs with output "
                                  "channels in groups of 8")
    if not pair_dot.target_has_avx2():
        raise s_tir.ScheduleError("channels: the target has no AVX2")
    if params.tile % pair_dot.LANES or out_shape[1] % params.tile or out_shape[3] % params.vec:
        raise s_tir.ScheduleError(f"channels: a tile of {params.tile} channels x {params.vec} "
                                  f"columns does not divide {out_shape}")
    (conv,) = convs
    (stage,) = sch.get_producers(conv)

    def at_root(block) -> bool:
        return _is_padding(sch, block) or _is_side(sch, block, out_shape) or _same(sch, block,
                                                                                   stage)

    inline_single_reads(sch, root, keep=lambda b: at_root(b) or _near_lookup(sch, b))
    (out,) = sch.get_output_blocks(root)
    tiled = [b for b in intermediates(sch, root) if not at_root(b)]
    for block in tiled:
        if tuple(int(d) for d in sch.get(block).writes[0].source.shape) == out_shape:
            sch.transform_layout(block, ("write", 0), pair_dot.lanes_layout)
    n, channels, row, columns = sch.get_loops(out)
    channel_o, channel_i = sch.split(channels, factors=[None, params.tile])
    column_o, column_i = sch.split(columns, factors=[None, params.vec])
    sch.reorder(n, channel_o, row, column_o, channel_i, column_i)
    for block in reversed(tiled):
        sch.compute_at(block, column_o, preserve_unit_loops=True)
    _parallel_outer(sch, sch.get_loops(out), column_o, params.parallel)
    pair_dot.pack_input(sch, conv, params.parallel)
    for block in sch.get_child_blocks(column_o):
        inner = sch.get_loops(block)[_depth(sch, block, column_o):]
        if _same(sch, block, conv):
            pair_dot.split_channel_reduction(sch, block, inner)
        elif not _is_lookup(sch, block):  # 8 channels a vector
            # a stage computed at the tile: [n, channels, row, columns]; the output: the
            # tile's [channels, columns]
            channel, column = (inner[1], inner[3]) if len(inner) == 4 else inner
            group, lane = sch.split(channel, factors=[None, pair_dot.LANES])
            sch.reorder(column, group, lane)
            sch.vectorize(lane)
            for lp in (column, group):
                sch.unroll(lp)
    return pair_dot.emit(sch, constants)


def _schedule_padding(sch, block, depth: int) -> None:
    """A padding stage: a vectorized zero fill, then the interior copied without the border
    test (pair_dot.padding_stages)."""
    for stage in pair_dot.padding_stages(sch, block):
        _schedule_elementwise(sch, stage, depth)


def _schedule_elementwise(sch, block, depth: int) -> None:
    """A stage left at the root (padding): parallel outer loops, the innermost vectorized in
    vectors of at most ROOT_VECTOR_LANES (LLVM took seconds to compile a 322-lane vector)."""
    loops = sch.get_loops(block)
    inner = loops[-1]
    lanes = _largest_divisor(_extent(sch, inner), ROOT_VECTOR_LANES)
    if lanes < _extent(sch, inner):
        inner = sch.split(inner, factors=[None, lanes])[1]
        loops = sch.get_loops(block)[:-1]
    sch.vectorize(inner)
    outer = [lp for lp in loops[:-1] if _extent(sch, lp) > 1][:depth]
    if outer:
        sch.parallel(sch.fuse(*outer) if len(outer) > 1 else outer[0])


def _pair_vecs(info: FuncInfo) -> list[int]:
    """Tile widths for a pair_dot conv: multiples of 8 dividing the output width, up to 32."""
    if not info.pairs:
        return []
    return [v for v in range(pair_dot.LANES, 33, pair_dot.LANES) if info.out_shape[-1] % v == 0]


def _largest_divisor(n: int, limit: int) -> int:
    return max(d for d in range(1, min(n, limit) + 1) if n % d == 0)


def _divisors_upto(n: int, limit: int) -> list[int]:
    return [d for d in range(1, min(n, limit) + 1) if n % d == 0]
