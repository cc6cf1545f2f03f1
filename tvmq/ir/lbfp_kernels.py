"""LBFP kernels as TIR PrimFuncs, op for op the same as tvmq.numerics.lbfp.

Four kernels, each carrying the attribute `tvmq.lbfp` (op name and format fields) that the NumPy
oracle reads to evaluate it with the golden functions:

    encode   float32 x or int64 accumulator -> uint8 code words, per-channel exponents
             (x = acc * 2^(e_ref - lut_bits) for an accumulator; clip to [lo, hi]; then
             c = #{k : |x| * 2^-E < T[k]} with the float64 threshold table T)
    decode   code words -> float32: (-1)^s * M[c] * 2^E, M the float64 magnitude table
    conv2d   NCHW code words x OIHW code words -> int64 accumulator (lbfp.conv2d)
    matmul   (..., K) code words x (K, N) code words -> int64 accumulator (lbfp.matmul)

Exponents travel as int32 tensors: one per channel of `axis` for encode/decode (block
exponents expanded), one per input channel / weight element / output channel for the MACs.
Tables (thresholds, magnitudes, the product LUT) are float64/int64 tensor parameters, so the
kernels need no log2 or exp2. Powers of two are built from their float64 bit pattern (exact).
"""

from __future__ import annotations

import tvm
from tvm import te, tirx

from tvmq.numerics.lbfp import LBFPFormat

LBFP_ATTR = "tvmq.lbfp"  # the attribute every LBFP kernel carries (see the module doc)


def _i64(v) -> tirx.PrimExpr:
    return tirx.const(v, "int64")


def _pow2(k: tirx.PrimExpr) -> tirx.PrimExpr:
    """2.0^k as float64 for integer k in [-1022, 1023]: the bit pattern (k + 1023) << 52."""
    return tirx.reinterpret("float64", (k.astype("int64") + _i64(1023)) << _i64(52))


def _fmt_attrs(fmt: LBFPFormat) -> dict:
    return {"bits": fmt.bits, "frac_bits": fmt.frac_bits, "lut_bits": fmt.lut_bits}


def format_of(prim: tvm.tirx.PrimFunc, block_axis: int = 1) -> LBFPFormat:
    """The per-channel LBFPFormat (block_size 1 on `block_axis`) a kernel computes with."""
    a = prim.attrs[LBFP_ATTR]
    return LBFPFormat(bits=int(a["bits"]), frac_bits=int(a["frac_bits"]), block_size=1,
                      block_axis=block_axis, lut_bits=int(a["lut_bits"]))


def encode_prim_func(shape, axis: int, fmt: LBFPFormat, source: str, lo: float | None,
                     hi: float | None) -> tvm.tirx.PrimFunc:
    """PrimFunc(x, [e_ref int32[C],] exps int32[C], thresholds float64[c_max], out uint8[shape]).

    source "float": x float32; "acc": x int64 accumulator with per-channel e_ref. lo/hi: the
    clip of a ReLU/Clip epilogue (None: no bound). C = shape[axis].
    """
    shape = [_i64(d) for d in shape]
    axis = axis % len(shape)
    channels = [shape[axis]]
    x = te.placeholder(shape, "int64" if source == "acc" else "float32", name="x")
    e_ref = te.placeholder(channels, "int32", name="e_ref") if source == "acc" else None
    exps = te.placeholder(channels, "int32", name="exps")
    thr = te.placeholder([_i64(fmt.c_max)], "float64", name="thresholds")

    def value(*i):
        v = x[i].astype("float64")
        if e_ref is not None:
            v = v * _pow2(e_ref[i[axis]] - fmt.lut_bits)
        if lo is not None:
            v = tirx.max(v, tirx.const(lo, "float64"))
        if hi is not None:
            v = tirx.min(v, tirx.const(hi, "float64"))
        return v

    v = te.compute(shape, value, name="lbfp_value")
    k = te.reduce_axis((0, fmt.c_max), name="k")
    code = te.compute(shape, lambda *i: te.sum(tirx.Select(
        tirx.abs(v[i]) * _pow2(-exps[i[axis]]) < thr[k], 1, 0), axis=k), name="lbfp_code")

    def word(*i):
        neg = tirx.all(v[i] < tirx.const(0.0, "float64"), code[i] < fmt.c_max)
        sign = tirx.Select(neg, 1 << (fmt.bits - 1), 0)
        return (sign | code[i]).astype("uint8")

    out = te.compute(shape, word, name="lbfp_encode")
    params = [x, *([e_ref] if e_ref is not None else []), exps, thr, out]
    attrs = {"op": "encode", "source": source, "axis": axis, **_fmt_attrs(fmt),
             "has_lo": lo is not None, "lo": float(lo or 0.0),
             "has_hi": hi is not None, "hi": float(hi or 0.0)}
    return _finish(params, attrs)


def decode_prim_func(shape, axis: int, fmt: LBFPFormat) -> tvm.tirx.PrimFunc:
    """PrimFunc(words uint8, exps int32[C], magnitudes float64[c_max + 1], out float32)."""
    shape = [_i64(d) for d in shape]
    axis = axis % len(shape)
    words = te.placeholder(shape, "uint8", name="words")
    exps = te.placeholder([shape[axis]], "int32", name="exps")
    mags = te.placeholder([_i64(fmt.c_max + 1)], "float64", name="magnitudes")

    def value(*i):
        w = words[i].astype("int32")
        mag = mags[w & fmt.c_max] * _pow2(exps[i[axis]])
        return tirx.Select((w >> (fmt.bits - 1)) == 1, -mag, mag).astype("float32")

    out = te.compute(shape, value, name="lbfp_decode")
    return _finish([words, exps, mags, out], {"op": "decode", "axis": axis, **_fmt_attrs(fmt)})


