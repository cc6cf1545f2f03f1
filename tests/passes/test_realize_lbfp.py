"""RealizeLBFP and its kernels: every kernel equals the golden lbfp functions, and compiled LBFP
models equal the NumPy oracle bit for bit on small graphs of each MAC kind."""

import dataclasses

import numpy as np
import pytest
import tvm
from onnx import helper
from tvm import relax
from tvm.script import ir as I
from tvm.script import relax as R
from tvmq.passes.realize_lbfp import RealizeLBFP
from tvmq.targets.host import build

import tvmq
from tests.conftest import assert_taps_equal_oracle, make_onnx
from tvmq.errors import CompileError
from tvmq.frontend import load_model
from tvmq.ir import lbfp_kernels as kernels
from tvmq.numerics import lbfp
from tvmq.report import sqnr_db

RNG = np.random.default_rng(11)
FORMATS = [(8, 4), (8, 2), (6, 2), (4, 1), (4, 0), (2, 0)]


def _run(prim, out_shape, out_dtype, *args):
    """Build one kernel behind a Relax call_tir and run it."""
    args = [np.ascontiguousarray(a) for a in args]
    params = [relax.Var(f"a{i}", relax.TensorType(a.shape, str(a.dtype)))
              for i, a in enumerate(args)]
    bb = relax.BlockBuilder()
    with bb.function("main", params):
        gv = bb.add_func(prim, "kernel")
        bb.emit_func_output(bb.emit(relax.call_tir(gv, params,
                                                   relax.TensorType(out_shape, out_dtype))))
    vm = relax.VirtualMachine(tvm.compile(bb.get(), target="llvm"), tvm.cpu())
    return vm["main"](*[tvm.runtime.tensor(a) for a in args]).numpy()


def _activation(shape):
    x = RNG.normal(size=shape) * np.exp(RNG.normal(size=(1, shape[1], 1, 1)) * 2)
    x[0, 0, 0, :2] = 0
    return x.astype(np.float32)


@pytest.mark.parametrize("bits,frac", FORMATS)
def test_kernels_equal_the_golden_functions(bits, frac):
    fmt = lbfp.LBFPFormat(bits=bits, frac_bits=frac, block_size=4, block_axis=1)
    x = _activation((1, 6, 7, 5))
    x_blocks = lbfp.max_exponents(x, fmt, (0, 2, 3))
    words = lbfp.encode(x, x_blocks, fmt)
    x_exp = lbfp.expand_exponents(x_blocks, x.shape, fmt)[0, :, 0, 0].astype(np.int32)
    got = _run(kernels.encode_prim_func(x.shape, 1, fmt, "float", None, None), x.shape, "uint8",
               x, x_exp, fmt.thresholds)
    np.testing.assert_array_equal(got, words)
    got = _run(kernels.decode_prim_func(x.shape, 1, fmt), x.shape, "float32", words, x_exp,
               fmt.magnitudes)
    np.testing.assert_array_equal(got, lbfp.decode(words, x_blocks, fmt).astype(np.float32))

    fmt_w = lbfp.LBFPFormat(bits=bits, frac_bits=frac, block_size=2, block_axis=1)
    channel_fmt = lbfp.LBFPFormat(bits=bits, frac_bits=frac, block_size=1, block_axis=1)
    for groups, (o, cg) in [(1, (8, 6)), (2, (4, 3)), (6, (6, 1))]:
        w = RNG.normal(size=(o, cg, 3, 3))
        w_blocks = lbfp.max_exponents(w, fmt_w)
        w_words = lbfp.encode(w, w_blocks, fmt_w)
        w_exp = lbfp.expand_exponents(w_blocks, w.shape, fmt_w).astype(np.int32)
        geometry = dict(strides=(2, 1), padding=(1, 0, 2, 1), dilation=(1, 2), groups=groups)
        acc, e_ref = lbfp.conv2d(words, x_exp, w_words, w_exp, fmt, fmt_w, **geometry)
        prim = kernels.conv2d_prim_func(x.shape, w.shape, *geometry.values(), fmt)
        got = _run(prim, acc.shape, "int64", words, w_words, x_exp, w_exp,
                   e_ref.astype(np.int32), fmt.lut)
        np.testing.assert_array_equal(got, acc)
        out_exp = RNG.integers(-2, 3, o).astype(np.int32)
        want = lbfp.acc_to_lbfp(acc, e_ref[:, None, None], out_exp.reshape(1, o, 1, 1),
                                channel_fmt, lo=0.0, hi=6.0)
        got = _run(kernels.encode_prim_func(acc.shape, 1, fmt, "acc", 0.0, 6.0), acc.shape,
                   "uint8", acc, e_ref.astype(np.int32), out_exp, fmt.thresholds)
        np.testing.assert_array_equal(got, want)

    xm = words.reshape(1, 6, 35).transpose(0, 2, 1).copy()  # (1, T, K) like a sequence model
    wm = RNG.integers(0, 2**bits, (6, 5)).astype(np.uint8)
    xm_exp, wm_exp = RNG.integers(-3, 3, 6), RNG.integers(-3, 3, (6, 5))
    acc, e_ref = lbfp.matmul(xm, xm_exp, wm, wm_exp, fmt, fmt)
    got = _run(kernels.matmul_prim_func(xm.shape, wm.shape, fmt), acc.shape, "int64", xm, wm,
               xm_exp.astype(np.int32), wm_exp.astype(np.int32), e_ref.astype(np.int32),
               fmt.lut)
    np.testing.assert_array_equal(got, acc)


