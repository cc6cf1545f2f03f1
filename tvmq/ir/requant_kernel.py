"""The requantization kernel as a TIR PrimFunc, op for op the same as tvmq.numerics.requant.

`requant_prim_func` builds `out = clip(requant(acc) + zero_point, qmin, qmax)` for an int32
accumulator of any shape. Parameters are tensors indexed by the channel `axis` (length 1 and index
0 for per-tensor). The PrimFunc carries the attribute `tvmq.requant` (kind, rounding, axis, zero
point, clamp, out dtype) which is what the NumPy oracle interprets.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import te, tirx

from tvmq.numerics import Requant

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
REQUANT_ATTR = "tvmq.requant"  # the attribute every requant kernel carries (see the module doc)


def _i64(v) -> tirx.PrimExpr:
    return tirx.const(v, "int64")


def _sat32(x: tirx.PrimExpr) -> tirx.PrimExpr:
    return tirx.max(tirx.min(x, _i64(INT32_MAX)), _i64(INT32_MIN))


def _i32(v) -> tirx.PrimExpr:
    return tirx.const(v, "int32")


# Each rounding mode is two stages: `pre` maps (acc, multiplier, shift) to an intermediate, `post`
# maps (intermediate, shift) to the rounded result, an int32 value. Splitting at the value that
# the rounding reads several times keeps expressions small (one shared tree made lowering take
# seconds). Double rounding and fp32 are written for SIMD: int32 lanes wherever the values fit
# (AVX2 has no 64-bit arithmetic shift, min or max; each cost a compare-and-blend sequence).


def _saturating_left_shift(x32, shift32):
    """sat32(x << max(shift, 0)) on int32 lanes: the shift overflowed iff shifting back does not
    give x. The shift is capped at 31, where every x except 0 and -1 saturates already."""
    left = tirx.min(tirx.max(shift32, _i32(0)), _i32(31))
    shifted = x32 << left
    saturated = tirx.Select(x32 < _i32(0), _i32(INT32_MIN), _i32(INT32_MAX))
    return tirx.Select((shifted >> left) != x32, saturated, shifted)


def _double_pre(x32, mult32, shift32):
    """SaturatingRoundingDoublingHighMul(saturating x << left, multiplier) (gemmlowp), int32.

    gemmlowp's (ab + nudge) / 2^31 with C division equals floor((ab + 2^30) / 2^31) for both
    signs of ab (for ab < 0: ceil((ab + 1 - 2^30) / 2^31) = floor((ab + 2^30) / 2^31)), so the
    high half is one add and one shift of the int32 x int32 sign-extended product (vpmuldq)."""
    a = _saturating_left_shift(x32, shift32)
    ab = a.astype("int64") * mult32.astype("int64")
    high = ((ab + _i64(1 << 30)) >> _i64(31)).astype("int32")
    both_min = tirx.all(a == _i32(INT32_MIN), mult32 == _i32(INT32_MIN))
    return tirx.Select(both_min, _i32(INT32_MAX), high)


def _double_post(high, shift32):
    """RoundingDivideByPOT(high, right): round half away from zero (gemmlowp), on int32 lanes
    (right = max(-shift, 0) <= 31; the per-channel mask 2^right - 1 is made in int64)."""
    right = tirx.max(-shift32, _i32(0))
    mask = ((_i64(1) << right.astype("int64")) - _i64(1)).astype("int32")
    threshold = (mask >> _i32(1)) + tirx.Select(high < _i32(0), _i32(1), _i32(0))
    return (high >> right) + tirx.Select((high & mask) > threshold, _i32(1), _i32(0))


def _valid_shift(shift32):
    """shift clamped to its valid range [-31, 30] (a no-op on valid parameters). TVM's
    simplifier needs the bound: without it, it proves the vectorized `sat32((p >> (k - 1)) + 1 >>
    1)` never below INT32_MIN and drops that clamp (a wrong sign on saturating values)."""
    return tirx.max(tirx.min(shift32, _i32(30)), _i32(-31))


def _product(x32, mult32, shift32):
    return x32.astype("int64") * mult32.astype("int64")


def _single_post(p, shift32):
    """CMSIS-NN single rounding: round half up of p / 2^(31-shift)."""
    k = _i64(31) - _valid_shift(shift32).astype("int64")
    return _sat32(((p >> (k - _i64(1))) + _i64(1)) >> _i64(1)).astype("int32")


def _tonearest_post(p, shift32):
    """TVM QNN TONEAREST: round half away from zero of p / 2^(31-shift)."""
    k = _i64(31) - _valid_shift(shift32).astype("int64")
    half = _i64(1) << (k - _i64(1))
    return _sat32((p + tirx.Select(p >= _i64(0), half, half - _i64(1))) >> k).astype("int32")


def _fp32(x32, scale):
    """One float32 multiply, round half to even, saturating conversion to int32."""
    r = tirx.nearbyint(x32.astype("float32") * scale)
    hi, lo = tirx.const(2.0**31 - 128, "float32"), tirx.const(-(2.0**31), "float32")
    r = tirx.max(tirx.min(r, hi), lo)
    return r.astype("int32")


_MULT_SHIFT = {
    "double": (_double_pre, _double_post),
    "single": (_product, _single_post),
    "tonearest": (_product, _tonearest_post),
}


def requant_prim_func(
    shape: tuple[int, ...],
    channels: int,
    axis: int | None,
    kind: str,
    rounding: str | None,
    zero_point: int,
    qmin: int,
    qmax: int,
    out_dtype: str,
) -> tvm.tirx.PrimFunc:
    """PrimFunc(acc int32[shape], params..., out[shape]) for one requantization.

    mult_shift params: multiplier int32[channels], shift int32[channels];
    fp32 params: scale float32[channels]. Per-tensor: channels == 1 and axis is None.
    """
    shape = [_i64(d) for d in shape]  # int64 extents, like LegalizeOps, so FuseTIR can merge
    acc = te.placeholder(shape, "int32", name="acc")
    pshape = [_i64(channels)]
    if kind == "fp32":
        params = [te.placeholder(pshape, "float32", name="scale")]
    else:
        params = [te.placeholder(pshape, "int32", name=n) for n in ("multiplier", "shift")]

    def channel(idx):
        return idx[axis] if axis is not None else _i64(0)

    # clip(r + zp, qmin, qmax) == clip(r, qmin - zp, qmax - zp) + zp, without int32 overflow
    low = max(qmin - zero_point, INT32_MIN)
    high = min(qmax - zero_point, INT32_MAX)

    def clamp(value32):
        value32 = tirx.max(tirx.min(value32, _i32(high)), _i32(low))
        return (value32 + _i32(zero_point)).astype(out_dtype)

    if kind == "fp32":
        out = te.compute(shape, lambda *i: clamp(_fp32(acc[i], params[0][channel(i)])),
                         name="requant")
    else:
        pre, post = _MULT_SHIFT[rounding]
        mid = te.compute(shape, lambda *i: pre(acc[i], *(p[channel(i)] for p in params)),
                         name="requant_pre")
        out = te.compute(shape, lambda *i: clamp(post(mid[i], params[1][channel(i)])),
                         name="requant")
    func = te.create_prim_func([acc, *params, out]).without_attr("global_symbol")
    attrs = {
        "kind": kind,
        "rounding": rounding or "",
        "axis": -1 if axis is None else axis,
        "zero_point": zero_point,
        "qmin": qmin,
        "qmax": qmax,
        "out_dtype": out_dtype,
    }
    return func.with_attr(REQUANT_ATTR, attrs)


def golden_requant(prim: tvm.tirx.PrimFunc, params: list[np.ndarray]):
    """What a `requant_prim_func` kernel computes, for tvmq.numerics.requantize.

    Returns (Requant, axis or None, {"zero_point", "qmin", "qmax"}, out_dtype); per-tensor
    parameters, which travel as length-1 tensors, come back as scalars.
    """
    a = prim.attrs[REQUANT_ATTR]
    axis = None if int(a["axis"]) < 0 else int(a["axis"])
    if axis is None:
        params = [np.asarray(p).reshape(()) for p in params]
    if str(a["kind"]) == "fp32":
        rq = Requant("fp32", None, None, None, params[0])
    else:
        rq = Requant("mult_shift", str(a["rounding"]), params[0], params[1], None)
    clamp = {k: int(a[k]) for k in ("zero_point", "qmin", "qmax")}
    return rq, axis, clamp, str(a["out_dtype"])