def _product(fmt: LBFPFormat, lut, xw, ww, shift) -> tirx.PrimExpr:
    """sign * (LUT[r] >> (q + shift)) of two code words, 0 if either is the zero code."""
    a, b = xw.astype("int32"), ww.astype("int32")
    ca, cb = a & fmt.c_max, b & fmt.c_max
    s = ca + cb
    total = (s >> fmt.frac_bits) + shift
    mag = tirx.Select(total >= 63, _i64(0),
                      lut[s & (2**fmt.frac_bits - 1)] >> tirx.min(total, 62).astype("int64"))
    mag = tirx.Select(tirx.any(ca == fmt.c_max, cb == fmt.c_max), _i64(0), mag)
    return tirx.Select(((a ^ b) >> (fmt.bits - 1)) == 1, -mag, mag)


def conv2d_prim_func(x_shape, w_shape, strides, padding, dilation, groups: int,
                     fmt: LBFPFormat) -> tvm.tirx.PrimFunc:
    """PrimFunc(x uint8 NCHW, w uint8 OIHW, x_exp int32[C], w_exp int32[OIHW], e_ref int32[O],
    lut int64[2^f], out int64 NCHW); padding is the zero code. Same as lbfp.conv2d."""
    n, c, h, w_ = x_shape
    o, cg, kh, kw = w_shape
    sh, sw = strides
    pt, pl, pb, pr = padding
    dh, dw = dilation
    oh = (h + pt + pb - dh * (kh - 1) - 1) // sh + 1
    ow = (w_ + pl + pr - dw * (kw - 1) - 1) // sw + 1
    og = o // groups
    x = te.placeholder([_i64(d) for d in x_shape], "uint8", name="x")
    wt = te.placeholder([_i64(d) for d in w_shape], "uint8", name="w")
    x_exp = te.placeholder([_i64(c)], "int32", name="x_exp")
    w_exp = te.placeholder([_i64(d) for d in w_shape], "int32", name="w_exp")
    e_ref = te.placeholder([_i64(o)], "int32", name="e_ref")
    lut = te.placeholder([_i64(2**fmt.frac_bits)], "int64", name="lut")
    padded = te.compute(
        [_i64(n), _i64(c), _i64(h + pt + pb), _i64(w_ + pl + pr)],
        lambda b, ch, y, xx: tirx.if_then_else(
            tirx.all(y >= pt, y < pt + h, xx >= pl, xx < pl + w_),
            x[b, ch, y - pt, xx - pl], tirx.const(fmt.c_max, "uint8")), name="lbfp_pad")
    rc = te.reduce_axis((0, cg), name="rc")
    ry = te.reduce_axis((0, kh), name="ry")
    rx = te.reduce_axis((0, kw), name="rx")

    def acc(b, oc, y, xx):
        ch = oc // og * cg + rc
        shift = e_ref[oc] - x_exp[ch] - w_exp[oc, rc, ry, rx]
        term = _product(fmt, lut, padded[b, ch, y * sh + ry * dh, xx * sw + rx * dw],
                        wt[oc, rc, ry, rx], shift)
        return te.sum(term, axis=[rc, ry, rx])

    out = te.compute([_i64(n), _i64(o), _i64(oh), _i64(ow)], acc, name="lbfp_conv2d")
    attrs = {"op": "conv2d", **_fmt_attrs(fmt), "block_size": fmt.block_size,
             "strides": list(strides),
             "padding": list(padding), "dilation": list(dilation), "groups": groups}
    return _finish([x, wt, x_exp, w_exp, e_ref, lut, out], attrs)


def matmul_prim_func(x_shape, w_shape, fmt: LBFPFormat) -> tvm.tirx.PrimFunc:
    """PrimFunc(x uint8 (..., K), w uint8 (K, N), x_exp int32[K], w_exp int32[K, N],
    e_ref int32[N], lut int64[2^f], out int64 (..., N)). Same as lbfp.matmul."""
    k_dim, n_dim = w_shape
    x = te.placeholder([_i64(d) for d in x_shape], "uint8", name="x")
    wt = te.placeholder([_i64(k_dim), _i64(n_dim)], "uint8", name="w")
    x_exp = te.placeholder([_i64(k_dim)], "int32", name="x_exp")
    w_exp = te.placeholder([_i64(k_dim), _i64(n_dim)], "int32", name="w_exp")
    e_ref = te.placeholder([_i64(n_dim)], "int32", name="e_ref")
    lut = te.placeholder([_i64(2**fmt.frac_bits)], "int64", name="lut")
    rk = te.reduce_axis((0, k_dim), name="rk")

    def acc(*i):
        *lead, col = i
        shift = e_ref[col] - x_exp[rk] - w_exp[rk, col]
        return te.sum(_product(fmt, lut, x[(*lead, rk)], wt[rk, col], shift), axis=rk)

    out_shape = [_i64(d) for d in (*x_shape[:-1], n_dim)]
    out = te.compute(out_shape, acc, name="lbfp_matmul")
    return _finish([x, wt, x_exp, w_exp, e_ref, lut, out],
                   {"op": "matmul", **_fmt_attrs(fmt), "block_size": fmt.block_size})


def _finish(params, attrs: dict) -> tvm.tirx.PrimFunc:
    func = te.create_prim_func(params).without_attr("global_symbol")
    return func.with_attr(LBFP_ATTR, attrs)