def _conv(name, x, out, w, b=None, **attrs):
    return helper.make_node("Conv", [x, w, *([b] if b else [])], [out], name=name, **attrs)


CASES = {
    "conv_relu_conv_chain": (  # the second conv reads the first one's words directly
        [_conv("a", "input", "a", "wa", "ba", pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["a"], ["r"]),
         _conv("b", "r", "output", "wb", strides=[2, 2], pads=[0, 1, 1, 0])],
        {"wa": RNG.normal(size=(20, 3, 3, 3)), "ba": RNG.normal(size=20),
         "wb": RNG.normal(size=(4, 20, 3, 3))}, [1, 3, 6, 6], [1, 4, 3, 3]),
    "depthwise_clip_then_pool": (
        [_conv("d", "input", "d", "wd", group=4, pads=[1, 1, 1, 1]),
         helper.make_node("Clip", ["d", "lo", "hi"], ["c"]),
         helper.make_node("GlobalAveragePool", ["c"], ["g"]),
         helper.make_node("Flatten", ["g"], ["output"])],
        {"wd": RNG.normal(size=(4, 1, 3, 3)), "lo": np.array(0.0), "hi": np.array(1.5)},
        [1, 4, 5, 5], [1, 4]),
    "sequence_matmul_add": (  # (1, T, K) @ (K, N) + b, then a float residual add
        [helper.make_node("MatMul", ["input", "w"], ["m"]),
         helper.make_node("Add", ["m", "b"], ["h"]),
         helper.make_node("Add", ["h", "input"], ["output"])],
        {"w": RNG.normal(size=(24, 24)) * 0.3, "b": RNG.normal(size=24)}, [1, 5, 24],
        [1, 5, 24]),
}


@pytest.mark.parametrize("scheme,observer", [("lbfp8", "minmax"), ("lbfp4", "kl")])
@pytest.mark.parametrize("case", list(CASES))
def test_lbfp_model_equals_oracle(case, scheme, observer):
    nodes, inits, in_shape, out_shape = CASES[case]
    model = make_onnx(nodes, inits, in_shape, out_shape)
    calib = RNG.normal(size=(12, *in_shape[1:])).astype(np.float32)
    config = tvmq.QuantConfig(scheme=scheme, observer=observer, sqnr_samples=4)
    cm = tvmq.compile(model, config=config, calib=calib, progress=False)
    names = [b.var.name for b in cm.quant_mod["main"].body.blocks[0].bindings
             if b.var.name.endswith("_q")]
    assert names and all(str(b.var.ty.dtype) == "uint8"
                         for b in cm.quant_mod["main"].body.blocks[0].bindings
                         if b.var.name in names)
    assert_taps_equal_oracle(cm.quant_mod, names, calib[:3])
    if scheme == "lbfp8":  # 2^(1/16) code steps, exponents covering the range
        ref, got = build(load_model(model)[0]).run(calib[:1]), cm.run(calib[:1])
        assert np.sum((ref - got) ** 2) / np.sum(ref**2) < 0.01


def test_chained_convs_share_words():
    """A conv that reads another conv's output uses its words: one encode of the model input,
    one per layer output, no decode in between (only the model output is decoded)."""
    nodes, inits, in_shape, out_shape = CASES["conv_relu_conv_chain"]
    model = make_onnx(nodes, inits, in_shape, out_shape)
    calib = RNG.normal(size=(4, *in_shape[1:])).astype(np.float32)
    cm = tvmq.compile(model, config=tvmq.QuantConfig(scheme="lbfp8", sqnr_samples=0),
                      calib=calib, progress=False)
    mod = cm.quant_mod
    ops = [str(mod[b.value.args[0]].attrs[kernels.LBFP_ATTR]["op"])
           for b in mod["main"].body.blocks[0].bindings
           if isinstance(b.value, relax.Call) and b.value.op.name == "relax.call_tir"]
    assert ops == ["encode", "conv2d", "encode", "conv2d", "encode", "decode"]


