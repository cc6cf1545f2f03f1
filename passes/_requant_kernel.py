"""The requantization kernel as a TIR PrimFunc, op for op the same as tvmq.numerics.requant.

`requant_prim_func` builds `out = clip(requant(acc) + zero_point, qmin, qmax)` for an int32
accumulator of any shape. Parameters are tensors indexed by the channel `axis` (length 1 and index
0 for per-tensor). The PrimFunc carries the attribute `tvmq.requant` (kind, rounding, axis, zero
point, clamp, out dtype) which is what the NumPy oracle interprets.
"""

from __future__ import annotations

import tvm
from tvm import te, tirx

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


def _i64(v) -> tirx.PrimExpr:
    return tirx.const(v, "int64")


def _sat32(x: tirx.PrimExpr) -> tirx.PrimExpr:
    return tirx.max(tirx.min(x, _i64(INT32_MAX)), _i64(INT32_MIN))


def _double(x32, mult32, shift32):
    """gemmlowp: saturating left shift, SaturatingRoundingDoublingHighMul, RoundingDivideByPOT."""
    shift = shift32.astype("int64")
    left = tirx.max(shift, _i64(0))
    right = tirx.max(-shift, _i64(0))
    a = _sat32(x32.astype("int64") << left)
    b = mult32.astype("int64")
    ab = a * b
    nudge = tirx.Select(ab >= _i64(0), _i64(1 << 30), _i64(1 - (1 << 30)))
    high = tirx.truncdiv(ab + nudge, _i64(1 << 31))
    high = tirx.Select(tirx.all(a == _i64(INT32_MIN), b == _i64(INT32_MIN)), _i64(INT32_MAX), high)
    mask = (_i64(1) << right) - _i64(1)
    remainder = high & mask
    threshold = (mask >> _i64(1)) + tirx.Select(high < _i64(0), _i64(1), _i64(0))
    return (high >> right) + tirx.Select(remainder > threshold, _i64(1), _i64(0))


def _single(x32, mult32, shift32):
    """CMSIS-NN single rounding: round half up of x*m / 2^(31-shift)."""
    p = x32.astype("int64") * mult32.astype("int64")
    k = _i64(31) - shift32.astype("int64")
    return _sat32(((p >> (k - _i64(1))) + _i64(1)) >> _i64(1))


def _tonearest(x32, mult32, shift32):
    """TVM QNN TONEAREST: round half away from zero of x*m / 2^(31-shift)."""
    p = x32.astype("int64") * mult32.astype("int64")
    k = _i64(31) - shift32.astype("int64")
    half = _i64(1) << (k - _i64(1))
    r = tirx.Select(p >= _i64(0), half, half - _i64(1))
    return _sat32((p + r) >> k)


def _fp32(x32, scale):
    """One float32 multiply, round half to even, saturating conversion to int32."""
    r = tirx.nearbyint(x32.astype("float32") * scale)
    r = tirx.max(tirx.min(r, tirx.const(2.0**31 - 128, "float32")), tirx.const(-(2.0**31), "float32"))
    return r.astype("int64")


_MULT_SHIFT = {"double": _double, "single": _single, "tonearest": _tonearest}


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

    def compute(*idx):
        c = idx[axis] if axis is not None else _i64(0)
        if kind == "fp32":
            value = _fp32(acc[idx], params[0][c])
        else:
            value = _MULT_SHIFT[rounding](acc[idx], params[0][c], params[1][c])
        value = value + _i64(zero_point)
        return tirx.max(tirx.min(value, _i64(qmax)), _i64(qmin)).astype(out_dtype)

    out = te.compute(shape, compute, name="requant")
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
    return func.with_attr("tvmq.requant", attrs)