def test_lbfp_report_and_float_ops(compile_digits):
    cm = compile_digits(scheme="lbfp8")
    rep = cm.report()
    assert [row.op for row in rep.layers] == ["conv2d"] * 5 + ["matmul"]
    assert all(row.out_exponents is not None and row.sqnr_db > 15 for row in rep.layers)
    assert {op.split(" ")[1] for op in rep.float_ops} >= {"(add)", "(concat)", "(mean)"}
    text = str(rep)
    assert "out exp min..max" in text and "lbfp8" in text
    assert tvmq.report.Report.from_dict(rep.to_dict()).layers == rep.layers


def test_lbfp8_digits_within_a_point_of_fp32_and_bit_exact(compile_digits, digits):
    _, x_test, y_test = digits
    cm = compile_digits(scheme="lbfp8")
    assert (cm.run(x_test).argmax(1) == y_test).mean() >= 0.9833 - 0.01
    names = [b.var.name for b in cm.quant_mod["main"].body.blocks[0].bindings
             if b.var.name.endswith("_q")]
    # six layers' words, and the encoded float tensors they read: input, max pool, reshape
    assert len(names) == 9
    assert_taps_equal_oracle(cm.quant_mod, names, x_test[:12])


def test_non_finite_activation_is_refused_at_calibration():
    model = make_onnx([helper.make_node("MatMul", ["input", "w"], ["output"])],
                      {"w": np.full((3, 2), 3e38)}, [1, 3], [1, 2])
    with pytest.raises(CompileError, match="finite"):
        tvmq.compile(model, config=tvmq.QuantConfig(scheme="lbfp8"),
                     calib=np.full((2, 3), 10.0, np.float32), progress=False)


def test_model_without_mac_layers_is_refused():
    model = make_onnx([helper.make_node("Relu", ["input"], ["output"])], {}, [1, 3], [1, 3])
    with pytest.raises(CompileError, match="conv2d/matmul"):
        tvmq.compile(model, config=tvmq.QuantConfig(scheme="lbfp6"),
                     calib=np.ones((2, 3), np.float32), progress=False)


# ---- Before / Expected: the kernels each MAC composite becomes -----------------------------------
# Expected uses the public kernel builders (tvmq.ir.lbfp_kernels) and computes weight words,
# exponents, e_ref and the bias in accumulator units with tvmq.numerics.lbfp.

FMT = lbfp.LBFPFormat(bits=8, frac_bits=4, block_size=2, block_axis=1)
W_A = RNG.normal(size=(4, 3, 3, 3)).astype(np.float32)
B_A = RNG.normal(size=(1, 4, 1, 1)).astype(np.float32)
W_B = RNG.normal(size=(2, 4, 1, 1)).astype(np.float32)
W_M = RNG.normal(size=(6, 5)).astype(np.float32)
EXPS = {"x": np.array([0, 1, -1], np.int32), "conv2d_0": np.array([2, 2, 1, 0], np.int32),
        "conv2d_1": np.array([3, 1], np.int32), "s": np.array([0, 0, 1, 1, -2, 2], np.int32),
        "matmul_0": np.array([1, 2, 3, 0, -1], np.int32)}


@I.ir_module
class ConvChainBefore:
    @R.function(private=True)
    def fused_relax_nn_conv2d_relax_add_relax_nn_relu(x: R.Tensor((1, 3, 5, 5), "float32")):
        R.func_attr({"Composite": "tvmq.conv2d", "Primitive": True})
        with R.dataflow():
            c = R.nn.conv2d(x, R.const(W_A), padding=[1, 1])
            b = R.add(c, R.const(B_A))
            gv = R.nn.relu(b)
            R.output(gv)
        return gv

    @R.function(private=True)
    def fused_relax_nn_conv2d(r: R.Tensor((1, 4, 5, 5), "float32")):
        R.func_attr({"Composite": "tvmq.conv2d", "Primitive": True})
        with R.dataflow():
            gv = R.nn.conv2d(r, R.const(W_B), strides=[2, 2])
            R.output(gv)
        return gv

    @R.function
    def main(x: R.Tensor((1, 3, 5, 5), "float32")):
        cls = ConvChainBefore
        with R.dataflow():
            conv2d_0 = cls.fused_relax_nn_conv2d_relax_add_relax_nn_relu(x)
            conv2d_1 = cls.fused_relax_nn_conv2d(conv2d_0)
            R.output(conv2d_1)
        return conv2d_1


def _call(bb, prim, name, args, shape, dtype):
    gv = bb.add_func(prim, name)
    args = [relax.const(a, str(a.dtype)) if isinstance(a, np.ndarray) else a for a in args]
    return relax.call_tir(gv, args, relax.TensorType(shape, dtype))


def _conv_words(bb, x_words, x_exp, w, out_exp, out_shape, geometry, bias=None, lo=None):
    """The words of one conv layer: conv2d kernel (int64) [+ bias] -> encode with out_exp."""
    fmt_w = dataclasses.replace(FMT, block_axis=1)  # weights block along input channels
    w_blocks = lbfp.max_exponents(w, fmt_w)
    w_exp = lbfp.expand_exponents(w_blocks, w.shape, fmt_w).astype(np.int32)
    e_ref = lbfp.conv_e_ref(x_exp, w_exp).astype(np.int32)
    x_shape = tuple(int(d) for d in x_words.ty.shape)
    prim = kernels.conv2d_prim_func(x_shape, w.shape, *geometry, 1, FMT)
    acc = bb.emit(_call(bb, prim, "tvmq_lbfp_conv2d", [x_words, lbfp.encode(w, w_blocks, fmt_w),
                                                      x_exp, w_exp, e_ref, FMT.lut],
                        out_shape, "int64"))
    if bias is not None:
        bq = lbfp.bias_to_acc(bias.reshape(-1), e_ref.astype(np.int64), FMT)
        acc = bb.emit(relax.op.add(acc, relax.const(bq.reshape(1, -1, 1, 1), "int64")))
    encode = kernels.encode_prim_func(out_shape, 1, FMT, "acc", lo, None)
    return _call(bb, encode, "tvmq_lbfp_encode", [acc, e_ref, out_exp, FMT.thresholds],
                 out_shape, "uint8")


def _conv_chain_expected():
    """x encoded once; conv 0 (bias, relu: clip at 0) writes words conv 1 reads directly; only
    conv 1's output is decoded (conv 0's decode has no user)."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 3, 5, 5), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            enc = kernels.encode_prim_func((1, 3, 5, 5), 1, FMT, "float", None, None)
            x_words = bb.emit(_call(bb, enc, "tvmq_lbfp_encode", [x, EXPS["x"], FMT.thresholds],
                                    (1, 3, 5, 5), "uint8"), "x_q")
            words0 = bb.emit(_conv_words(bb, x_words, EXPS["x"], W_A, EXPS["conv2d_0"],
                                         (1, 4, 5, 5), ([1, 1], [1, 1, 1, 1], [1, 1]),
                                         bias=B_A, lo=0.0), "conv2d_0_q")
            words1 = bb.emit(_conv_words(bb, words0, EXPS["conv2d_0"], W_B, EXPS["conv2d_1"],
                                         (1, 2, 3, 3), ([2, 2], [0, 0, 0, 0], [1, 1])),
                             "conv2d_1_q")
            dec = kernels.decode_prim_func((1, 2, 3, 3), 1, FMT)
            # "decode1": the pass named conv 0's decode first, then removed it (no user)
            out = bb.emit_output(_call(bb, dec, "tvmq_lbfp_decode1",
                                       [words1, EXPS["conv2d_1"], FMT.magnitudes], (1, 2, 3, 3),
                                       "float32"), "conv2d_1")
        bb.emit_func_output(out)
    return bb.get()


def test_conv_chain_becomes_encode_conv_encode_conv_encode_decode():
    realize = RealizeLBFP(EXPS, FMT)
    after = realize(ConvChainBefore)
    tvm.ir.assert_structural_equal(after, _conv_chain_expected())
    fmt_w = dataclasses.replace(FMT, block_axis=1)
    assert realize.weight_ranges == {
        name: (int(e.min()), int(e.max())) for name, e in
        (("conv2d_0", lbfp.max_exponents(W_A, fmt_w)), ("conv2d_1", lbfp.max_exponents(W_B,
                                                                                      fmt_w)))}


@I.ir_module
class MatmulBefore:
    @R.function(private=True)
    def fused_relax_matmul_relax_clip(s: R.Tensor((1, 4, 6), "float32")):
        R.func_attr({"Composite": "tvmq.matmul", "Primitive": True})
        with R.dataflow():
            m = R.matmul(s, R.const(W_M))
            gv = R.clip(m, -1.5, 2.0)
            R.output(gv)
        return gv

    @R.function
    def main(x: R.Tensor((1, 4, 6), "float32")):
        cls = MatmulBefore
        with R.dataflow():
            s = R.sigmoid(x)  # float op: the matmul encodes its output
            matmul_0 = cls.fused_relax_matmul_relax_clip(s)
            R.output(matmul_0)
        return matmul_0


def _matmul_expected():
    """(1, T, K) @ (K, N): weights block along K (axis 0); channels are the last axis; the
    clip's bounds go into the encode."""
    fmt_w = dataclasses.replace(FMT, block_axis=0)
    w_blocks = lbfp.max_exponents(W_M, fmt_w)
    w_exp = lbfp.expand_exponents(w_blocks, W_M.shape, fmt_w).astype(np.int32)
    e_ref = lbfp.matmul_e_ref(EXPS["s"], w_exp).astype(np.int32)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 4, 6), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            s = bb.emit(relax.op.sigmoid(x), "s")
            enc = kernels.encode_prim_func((1, 4, 6), 2, FMT, "float", None, None)
            s_words = bb.emit(_call(bb, enc, "tvmq_lbfp_encode", [s, EXPS["s"], FMT.thresholds],
                                    (1, 4, 6), "uint8"), "s_q")
            acc = bb.emit(_call(bb, kernels.matmul_prim_func((1, 4, 6), (6, 5), FMT),
                                "tvmq_lbfp_matmul", [s_words, lbfp.encode(W_M, w_blocks, fmt_w),
                                                     EXPS["s"], w_exp, e_ref, FMT.lut],
                                (1, 4, 5), "int64"))
            enc = kernels.encode_prim_func((1, 4, 5), 2, FMT, "acc", -1.5, 2.0)
            words = bb.emit(_call(bb, enc, "tvmq_lbfp_encode",
                                  [acc, e_ref, EXPS["matmul_0"], FMT.thresholds], (1, 4, 5),
                                  "uint8"), "matmul_0_q")
            dec = kernels.decode_prim_func((1, 4, 5), 2, FMT)
            out = bb.emit_output(_call(bb, dec, "tvmq_lbfp_decode",
                                       [words, EXPS["matmul_0"], FMT.magnitudes], (1, 4, 5),
                                       "float32"), "matmul_0")
        bb.emit_func_output(out)
    return bb.get()


def test_sequence_matmul_with_clip_reads_a_float_tensor():
    tvm.ir.assert_structural_equal(RealizeLBFP(EXPS, FMT)(MatmulBefore), _matmul_expected())


def test_exponent_errors_name_the_tensor():
    with pytest.raises(ValueError, match="no calibrated exponents for tensor 'x'"):
        RealizeLBFP({}, FMT)(ConvChainBefore)
    with pytest.raises(ValueError, match="tensor 'x' has 3 channels but 2 exponents"):
        RealizeLBFP({**EXPS, "x": np.zeros(2)}, FMT)(ConvChainBefore)
    with pytest.raises(ValueError, match="weight_exponents"):
        RealizeLBFP(EXPS, FMT, weight_exponents="mean")


def _unequal_channels_model():
    """A depthwise 3x3 conv over 16 channels; the caller scales channel 0 up 1000x."""
    w = np.random.default_rng(2).normal(size=(16, 1, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["input", "w"], ["output"], group=16, pads=[1, 1, 1, 1])]
    return make_onnx(nodes, {"w": w}, (1, 16, 8, 8), (1, 16, 8, 8))


@pytest.mark.parametrize("block", [1, 16])
def test_activation_exponents_per_channel_keep_small_channels(block):
    """A channel ~2^10 below its block's largest encodes to zero at 8 bits when 16 channels
    share an exponent; one exponent per channel (the default) keeps it."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(12, 1, 16, 8, 8)).astype(np.float32)
    x[:, :, 0] *= 1000.0
    model = _unequal_channels_model()
    config = tvmq.QuantConfig(scheme="lbfp8", lbfp_activation_block_size=block, sqnr_samples=0)
    cm = tvmq.compile(model, config=config, calib=x[:8, 0], progress=False)
    reference = build(load_model(model)[0])
    want = np.concatenate([reference.run(s) for s in x[8:]])
    got = np.concatenate([cm.run(s) for s in x[8:]])
    small = sqnr_db(want[:, 1:], got[:, 1:])
    if block == 1:
        assert small > 25.0, small
        assert cm.verify(x[8:10, 0], n=2).ok
    else:
        assert small < 3.0, small  # the 15 small channels are lost
